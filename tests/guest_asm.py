"""Assembling small guest programs with nasm: the memory they may use and the macros every program gets.

Each program is assembled after PRELUDE, nasm macros that talk back through the
debug port 0x402 (``out_byte``, ``out_eax``, ``out_rax``, ``out_sp``,
``out_stack``), power off through ACPI (``poweroff``), reach the local APIC and
the I/O APIC through their MMIO registers (``lapic_write``, ``ioapic_read``,
...) and spin on the ACPI PM timer (``pm_wait``). Programs that take interrupts
build their own IDT (``idt_gate``, ``load_idt``, gates as in SDM Vol. 3A
Figures 6-2 and 6-8) and keep their variables at ``VARS``: areas every mode
leaves free. Labels come back from nasm's map file. Running programs:
tests/guest.py.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

PROGRAM = 0x1000  # where programs are loaded and entered
STACK_TOP = 0x8000  # below the program's data area at 0x9000
DATA = 0x9000  # scratch data programs may use (real and protected mode: long mode's page tables live here)

# Areas for programs that build their own system tables; free in every mode
# (long mode's boot page tables occupy 0x9000-0xEFFF).
TEST_IDT = 0x10000  # 256 gates: 2 KiB in 32-bit mode, 4 KiB in 64-bit mode
TEST_TSS = 0x11800
VARS = 0x12000  # scratch variables (the IDTR image for load_idt sits at VARS)
KSTACK_TOP = 0x18000  # ring-0 stack for privilege changes (TSS.ESP0/RSP0)
USER_STACK_TOP = 0x1C000  # ring-3 stack

# Snippets every program can use (nasm macros).
PRELUDE = """
%define DEBUG_PORT 0x402
%define PORT_COM1 0x3f8
%define PORT_ACPI_SLEEP 0x600
%define ACPI_S5 0x34

; out_byte imm8: write one byte to the debug port
%macro out_byte 1
    mov al, %1
    mov dx, DEBUG_PORT
    out dx, al
%endmacro

; out_eax: write EAX to the (one byte wide) debug port, little-endian
%macro out_eax 0
    mov dx, DEBUG_PORT
    out dx, al
    ror eax, 8
    out dx, al
    ror eax, 8
    out dx, al
    ror eax, 8
    out dx, al
    ror eax, 8
%endmacro

%define TEST_IDT 0x10000
%define TEST_TSS 0x11800
%define VARS 0x12000
%define KSTACK_TOP 0x18000
%define USER_STACK_TOP 0x1C000
%define LAPIC 0xFEE00000
%define IOAPIC 0xFEC00000
%define PORT_PM_TIMER 0x608

; out_rax: write RAX to the debug port, little-endian (64-bit programs)
%macro out_rax 0
    mov dx, DEBUG_PORT
%rep 8
    out dx, al
    ror rax, 8
%endrep
%endmacro

; out_sp: write the stack pointer (ESP, or RSP in 64-bit mode) to the debug port
%macro out_sp 0
%if __BITS__ == 64
    mov rax, rsp
    out_rax
%else
    mov eax, esp
    out_eax
%endif
%endmacro

; out_stack n: write the n stack words at the stack pointer (dwords in 32-bit
; mode, qwords in 64-bit mode) to the debug port; clobbers eax/rax, ecx, edx, esi/rsi
%macro out_stack 1
%if __BITS__ == 64
    mov rsi, rsp
    mov ecx, %1
%%next:
    lodsq
    out_rax
    loop %%next
%else
    mov esi, esp
    mov ecx, %1
%%next:
    lodsd
    out_eax
    loop %%next
%endif
%endmacro

; idt_gate vector, handler[, dpl]: an interrupt gate in TEST_IDT with the
; current CS (SDM Vol. 3A, Figures 6-2 and 6-8); clobbers eax/rax
%macro idt_gate 2-3 0
%if __BITS__ == 64
    mov rax, %2
    mov word [TEST_IDT + (%1) * 16], ax
    mov word [TEST_IDT + (%1) * 16 + 2], cs
    mov word [TEST_IDT + (%1) * 16 + 4], 0x8E00 | ((%3) << 13)
    shr rax, 16
    mov word [TEST_IDT + (%1) * 16 + 6], ax
    shr rax, 16
    mov dword [TEST_IDT + (%1) * 16 + 8], eax
    mov dword [TEST_IDT + (%1) * 16 + 12], 0
%else
    mov eax, %2
    mov word [TEST_IDT + (%1) * 8], ax
    mov word [TEST_IDT + (%1) * 8 + 2], cs
    mov word [TEST_IDT + (%1) * 8 + 4], 0x8E00 | ((%3) << 13)
    shr eax, 16
    mov word [TEST_IDT + (%1) * 8 + 6], ax
