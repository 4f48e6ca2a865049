"""PVH boot: load an ELF with a Xen PHYS32_ENTRY note and enter it in 32-bit protected mode.

The protocol is Xen's "x86/HVM direct boot ABI" (xen/include/public/arch-x86/
hvm/start_info.h): EBX holds the physical address of ``struct hvm_start_info``,
paging is off, and CS/DS/ES/SS are flat 4 GiB segments. The CloudHv firmware
and PVH-capable Linux vmlinux images are both entered this way.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from .. import layout
from ..errors import VmbootError
from ..memory import GuestMemory
from ..vcpu.state import CR0_ET, CR0_PE, EntryState, boot_tss, flat_code32, flat_data
from .gdt import install_boot_tables
from .memmap import memory_map

# xen/include/public/elfnote.h
XEN_ELFNOTE_NAME = "Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18

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


@dataclass(frozen=True)
class PvhImage:
    entry: int
    segments: list[tuple[int, int, bytes]]  # (paddr, memsz, file bytes)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise VmbootError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise VmbootError(f"{path}: is a directory, not a firmware image") from None
    except OSError as err:
        raise VmbootError(f"{path}: {err.strerror}") from None


def parse_pvh(path: Path, data: bytes | None = None) -> PvhImage:
    """Validate a PVH ELF and return its entry point and loadable segments."""
    data = _read(path) if data is None else data
    if data[:4] != b"\x7fELF":
        raise VmbootError(f"{path}: not an ELF file (a PVH firmware such as CLOUDHV.fd is an ELF image)")
    try:
        elf = ELFFile(io.BytesIO(data))
        entry = None
        segments = []
        for seg in elf.iter_segments():
            kind = seg["p_type"]
            if seg["p_offset"] + seg["p_filesz"] > len(data):
                raise VmbootError(
                    f"{path}: corrupt or truncated ELF: a {kind} segment at file offset {seg['p_offset']:#x} "
                    f"runs past the end of the file ({len(data)} bytes)"
                )
            if kind == "PT_NOTE":
                for note in seg.iter_notes():
                    if note["n_name"] == XEN_ELFNOTE_NAME and note["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY:
                        entry = _note_address(path, note["n_descdata"])
            elif kind == "PT_LOAD" and seg["p_memsz"]:
                if seg["p_filesz"] > seg["p_memsz"]:
                    raise VmbootError(f"{path}: corrupt ELF: a PT_LOAD segment has more file bytes than memory")
                segments.append((seg["p_paddr"], seg["p_memsz"], seg.data()))
    except (ELFError, ELFParseError, struct.error, ValueError, UnicodeDecodeError) as err:
        raise VmbootError(f"{path}: corrupt or truncated ELF ({err})") from None
    if entry is None:
        raise VmbootError(f"{path}: ELF has no PVH entry point (no '{XEN_ELFNOTE_NAME}' note of type "
                          f"XEN_ELFNOTE_PHYS32_ENTRY); it is not a PVH firmware or kernel")
    if not segments:
        raise VmbootError(f"{path}: ELF has no loadable segment")
    if not any(paddr <= entry < paddr + memsz for paddr, memsz, _ in segments):
        raise VmbootError(f"{path}: PVH entry point {entry:#x} is outside every loadable segment")
    return PvhImage(entry, segments)


def _note_address(path: Path, desc: bytes) -> int:
    if len(desc) == 4:
        return struct.unpack("<I", desc)[0]
    if len(desc) == 8:
        return struct.unpack("<Q", desc)[0]
    raise VmbootError(f"{path}: PVH entry note has a {len(desc)}-byte descriptor (expected 4 or 8)")


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
    gdt, idt = install_boot_tables(memory, [None, flat_code32(PVH_CS), flat_data(PVH_DS), boot_tss(PVH_TR)])
    data = flat_data(PVH_DS)
    return EntryState(
        rip=entry,
        cs=flat_code32(PVH_CS), ds=data, es=data, fs=data, gs=data, ss=data,
        tr=boot_tss(PVH_TR),
        gdt=gdt, idt=idt,
        cr0=CR0_PE | CR0_ET,
        gprs={"rbx": layout.PVH_START_INFO},
    )


def boot_pvh(memory: GuestMemory, path: Path, cmdline: bytes | None = None, rsdp: int = 0,
             modules: list[tuple[int, int]] = ()) -> EntryState:
    """Load a PVH ELF (firmware or kernel) and return the state to enter it with."""
    image = parse_pvh(path)
    load_segments(memory, path, image)
    write_start_info(memory, cmdline, rsdp, modules)
    return pvh_entry_state(memory, image.entry)
