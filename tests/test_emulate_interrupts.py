"""External interrupts on the emulated CPU: the local APIC's TPR and self-IPIs, STI and HLT, the I/O APIC.

The guest programs the emulated local APIC (Intel SDM Vol. 3A ch. 11: task
priority, EOI, the interrupt command register) and I/O APIC (82093AA) through
their MMIO registers, with STI's interrupt shadow over HLT (SDM Vol. 2B, STI);
the UART's interrupt reaches the CPU through the I/O APIC's GSI 4, edge or
level triggered. The APIC timer, timed by the ACPI PM timer:
test_emulate_apic_timer.py; the register values: tests/apic_program.py.
"""
from __future__ import annotations

import pytest

from vmboot.core.events import Outcome
from vmboot.tests.apic_program import (
    APIC_EOI, APIC_ICR_LOW, APIC_IRR_64, APIC_LVT_TIMER, APIC_PPR, APIC_SVR, APIC_TIMER_DIVIDE, APIC_TIMER_INITIAL,
    APIC_TPR, DIVIDE, ICR_SELF, IOAPIC_RTE4_HIGH, IOAPIC_RTE4_LOW, IPI_VECTOR, MODES, RTE_LEVEL, RTE_REMOTE_IRR,
    SVR_ENABLED, TIMER_VECTOR, UART_VECTOR, apic_count, pm_ticks,
)
from vmboot.tests.guest import GuestRun, run_guest


