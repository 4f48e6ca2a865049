"""The one place where I/O exits meet the buses."""
from __future__ import annotations

import threading

from ..bus import Bus
from .exits import IoIn, IoOut, MmioRead, MmioWrite


class IoDispatcher:
    """Resolves IoIn/IoOut/MmioRead/MmioWrite exits against the port and MMIO buses.

    ``lock`` serializes device models against each other's callers (vCPU
    threads, the console reader); every entry into a model takes it.
    """

    def __init__(self, ports: Bus, mmio: Bus, lock: threading.RLock):
        self.ports = ports
        self.mmio = mmio
        self.lock = lock

    def handle(self, ex) -> bytes | None:
        """Perform an I/O exit; returns the bytes of a read, None for a write."""
        with self.lock:
            kind = type(ex)
            if kind is IoIn:
                if ex.count == 1:
                    return self.ports.read(ex.port, ex.size)
                return b"".join(self.ports.read(ex.port, ex.size) for _ in range(ex.count))
            if kind is IoOut:
                size = ex.size
                for i in range(0, len(ex.data), size):
                    self.ports.write(ex.port, ex.data[i : i + size])
                return None
            if kind is MmioRead:
                return self.mmio.read(ex.addr, ex.size)
            if kind is MmioWrite:
                self.mmio.write(ex.addr, ex.data)
                return None
        raise TypeError(f"not an I/O exit: {ex!r}")
