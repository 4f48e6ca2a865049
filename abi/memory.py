"""Guest RAM: one memfd, mapped once, shared with KVM, Unicorn and device processes.

The memfd holds the RAM below the 32-bit hole first, then the RAM above 4 GiB.
Every guest-physical access from Python goes through :meth:`GuestMemory.view`,
which bounds-checks the whole range, so a guest-supplied address can never reach
outside guest RAM.
"""
from __future__ import annotations

import ctypes
import mmap
import os
from dataclasses import dataclass

from . import layout
from .errors import VmbootError


class GuestMemoryError(Exception):
    """A guest-physical range that is not entirely inside guest RAM."""


@dataclass(frozen=True, slots=True)
class RamRegion:
    gpa: int  # guest-physical start
    size: int
    offset: int  # offset in the memfd

    @property
    def end(self) -> int:
        return self.gpa + self.size


def ram_regions(size: int) -> list[RamRegion]:
    """Split ``size`` bytes of RAM around the 32-bit device hole."""
    low = min(size, layout.MEM_32BIT_RESERVED_START)
    regions = [RamRegion(0, low, 0)]
    if size > low:
        regions.append(RamRegion(layout.RAM_64BIT_START, size - low, low))
    return regions


class GuestMemory:
    def __init__(self, size: int, name: str = "vmboot-ram", fd: int | None = None):
        """New guest RAM of ``size`` bytes, or (with ``fd``) the RAM of a running VM, in a device process."""
        if size <= 0 or size % mmap.PAGESIZE:
            raise VmbootError(f"memory size {size} is not a positive multiple of the page size")
        self.size = size
        self.regions = ram_regions(size)
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC) if fd is None else fd
        try:
            if fd is None:
                os.ftruncate(self.fd, size)
            self._map = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as err:
            os.close(self.fd)
            raise VmbootError(f"cannot allocate {size >> 20} MiB of guest memory: {err.strerror}") from None
        self._view = memoryview(self._map)
        self._anchor = ctypes.c_char.from_buffer(self._map)
        self.host_base = ctypes.addressof(self._anchor)

    def close(self) -> None:
        if self._map is None:
            return
        self._view.release()
        del self._anchor
        try:
            self._map.close()
        except BufferError:
            # A view of guest memory is still alive somewhere; the mapping goes
            # when that view does. Closing the memfd is still safe.
            pass
        os.close(self.fd)
        self._map = None

    def __enter__(self) -> GuestMemory:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- address translation ------------------------------------------------
    def offset_of(self, gpa: int, length: int) -> int:
        """The memfd offset of ``[gpa, gpa+length)``, which must lie in one region."""
        if length < 0:
            raise GuestMemoryError(f"negative length {length}")
        for region in self.regions:
            if region.gpa <= gpa and gpa + length <= region.end:
                return region.offset + gpa - region.gpa
        raise GuestMemoryError(f"guest range {gpa:#x}+{length:#x} is outside guest RAM")

    def host_address(self, region: RamRegion) -> int:
        return self.host_base + region.offset

    # -- access ---------------------------------------------------------------
    def view(self, gpa: int, length: int) -> memoryview:
        off = self.offset_of(gpa, length)
        return self._view[off : off + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes) -> None:
        self.view(gpa, len(data))[:] = data

    def read_u32(self, gpa: int) -> int:
        return int.from_bytes(self.view(gpa, 4), "little")

    def contains(self, gpa: int, length: int = 1) -> bool:
        try:
            self.offset_of(gpa, length)
        except GuestMemoryError:
            return False
        return True
