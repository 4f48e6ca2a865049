"""The emulated local APIC's interrupt handling: IRR, ISR, priorities, level-triggered EOI and the ICR.

Checked against Intel SDM Vol. 3A, chapter 11 ("Advanced Programmable Interrupt
Controller"): interrupt acceptance, task and processor priority and EOI (section
11.8), the error status register (section 11.5.3) and issuing IPIs through the
interrupt command register (section 11.6). The registers themselves:
test_lapic.py; the timer: test_lapic_timer.py.
"""
from __future__ import annotations

import pytest

from vmboot.core.emulate.lapic import (
    APIC_ESR, APIC_ICR_HIGH, APIC_ICR_LOW, APIC_IRR, APIC_PPR, APIC_SVR, APIC_TMR, APIC_TPR,
)
from vmboot.tests.lapic_rig import SVR_ENABLED, Apic

SELF = 1 << 18  # ICR destination shorthands
ALL_INCLUDING_SELF = 2 << 18
ALL_EXCLUDING_SELF = 3 << 18


# -- IRR, ISR and priorities ----------------------------------------------------------------------------


def test_accepted_vectors_show_in_the_right_irr_register(apic):
    apic.lapic.accept(0x31)
    apic.lapic.accept(0xFF)
    assert apic.get(APIC_IRR + 0x10) == 1 << 17  # vector 0x31 = 32 + 17
    assert apic.get(APIC_IRR + 0x70) == 1 << 31  # vector 0xFF
    assert apic.irr() == [0x31, 0xFF]


def test_intack_moves_the_highest_vector_from_irr_to_isr(apic):
    apic.lapic.accept(0x41)
    apic.lapic.accept(0x81)
    assert apic.lapic.intack() == 0x81
    assert (apic.irr(), apic.isr()) == ([0x41], [0x81])
    assert apic.get(APIC_PPR) == 0x80


def test_intack_with_nothing_pending_returns_minus_one(apic):
    assert apic.lapic.intack() == -1
    assert not apic.lapic.has_interrupt()


def test_a_lower_or_equal_class_waits_for_eoi(apic):
    apic.take(0x81)
    apic.lapic.accept(0x8F)  # same class as the one in service
    apic.lapic.accept(0x41)
    assert not apic.lapic.has_interrupt()
    assert apic.lapic.intack() == -1
    apic.eoi()
    assert apic.lapic.intack() == 0x8F


def test_a_higher_class_nests_and_eoi_retires_the_highest_first(apic):
    apic.take(0x41)
    apic.lapic.accept(0x81)
    assert apic.lapic.has_interrupt()
    assert apic.lapic.intack() == 0x81
    assert apic.isr() == [0x41, 0x81]
    apic.eoi()
    assert apic.isr() == [0x41]
    assert apic.get(APIC_PPR) == 0x40
    apic.eoi()
    assert apic.isr() == []
    assert apic.get(APIC_PPR) == 0x00


def test_eoi_with_nothing_in_service_is_harmless(apic):
    apic.eoi()
    assert apic.isr() == [] and apic.level_eois == []


@pytest.mark.parametrize("tpr, in_service, ppr", [
    (0x00, None, 0x00),
    (0x35, None, 0x35),  # PPR = TPR when nothing is in service
    (0x35, 0x81, 0x80),  # ISRV class above TPR: PPR = ISRV[7:4], low nibble 0
    (0x85, 0x81, 0x85),  # equal classes: TPR wins, low nibble included
    (0x95, 0x81, 0x95),
    (0x7F, 0x8C, 0x80),
])
def test_processor_priority(apic, tpr, in_service, ppr):
    if in_service is not None:
        apic.take(in_service)
    apic.put(APIC_TPR, tpr)
    assert apic.get(APIC_PPR) == ppr


def test_tpr_blocks_vectors_of_its_class_and_below(apic):
    apic.put(APIC_TPR, 0x50)
    apic.lapic.accept(0x5F)
    assert apic.raised == 0
    assert apic.lapic.intack() == -1
    apic.lapic.accept(0x60)
    assert apic.raised == 1
    assert apic.lapic.intack() == 0x60


def test_lowering_tpr_raises_the_pending_interrupt(apic):
    apic.put(APIC_TPR, 0xF0)
    apic.lapic.accept(0x45)
    assert apic.raised == 0
    apic.put(APIC_TPR, 0x00)
    assert apic.raised == 1
    assert apic.lapic.intack() == 0x45


