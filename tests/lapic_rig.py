"""A LocalApic on a fake clock and a fake timer queue, for core/emulate/test_lapic*.py.

Register values are from Intel SDM Vol. 3A, chapter 11 ("Advanced Programmable
Interrupt Controller"). Time is a fake clock and deadlines go to a fake timer
queue that the tests fire by hand, in deadline order, with the clock set to each
deadline, which is what the real queue guarantees at the earliest.
"""
from __future__ import annotations

from vmboot.core.emulate.lapic import (
    APIC_EOI, APIC_IRR, APIC_ISR, APIC_LVT_CMCI, APIC_LVT_ERROR, APIC_LVT_LINT0, APIC_LVT_LINT1, APIC_LVT_PERF,
    APIC_LVT_THERMAL, APIC_LVT_TIMER, LocalApic,
)
from vmboot.tests.fakes import Clock

START = 8765.4321  # a monotonic clock reading, with a fraction, as in real runs
ALL_LVTS = (APIC_LVT_CMCI, APIC_LVT_TIMER, APIC_LVT_THERMAL, APIC_LVT_PERF, APIC_LVT_LINT0,
            APIC_LVT_LINT1, APIC_LVT_ERROR)
MASKED = 1 << 16
PERIODIC = 1 << 17
TSC_DEADLINE = 2 << 17
SVR_ENABLED = 0x1FF  # APIC software enable, spurious vector 0xFF
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
