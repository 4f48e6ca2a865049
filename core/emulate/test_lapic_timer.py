"""The emulated local APIC's timer: divide values, one-shot, periodic and TSC-deadline modes, masking and re-arming.

Checked against Intel SDM Vol. 3A, section 11.5.4 ("APIC Timer"): the divide
configuration register (Figure 11-10), the initial and current count registers
and the LVT timer register's modes. Time is a fake clock and deadlines go to a
fake timer queue that the tests fire by hand, in deadline order, with the clock
set to each deadline, which is what the real queue guarantees at the earliest
(tests/lapic_rig.py). The other registers: test_lapic.py and
test_lapic_interrupts.py.
"""
from __future__ import annotations

import pytest

from vmboot.core.emulate.lapic import (
    APIC_BUS_FREQUENCY, APIC_LVT_TIMER, APIC_SVR, APIC_TIMER_CURRENT, APIC_TIMER_DIVIDE, APIC_TIMER_INITIAL, LocalApic,
    timer_divisor,
)
from vmboot.tests.fakes import Clock
from vmboot.tests.lapic_rig import MASKED, PERIODIC, START, SVR_ENABLED, TIMER_VECTOR, TSC_DEADLINE, Apic, FakeTimers

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