def test_a_software_disabled_apic_holds_interrupts(disabled):
    disabled.lapic.accept(0x40)
    assert disabled.raised == 0
    assert disabled.lapic.intack() == -1
    assert disabled.irr() == [0x40]
    disabled.put(APIC_SVR, SVR_ENABLED)
    assert disabled.raised == 1
    assert disabled.lapic.intack() == 0x40


@pytest.mark.parametrize("vector", [0, 2, 15])
def test_vectors_below_16_are_illegal(apic, vector):
    apic.lapic.accept(vector)
    assert apic.irr() == []
    assert apic.get(APIC_ESR) == 0x40  # receive illegal vector
    apic.put(APIC_ESR, 0)
    assert apic.get(APIC_ESR) == 0


# -- level-triggered interrupts ---------------------------------------------------------------------------


def test_eoi_of_a_level_triggered_vector_tells_the_ioapic(apic):
    apic.lapic.accept(0x61, level=True)
    assert apic.bank(APIC_TMR, 0x61)
    assert apic.lapic.intack() == 0x61
    apic.eoi()
    assert apic.level_eois == [0x61]


def test_eoi_of_an_edge_vector_is_silent(apic):
    apic.take(0x61)
    apic.eoi()
    assert apic.level_eois == []


def test_an_edge_delivery_clears_the_tmr_bit(apic):
    apic.lapic.accept(0x61, level=True)
    apic.lapic.accept(0x61, level=False)
    assert not apic.bank(APIC_TMR, 0x61)


def test_nested_eois_report_each_level_vector_in_order(apic):
    apic.lapic.accept(0x51, level=True)
    assert apic.lapic.intack() == 0x51
    apic.lapic.accept(0x91, level=True)
    assert apic.lapic.intack() == 0x91
    apic.eoi()
    apic.eoi()
    assert apic.level_eois == [0x91, 0x51]


# -- the interrupt command register -----------------------------------------------------------------------


def test_self_ipi_through_the_self_shorthand(apic):
    apic.put(APIC_ICR_LOW, SELF | 0x40)
    assert apic.irr() == [0x40]
    assert apic.raised == 1
    assert apic.lapic.intack() == 0x40


def test_self_ipi_through_all_including_self(apic):
    apic.put(APIC_ICR_LOW, ALL_INCLUDING_SELF | 0x41)
    assert apic.irr() == [0x41]


def test_fixed_ipi_to_its_own_apic_id():
    a = Apic(apic_id=2)
    a.put(APIC_SVR, SVR_ENABLED)
    a.put(APIC_ICR_HIGH, 2 << 24)
    a.put(APIC_ICR_LOW, 0x42)
    assert a.irr() == [0x42]
    a.put(APIC_ICR_HIGH, 5 << 24)
    a.put(APIC_ICR_LOW, 0x43)  # another CPU, which does not exist
    assert a.irr() == [0x42]


def test_ipis_to_others_do_not_come_back(apic):
    apic.put(APIC_ICR_LOW, ALL_EXCLUDING_SELF | 0x44)
    assert apic.irr() == []


@pytest.mark.parametrize("icr", [
    ALL_EXCLUDING_SELF | 0x4500,  # INIT, level assert
    ALL_EXCLUDING_SELF | 0x0600 | 0x9A,  # STARTUP at 0x9A000
    SELF | 0x0400 | 0x45,  # NMI: not a fixed vector
])
def test_non_fixed_ipis_deliver_no_vector(apic, icr):
    apic.put(APIC_ICR_LOW, icr)
    assert apic.irr() == []


def test_icr_delivery_status_always_reads_idle(apic):
    # Bit 12 is read-only: software polls it until the IPI is sent (Linux's apic_wait_icr_idle).
    apic.put(APIC_ICR_LOW, 0xFFFFFFFF)
    assert apic.get(APIC_ICR_LOW) == 0x000CCFFF
    assert not apic.get(APIC_ICR_LOW) & (1 << 12)


def test_icr_high_keeps_only_the_destination(apic):
    apic.put(APIC_ICR_HIGH, 0xFFFFFFFF)
    assert apic.get(APIC_ICR_HIGH) == 0xFF000000
