"""Exceptions and software interrupts on the emulated CPU, delivered through the guest's IDT.

Each program installs its own IDT (tests/guest_asm.py: idt_gate, load_idt), raises
one event, and its handler reports the stack pointer and the frame the CPU
pushed. The expected frames follow the Intel SDM Vol. 3A §6.12.1 (32-bit:
[error code,] EIP, CS, EFLAGS, and ESP, SS on a privilege change) and §6.14
(64-bit: [error code,] RIP, CS, RFLAGS, RSP, SS, always, on a stack aligned
down to 16 bytes). Fault addresses come from the program's own labels.
"""
from __future__ import annotations

import pytest

from vmboot.core.events import Outcome
from vmboot.tests.guest import run_guest
from vmboot.tests.guest_asm import KSTACK_TOP, STACK_TOP, USER_STACK_TOP

MODES = ["protected", "long"]

# Vectors (SDM Vol. 3A, Table 6-1).
DE, BP, UD, GP, PF = 0, 3, 6, 13, 14

# Selectors of the entry states (tests/guest.py): PVH in 32-bit mode, Linux's in 64-bit mode.
CODE_SELECTOR = {"protected": 0x08, "long": 0x10}
STACK_SELECTOR_64 = 0x18

FLAGS_AFTER_XOR = 0x46  # ZF | PF | the reserved bit 1, after `xor eax, eax`
RFLAGS_IF = 1 << 9
RFLAGS_RF = 1 << 16
# SDM Vol. 3A §17.3.1.1: hardware pushes RF=1 for fault-class exceptions; QEMU's
# TCG (and so the emulated CPU) pushes the live RF, 0. Faults are compared without it.
FAULT_FLAGS_MASK = ~RFLAGS_RF

# In 64-bit mode the handler runs on a stack aligned down to 16 bytes; start one that is not aligned.
MISALIGNED_RSP = STACK_TOP - 4

# Page-fault error code bits (SDM Vol. 3A §4.7, Figure 4-12).
PF_P, PF_W, PF_ID = 1 << 0, 1 << 1, 1 << 4  # present, write, instruction fetch


def words(result, mode: str) -> list[int]:
    return result.qwords() if mode == "long" else result.dwords()


def frame_program(mode: str, vector: int, trigger: str, setup: str = "", returns: bool = False) -> str:
    """Install a handler for ``vector``, run ``trigger`` at label ``fault``; the handler
    reports its stack pointer and 8 stack words, then returns (``returns``) or powers off."""
    if mode == "long":
        setup = f"mov rsp, {MISALIGNED_RSP:#x}\n{setup}"
    iret = "iretq" if mode == "long" else "iretd"
    return f"""
        idt_gate {vector}, handler
        load_idt
        {setup}
        xor eax, eax               ; known flags: ZF PF
    fault:
        {trigger}
    after:
        out_byte 'R'
        poweroff
    handler:
        out_sp
        out_stack 8
        {iret if returns else "poweroff"}
    """


def expected_frame(mode: str, rip: int, error: int | None = None) -> tuple[int, list[int]]:
    """The handler's stack pointer and the frame words the CPU pushed, for a same-privilege event."""
    code = [] if error is None else [error]
    if mode == "long":
        frame = code + [rip, CODE_SELECTOR[mode], FLAGS_AFTER_XOR, MISALIGNED_RSP, STACK_SELECTOR_64]
        return (MISALIGNED_RSP & ~0xF) - 8 * len(frame), frame
    frame = code + [rip, CODE_SELECTOR[mode], FLAGS_AFTER_XOR]
    return STACK_TOP - 4 * len(frame), frame


def check_fault(r, mode: str, error: int | None = None, rip_label: str = "fault"):
    assert r.outcome is Outcome.POWEROFF, r.message
    sp, *stack = words(r, mode)
    want_sp, want = expected_frame(mode, r.symbols[rip_label], error)
    assert sp == want_sp
    got = stack[:len(want)]
    flags_at = len(want) - (3 if mode == "long" else 1)
    got[flags_at] &= FAULT_FLAGS_MASK
    assert got == want


@pytest.mark.parametrize("mode", MODES)
def test_divide_error_pushes_no_error_code_and_points_at_the_div(mode):
    r = run_guest(frame_program(mode, DE, "div ecx", setup="xor ecx, ecx\n xor edx, edx"), accel="emulate", mode=mode)
    check_fault(r, mode)


@pytest.mark.parametrize("mode", MODES)
def test_ud2_raises_invalid_opcode_at_the_instruction(mode):
    r = run_guest(frame_program(mode, UD, "ud2"), accel="emulate", mode=mode)
    check_fault(r, mode)


@pytest.mark.parametrize("mode", MODES)
def test_loading_a_selector_beyond_the_gdt_raises_gp_with_the_selector(mode):
    # The boot GDTs have 4 and 5 entries; index 8 is past their limit. The error
    # code is the selector without its RPL (SDM Vol. 3A §6.13).
    r = run_guest(frame_program(mode, GP, "mov ds, cx", setup="mov ecx, 0x43"), accel="emulate", mode=mode)
    check_fault(r, mode, error=0x40)


@pytest.mark.parametrize("mode", MODES)
def test_loading_a_system_descriptor_into_ds_raises_gp_with_its_selector(mode):
    tss = {"protected": 0x18, "long": 0x20}[mode]  # the boot TSS
    r = run_guest(frame_program(mode, GP, "mov ds, cx", setup=f"mov ecx, {tss}"), accel="emulate", mode=mode)
    check_fault(r, mode, error=tss)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("trigger, vector", [("int3", BP), ("int 0x80", 0x80), ("int 0xfe", 0xFE)])
