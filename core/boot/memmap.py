"""The guest's physical memory map, as PVH's memmap and Linux's e820 describe it.

Entry types are the E820 ones, which PVH reuses (xen/include/public/arch-x86/
hvm/start_info.h: XEN_HVM_MEMMAP_TYPE_*).
"""
from __future__ import annotations

from dataclasses import dataclass

from vmboot.abi import layout
from vmboot.abi.memory import GuestMemory

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3
E820_NVS = 4


@dataclass(frozen=True, slots=True)
class MemmapEntry:
    addr: int
    size: int
    type: int


def memory_map(memory: GuestMemory) -> list[MemmapEntry]:
    """RAM below 640 KiB, RAM from 1 MiB to the 32-bit hole, the hole reserved, RAM above 4 GiB."""
    entries = [MemmapEntry(0, layout.EBDA_START, E820_RAM)]
    for region in memory.regions:
        start = max(region.gpa, layout.HIGH_RAM_START)
        if region.end > start:
            entries.append(MemmapEntry(start, region.end - start, E820_RAM))
    entries.append(MemmapEntry(
        layout.MEM_32BIT_RESERVED_START,
        layout.MEM_32BIT_RESERVED_END - layout.MEM_32BIT_RESERVED_START,
        E820_RESERVED,
    ))
    return sorted(entries, key=lambda e: e.addr)
