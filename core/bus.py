"""Address buses: route a port or MMIO access to the device that owns the range.

A device sees only an offset into its own range, never its base address or how
it is reached (in-process model, or a proxy to a sandboxed process). Both obey
the same contract::

    read(offset, size) -> bytes      write(offset, data) -> None

An access that no device owns is logged once per address and answered with all
ones, as an empty bus does on real hardware. A device that raises is contained
the same way: the guest cannot crash the VM through a device model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("vmboot.bus")


class Device(Protocol):
    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


@dataclass(eq=False, slots=True)
class Mapping:
    base: int
    size: int
    device: Device
    name: str
    reads: int = 0
    writes: int = 0

    @property
    def end(self) -> int:
        return self.base + self.size

    def label(self, kind: str) -> str:
        width = 4 if kind == "port" else 8
        return f"{self.name} {self.base:#0{width + 2}x}-{self.end - 1:#0{width + 2}x}"


@dataclass(slots=True)
class Unhandled:
    reads: int = 0
    writes: int = 0


class Bus:
    def __init__(self, kind: str):
        self.kind = kind  # "port" or "mmio"
        self._mappings: list[Mapping] = []
        self._cache: dict[tuple[int, int], Mapping | None] = {}
        self.unhandled: dict[int, Unhandled] = {}
        self._failed: set[str] = set()

    # -- configuration ------------------------------------------------------------
    def register(self, base: int, size: int, device: Device, name: str) -> Mapping:
        if size <= 0:
            raise ValueError(f"{name}: empty range")
        for m in self._mappings:
            if (m.base, m.size) == (base, size):
                raise ValueError(f"{name}: {self.kind} range {base:#x}+{size:#x} already belongs to {m.name}")
        mapping = Mapping(base, size, device, name)
        self._mappings.append(mapping)
        self._cache.clear()
        return mapping

    def unregister(self, mapping: Mapping) -> None:
        self._mappings.remove(mapping)
        self._cache.clear()

    def move(self, mapping: Mapping, base: int) -> None:
        """Relocate a range (a guest moved a BAR)."""
        mapping.base = base
        self._cache.clear()

    @property
    def mappings(self) -> list[Mapping]:
        return list(self._mappings)

    # -- routing -----------------------------------------------------------------------
    def lookup(self, addr: int, size: int) -> Mapping | None:
        """The smallest range that holds the whole access.

        Overlaps are allowed so that a narrow register can sit inside a wider
        one, as the reset control register 0xCF9 sits inside PCI's 0xCF8-0xCFB.
        """
        key = (addr, size)
        try:
            return self._cache[key]
        except KeyError:
            pass
        best = None
        for m in self._mappings:
            if m.base <= addr and addr + size <= m.end and (best is None or m.size < best.size):
                best = m
        self._cache[key] = best
        return best

    def read(self, addr: int, size: int) -> bytes:
        m = self.lookup(addr, size)
        if m is None:
            self._unhandled(addr, size, "read").reads += 1
            return b"\xff" * size
        m.reads += 1
        try:
            data = m.device.read(addr - m.base, size)
        except Exception:
            self._device_failed(m, "read", addr, size)
            return b"\xff" * size
        if len(data) != size:
            self._device_failed(m, f"read returned {len(data)} bytes for", addr, size)
            return (data + b"\xff" * size)[:size]
        return data

    def write(self, addr: int, data: bytes) -> None:
        m = self.lookup(addr, len(data))
        if m is None:
            self._unhandled(addr, len(data), "write").writes += 1
            return
        m.writes += 1
        try:
            m.device.write(addr - m.base, data)
        except Exception:
            self._device_failed(m, "write", addr, len(data))

    # -- diagnostics ---------------------------------------------------------------------
    def _unhandled(self, addr: int, size: int, what: str) -> Unhandled:
        entry = self.unhandled.get(addr)
        if entry is None:
            entry = self.unhandled[addr] = Unhandled()
            log.info("unhandled %s %s at %#x, size %d: answered with all ones", self.kind, what, addr, size)
        return entry

    def _device_failed(self, m: Mapping, what: str, addr: int, size: int) -> None:
        if m.name not in self._failed:
            self._failed.add(m.name)
            log.warning("device %s failed a %s at %#x, size %d; the access is ignored", m.name, what, addr, size,
                        exc_info=log.isEnabledFor(logging.DEBUG))
