"""External interrupts on the emulated CPU: the local APIC timer, TPR and EOI, the I/O APIC, HLT.

The guest programs the emulated local APIC (Intel SDM Vol. 3A ch. 11) and I/O
APIC (82093AA) through their MMIO registers and measures time with the ACPI PM
timer (port 0x608, 3.579545 MHz), so these tests check that the guest's clocks
agree: the APIC timer counts at APIC_BUS_FREQUENCY / divisor.
"""
from __future__ import annotations

import pytest

from vmboot.core.emulate.lapic import APIC_BUS_FREQUENCY
from vmboot.core.events import Outcome
from vmboot.devices.pmtimer.pmtimer import PM_TIMER_FREQUENCY

from .guest import GuestRun, run_guest

MODES = ["protected", "long"]

# Local APIC registers (SDM Vol. 3A Table 11-1) and values.
APIC_TPR, APIC_PPR, APIC_EOI, APIC_SVR = 0x080, 0x0A0, 0x0B0, 0x0F0
APIC_ISR_64, APIC_IRR_64 = 0x120, 0x220  # the ISR and IRR words for vectors 64-95
APIC_ICR_LOW = 0x300
APIC_LVT_TIMER, APIC_TIMER_INITIAL, APIC_TIMER_CURRENT, APIC_TIMER_DIVIDE = 0x320, 0x380, 0x390, 0x3E0
SVR_ENABLED = 0x1FF  # APIC software enable, spurious vector 0xFF
LVT_MASKED = 1 << 16
LVT_PERIODIC = 1 << 17
ICR_SELF = 1 << 18  # destination shorthand "self", fixed delivery
# Divide configuration values (SDM Figure 11-10) and the divisor each selects.
DIVIDE = {1: 0xB, 2: 0x0, 16: 0x3, 128: 0xA}

# I/O APIC redirection entry for GSI 4, the UART (82093AA §3.2.4).
IOAPIC_RTE4_LOW, IOAPIC_RTE4_HIGH = 0x10 + 2 * 4, 0x10 + 2 * 4 + 1
RTE_REMOTE_IRR = 1 << 14
RTE_LEVEL = 1 << 15

TIMER_VECTOR = 0x40
IPI_VECTOR = 0x50
UART_VECTOR = 0x31


def pm_ticks(seconds: float) -> int:
    return int(seconds * PM_TIMER_FREQUENCY)


def apic_count(seconds: float, divisor: int) -> int:
    return round(seconds * APIC_BUS_FREQUENCY / divisor)


# A handler that records the PM timer at each interrupt in VARS+0x40.., counts interrupts in
# VARS+0x20, keeps the current count and the ISR word it saw, and sends EOI.
TIMER_HANDLER = f"""
    on_timer:
        push_all
        mov esi, [VARS + 0x20]
        mov dx, PORT_PM_TIMER
        in eax, dx
        mov [VARS + 0x40 + esi * 4], eax
        lapic_read {APIC_TIMER_CURRENT}
        mov [VARS + 0x18], eax
        lapic_read {APIC_ISR_64}
        mov [VARS + 0x1c], eax
        inc dword [VARS + 0x20]
        lapic_write {APIC_EOI}, 0
        pop_all
        iretx
"""


