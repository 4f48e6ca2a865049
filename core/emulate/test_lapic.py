"""The emulated local APIC against Intel SDM Vol. 3A, chapter 11 ("Advanced
Programmable Interrupt Controller").

Time is a fake clock and deadlines go to a fake timer queue that the tests fire
by hand, in deadline order, with the clock set to each deadline, which is what
the real queue guarantees at the earliest.
"""
from __future__ import annotations

import pytest

from vmboot.core.emulate.lapic import (
    APIC_BUS_FREQUENCY, APIC_DFR, APIC_EOI, APIC_ESR, APIC_ICR_HIGH, APIC_ICR_LOW, APIC_ID, APIC_IRR,
    APIC_ISR, APIC_LDR, APIC_LVT_CMCI, APIC_LVT_ERROR, APIC_LVT_LINT0, APIC_LVT_LINT1, APIC_LVT_PERF,
    APIC_LVT_THERMAL, APIC_LVT_TIMER, APIC_PPR, APIC_SVR, APIC_TIMER_CURRENT, APIC_TIMER_DIVIDE,
    APIC_TIMER_INITIAL, APIC_TMR, APIC_TPR, APIC_VERSION, LocalApic, timer_divisor,
)
from vmboot.tests.fakes import Clock

START = 8765.4321  # a monotonic clock reading, with a fraction, as in real runs
ALL_LVTS = (APIC_LVT_CMCI, APIC_LVT_TIMER, APIC_LVT_THERMAL, APIC_LVT_PERF, APIC_LVT_LINT0,
            APIC_LVT_LINT1, APIC_LVT_ERROR)
MASKED = 1 << 16
PERIODIC = 1 << 17
TSC_DEADLINE = 2 << 17
SVR_ENABLED = 0x1FF  # APIC software enable, spurious vector 0xFF
SELF = 1 << 18  # ICR destination shorthands
ALL_INCLUDING_SELF = 2 << 18
ALL_EXCLUDING_SELF = 3 << 18
TIMER_VECTOR = 0x30


class FakeTimer:
    def __init__(self, deadline: float, fn):
        self.deadline = deadline
        self.fn = fn
        self.cancelled = False
        self.fired = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeTimers:
    """Records schedule(deadline, fn); ``advance`` fires what falls due, in order."""

    STORM = 10_000  # more expiries than any test needs in one advance: a re-arm loop

    def __init__(self, clock: Clock):
        self.clock = clock
        self.scheduled: list[FakeTimer] = []

    def schedule(self, deadline: float, fn) -> FakeTimer:
        timer = FakeTimer(deadline, fn)
        self.scheduled.append(timer)
        return timer

    @property
    def live(self) -> list[FakeTimer]:
        return [t for t in self.scheduled if not t.cancelled and not t.fired]

    def advance(self, to: float) -> list[float]:
        """Move the clock to ``to``, firing each due timer at its deadline; returns the deadlines fired."""
        fired = []
        while True:
            due = [t for t in self.live if t.deadline <= to]
            if not due:
                break
            if len(fired) >= self.STORM:
                raise AssertionError(f"timer storm: {len(fired)} expiries by {self.clock.t}")
            timer = min(due, key=lambda t: t.deadline)
            self.clock.t = max(self.clock.t, timer.deadline)
            timer.fired = True
            fired.append(timer.deadline)
            timer.fn()
        self.clock.t = to
        return fired


