"""Posted writes in batches: one message, and one wake-up of the device, for a run of writes.

A guest that polls a device writes it far more often than it waits on it: Linux's console
sends every byte as a write to the 16550's THR after a read of the line status, which the
core answers from a mirror (ipc/fastpath.py). Sent one message each, those writes cost the
device process a wake-up per byte, and the core a wake-up per output event. So the proxy
(ipc/proxy.py) holds a write while the guest is polling: when the access just before it
was a read that the core answered itself. Held writes go, in order, as one WRITES message:
  - with the next write that does not follow such a read (a driver filling a FIFO and then
    waiting for the interrupt), so a device the guest waits on hears of it at once;
  - before any request to the same device (a read sees every write before it, as on a bus),
    and before any other posted message to it (SHUTDOWN: nothing the guest wrote is lost);
  - with a write when MAX_BATCH are waiting or the first has waited HOLD_AGE;
  - from the Flusher's thread, BACKSTOP after the first, when the guest has stopped writing
    (the last byte of a prompt).
No write waits longer than BACKSTOP. The Flusher wakes at most once per BACKSTOP however fast
the guest writes, and most batches go from the vCPU's own thread, with no thread hand-over.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

log = logging.getLogger("vmboot.ipc")

HOLD_AGE = 0.015  # seconds: a write then sends the batch from the writer's thread
BACKSTOP = 0.025  # seconds: the Flusher sends what is still waiting
MAX_BATCH = 256  # writes in one WRITES message (at most protocol.MAX_WRITES)


class Flushable(Protocol):
    def flush_held(self) -> None: ...


class Flusher:
    """One thread that flushes each scheduled proxy ``delay`` after it was scheduled."""

    def __init__(self, delay: float = BACKSTOP):
        self.delay = delay
        self._cond = threading.Condition()
        self._due: dict[Flushable, float] = {}
        self._thread: threading.Thread | None = None

    def schedule(self, target: Flushable) -> None:
        """``target`` holds writes: flush it ``delay`` from now, or sooner if already due."""
        with self._cond:
            if target in self._due:
                return
            self._due[target] = time.monotonic() + self.delay
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="write-flusher", daemon=True)
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._due:
                    self._cond.wait()
                now = time.monotonic()
                soonest = min(self._due.values())
                if soonest > now:
                    self._cond.wait(soonest - now)
                    continue
                ready = [t for t, due in self._due.items() if due <= now]
                for target in ready:
                    del self._due[target]
            for target in ready:  # outside the condition: the flush takes the proxy's lock
                try:
                    target.flush_held()
                except Exception:  # noqa: BLE001 - one proxy's trouble must not stop the others' flushes
                    log.exception("flushing the posted writes of %r", target)


FLUSHER = Flusher()  # one for the process: the core's proxies share its thread
