"""Direct Linux boot: a bzImage through the 64-bit boot protocol, or a PVH vmlinux.

The bzImage path follows Documentation/arch/x86/boot.rst: copy the setup header
into a zeroed ``boot_params`` (the "zero page"), fill in the command line, the
initramfs and an e820 map, load the protected-mode kernel, and enter its 64-bit
entry point (load address + 0x200) in long mode with identity-mapped paging and
RSI pointing at ``boot_params``.
"""
from __future__ import annotations

import struct
from pathlib import Path

from vmboot.abi import layout
from vmboot.abi.errors import VmbootError
from vmboot.abi.memory import GuestMemory

from ..vcpu.state import CR0_ET, CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME, EntryState, flat_code64
from .gdt import flat_entry
from .memmap import memory_map
from .pvh import boot_pvh

# boot_params offsets (arch/x86/include/uapi/asm/bootparam.h).
BP_ACPI_RSDP_ADDR = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_SETUP_HEADER = 0x1F1
BP_E820_TABLE = 0x2D0
BP_E820_MAX = 128
BOOT_PARAMS_SIZE = 4096
E820_ENTRY = struct.Struct("<QQI")

# Setup header fields, as offsets in the image and in boot_params.
HDR_SETUP_SECTS = 0x1F1
HDR_VID_MODE = 0x1FA
HDR_BOOT_FLAG = 0x1FE
HDR_JUMP = 0x200
HDR_HEADER = 0x202
HDR_VERSION = 0x206
HDR_TYPE_OF_LOADER = 0x210
HDR_LOADFLAGS = 0x211
HDR_RAMDISK_IMAGE = 0x218
HDR_RAMDISK_SIZE = 0x21C
HDR_HEAP_END_PTR = 0x224
HDR_CMD_LINE_PTR = 0x228
HDR_INITRD_ADDR_MAX = 0x22C
HDR_KERNEL_ALIGNMENT = 0x230
HDR_RELOCATABLE_KERNEL = 0x234
HDR_XLOADFLAGS = 0x236
HDR_CMDLINE_SIZE = 0x238
HDR_PREF_ADDRESS = 0x258
HDR_INIT_SIZE = 0x260

BOOT_FLAG_MAGIC = 0xAA55
HDRS_MAGIC = b"HdrS"
MIN_PROTOCOL = 0x020C  # 2.12: xloadflags, needed for the 64-bit entry
LOADED_HIGH = 0x01
CAN_USE_HEAP = 0x80
XLF_KERNEL_64 = 0x01
TYPE_OF_LOADER_UNDEFINED = 0xFF
VID_MODE_NORMAL = 0xFFFF
SECTOR = 512
DEFAULT_SETUP_SECTS = 4
ENTRY_64_OFFSET = 0x200

# Where the loader puts its boot data (cloud-hypervisor's layout).
ZERO_PAGE = 0x7000
BOOT_PML4 = 0x9000
BOOT_PDPT = 0xA000
BOOT_PD = 0xB000  # four page directories: 4 GiB identity-mapped with 2 MiB pages
PT_PRESENT = 1 << 0
PT_WRITE = 1 << 1
PT_PS = 1 << 7

# Selectors Linux requires at the 64-bit entry: __BOOT_CS and __BOOT_DS.
BOOT_CS = 0x10
BOOT_DS = 0x18
BOOT_TR = 0x20


def _u(data: bytes, offset: int, size: int) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