def test_software_interrupts_return_after_the_instruction(mode, trigger, vector):
    r = run_guest(frame_program(mode, vector, trigger, returns=True), accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    step = 8 if mode == "long" else 4
    sp, *stack = words(r, mode)[:9]
    want_sp, want = expected_frame(mode, r.symbols["after"])
    assert (sp, stack[:len(want)]) == (want_sp, want)  # traps: exact flags, RF clear
    assert r.debug[9 * step:] == b"R"  # IRET resumed at the next instruction


def test_interrupt_gate_clears_if_and_iret_restores_it():
    r = run_guest("""
        idt_gate 0x40, handler
        load_idt
        sti
        xor eax, eax
        int 0x40
        pushfd
        pop eax
        out_eax                    ; after IRET
        poweroff
    handler:
        pushfd
        pop eax
        out_eax                    ; inside the handler
        iretd
    """, accel="emulate", mode="protected")
    assert r.dwords() == [FLAGS_AFTER_XOR, FLAGS_AFTER_XOR | RFLAGS_IF]


def test_interrupt_from_ring_3_switches_to_the_tss_stack_and_pushes_esp_and_ss():
    r = run_guest(f"""
        lgdt [gdtr]
        mov ax, 0x18
        ltr ax
        mov dword [TEST_TSS + 4], KSTACK_TOP   ; ESP0
        mov dword [TEST_TSS + 8], 0x10         ; SS0
        idt_gate 0x80, handler, 3
        idt_gate {GP}, gp_handler
        load_idt
        push 0x2b                  ; SS: ring-3 data
        push USER_STACK_TOP
        push 0x3002                ; EFLAGS: IOPL 3
        push 0x23                  ; CS: ring-3 code
        push user
        iretd
    user:
        mov ax, 0x2b
        mov ds, ax
        xor eax, eax
        int 0x80
    user_after:
        int 0x81                   ; a DPL-0 gate: #GP(IDT vector 0x81)
    handler:
        mov ax, 0x10
        mov ds, ax
        out_sp
        out_stack 5
        iretd
    gp_handler:
        mov ax, 0x10
        mov ds, ax
        out_sp
        out_stack 6
        poweroff

    align 8
    gdt:
        dq 0
        dq 0x00cf9a000000ffff      ; 0x08 code, DPL 0
        dq 0x00cf92000000ffff      ; 0x10 data, DPL 0
        dq 0x67 | ((TEST_TSS & 0xffffff) << 16) | (0x89 << 40) | ((TEST_TSS >> 24) << 56)  ; 0x18 TSS
        dq 0x00cffa000000ffff      ; 0x20 code, DPL 3
        dq 0x00cff2000000ffff      ; 0x28 data, DPL 3
    gdtr:
        dw gdtr - gdt - 1
        dd gdt
    """, accel="emulate", mode="protected")
    assert r.outcome is Outcome.POWEROFF, r.message
    user_flags = 0x3000 | FLAGS_AFTER_XOR
    int_sp, *int_frame = r.dwords()[:6]
    assert int_sp == KSTACK_TOP - 20
    assert int_frame == [r.symbols["user_after"], 0x23, user_flags, USER_STACK_TOP, 0x2B]
    gp_sp, *gp_frame = r.dwords()[6:]
    assert gp_sp == KSTACK_TOP - 24
    idt_error = (0x81 << 3) | 2  # selector-format error code with the IDT bit (SDM Vol. 3A §6.13)
    gp_frame[3] &= FAULT_FLAGS_MASK
    assert gp_frame == [idt_error, r.symbols["user_after"], 0x23, user_flags, USER_STACK_TOP, 0x2B]


# -- page faults (64-bit: the boot page tables map 4 GiB with 2 MiB pages) -------------------------

BOOT_PD_1G = 0xC000  # the page directory for 1-2 GiB (core/boot/bzimage.py: BOOT_PD + 0x1000)
PF_ADDRESS = 0x40000123  # in the 2 MiB page its first entry maps


def page_fault_program(access: str, pde: str, setup: str = "") -> str:
    return frame_program("long", PF, access, setup=f"""
        mov qword [{BOOT_PD_1G:#x}], {pde}
        invlpg [{PF_ADDRESS:#x}]
        {setup}
        mov rax, cr2
        mov rax, 0x1122334455667788
        mov cr2, rax               ; a stale value the fault must replace
    """).replace("handler:\n", "handler:\n        mov rax, cr2\n        out_rax\n", 1)


@pytest.mark.parametrize("access, pde, setup, error", [
    ("mov rax, [0x40000123]", "0", "", 0),
    ("mov byte [0x40000123], 1", "0", "", PF_W),
    ("mov byte [0x40000123], 1", "0x40000000 | 0x81", "mov rax, cr0\n bts rax, 16\n mov cr0, rax", PF_P | PF_W),
    ("jmp rcx", "0", "mov ecx, 0xc0000080\n rdmsr\n bts eax, 11\n wrmsr\n mov ecx, 0x40000123",
     PF_ID),
], ids=["read-not-present", "write-not-present", "write-read-only-with-cr0.wp", "fetch-not-present-nxe"])
def test_page_fault_error_code_and_cr2(access, pde, setup, error):
    r = run_guest(page_fault_program(access, pde, setup), accel="emulate", mode="long")
    assert r.outcome is Outcome.POWEROFF, r.message
    cr2, sp, *stack = r.qwords()
    assert cr2 == PF_ADDRESS
    want_sp, want = expected_frame("long", r.symbols["fault"], error)
    if access.startswith("jmp"):
        want[1] = PF_ADDRESS  # an instruction fetch faults at the target
    stack[3] &= FAULT_FLAGS_MASK
    assert (sp, stack[:6]) == (want_sp, want)
