"""The ACPI power-management timer (ACPI 6.5, §4.8.3.3 "Power Management Timer").

A free-running 32-bit up-counter at 3.579545 MHz. Reading it has no side effect,
which is what lets the core serve the hot read path without a round trip: the
counter is fully described by :meth:`PmTimer.counter`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

PM_TIMER_FREQUENCY = 3_579_545  # Hz
PM_TIMER_WIDTH = 32  # FADT flag TMR_VAL_EXT set: a 32-bit counter
PM_TIMER_REGISTER_SIZE = 4


@dataclass(frozen=True, slots=True)
class CounterDescription:
    """A side-effect-free register: ``value = (now() - epoch) * frequency mod 2**width``."""

    frequency: int
    epoch: float
    width: int

    def value(self, now: float) -> int:
        return int((now - self.epoch) * self.frequency) & ((1 << self.width) - 1)


class PmTimer:
    def __init__(self, now_fn: Callable[[], float] = time.monotonic, epoch: float | None = None):
        """``epoch`` is when the counter read zero; a restarted timer is given its predecessor's."""
        self.now_fn = now_fn
        self.epoch = now_fn() if epoch is None else epoch

    def counter(self) -> CounterDescription:
        return CounterDescription(PM_TIMER_FREQUENCY, self.epoch, PM_TIMER_WIDTH)

    def read(self, offset: int, size: int) -> bytes:
        value = self.counter().value(self.now_fn())
        return value.to_bytes(PM_TIMER_REGISTER_SIZE, "little")[offset : offset + size].ljust(size, b"\xff")

    def write(self, offset: int, data: bytes) -> None:
        pass  # the timer is read-only
