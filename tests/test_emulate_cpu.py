"""The emulated CPU as the guest sees it: CPUID, MSRs, SYSCALL/SYSRET, and the engine's own state.

CPUID bits: Intel SDM Vol. 2A, CPUID, Tables 3-8 and 3-10. MSRs: SDM Vol. 4.
SYSCALL/SYSRET: SDM Vol. 2B. The engine is Unicorn with vmboot's patch
(assets/unicorn/): MSR hooks that can raise #GP, architectural SYSCALL, 64-bit
register access from a UC_MODE_32 engine, and triple faults reported to the caller.
"""
from __future__ import annotations

import pytest

from vmboot.core.emulate.engine import MachineEngine
from vmboot.core.emulate.msrs import MSR_CSTAR, MSR_EFER, MSR_FMASK, MSR_IA32_APIC_BASE, MSR_LSTAR, MSR_STAR
from vmboot.core.events import Outcome
from vmboot.tests.guest import GuestRun, run_guest
from vmboot.tests.guest_asm import STACK_TOP, USER_STACK_TOP

MODES = ["protected", "long"]
GP, UD = 13, 6

# CPUID.01H:ECX and EDX, CPUID.07H.0:EBX bit positions.
ECX_MONITOR, ECX_X2APIC, ECX_TSC_DEADLINE, ECX_XSAVE, ECX_OSXSAVE, ECX_AVX = 3, 21, 24, 26, 27, 28
EDX_APIC, EDX_SSE2 = 9, 26
EBX7_AVX2, EBX7_AVX512F = 5, 16

EFER_SCE = 1 << 0
EFER_LME, EFER_LMA = 1 << 8, 1 << 10
MSR_IA32_TSC_DEADLINE = 0x6E0  # exists only with CPUID.01H:ECX.TSC_DEADLINE
MSR_X2APIC_APICID = 0x802  # exists only with x2APIC
APIC_BASE_VALUE = 0xFEE00900  # base 0xFEE00000, BSP (bit 8), enabled (bit 11)


def bit(value: int, position: int) -> int:
    return (value >> position) & 1