@pytest.mark.parametrize("mode", MODES)
def test_tpr_holds_back_lower_classes_and_lets_higher_ones_through(mode):
    r = run_guest(f"""
        idt_gate {TIMER_VECTOR}, on_timer
        idt_gate {IPI_VECTOR}, on_ipi
        load_idt
        lapic_write {APIC_SVR}, {SVR_ENABLED}
        lapic_write {APIC_TPR}, 0x40          ; class 4: vectors 0x40-0x4f wait
        lapic_write {APIC_TIMER_DIVIDE}, {DIVIDE[1]}
        lapic_write {APIC_LVT_TIMER}, {TIMER_VECTOR}
        lapic_write {APIC_TIMER_INITIAL}, {apic_count(0.001, 1)}
        sti
    pending:
        lapic_read {APIC_IRR_64}
        test eax, eax
        jz pending                 ; the timer expired ...
        pm_wait {pm_ticks(0.002)}
        mov eax, [VARS + 0x20]
        out_eax                    ; ... and its interrupt was held back
        lapic_read {APIC_IRR_64}
        out_eax
        lapic_read {APIC_PPR}
        out_eax
        lapic_write {APIC_ICR_LOW}, {ICR_SELF | IPI_VECTOR}
        jmp next1
    next1:
        mov eax, [VARS + 0x24]
        out_eax                    ; class 5 passed
        mov eax, [VARS + 0x20]
        out_eax
        lapic_write {APIC_TPR}, 0x30
        jmp next2
    next2:
        mov eax, [VARS + 0x20]
        out_eax                    ; class 4 now passes
        lapic_read {APIC_IRR_64}
        out_eax
        cli
        poweroff
    on_timer:
        inc dword [VARS + 0x20]
        lapic_write {APIC_EOI}, 0
        iretx
    on_ipi:
        inc dword [VARS + 0x24]
        lapic_write {APIC_EOI}, 0
        iretx
    """, accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    timer_bit = 1 << (TIMER_VECTOR - 64)
    assert r.dwords() == [0, timer_bit, 0x40, 1, 0, 1, 0]


def test_sti_hlt_with_an_interrupt_pending_does_not_sleep():
    # STI's interrupt shadow covers HLT: the pending interrupt is taken once the
    # CPU halts, and the frame points after the HLT (SDM Vol. 2B, STI).
    r = run_guest(f"""
        idt_gate {IPI_VECTOR}, on_ipi
        load_idt
        lapic_write {APIC_SVR}, {SVR_ENABLED}
        lapic_write {APIC_ICR_LOW}, {ICR_SELF | IPI_VECTOR}
        sti
        hlt
    after_hlt:
        poweroff
    on_ipi:
        mov eax, [esp]
        out_eax
        lapic_write {APIC_EOI}, 0
        iretd
    """, accel="emulate", mode="protected", timeout=5.0)
    assert r.outcome is Outcome.POWEROFF, r.message
    assert r.dwords() == [r.symbols["after_hlt"]]
    assert r.backend.counts["hlt"] == 1


def test_hlt_with_interrupts_off_sleeps_through_a_pending_timer_interrupt():
    r = run_guest(f"""
        lapic_write {APIC_SVR}, {SVR_ENABLED}
        lapic_write {APIC_TIMER_DIVIDE}, {DIVIDE[1]}
        lapic_write {APIC_LVT_TIMER}, {TIMER_VECTOR}
        lapic_write {APIC_TIMER_INITIAL}, {apic_count(0.001, 1)}
        cli
        out_byte 'S'
        hlt
        out_byte 'X'
        poweroff
    """, accel="emulate", mode="protected", timeout=0.5)
    assert r.outcome is None  # still asleep when the test gave up
    assert r.debug == b"S"
    lapic = r.backend.lapic
    assert lapic.timer_fires == 1
    assert lapic.irr == 1 << TIMER_VECTOR  # pending, not taken
    assert r.backend.counts["interrupts"] == 0


# -- the I/O APIC and the UART (GSI 4) ------------------------------------------------------------

UART_SETUP = f"""
        idt_gate {UART_VECTOR}, on_uart
        load_idt
        lapic_write {APIC_SVR}, {SVR_ENABLED}
        ioapic_write {IOAPIC_RTE4_HIGH}, 0             ; destination: APIC ID 0
        ioapic_write {IOAPIC_RTE4_LOW}, %s             ; vector, fixed, active high, unmasked
        mov dx, PORT_COM1 + 1
        mov al, 1                                      ; IER: received data available
        out dx, al
"""


@pytest.mark.parametrize("mode", MODES)
def test_a_host_keystroke_reaches_the_guest_through_the_ioapic(mode):
    source = UART_SETUP % UART_VECTOR + f"""
        sti
        out_byte 'W'               ; waiting for the host to type
    idle:
        hlt
        cmp dword [VARS + 0x20], 0
        je idle
        poweroff
    on_uart:
        push_all
        mov dx, PORT_COM1 + 2      ; IIR: received data available
        in al, dx
        mov dx, DEBUG_PORT
        out dx, al
        mov dx, PORT_COM1          ; RBR: the keystroke
        in al, dx
        mov dx, DEBUG_PORT
        out dx, al
        mov dx, PORT_COM1 + 2      ; IIR: nothing pending now
        in al, dx
        mov dx, DEBUG_PORT
        out dx, al
        inc dword [VARS + 0x20]
        lapic_write {APIC_EOI}, 0
        pop_all
        iretx
    """
    with GuestRun(source, accel="emulate", mode=mode) as run:
        run.start()
        run.wait_until(lambda: run.debug == bytearray(b"W") and run.backend.counts["hlt"] >= 1, what="HLT")
        assert run.backend.counts["interrupts"] == 0
        run.platform.serial_input(b"x")
        r = run.finish(timeout=5.0)
    assert r.outcome is Outcome.POWEROFF, r.message
    assert r.debug == b"W\x04x\x01"
    assert r.backend.counts["interrupts"] == 1
    assert r.backend.ioapic.delivered[4] == 1


@pytest.mark.parametrize("mode", MODES)
def test_level_triggered_gsi_is_redelivered_after_eoi_until_the_line_drops(mode):
    # The first handler leaves the byte in the UART, so the line stays high: EOI
    # clears remote IRR and the I/O APIC delivers again. The second one reads the
    # byte; remote IRR stays set until its EOI.
    source = UART_SETUP % (UART_VECTOR | RTE_LEVEL) + f"""
        sti
    idle:
        cmp dword [VARS + 0x20], 2
        jb idle
        pm_wait {pm_ticks(0.002)}
        cli
        ioapic_read {IOAPIC_RTE4_LOW}
        out_eax
        mov eax, [VARS + 0x20]
        out_eax
        poweroff
    on_uart:
        push_all
        inc dword [VARS + 0x20]
        ioapic_read {IOAPIC_RTE4_LOW}
        out_eax
        cmp dword [VARS + 0x20], 1
        je .eoi
        mov dx, PORT_COM1
        xor eax, eax
        in al, dx
        out_eax
        ioapic_read {IOAPIC_RTE4_LOW}
        out_eax
    .eoi:
        lapic_write {APIC_EOI}, 0
        pop_all
        iretx
    """
    r = run_guest(source, accel="emulate", mode=mode, serial_input=b"x", timeout=5.0)
    assert r.outcome is Outcome.POWEROFF, r.message
    in_service = UART_VECTOR | RTE_LEVEL | RTE_REMOTE_IRR
    assert r.dwords() == [in_service, in_service, ord("x"), in_service, UART_VECTOR | RTE_LEVEL, 2]
    assert r.backend.ioapic.delivered[4] == 2
