"""The local APIC timer on the emulated CPU: one-shot and periodic counts, each divide value, EOI, waking HLT.

The guest programs the emulated local APIC (Intel SDM Vol. 3A ch. 11, section
11.5.4 "APIC Timer") through its MMIO registers and measures time with the ACPI
PM timer (port 0x608, 3.579545 MHz), so these tests check that the guest's
clocks agree: the APIC timer counts at APIC_BUS_FREQUENCY / divisor. TPR,
self-IPIs, HLT and the I/O APIC: test_emulate_interrupts.py; the register
values: tests/apic_program.py.
"""
from __future__ import annotations

import pytest

from vmboot.core.emulate.lapic import APIC_BUS_FREQUENCY
from vmboot.core.events import Outcome
from vmboot.devices.pmtimer.pmtimer import PM_TIMER_FREQUENCY
from vmboot.tests.apic_program import (
    APIC_EOI, APIC_IRR_64, APIC_ISR_64, APIC_LVT_TIMER, APIC_PPR, APIC_SVR, APIC_TIMER_CURRENT, APIC_TIMER_DIVIDE,
    APIC_TIMER_INITIAL, DIVIDE, LVT_MASKED, LVT_PERIODIC, MODES, SVR_ENABLED, TIMER_VECTOR, apic_count, pm_ticks,
)
from vmboot.tests.guest import run_guest

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
