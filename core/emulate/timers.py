"""Deadlines for the emulate backend's timers, served by one thread.

The CPU never stops to service time: when a deadline passes, this thread runs
its callback (the LAPIC sets IRR and raises INTR), and the vCPU picks the
interrupt up at its next block boundary, or wakes from HLT.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("vmboot.timers")


class Timer:
    __slots__ = ("deadline", "fn", "cancelled")

    def __init__(self, deadline: float, fn: Callable[[], None]):
        self.deadline = deadline
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class TimerQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic, on_error: Callable[[str], None] | None = None):
        self.clock = clock
        self.on_error = on_error
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="timers", daemon=True)
        self._thread.start()

    def schedule(self, deadline: float, fn: Callable[[], None]) -> Timer:
        timer = Timer(deadline, fn)
        with self._cond:
            first = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, next(self._seq), timer))
            if first:
                self._cond.notify()
        return timer

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(2)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed:
                    while self._heap and self._heap[0][2].cancelled:
                        heapq.heappop(self._heap)
                    if self._heap and self._heap[0][0] <= self.clock():
                        break
                    timeout = self._heap[0][0] - self.clock() if self._heap else None
                    self._cond.wait(timeout)
                if self._closed:
                    return
                _, _, timer = heapq.heappop(self._heap)
            try:
                timer.fn()
            except Exception as err:  # a broken timer must not stop time for the others
                log.debug("timer callback failed", exc_info=True)
                if self.on_error:
                    self.on_error(f"timer callback failed: {err}")