class Apic:
    """A LocalApic with its fake clock, timer queue and CPU-side callbacks."""

    def __init__(self, apic_id: int = 0):
        self.clock = Clock(START)
        self.timers = FakeTimers(self.clock)
        self.raised = 0
        self.level_eois: list[int] = []
        self.lapic = LocalApic(self.clock, self.timers, raise_intr=self._raise,
                               eoi_level=self.level_eois.append, apic_id=apic_id)

    def _raise(self) -> None:
        self.raised += 1

    def get(self, reg: int) -> int:
        return int.from_bytes(self.lapic.read(reg, 4), "little")

    def put(self, reg: int, value: int) -> None:
        self.lapic.write(reg, value.to_bytes(4, "little"))

    def bank(self, base: int, vector: int) -> bool:
        """Bit ``vector`` of the ISR, TMR or IRR, read through its 32-bit registers."""
        return bool(self.get(base + 0x10 * (vector // 32)) >> (vector % 32) & 1)

    def irr(self) -> list[int]:
        return [v for v in range(256) if self.bank(APIC_IRR, v)]

    def isr(self) -> list[int]:
        return [v for v in range(256) if self.bank(APIC_ISR, v)]

    def eoi(self) -> None:
        self.put(APIC_EOI, 0)

    def take(self, vector: int) -> None:
        """Deliver ``vector`` and have the CPU accept it."""
        self.lapic.accept(vector)
        assert self.lapic.intack() == vector


@pytest.fixture
def apic():
    a = Apic()
    a.put(APIC_SVR, SVR_ENABLED)
    return a


@pytest.fixture
def disabled():
    return Apic()


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


# -- the timer ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dcr, divisor", [
    (0b0000, 2), (0b0001, 4), (0b0010, 8), (0b0011, 16),
    (0b1000, 32), (0b1001, 64), (0b1010, 128), (0b1011, 1),
])
def test_timer_divisor_follows_figure_11_10(dcr, divisor):
    assert timer_divisor(dcr) == divisor
    assert timer_divisor(dcr | 0b0100) == divisor  # bit 2 is reserved


DIVIDES = [(0b0000, 2), (0b0001, 4), (0b0010, 8), (0b0011, 16), (0b1000, 32), (0b1001, 64),
           (0b1010, 128), (0b1011, 1)]


@pytest.mark.parametrize("dcr, divisor", DIVIDES)
def test_one_shot_timer_at_every_divide_value(apic, dcr, divisor):
    count = 10_000
    tick = divisor / APIC_BUS_FREQUENCY
    apic.put(APIC_TIMER_DIVIDE, dcr)
    apic.put(APIC_LVT_TIMER, TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, count)
    (timer,) = apic.timers.live
    assert timer.deadline == pytest.approx(START + count * tick, abs=1e-11)

    apic.timers.advance(START + 2500.25 * tick)
    assert apic.get(APIC_TIMER_CURRENT) == count - 2500
    assert apic.irr() == []

    apic.timers.advance(START + (count + 0.25) * tick)
    assert apic.irr() == [TIMER_VECTOR]
    assert apic.lapic.timer_fires == 1
    assert apic.get(APIC_TIMER_CURRENT) == 0
    assert apic.timers.live == []  # one shot: nothing re-armed
    assert apic.get(APIC_TIMER_INITIAL) == count


@pytest.mark.parametrize("dcr, divisor", DIVIDES)
def test_periodic_timer_reloads_at_every_divide_value(apic, dcr, divisor):
    count = 1000
    period = count * divisor / APIC_BUS_FREQUENCY
    apic.put(APIC_TIMER_DIVIDE, dcr)
    apic.put(APIC_LVT_TIMER, PERIODIC | TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, count)
    fired = apic.timers.advance(START + 3.25 * period)
    assert fired == pytest.approx([START + n * period for n in (1, 2, 3)], abs=1e-11)
    assert apic.get(APIC_TIMER_CURRENT) == 750  # a quarter into the fourth period
    (next_timer,) = apic.timers.live
    assert next_timer.deadline == pytest.approx(START + 4 * period, abs=1e-11)


def test_periodic_timer_fires_once_per_period_for_many_periods(apic):
    count, periods = 62_500, 1000  # 1 ms at divide-by-16: the firmware's timer tick
    period = count * 16 / APIC_BUS_FREQUENCY
    apic.put(APIC_TIMER_DIVIDE, 0b0011)
    apic.put(APIC_LVT_TIMER, PERIODIC | TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, count)
    delivered = 0
    for n in range(1, periods + 1):
        apic.timers.advance(START + (n + 0.5) * period)
        if apic.lapic.intack() == TIMER_VECTOR:
            delivered += 1
            apic.eoi()
    assert apic.lapic.timer_fires == periods
    assert delivered == periods
    deadlines = [t.deadline for t in apic.timers.scheduled]
    assert all(b > a for a, b in zip(deadlines, deadlines[1:]))


def test_current_count_is_read_only(apic):
    apic.put(APIC_LVT_TIMER, TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, 100)
    apic.put(APIC_TIMER_CURRENT, 5)
    assert apic.get(APIC_TIMER_CURRENT) == 100


def test_writing_zero_to_initial_count_stops_the_timer(apic):
    apic.put(APIC_LVT_TIMER, PERIODIC | TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, 1000)
    (timer,) = apic.timers.live
    apic.put(APIC_TIMER_INITIAL, 0)
    assert timer.cancelled
    assert apic.timers.live == []
    assert apic.get(APIC_TIMER_CURRENT) == 0


def test_rewriting_initial_count_restarts_the_count(apic):
    tick = 2 / APIC_BUS_FREQUENCY
    apic.put(APIC_LVT_TIMER, TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, 1000)
    first = apic.timers.live[0]
    apic.timers.advance(START + 600.25 * tick)
    apic.put(APIC_TIMER_INITIAL, 1000)
    assert first.cancelled
    (second,) = apic.timers.live
    assert second.deadline == pytest.approx(START + 600.25 * tick + 1000 * tick, abs=1e-11)
    assert apic.get(APIC_TIMER_CURRENT) == 1000


def test_an_expiry_that_lost_the_race_with_a_rearm_is_dropped(apic):
    # The real queue pops a timer before it runs it, so a cancel() that comes
    # after the pop cannot stop the callback: the model has to ignore it.
    apic.put(APIC_LVT_TIMER, PERIODIC | TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, 1000)
    stale = apic.timers.live[0]
    apic.put(APIC_TIMER_INITIAL, 5000)
    stale.fn()
    assert apic.irr() == []
    assert apic.lapic.timer_fires == 0
    (current,) = apic.timers.live
    apic.put(APIC_TIMER_INITIAL, 0)  # the re-armed timer is still the one the model tracks
    assert current.cancelled
    assert apic.timers.live == []


def test_an_expiry_that_lost_the_race_with_a_stop_is_dropped(apic):
    apic.put(APIC_LVT_TIMER, TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, 1000)
    stale = apic.timers.live[0]
    apic.put(APIC_TIMER_INITIAL, 0)
    stale.fn()
    assert apic.irr() == []


def test_changing_the_divider_keeps_the_count_and_changes_the_rate(apic):
    apic.put(APIC_TIMER_DIVIDE, 0b0000)  # divide by 2
    apic.put(APIC_LVT_TIMER, TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, 1000)
    apic.timers.advance(START + 400.25 * 2e-9)
    assert apic.get(APIC_TIMER_CURRENT) == 600
    changed_at = apic.clock.t
    apic.put(APIC_TIMER_DIVIDE, 0b1011)  # divide by 1
    assert apic.get(APIC_TIMER_CURRENT) == 600
    (timer,) = apic.timers.live
    assert timer.deadline == pytest.approx(changed_at + 600e-9, abs=1e-11)
    apic.timers.advance(changed_at + 100.25e-9)
    assert apic.get(APIC_TIMER_CURRENT) == 500


def test_switching_one_shot_to_periodic_rearms(apic):
    tick = 2 / APIC_BUS_FREQUENCY
    apic.put(APIC_LVT_TIMER, TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, 100)
    apic.timers.advance(START + 250.25 * tick)  # the one shot fired long ago
    assert apic.timers.live == []
    apic.put(APIC_LVT_TIMER, PERIODIC | TIMER_VECTOR)
    (timer,) = apic.timers.live
    assert timer.deadline == pytest.approx(START + 300 * tick, abs=1e-11)
    assert apic.get(APIC_TIMER_CURRENT) == 50  # counting the third period


def test_tsc_deadline_mode_runs_no_timer(apic):
    apic.put(APIC_LVT_TIMER, TSC_DEADLINE | TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, 1000)
    assert apic.timers.live == []
    assert apic.get(APIC_TIMER_CURRENT) == 0


def test_a_masked_timer_counts_but_delivers_nothing(apic):
    tick = 2 / APIC_BUS_FREQUENCY
    apic.put(APIC_LVT_TIMER, MASKED | PERIODIC | TIMER_VECTOR)
    apic.put(APIC_TIMER_INITIAL, 100)
    apic.timers.advance(START + 250.25 * tick)
    assert apic.lapic.timer_fires == 2
    assert apic.irr() == []
    apic.put(APIC_LVT_TIMER, PERIODIC | TIMER_VECTOR)  # unmasked: the next expiry delivers
    apic.timers.advance(START + 300.25 * tick)
    assert apic.irr() == [TIMER_VECTOR]


def test_lvt_timer_register_readback(apic):
    apic.put(APIC_LVT_TIMER, MASKED | PERIODIC | 0xEF)
    assert apic.get(APIC_LVT_TIMER) == 0x000300EF


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


# -- a one-shot count that runs out before it is armed ----------------------------------------

class SlowClock(Clock):
    """A clock that moves 2 us at every read, as Python's overhead does between two reads."""

    def __call__(self) -> float:
        self.t += 2e-6
        return self.t


def test_one_shot_shorter_than_arming_still_interrupts():
    a = Apic()
    a.clock = SlowClock(START)
    a.timers = FakeTimers(a.clock)
    a.lapic = LocalApic(a.clock, a.timers, raise_intr=a._raise, eoi_level=a.level_eois.append)
    a.put(APIC_SVR, SVR_ENABLED)
    a.put(APIC_TIMER_DIVIDE, 0x3)  # divide by 16: 16 ns a tick
    a.put(APIC_LVT_TIMER, TIMER_VECTOR)  # one-shot, unmasked
    a.put(APIC_TIMER_INITIAL, 62)  # 992 ns: gone before _arm() reads the clock again
    assert len(a.timers.live) == 1, "the expired count must still be scheduled"
    a.timers.advance(a.clock.t)
    assert a.irr() == [TIMER_VECTOR]
    # It fires once: re-arming it (a divide or LVT write) does not fire it again.
    a.lapic.intack()
    a.eoi()
    a.put(APIC_TIMER_DIVIDE, 0x3)
    a.put(APIC_LVT_TIMER, TIMER_VECTOR)
    a.timers.advance(a.clock.t + 1)
    assert a.irr() == [] and a.lapic.timer_fires == 1