%endif
%endmacro

; load_idt: load IDTR with TEST_IDT, 256 gates
%macro load_idt 0
%if __BITS__ == 64
    mov word [VARS], 256 * 16 - 1
    mov qword [VARS + 2], TEST_IDT
%else
    mov word [VARS], 256 * 8 - 1
    mov dword [VARS + 2], TEST_IDT
%endif
    lidt [VARS]
%endmacro

; push_all / pop_all: save and restore EAX, EBX, ECX, EDX, ESI (RAX... in 64-bit mode) in handlers
%macro push_all 0
%if __BITS__ == 64
    push rax
    push rbx
    push rcx
    push rdx
    push rsi
%else
    push eax
    push ebx
    push ecx
    push edx
    push esi
%endif
%endmacro

%macro pop_all 0
%if __BITS__ == 64
    pop rsi
    pop rdx
    pop rcx
    pop rbx
    pop rax
%else
    pop esi
    pop edx
    pop ecx
    pop ebx
    pop eax
%endif
%endmacro

; iretx: IRET of the mode's width
%macro iretx 0
%if __BITS__ == 64
    iretq
%else
    iretd
%endif
%endmacro

; lapic_write offset, value / lapic_read offset (into EAX): local APIC registers;
; value is an immediate or a register other than EBX
%macro lapic_write 2
    push_ebx
    mov ebx, LAPIC
    mov dword [ebx + (%1)], %2
    pop_ebx
%endmacro

%macro lapic_read 1
    push_ebx
    mov ebx, LAPIC
    mov eax, [ebx + (%1)]
    pop_ebx
%endmacro

; ioapic_write index, value / ioapic_read index (into EAX): I/O APIC registers
; through IOREGSEL (offset 0) and IOWIN (offset 0x10)
%macro ioapic_write 2
    push_ebx
    mov ebx, IOAPIC
    mov dword [ebx], %1
    mov dword [ebx + 0x10], %2
    pop_ebx
%endmacro

%macro ioapic_read 1
    push_ebx
    mov ebx, IOAPIC
    mov dword [ebx], %1
    mov eax, [ebx + 0x10]
    pop_ebx
%endmacro

%macro push_ebx 0
%if __BITS__ == 64
    push rbx
%else
    push ebx
%endif
%endmacro

%macro pop_ebx 0
%if __BITS__ == 64
    pop rbx
%else
    pop ebx
%endif
%endmacro

; pm_wait ticks: spin until the ACPI PM timer (3.579545 MHz) has advanced by ticks; clobbers EAX, ECX, EDX
%macro pm_wait 1
    mov dx, PORT_PM_TIMER
    in eax, dx
    mov ecx, eax
%%spin:
    in eax, dx
    sub eax, ecx
    cmp eax, %1
    jb %%spin
%endmacro

%macro poweroff 0
    mov dx, PORT_ACPI_SLEEP
    mov al, ACPI_S5
    out dx, al
%%hang:
    hlt
    jmp %%hang
%endmacro
"""

BITS = {"real": 16, "protected": 32, "long": 64}


def assemble(source: str, mode: str = "real", org: int = PROGRAM) -> bytes:
    """Assemble ``source`` with nasm for ``mode``; fails loudly without nasm."""
    return assemble_with_symbols(source, mode, org)[0]


def assemble_with_symbols(source: str, mode: str = "real", org: int = PROGRAM) -> tuple[bytes, dict[str, int]]:
    """Assemble ``source``; also returns its labels and constants by name (``loop``, ``handler.local``)."""
    nasm = shutil.which("nasm")
    if nasm is None:
        raise RuntimeError("nasm is not installed: run ./dev setup")
    with tempfile.TemporaryDirectory() as tmp:
        src, out, map_file = Path(tmp) / "prog.asm", Path(tmp) / "prog.bin", Path(tmp) / "prog.map"
        src.write_text(f"bits {BITS[mode]}\norg {org:#x}\n[map symbols {map_file}]\n{PRELUDE}\n{source}\n")
        proc = subprocess.run([nasm, "-f", "bin", "-o", str(out), str(src)], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"nasm failed:\n{proc.stderr}")
        return out.read_bytes(), _map_symbols(map_file.read_text())


def _map_symbols(text: str) -> dict[str, int]:
    """Parse nasm's map file: "Value Name" rows for constants, "Real Virtual Name" rows for labels."""
    symbols = {}
    for line in text.split("-- Symbols", 1)[-1].splitlines():
        fields = line.split()
        if len(fields) in (2, 3) and all(_is_hex(f) for f in fields[:-1]):
            symbols[fields[-1]] = int(fields[0], 16)
    return symbols


def _is_hex(text: str) -> bool:
    try:
        int(text, 16)
    except ValueError:
        return False
    return True
