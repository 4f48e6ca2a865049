"""The emulated local APIC's registers: reset state, identification, access rules and the SVR.

Checked against Intel SDM Vol. 3A, chapter 11 ("Advanced Programmable Interrupt
Controller"): the register address map (Table 11-1), IA32_APIC_BASE (section
11.4.4) and the spurious-interrupt vector register (section 11.9). Interrupt
acceptance, priorities and IPIs: test_lapic_interrupts.py; the timer:
test_lapic_timer.py; the rig both use: tests/lapic_rig.py.
"""
from __future__ import annotations

from vmboot.core.emulate.lapic import (
    APIC_BUS_FREQUENCY, APIC_DFR, APIC_ID, APIC_LDR, APIC_LVT_TIMER, APIC_PPR, APIC_SVR, APIC_TIMER_CURRENT,
    APIC_TIMER_DIVIDE, APIC_TIMER_INITIAL, APIC_TPR, APIC_VERSION,
)
from vmboot.tests.lapic_rig import ALL_LVTS, MASKED, START, SVR_ENABLED, TIMER_VECTOR, Apic

# -- reset state and identification -----------------------------------------------------------


def test_reset_state(disabled):
    a = disabled
    assert a.get(APIC_ID) == 0
    assert a.get(APIC_VERSION) == 0x00050014  # xAPIC version 0x14, LVT entries 0-5
    assert a.get(APIC_SVR) == 0xFF  # software-disabled, spurious vector 0xFF
    assert (a.get(APIC_TPR), a.get(APIC_PPR), a.get(APIC_LDR)) == (0, 0, 0)
    assert a.get(APIC_DFR) == 0xFFFFFFFF  # flat model
    assert [a.get(r) for r in ALL_LVTS] == [MASKED] * 7
    assert (a.get(APIC_TIMER_INITIAL), a.get(APIC_TIMER_CURRENT), a.get(APIC_TIMER_DIVIDE)) == (0, 0, 0)
    assert a.irr() == a.isr() == []
    assert not a.lapic.enabled


def test_apic_base_msr_marks_the_bsp():
    assert Apic(0).lapic.base_msr == 0xFEE00900  # base 0xFEE00000, EN (bit 11), BSP (bit 8)
    ap = Apic(3)
    assert ap.lapic.base_msr == 0xFEE00800
    assert ap.get(APIC_ID) == 0x03000000


def test_svr_keeps_vector_enable_focus_and_eoi_suppression(disabled):
    disabled.put(APIC_SVR, 0xFFFFFFFF)
    assert disabled.get(APIC_SVR) == 0x13FF
    assert disabled.lapic.enabled


def test_clearing_the_apic_base_enable_bit_disables_the_apic(apic):
    apic.lapic.base_msr &= ~(1 << 11)
    apic.lapic.accept(0x40)
    assert not apic.lapic.enabled
    assert apic.lapic.intack() == -1


# -- register access rules --------------------------------------------------------------------


def test_narrow_reads_are_byte_lanes(apic):
    assert apic.lapic.read(APIC_VERSION, 1) == b"\x14"
    assert apic.lapic.read(APIC_VERSION + 2, 2) == b"\x05\x00"


def test_reads_past_a_registers_dword_return_zeros(apic):
    assert apic.lapic.read(APIC_VERSION + 4, 4) == bytes(4)
    assert apic.lapic.read(APIC_VERSION + 2, 4) == bytes(4)


def test_only_aligned_dword_writes_count(apic):
    apic.lapic.write(APIC_TPR, b"\x50")
    apic.lapic.write(APIC_TPR + 4, (0x50).to_bytes(4, "little"))
    apic.lapic.write(APIC_TPR + 1, (0x50).to_bytes(4, "little"))
    assert apic.get(APIC_TPR) == 0
    apic.put(APIC_TPR, 0x50)
    assert apic.get(APIC_TPR) == 0x50


def test_unknown_registers_read_zero(apic):
    assert apic.get(0x3F0) == 0
    assert apic.get(0x090) == 0  # APR


def test_logical_destination_registers(apic):
    apic.put(APIC_LDR, 0xFFFFFFFF)
    assert apic.get(APIC_LDR) == 0xFF000000
    apic.put(APIC_DFR, 0x00000000)
    assert apic.get(APIC_DFR) == 0x0FFFFFFF  # cluster model; bits 27:0 read as ones


def test_tpr_keeps_eight_bits(apic):
    apic.put(APIC_TPR, 0xFFFFFFFF)
    assert apic.get(APIC_TPR) == 0xFF


# -- the spurious-interrupt vector register ------------------------------------------------------------------


def test_software_disable_masks_every_lvt(apic):
    for reg in ALL_LVTS:
        apic.put(reg, 0x40)
    assert [apic.get(r) for r in ALL_LVTS] == [0x40] * 7
    apic.put(APIC_SVR, 0xFF)
    assert [apic.get(r) for r in ALL_LVTS] == [MASKED | 0x40] * 7


def test_lvts_stay_masked_while_disabled_and_after_reenable(apic):
    apic.put(APIC_SVR, 0xFF)
    apic.put(APIC_LVT_TIMER, TIMER_VECTOR)
    assert apic.get(APIC_LVT_TIMER) == MASKED | TIMER_VECTOR
    apic.put(APIC_SVR, SVR_ENABLED)
    assert apic.get(APIC_LVT_TIMER) == MASKED | TIMER_VECTOR  # software unmasks them itself


def test_a_disabled_apic_drops_its_timer_interrupts(apic):
    tick = 2 / APIC_BUS_FREQUENCY
    apic.put(APIC_LVT_TIMER, TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, 100)
    apic.put(APIC_SVR, 0xFF)
    apic.timers.advance(START + 100.25 * tick)
    assert apic.lapic.timer_fires == 1
    assert apic.irr() == []