def _read(path: Path | None, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise VmbootError(f"{what} {path}: no such file") from None
    except OSError as err:
        raise VmbootError(f"{what} {path}: {err.strerror}") from None


def boot_kernel(memory: GuestMemory, kernel: Path, initramfs: Path | None, cmdline: str,
                rsdp: int = 0) -> EntryState:
    """Load a kernel; ``rsdp`` tells it where the ACPI tables are (boot protocol 2.14, or PVH)."""
    image = _read(kernel, "--kernel")
    initrd = _read(initramfs, "--initramfs") if initramfs else None
    if image[:4] == b"\x7fELF":
        modules = []
        if initrd is not None:
            addr = _place_initrd(memory, len(initrd), layout.MEM_32BIT_RESERVED_START - 1, layout.HIGH_RAM_START)
            memory.write(addr, initrd)
            modules.append((addr, len(initrd)))
        return boot_pvh(memory, kernel, cmdline.encode(), rsdp=rsdp, modules=modules)
    return boot_bzimage(memory, kernel, image, initrd, cmdline.encode(), rsdp)


def _place_initrd(memory: GuestMemory, size: int, addr_max: int, above: int) -> int:
    low = memory.regions[0]
    top = min(addr_max + 1, low.end)
    addr = (top - size) & ~0xFFF
    if size == 0 or addr < above:
        raise VmbootError(f"the initramfs ({size >> 20} MiB) does not fit in guest RAM below "
                          f"{top:#x}; give the VM more --memory")
    return addr


def boot_bzimage(memory: GuestMemory, path: Path, image: bytes, initrd: bytes | None, cmdline: bytes,
                 rsdp: int = 0) -> EntryState:
    if (len(image) < 0x270 or _u(image, HDR_BOOT_FLAG, 2) != BOOT_FLAG_MAGIC
            or image[HDR_HEADER:HDR_HEADER + 4] != HDRS_MAGIC):
        raise VmbootError(f"--kernel {path}: not a Linux bzImage (no boot sector magic and 'HdrS' header) "
                          f"and not an ELF")
    version = _u(image, HDR_VERSION, 2)
    if version < MIN_PROTOCOL:
        raise VmbootError(f"--kernel {path}: boot protocol {version >> 8}.{version & 0xFF} is too old "
                          f"(64-bit entry needs 2.12)")
    if not _u(image, HDR_XLOADFLAGS, 2) & XLF_KERNEL_64:
        raise VmbootError(f"--kernel {path}: kernel has no 64-bit entry point (XLF_KERNEL_64 is clear)")

    setup_sects = image[HDR_SETUP_SECTS] or DEFAULT_SETUP_SECTS
    kernel_offset = (setup_sects + 1) * SECTOR
    payload = image[kernel_offset:]
    if not payload:
        raise VmbootError(f"--kernel {path}: truncated bzImage")
    init_size = max(_u(image, HDR_INIT_SIZE, 4), len(payload))
    load = _u(image, HDR_PREF_ADDRESS, 8)
    alignment = _u(image, HDR_KERNEL_ALIGNMENT, 4) or 0x200000
    if not image[HDR_RELOCATABLE_KERNEL] and load == 0:
        load = 0x100000
    load = max(load, layout.HIGH_RAM_START)
    load = (load + alignment - 1) // alignment * alignment
    if not memory.contains(load, init_size):
        raise VmbootError(f"--kernel {path}: the kernel needs RAM up to {load + init_size:#x}; "
                          f"give the VM more --memory")
    memory.write(load, payload)

    cmdline_size = _u(image, HDR_CMDLINE_SIZE, 4) or 255
    if len(cmdline) > cmdline_size:
        raise VmbootError(f"--cmdline is {len(cmdline)} bytes; this kernel takes at most {cmdline_size}")
    memory.write(layout.CMDLINE, cmdline + b"\0")

    params = bytearray(BOOT_PARAMS_SIZE)
    header_end = HDR_HEADER + image[HDR_JUMP + 1]  # the jump at 0x200 skips the header
    params[BP_SETUP_HEADER:header_end] = image[BP_SETUP_HEADER:header_end]
    struct.pack_into("<H", params, HDR_VID_MODE, VID_MODE_NORMAL)
    params[HDR_TYPE_OF_LOADER] = TYPE_OF_LOADER_UNDEFINED
    params[HDR_LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP
    struct.pack_into("<H", params, HDR_HEAP_END_PTR, 0xFE00)
    struct.pack_into("<I", params, HDR_CMD_LINE_PTR, layout.CMDLINE)
    struct.pack_into("<I", params, BP_EXT_CMD_LINE_PTR, 0)
    struct.pack_into("<Q", params, BP_ACPI_RSDP_ADDR, rsdp)

    if initrd is not None:
        addr_max = _u(image, HDR_INITRD_ADDR_MAX, 4) or 0x37FFFFFF
        addr = _place_initrd(memory, len(initrd), addr_max, load + init_size)
        memory.write(addr, initrd)
        struct.pack_into("<I", params, HDR_RAMDISK_IMAGE, addr)
        struct.pack_into("<I", params, HDR_RAMDISK_SIZE, len(initrd))

    entries = memory_map(memory)
    if len(entries) > BP_E820_MAX:
        raise VmbootError("memory map too large for boot_params")
    params[BP_E820_ENTRIES] = len(entries)
    for i, e in enumerate(entries):
        E820_ENTRY.pack_into(params, BP_E820_TABLE + i * E820_ENTRY.size, e.addr, e.size, e.type)
    memory.write(ZERO_PAGE, bytes(params))
    return long_mode_entry(memory, load + ENTRY_64_OFFSET, ZERO_PAGE)


def identity_page_tables(memory: GuestMemory) -> int:
    """Map the first 4 GiB 1:1 with 2 MiB pages; returns CR3."""
    memory.write(BOOT_PML4, struct.pack("<Q", BOOT_PDPT | PT_PRESENT | PT_WRITE).ljust(4096, b"\0"))
    pdpt = b"".join(struct.pack("<Q", (BOOT_PD + i * 4096) | PT_PRESENT | PT_WRITE) for i in range(4))
    memory.write(BOOT_PDPT, pdpt.ljust(4096, b"\0"))
    for i in range(4):
        pd = b"".join(struct.pack("<Q", ((i * 512 + j) << 21) | PT_PRESENT | PT_WRITE | PT_PS) for j in range(512))
        memory.write(BOOT_PD + i * 4096, pd)
    return BOOT_PML4


def long_mode_entry(memory: GuestMemory, rip: int, rsi: int) -> EntryState:
    return flat_entry(memory, rip, flat_code64(BOOT_CS), BOOT_DS, BOOT_TR,
                      cr0=CR0_PE | CR0_ET | CR0_PG, cr3=identity_page_tables(memory), cr4=CR4_PAE,
                      efer=EFER_LME | EFER_LMA, gprs={"rsi": rsi})