@pytest.mark.parametrize("mode", MODES)
def test_cpuid_reports_the_filtered_table(mode):
    r = run_guest("""
        mov eax, 1
        xor ecx, ecx
        cpuid
        mov esi, ecx
        mov edi, edx
        out_eax
        mov eax, ebx
        out_eax
        mov eax, esi
        out_eax
        mov eax, edi
        out_eax
        mov eax, 7
        xor ecx, ecx
        cpuid
        mov eax, ebx
        out_eax
        poweroff
    """, accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    eax1, ebx1, ecx1, edx1, ebx7 = r.dwords()
    table = r.backend.cpuid
    want1, want7 = table.lookup(1, 0), table.lookup(7, 0)
    assert (eax1, ebx1, ecx1, edx1) == (want1.eax, want1.ebx, want1.ecx, want1.edx)
    assert ebx7 == want7.ebx
    for feature in (ECX_MONITOR, ECX_X2APIC, ECX_TSC_DEADLINE, ECX_XSAVE, ECX_OSXSAVE, ECX_AVX):
        assert bit(ecx1, feature) == 0, feature
    assert bit(edx1, EDX_SSE2) == bit(edx1, EDX_APIC) == 1
    assert ebx1 >> 24 == 0  # initial APIC ID
    assert (ebx1 >> 16) & 0xFF == 1  # one logical processor
    assert bit(ebx7, EBX7_AVX2) == bit(ebx7, EBX7_AVX512F) == 0


# An MSR test program's #GP handler: report the error code and the faulting EIP, step over the
# 2-byte RDMSR/WRMSR and go on.
GP_SKIP_HANDLER = """
    on_gp:
        push_all
%if __BITS__ == 64
        mov rax, [rsp + 5 * 8]     ; error code
        out_eax
        mov rax, [rsp + 6 * 8]     ; RIP
        out_eax
        add qword [rsp + 6 * 8], 2
        pop_all
        add rsp, 8                 ; drop the error code
        iretq
%else
        mov eax, [esp + 5 * 4]
        out_eax
        mov eax, [esp + 6 * 4]
        out_eax
        add dword [esp + 6 * 4], 2
        pop_all
        add esp, 4
        iretd
%endif
"""


def rdmsr_out(msr: int) -> str:
    return f"""
        mov ecx, {msr:#x}
        rdmsr
        mov esi, edx
        out_eax
        mov eax, esi
        out_eax
    """


def wrmsr(msr: int, value: int) -> str:
    return f"""
        mov ecx, {msr:#x}
        mov eax, {value & 0xFFFFFFFF:#x}
        mov edx, {value >> 32:#x}
        wrmsr
    """


@pytest.mark.parametrize("mode", MODES)
def test_rdmsr_apic_base_reads_the_local_apic(mode):
    r = run_guest(rdmsr_out(MSR_IA32_APIC_BASE) + "poweroff", accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    assert r.dwords() == [APIC_BASE_VALUE, 0]


@pytest.mark.parametrize("mode", MODES)
def test_msrs_the_cpu_lacks_raise_gp0_at_the_instruction(mode):
    r = run_guest(f"""
        idt_gate {GP}, on_gp
        load_idt
        mov ecx, {MSR_IA32_TSC_DEADLINE:#x}
    rd1:
        rdmsr
        mov ecx, {MSR_X2APIC_APICID:#x}
    rd2:
        rdmsr
        mov ecx, {MSR_IA32_TSC_DEADLINE:#x}
        xor eax, eax
        xor edx, edx
    wr1:
        wrmsr
        out_byte 'E'
        poweroff
    {GP_SKIP_HANDLER}
    """, accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    s = r.symbols
    assert r.dwords()[:6] == [0, s["rd1"], 0, s["rd2"], 0, s["wr1"]]
    assert r.debug[24:] == b"E"
    assert r.backend.msrs.counts["#GP"] == 3


@pytest.mark.parametrize("mode", MODES)
def test_syscall_msrs_round_trip_through_unicorn(mode):
    values = {MSR_STAR: 0x0023001012345678, MSR_LSTAR: 0xFFFFFFFF81000000, MSR_CSTAR: 0xFFFFFFFF81000040,
              MSR_FMASK: 0x47700}
    source = "".join(wrmsr(msr, value) for msr, value in values.items())
    source += "".join(rdmsr_out(msr) for msr in values) + "poweroff"
    r = run_guest(source, accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    d = r.dwords()
    assert [d[i] | d[i + 1] << 32 for i in range(0, 8, 2)] == list(values.values())
    assert r.backend.msrs.counts["#GP"] == 0


@pytest.mark.parametrize("mode, efer", [("protected", 0), ("long", EFER_LME | EFER_LMA)])
def test_efer_sce_can_be_set(mode, efer):
    r = run_guest(rdmsr_out(MSR_EFER) + f"""
        mov ecx, {MSR_EFER:#x}
        rdmsr
        or eax, {EFER_SCE}
        wrmsr
    """ + rdmsr_out(MSR_EFER) + "poweroff", accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    assert r.dwords() == [efer, 0, efer | EFER_SCE, 0]


def test_syscall_without_efer_sce_is_an_invalid_opcode():
    r = run_guest(f"""
        idt_gate {UD}, on_ud
        load_idt
    fault:
        syscall
        out_byte 'S'
    on_ud:
        mov rax, [rsp]
        out_rax
        poweroff
    """, accel="emulate", mode="long")
    assert r.outcome is Outcome.POWEROFF, r.message
    assert r.qwords() == [r.symbols["fault"]]


# -- SYSCALL and SYSRET in 64-bit mode --------------------------------------------------------------

KERNEL_CS, KERNEL_SS = 0x30, 0x38  # STAR[47:32] and + 8
SYSRET_BASE = 0x40  # STAR[63:48]: SYSRET loads CS = base + 16 | 3, SS = base + 8 | 3
USER_CS, USER_SS = SYSRET_BASE + 16 | 3, SYSRET_BASE + 8 | 3
FMASK = 0x4701  # NT, DF, IF, TF, and CF: an arithmetic flag
RFLAGS_BEFORE = 0x647  # ZF PF after `xor eax, eax`, CF from `stc`, DF from `std`, IF from `sti`
USER_RFLAGS = 0x3002  # IOPL 3, so that ring 3 may use the debug port

SYSCALL_PROGRAM = f"""
        lgdt [gdtr]
        ; ring 3 needs user pages: set U/S in the boot tables for the first 2 MiB
        or qword [0x9000], 4
        or qword [0xa000], 4
        or qword [0xb000], 4
        mov rax, cr3
        mov cr3, rax
        mov ecx, {MSR_STAR:#x}
        xor eax, eax
        mov edx, {SYSRET_BASE << 16 | KERNEL_CS:#x}
        wrmsr
        mov ecx, {MSR_LSTAR:#x}
        mov rax, kernel_entry
        mov rdx, rax
        shr rdx, 32
        wrmsr
        mov ecx, {MSR_FMASK:#x}
        mov eax, {FMASK:#x}
        xor edx, edx
        wrmsr
        mov ecx, {MSR_EFER:#x}
        rdmsr
        or eax, {EFER_SCE}
        wrmsr
        mov r11, 0x5a5a            ; SYSCALL overwrites RCX and R11
        mov rcx, 0xa5a5
        xor eax, eax
        stc
        std
        sti
        syscall
    after_kernel_syscall:
        out_byte 'K'

    kernel_entry:
        pushfq
        pop r12
        mov r13, rsp
        xor eax, eax
        mov ax, cs
        mov r14, rax
        mov ax, ss
        mov r15, rax
        mov rax, rcx
        out_rax
        mov rax, r11
        out_rax
        mov rax, r12
        out_rax
        mov rax, r13
        out_rax
        mov rax, r14
        out_rax
        mov rax, r15
        out_rax
        inc dword [VARS + 0x30]
        cmp dword [VARS + 0x30], 2
        je .done
        mov rcx, user
        mov r11, {USER_RFLAGS:#x}
        mov rsp, USER_STACK_TOP
        o64 sysret
    .done:
        poweroff

    user:
        pushfq                     ; RFLAGS as SYSRET left them
        pop r12
        xor eax, eax
        mov ax, cs
        out_rax
        mov ax, ss
        out_rax
        mov rax, r12
        out_rax
        xor eax, eax               ; known flags for the SYSCALL: ZF PF CF
        stc
        syscall
    after_user_syscall:
        out_byte 'U'

    align 8
    gdt:
        dq 0
        dq 0
        dq 0x00af9a000000ffff      ; 0x10 code, the entry's CS
        dq 0x00cf92000000ffff      ; 0x18 data, the entry's DS and SS
        dq 0, 0                    ; 0x20 the entry's TSS (not reloaded)
        dq 0x00af9a000000ffff      ; 0x30 code: SYSCALL's CS
        dq 0x00cf92000000ffff      ; 0x38 data: SYSCALL's SS
        dq 0                       ; 0x40 SYSRET base (32-bit user code, unused)
        dq 0x00cff2000000ffff      ; 0x48 data, DPL 3: SYSRET's SS
        dq 0x00affa000000ffff      ; 0x50 code, DPL 3: SYSRET's CS
    gdtr:
        dw gdtr - gdt - 1
        dq gdt
"""


def test_syscall_and_sysret_follow_star_lstar_and_fmask():
    r = run_guest(SYSCALL_PROGRAM, accel="emulate", mode="long")
    assert r.outcome is Outcome.POWEROFF, r.message
    s = r.symbols
    q = r.qwords()
    # SYSCALL from ring 0: RCX = return RIP, R11 = RFLAGS, RFLAGS &= ~FMASK, CS/SS from STAR, RSP kept
    assert q[0:6] == [s["after_kernel_syscall"], RFLAGS_BEFORE, RFLAGS_BEFORE & ~FMASK, STACK_TOP,
                      KERNEL_CS, KERNEL_SS]
    # SYSRET to ring 3: CS and SS from STAR[63:48], RFLAGS from R11
    assert q[6:9] == [USER_CS, USER_SS, USER_RFLAGS]
    # SYSCALL from ring 3
    user_flags = USER_RFLAGS | 0x45  # ZF PF CF (bit 1 is in USER_RFLAGS)
    assert q[9:15] == [s["after_user_syscall"], user_flags, user_flags & ~FMASK, USER_STACK_TOP,
                       KERNEL_CS, KERNEL_SS]
    assert len(r.debug) == 15 * 8  # neither "K" nor "U": no SYSCALL returned to its caller


# -- the engine: 64-bit registers from a UC_MODE_32 engine, triple faults --------------------------------


def test_a_mode_32_engine_reaches_the_64_bit_registers():
    engine = MachineEngine()
    try:
        for name, value in [("rip", 0xFFFFFFFF81000000), ("r8", 0x1122334455667788), ("r15", 1 << 63),
                            ("rsp", 0x00007FFFFFFFE000)]:
            engine.set_reg(name, value)
            assert engine.reg(name) == value, name
        engine.set_reg("rax", 0x8877665544332211)
        assert engine.reg("eax") == 0x44332211
    finally:
        engine.close()


def test_registers_of_a_halted_64_bit_guest_read_back_in_full():
    source = """
        mov r8, 0x1122334455667788
        mov rax, 0x8877665544332211
        mov rsp, 0x7ff0
        cli
        hlt
    after_hlt:
        jmp after_hlt
    """
    with GuestRun(source, accel="emulate", mode="long") as run:
        run.start()
        run.wait_until(lambda: run.backend.counts["hlt"] >= 1, what="HLT")
        engine = run.backend.engine
        regs = {name: engine.reg(name) for name in ("rip", "r8", "rax", "rsp")}
        r = run.finish(timeout=0.1)
    assert r.outcome is None
    assert regs == {"rip": r.symbols["after_hlt"], "r8": 0x1122334455667788, "rax": 0x8877665544332211,
                    "rsp": 0x7FF0}


@pytest.mark.parametrize("mode", MODES)
def test_a_triple_fault_ends_the_run_with_a_clear_message(mode):
    # The boot IDT holds one empty gate: #BP finds no gate (#GP), nor does #GP
    # (#DF), nor #DF: shutdown.
    r = run_guest("""
        out_byte 'A'
    fault:
        int3
        out_byte 'B'
    """, accel="emulate", mode=mode)
    assert r.outcome is Outcome.ERROR
    assert r.debug == b"A"
    assert r.message == f"the guest triple-faulted (CPU shutdown) at rip {r.symbols['fault']:#x}"


@pytest.mark.parametrize("program", ["spin: jmp spin", "cli\n hlt"], ids=["spinning", "halted"])
def test_stopping_the_vm_ends_the_vcpu_thread(program):
    # uc_emu_stop() from another thread ends a CPU that never leaves its block, or sleeps in HLT.
    r = run_guest(f"out_byte 'S'\n {program}", accel="emulate", mode="protected", timeout=0.3)
    assert r.outcome is None and r.debug == b"S"
    assert not r.backend._thread.is_alive()


def test_a_stop_before_the_vcpu_thread_starts_is_not_lost():
    # Unicorn forgets a uc_emu_stop that comes before uc_emu_start has begun. A VM
    # stopped while its vCPU thread is starting (a SIGTERM during a guest reset)
    # must still stop, and its engine must not be freed under a running thread.
    with GuestRun("spin: pause\njmp spin", accel="emulate") as run:
        run.events.request(Outcome.QUIT, "stopped before the vCPU ran")
        run.start()  # the stop came first: nothing stops the engine but join() itself
        run.backend.join(5)
        assert not run.backend._thread.is_alive()
        assert run.events.stop.outcome is Outcome.QUIT
