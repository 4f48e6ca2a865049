"""The boot GDT and IDT that boot protocols place at fixed low addresses."""
from __future__ import annotations

from vmboot.abi import layout
from vmboot.abi.memory import GuestMemory

from ..vcpu.state import DescriptorTable, EntryState, SegmentRegister, boot_tss, flat_data, gdt_bytes

IDT_ENTRY_SIZE = 8


def install_boot_tables(memory: GuestMemory,
                        segments: list[SegmentRegister | None]) -> tuple[DescriptorTable, DescriptorTable]:
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


def flat_entry(memory: GuestMemory, rip: int, code: SegmentRegister, data_selector: int, tss_selector: int,
               **state) -> EntryState:
    """A boot protocol's entry with flat segments: the boot tables written, ``code`` (32- or 64-bit)
    in CS, a flat data segment in the others, the boot TSS in TR; ``state`` the protocol's own
    registers (control registers, EFER, gprs)."""
    data, tss = flat_data(data_selector), boot_tss(tss_selector)
    segments: list[SegmentRegister | None] = [None] * (max(code.selector, data_selector, tss_selector) // 8 + 1)
    for segment in (code, data, tss):
        segments[segment.selector // 8] = segment
    gdt, idt = install_boot_tables(memory, segments)
    return EntryState(rip=rip, cs=code, ds=data, es=data, fs=data, gs=data, ss=data, tr=tss, gdt=gdt, idt=idt,
                      **state)
