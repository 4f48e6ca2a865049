"""The PVH loader, against the real CloudHv firmware and against broken images."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vmboot.abi import layout
from vmboot.abi.errors import VmbootError
from vmboot.abi.memory import GuestMemory
from vmboot.core.boot.memmap import E820_RAM, E820_RESERVED
from vmboot.core.boot.pvh import HVM_MEMMAP_TABLE_ENTRY, HVM_START_INFO, HVM_START_MAGIC_VALUE, boot_pvh, parse_pvh
from vmboot.core.vcpu.state import CR0_PE

MiB = 1 << 20
CLOUDHV_ENTRY = 0x4FFFD0


def test_cloudhv_entry_point_and_segment(firmware):
    image = parse_pvh(firmware)
    assert image.entry == CLOUDHV_ENTRY
    assert [(paddr, memsz) for paddr, memsz, _ in image.segments] == [(0x100000, 0x400000)]
    assert image.segments[0][2] == firmware.read_bytes()[:0x400000]


def test_start_info_and_memory_map_bytes(firmware):
    with GuestMemory(512 * MiB) as mem:
        entry = boot_pvh(mem, firmware, rsdp=layout.RSDP)
        assert mem.read(0x100000, 0x400000) == firmware.read_bytes()[:0x400000]
        assert mem.read(layout.PVH_START_INFO, HVM_START_INFO.size) == struct.pack(
            "<IIIIQQQQII", HVM_START_MAGIC_VALUE, 1, 0, 0, 0, 0, layout.RSDP, layout.PVH_MEMMAP, 3, 0)
        assert HVM_START_INFO.size == 56
        assert mem.read(layout.PVH_MEMMAP, 3 * 24) == b"".join([
            struct.pack("<QQII", 0, 0xA0000, E820_RAM, 0),
            struct.pack("<QQII", 0x100000, 512 * MiB - 0x100000, E820_RAM, 0),
            struct.pack("<QQII", 0xC0000000, 0x40000000, E820_RESERVED, 0),
        ])
        # The PVH entry state: 32-bit flat protected mode, paging off, EBX -> start_info.
        assert entry.rip == CLOUDHV_ENTRY
        assert entry.gprs == {"rbx": layout.PVH_START_INFO}
        assert entry.cr0 & CR0_PE and not entry.cr0 & (1 << 31)
        assert (entry.cs.selector, entry.cs.db, entry.cs.l, entry.cs.g) == (0x08, 1, 0, 1)
        assert entry.ds.selector == entry.ss.selector == 0x10
        assert (entry.gdt.base, entry.gdt.limit) == (layout.BOOT_GDT, 4 * 8 - 1)
        assert mem.read(layout.BOOT_GDT, 32) == struct.pack(
            "<4Q", 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF, 0x00008B0000000067)


def test_memory_above_4g_is_split_around_the_hole(firmware):
    size = 3 * 1024 * MiB + 512 * MiB  # 3.5 GiB: 3 GiB below the hole, 512 MiB above 4 GiB
    with GuestMemory(size) as mem:
        boot_pvh(mem, firmware)
        count = struct.unpack_from("<I", mem.read(layout.PVH_START_INFO + 48, 4))[0]
        table = mem.read(layout.PVH_MEMMAP, count * HVM_MEMMAP_TABLE_ENTRY.size)
        entries = [HVM_MEMMAP_TABLE_ENTRY.unpack_from(table, i * 24)[:3] for i in range(count)]
        assert entries == [
            (0, 0xA0000, E820_RAM),
            (0x100000, 0xC0000000 - 0x100000, E820_RAM),
            (0xC0000000, 0x40000000, E820_RESERVED),
            (1 << 32, 512 * MiB, E820_RAM),
        ]


def test_cmdline_is_written_and_pointed_to(firmware):
    with GuestMemory(128 * MiB) as mem:
        boot_pvh(mem, firmware, cmdline=b"console=ttyS0")
        assert mem.read(layout.CMDLINE, 14) == b"console=ttyS0\0"
        assert struct.unpack_from("<Q", mem.read(layout.PVH_START_INFO + 24, 8))[0] == layout.CMDLINE


@pytest.fixture
def mem():
    with GuestMemory(128 * MiB) as m:
        yield m


def _error(tmp_path: Path, data: bytes, mem: GuestMemory) -> str:
    path = tmp_path / "image"
    path.write_bytes(data)
    with pytest.raises(VmbootError) as err:
        boot_pvh(mem, path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


def test_truncated_firmware_is_rejected(firmware, tmp_path, mem):
    msg = _error(tmp_path, firmware.read_bytes()[:0x10000], mem)
    assert "truncated" in msg and "PT_LOAD" in msg


def test_truncated_header_is_rejected(firmware, tmp_path, mem):
    assert "corrupt or truncated ELF" in _error(tmp_path, firmware.read_bytes()[:40], mem)


def test_corrupt_program_headers_are_rejected(firmware, tmp_path, mem):
    data = bytearray(firmware.read_bytes())
    struct.pack_into("<Q", data, 0x20, 0x7FFFFFFF0)  # e_phoff far past the end
    assert "corrupt or truncated ELF" in _error(tmp_path, bytes(data), mem)


def test_elf_without_pvh_note_is_rejected(firmware, tmp_path, mem):
    data = bytearray(firmware.read_bytes())
    note = data.index(b"Xen\0")
    struct.pack_into("<I", data, note - 4, 17)  # note type 17 is not PHYS32_ENTRY
    assert "no PVH entry point" in _error(tmp_path, bytes(data), mem)


def test_non_elf_is_rejected(tmp_path, mem):
    assert "not an ELF file" in _error(tmp_path, b"MZ" + bytes(100), mem)


def test_missing_file_is_rejected(tmp_path, mem):
    with pytest.raises(VmbootError, match=r"no such file"):
        boot_pvh(mem, tmp_path / "absent.fd")


def test_segment_that_does_not_fit_in_ram_is_rejected(firmware, tmp_path):
    with GuestMemory(4 * MiB) as small:
        assert "does not fit in guest RAM" in _error(tmp_path, firmware.read_bytes(), small)


def test_entry_outside_the_image_is_rejected(firmware, tmp_path, mem):
    data = bytearray(firmware.read_bytes())
    note = data.index(b"Xen\0")
    struct.pack_into("<I", data, note + 4, 0x7000000)
    assert "outside every loadable segment" in _error(tmp_path, bytes(data), mem)
