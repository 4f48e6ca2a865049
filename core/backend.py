"""What the machine needs from a CPU backend (kvm or emulate)."""
from __future__ import annotations

from typing import Callable, Protocol

from .events import VmEvents
from .vcpu.dispatch import IoDispatcher
from .vcpu.state import EntryState


class Backend(Protocol):
    name: str

    def irq_line(self, gsi: int) -> Callable[[bool], None]:
        """A setter for the level of an ISA/IOAPIC interrupt line."""

    def start(self, entry: EntryState, io: IoDispatcher, events: VmEvents) -> None:
        """Start the boot vCPU at ``entry``; I/O goes to ``io``, failures to ``events``."""

    def kick_all(self) -> None:
        """Make every running vCPU notice a stop request soon. Thread-safe."""

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the vCPUs to return after a stop."""

    def stats(self) -> dict[str, str]:
        """Backend figures for --stats."""

    def close(self) -> None:
        """Release the VM and vCPUs."""
