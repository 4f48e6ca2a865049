"""PVH boot: load an ELF with a Xen PHYS32_ENTRY note and enter it in 32-bit protected mode.

The protocol is Xen's "x86/HVM direct boot ABI" (xen/include/public/arch-x86/
hvm/start_info.h): EBX holds the physical address of ``struct hvm_start_info``,
paging is off, and CS/DS/ES/SS are flat 4 GiB segments. The CloudHv firmware
and PVH-capable Linux vmlinux images are both entered this way.
"""
from __future__ import annotations

import struct
from pathlib import Path

from vmboot.abi import layout
from vmboot.abi.errors import VmbootError
from vmboot.abi.memory import GuestMemory
from vmboot.abi.pvh import PvhImage, parse_pvh

from ..vcpu.state import CR0_ET, CR0_PE, EntryState, flat_code32
from .gdt import flat_entry
from .memmap import memory_map

# xen/include/public/arch-x86/hvm/start_info.h
HVM_START_MAGIC_VALUE = 0x336EC578
HVM_START_INFO_VERSION = 1  # version 1 added the memory map
# magic version flags nr_modules modlist_paddr cmdline_paddr rsdp_paddr memmap_paddr memmap_entries reserved
HVM_START_INFO = struct.Struct("<IIIIQQQQII")
HVM_MODLIST_ENTRY = struct.Struct("<QQQQ")  # paddr size cmdline_paddr reserved
HVM_MEMMAP_TABLE_ENTRY = struct.Struct("<QQII")  # addr size type reserved

# Selectors of the boot GDT (cloud-hypervisor's): null, code, data, TSS.
PVH_CS = 0x08
PVH_DS = 0x10
PVH_TR = 0x18


def load_segments(memory: GuestMemory, path: Path, image: PvhImage) -> None:
    for paddr, memsz, filedata in image.segments:
        if paddr < layout.HIGH_RAM_START or not memory.contains(paddr, memsz):
            raise VmbootError(
                f"{path}: segment {paddr:#x}+{memsz:#x} does not fit in guest RAM above 1 MiB "
                f"({memory.size >> 20} MiB of RAM)"
            )
        memory.write(paddr, filedata)
        memory.write(paddr + len(filedata), bytes(memsz - len(filedata)))


def write_start_info(memory: GuestMemory, cmdline: bytes | None = None, rsdp: int = 0,
                     modules: list[tuple[int, int]] = ()) -> None:
    """Write hvm_start_info, the module list, the memory map and the command line."""
    entries = memory_map(memory)
    table = b"".join(HVM_MEMMAP_TABLE_ENTRY.pack(e.addr, e.size, e.type, 0) for e in entries)
    memory.write(layout.PVH_MEMMAP, table)

    cmdline_paddr = 0
    if cmdline:
        if len(cmdline) + 1 > layout.CMDLINE_MAX:
            raise VmbootError(f"kernel command line is {len(cmdline)} bytes; the limit is {layout.CMDLINE_MAX - 1}")
        memory.write(layout.CMDLINE, cmdline + b"\0")
        cmdline_paddr = layout.CMDLINE

    modlist = b"".join(HVM_MODLIST_ENTRY.pack(addr, size, 0, 0) for addr, size in modules)
    memory.write(layout.PVH_MODLIST, modlist)

    memory.write(layout.PVH_START_INFO, HVM_START_INFO.pack(
        HVM_START_MAGIC_VALUE, HVM_START_INFO_VERSION, 0, len(modules),
        layout.PVH_MODLIST if modules else 0, cmdline_paddr, rsdp,
        layout.PVH_MEMMAP, len(entries), 0,
    ))


def pvh_entry_state(memory: GuestMemory, entry: int) -> EntryState:
    return flat_entry(memory, entry, flat_code32(PVH_CS), PVH_DS, PVH_TR, cr0=CR0_PE | CR0_ET,
                      gprs={"rbx": layout.PVH_START_INFO})


def boot_pvh(memory: GuestMemory, path: Path, cmdline: bytes | None = None, rsdp: int = 0,
             modules: list[tuple[int, int]] = ()) -> EntryState:
    """Load a PVH ELF (firmware or kernel) and return the state to enter it with."""
    image = parse_pvh(path)
    load_segments(memory, path, image)
    write_start_info(memory, cmdline, rsdp, modules)
    return pvh_entry_state(memory, image.entry)
