"""The vCPU interface both CPU backends implement."""
from __future__ import annotations

from abc import ABC, abstractmethod

from .exits import Exit
from .state import EntryState


class Vcpu(ABC):
    index: int

    @abstractmethod
    def load(self, entry: EntryState) -> None:
        """Put the vCPU in a boot protocol's entry state."""

    @abstractmethod
    def run(self) -> Exit:
        """Run guest code until the next exit the core must see."""

    @abstractmethod
    def complete_read(self, data: bytes) -> None:
        """Supply the bytes for the IoIn or MmioRead exit ``run()`` just returned."""

    @abstractmethod
    def kick(self) -> None:
        """Make a ``run()`` in another thread return ``Interrupted`` soon. Thread-safe."""

    @abstractmethod
    def registers(self) -> dict[str, int]:
        """General registers, RIP, RFLAGS and control registers, for diagnostics and tests."""
