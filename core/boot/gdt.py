"""The boot GDT and IDT that boot protocols place at fixed low addresses."""
from __future__ import annotations

from .. import layout
from ..memory import GuestMemory
from ..vcpu.state import DescriptorTable, Segment, gdt_bytes

IDT_ENTRY_SIZE = 8


def install_boot_tables(memory: GuestMemory, segments: list[Segment | None]) -> tuple[DescriptorTable, DescriptorTable]:
    """Write the GDT at BOOT_GDT and an empty one-entry IDT after it.

    ``segments[i]`` is the segment with selector ``i * 8``. The IDT sits at
    BOOT_IDT (cloud-hypervisor's layout) unless a longer GDT reaches past it,
    then right after the GDT. The empty IDT makes any exception before the
    guest installs its own a clean triple fault.
    """
    table = gdt_bytes(segments)
    idt = max(layout.BOOT_IDT, layout.BOOT_GDT + len(table))
    memory.write(layout.BOOT_GDT, table)
    memory.write(idt, bytes(IDT_ENTRY_SIZE))
    return (DescriptorTable(layout.BOOT_GDT, len(table) - 1),
            DescriptorTable(idt, IDT_ENTRY_SIZE - 1))
