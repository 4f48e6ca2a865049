"""How a running VM ends: the first stop request wins, from any thread."""
from __future__ import annotations

import enum
import logging
import threading
from dataclasses import dataclass

log = logging.getLogger("vmboot")


class Outcome(enum.Enum):
    POWEROFF = "poweroff"  # the guest powered off
    RESET = "reset"  # the guest asked for a reset
    QUIT = "quit"  # the user stopped the VM (Ctrl-a x, SIGINT, SIGTERM)
    ERROR = "error"  # the VM cannot go on


@dataclass(frozen=True)
class Stop:
    outcome: Outcome
    message: str


class VmEvents:
    """Thread-safe stop requests. Also the ``PowerEvents`` the power devices call."""

    def __init__(self):
        self._stop: Stop | None = None
        self._lock = threading.Lock()
        self.stopped = threading.Event()
        self._listeners: list = []

    def on_stop(self, fn) -> None:
        """Call ``fn()`` (from the requesting thread) when the first stop arrives."""
        self._listeners.append(fn)

    def request(self, outcome: Outcome, message: str) -> None:
        with self._lock:
            if self._stop is not None:
                return
            self._stop = Stop(outcome, message)
        log.debug("stop requested: %s (%s)", outcome.value, message)
        for fn in self._listeners:
            fn()
        self.stopped.set()

    @property
    def stop(self) -> Stop | None:
        return self._stop

    @property
    def stopping(self) -> bool:
        return self._stop is not None

    # PowerEvents
    def poweroff(self, source: str) -> None:
        self.request(Outcome.POWEROFF, f"guest powered off through the {source}")

    def reset(self, source: str) -> None:
        self.request(Outcome.RESET, f"guest reset through the {source}")

    def error(self, message: str) -> None:
        self.request(Outcome.ERROR, message)