@pytest.mark.parametrize("mode", MODES)
def test_one_shot_timer_wakes_hlt_once_after_its_count(mode):
    period = 0.010
    r = run_guest(f"""
        idt_gate {TIMER_VECTOR}, on_timer
        load_idt
        lapic_write {APIC_SVR}, {SVR_ENABLED}
        lapic_write {APIC_TIMER_DIVIDE}, {DIVIDE[128]}
        lapic_write {APIC_LVT_TIMER}, {TIMER_VECTOR}
        mov dx, PORT_PM_TIMER
        in eax, dx
        mov [VARS + 0x10], eax     ; the PM timer when the count starts
        lapic_write {APIC_TIMER_INITIAL}, {apic_count(period, 128)}
        sti
    idle:
        hlt
        cmp dword [VARS + 0x20], 0
        je idle
        pm_wait {pm_ticks(2 * period)}   ; long enough for a second expiry, which must not come
        cli
        mov eax, [VARS + 0x10]
        out_eax
        mov eax, [VARS + 0x40]
        out_eax
        mov eax, [VARS + 0x18]
        out_eax
        mov eax, [VARS + 0x1c]
        out_eax
        mov eax, [VARS + 0x20]
        out_eax
        lapic_read {APIC_ISR_64}
        out_eax
        lapic_read {APIC_TIMER_CURRENT}
        out_eax
        poweroff
    {TIMER_HANDLER}
    """, accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    start, fired_at, count_in_handler, isr_in_handler, interrupts, isr_after_eoi, count_after = r.dwords()
    waited = (fired_at - start) & 0xFFFFFFFF
    assert pm_ticks(period) - 1 <= waited <= pm_ticks(r.elapsed)
    assert count_in_handler == 0  # a one-shot count stays at zero
    assert isr_in_handler == 1 << (TIMER_VECTOR - 64)  # in service during the handler
    assert isr_after_eoi == 0
    assert interrupts == 1
    assert count_after == 0
    assert r.backend.counts["hlt"] == 1  # one HLT, woken by the one interrupt
    assert r.backend.counts["interrupts"] == 1
    assert r.backend.lapic.timer_fires == 1


@pytest.mark.parametrize("divisor", [1, 2, 16, 128])
def test_periodic_timer_fires_every_period_with_each_divide_value(divisor):
    period = 0.004
    r = run_guest(f"""
        idt_gate {TIMER_VECTOR}, on_timer
        load_idt
        lapic_write {APIC_SVR}, {SVR_ENABLED}
        lapic_write {APIC_TIMER_DIVIDE}, {DIVIDE[divisor]}
        lapic_write {APIC_LVT_TIMER}, {TIMER_VECTOR | LVT_PERIODIC}
        mov dx, PORT_PM_TIMER
        in eax, dx
        mov [VARS + 0x10], eax
        lapic_write {APIC_TIMER_INITIAL}, {apic_count(period, divisor)}
        sti
    idle:
        hlt
        cmp dword [VARS + 0x20], 3
        jb idle
        cli
        lapic_write {APIC_LVT_TIMER}, {TIMER_VECTOR | LVT_PERIODIC | LVT_MASKED}
        mov eax, [VARS + 0x10]
        out_eax
        mov eax, [VARS + 0x40]
        out_eax
        mov eax, [VARS + 0x44]
        out_eax
        mov eax, [VARS + 0x48]
        out_eax
        mov eax, [VARS + 0x18]
        out_eax
        poweroff
    {TIMER_HANDLER}
    """, accel="emulate", mode="protected")
    assert r.outcome is Outcome.POWEROFF, r.message
    start, *fired, count_in_handler = r.dwords()
    after = [(t - start) & 0xFFFFFFFF for t in fired]
    # the k-th expiry comes k periods after the count was loaded, never earlier
    for k, ticks in enumerate(after, 1):
        assert ticks >= pm_ticks(k * period) - 1, (k, after)
    assert after[0] < after[1] < after[2] <= pm_ticks(r.elapsed)
    assert 0 < count_in_handler <= apic_count(period, divisor)  # periodic: reloaded, counting down
    assert r.backend.lapic.timer_fires >= 3


@pytest.mark.parametrize("mode, divisor", [("protected", 1), ("long", 16)])
def test_apic_timer_count_and_pm_timer_agree(mode, divisor):
    # Nested readings, PM-APIC-PM, spin 50 ms, PM-APIC-PM: the APIC interval lies between the
    # inner and the outer PM intervals however long the host took between two readings.
    window = 0.050
    r = run_guest(f"""
        lapic_write {APIC_SVR}, {SVR_ENABLED}
        lapic_write {APIC_TIMER_DIVIDE}, {DIVIDE[divisor]}
        lapic_write {APIC_LVT_TIMER}, {TIMER_VECTOR | LVT_MASKED}
        lapic_write {APIC_TIMER_INITIAL}, 0xffffffff
        mov dx, PORT_PM_TIMER
        in eax, dx
        mov [VARS + 0x10], eax     ; outer start
        lapic_read {APIC_TIMER_CURRENT}
        mov [VARS + 0x14], eax
        mov dx, PORT_PM_TIMER
        in eax, dx
        mov [VARS + 0x18], eax     ; inner start
        pm_wait {pm_ticks(window)}
        mov dx, PORT_PM_TIMER
        in eax, dx
        mov [VARS + 0x1c], eax     ; inner end
        lapic_read {APIC_TIMER_CURRENT}
        mov [VARS + 0x20], eax
        mov dx, PORT_PM_TIMER
        in eax, dx
        mov [VARS + 0x24], eax     ; outer end
        mov esi, VARS + 0x10
        mov ecx, 6
    report:
        mov eax, [esi]
        push_all
        out_eax
        pop_all
        add esi, 4
        loop report
        poweroff
    """, accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    pm_a, count0, pm0, pm1, count1, pm_b = r.dwords()
    apic_ticks = count0 - count1
    pm_inner, pm_outer = ((pm1 - pm0) & 0xFFFFFFFF), ((pm_b - pm_a) & 0xFFFFFFFF)
    assert pm_inner >= pm_ticks(window)
    # in APIC ticks, with one PM tick either way for the counters' truncation
    scale = APIC_BUS_FREQUENCY / divisor / PM_TIMER_FREQUENCY
    assert (pm_inner - 1) * scale - 1 <= apic_ticks <= (pm_outer + 1) * scale + 1


@pytest.mark.parametrize("mode", MODES)
def test_without_eoi_the_next_timer_interrupt_waits_in_irr(mode):
    period = 0.002
    r = run_guest(f"""
        idt_gate {TIMER_VECTOR}, on_timer
        load_idt
        lapic_write {APIC_SVR}, {SVR_ENABLED}
        lapic_write {APIC_TIMER_DIVIDE}, {DIVIDE[1]}
        lapic_write {APIC_LVT_TIMER}, {TIMER_VECTOR | LVT_PERIODIC}
        lapic_write {APIC_TIMER_INITIAL}, {apic_count(period, 1)}
        sti
    taken:
        cmp dword [VARS + 0x20], 0
        je taken                   ; the first expiry is in service, and never ends
    pending:
        lapic_read {APIC_IRR_64}
        test eax, eax
        jz pending                 ; a later expiry is requested
        pm_wait {pm_ticks(3 * period)}
        mov eax, [VARS + 0x20]
        out_eax                    ; still one interrupt taken
        lapic_read {APIC_ISR_64}
        out_eax
        lapic_read {APIC_IRR_64}
        out_eax
        lapic_read {APIC_PPR}
        out_eax
        lapic_write {APIC_LVT_TIMER}, {TIMER_VECTOR | LVT_MASKED}   ; no more expiries; IRR keeps its one
        lapic_write {APIC_EOI}, 0
        jmp next                   ; interrupts are taken at block boundaries
    next:
        mov eax, [VARS + 0x20]
        out_eax                    ; the pending one came in at once
        cli
        poweroff
    on_timer:
        push_all
        inc dword [VARS + 0x20]
        cmp dword [VARS + 0x20], 1
        je .no_eoi
        lapic_write {APIC_EOI}, 0
    .no_eoi:
        pop_all
        iretx
    """, accel="emulate", mode=mode)
    assert r.outcome is Outcome.POWEROFF, r.message
    bit = 1 << (TIMER_VECTOR - 64)
    assert r.dwords() == [1, bit, bit, TIMER_VECTOR, 2]


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
