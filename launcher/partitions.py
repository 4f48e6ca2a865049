"""GPT and MBR partition tables, parsed in user space.

GPT follows the UEFI specification 2.10 §5.3: the header at LBA 1 (and its
backup at the disk's last LBA) carries CRC32s of itself and of the partition
entry array; a damaged primary falls back to the backup. A GPT disk starts with
a protective MBR (§5.2.3): an MBR whose partition of type 0xEE covers the disk.
MBR follows the classic IBM PC layout: four primary entries at byte 446, the
0x55AA signature at 510, and logical partitions in a chain of extended boot
records inside an extended partition.

Partitions are numbered as Linux numbers them, so that partition N is the one
the kernel calls /dev/sdXN: GPT entry i is i+1; MBR primaries are 1-4 and
logical partitions 5, 6, ... in chain order.
"""
from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass, field

from .region import Region, RegionError

# MBR (and the protective MBR of UEFI §5.2.3)
MBR_SIGNATURE = b"\x55\xaa"
MBR_SIGNATURE_OFFSET = 510
MBR_TABLE_OFFSET = 446
MBR_ENTRY = struct.Struct("<B3sB3sII")  # boot indicator, CHS first, type, CHS last, first LBA, sector count
MBR_BOOT_FLAGS = (0x00, 0x80)
MBR_TYPE_EMPTY = 0x00
MBR_TYPE_GPT_PROTECTIVE = 0xEE
MBR_TYPES_EXTENDED = (0x05, 0x0F, 0x85)
MBR_MAX_LOGICAL = 128  # bound on the EBR chain

# GPT header (UEFI §5.3.2, table 5-5)
GPT_SIGNATURE = b"EFI PART"
GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
GPT_HEADER_MIN_SIZE = 92
GPT_ENTRY = struct.Struct("<16s16sQQQ72s")  # type, unique GUID, first LBA, last LBA (inclusive), attributes, name
GPT_ENTRY_SIZE_MIN = 128
GPT_ENTRIES_MAX_BYTES = 1 << 20  # bound on the entry array we are willing to read
GPT_SECTOR_SIZES = (512, 4096)  # logical block sizes to try on image files
EMPTY_GUID = bytes(16)


class PartitionTableError(Exception):
    """The disk has a partition table, but it is unusable."""


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes from the start of the disk
    size: int  # bytes
    type: str  # a GPT type GUID, or an MBR type as "0x83"
    name: str = ""  # GPT partition name
    guid: str = ""  # GPT unique partition GUID


@dataclass
class PartitionTable:
    scheme: str  # "gpt", "mbr" or "none"
    partitions: list[Partition] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # damage that did not stop the parse


def read_partition_table(disk: Region, sector_size: int | None = None) -> PartitionTable:
    """Find and parse the disk's partition table. A disk with none gives scheme "none".

    ``sector_size`` is the disk's logical block size; ``None`` (image files) tries 512 and 4096.
    """
    sizes = (sector_size,) if sector_size else GPT_SECTOR_SIZES
    if disk.size < 2 * min(sizes):
        return PartitionTable("none")
    sector0 = disk.read(0, 512)
    mbr_entries = _mbr_entries(sector0)
    protective = mbr_entries is not None and any(e[2] == MBR_TYPE_GPT_PROTECTIVE for e in mbr_entries)
    gpt_sizes = [s for s in sizes if disk.size >= 2 * s and disk.read(s, 8) == GPT_SIGNATURE]
    if protective or gpt_sizes:
        errors = []
        for size in gpt_sizes or sizes:  # a damaged primary: look for the backup with each block size
            try:
                table = _read_gpt(disk, size)
            except PartitionTableError as err:
                errors.append(str(err))
                continue
            if not protective:
                table.warnings.insert(0, "GPT without a protective MBR")
            return table
        raise PartitionTableError(errors[0])
    if mbr_entries is not None and any(e[2] != MBR_TYPE_EMPTY for e in mbr_entries):
        return _read_mbr(disk, mbr_entries, sizes[0])
    return PartitionTable("none")


# --- MBR --------------------------------------------------------------------------------------------

def _mbr_entries(sector: bytes) -> list[tuple] | None:
    """The four primary entries, or None when the sector is not an MBR.

    A FAT boot sector also ends in 0x55AA; its boot code where the table would be
    fails the boot-indicator and non-empty-entry checks.
    """
    if sector[MBR_SIGNATURE_OFFSET:MBR_SIGNATURE_OFFSET + 2] != MBR_SIGNATURE:
        return None
    entries = [MBR_ENTRY.unpack_from(sector, MBR_TABLE_OFFSET + 16 * i) for i in range(4)]
    for boot, _, kind, _, first, count in entries:
        if boot not in MBR_BOOT_FLAGS:
            return None
        if kind != MBR_TYPE_EMPTY and (first == 0 or count == 0):
            return None
    return entries


def _read_mbr(disk: Region, entries: list[tuple], sector_size: int) -> PartitionTable:
    table = PartitionTable("mbr")
    sectors = disk.size // sector_size
    for number, (_, _, kind, _, first, count) in enumerate(entries, 1):
        if kind == MBR_TYPE_EMPTY:
            continue
        if first + count > sectors:
            table.warnings.append(f"partition {number} (sectors {first}+{count}) runs past the end of the disk")
            continue
        if kind in MBR_TYPES_EXTENDED:
            _read_logical(disk, first, count, sector_size, table)
            continue
        table.partitions.append(Partition(number, first * sector_size, count * sector_size, f"{kind:#04x}"))
    table.partitions.sort(key=lambda p: p.number)
    return table


def _read_logical(disk: Region, ext_first: int, ext_count: int, sector_size: int, table: PartitionTable) -> None:
    """Walk the chain of extended boot records; logical partitions are numbered from 5."""
    number = 5
    ebr = ext_first
    seen: set[int] = set()
    while ebr and len(seen) < MBR_MAX_LOGICAL:
        if ebr in seen or not ext_first <= ebr < ext_first + ext_count:
            table.warnings.append(f"extended partition: EBR chain points to sector {ebr}, outside or looping")
            return
        seen.add(ebr)
        try:
            sector = disk.read(ebr * sector_size, 512)
        except RegionError as err:
            table.warnings.append(str(err))
            return
        if sector[MBR_SIGNATURE_OFFSET:MBR_SIGNATURE_OFFSET + 2] != MBR_SIGNATURE:
            table.warnings.append(f"extended partition: no EBR signature at sector {ebr}")
            return
        logical = MBR_ENTRY.unpack_from(sector, MBR_TABLE_OFFSET)
        link = MBR_ENTRY.unpack_from(sector, MBR_TABLE_OFFSET + 16)
        _, _, kind, _, rel, count = logical
        if kind != MBR_TYPE_EMPTY and count:
            first = ebr + rel
            if first + count > ext_first + ext_count:
                table.warnings.append(f"logical partition {number} runs past its extended partition")
            else:
                table.partitions.append(Partition(number, first * sector_size, count * sector_size, f"{kind:#04x}"))
            number += 1
        ebr = ext_first + link[4] if link[2] in MBR_TYPES_EXTENDED and link[4] else 0
    if ebr:
        table.warnings.append(f"extended partition: more than {MBR_MAX_LOGICAL} logical partitions")


# --- GPT --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _GptHeader:
    my_lba: int
    alternate_lba: int
    first_usable: int
    last_usable: int
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc: int


def _read_gpt(disk: Region, sector_size: int) -> PartitionTable:
    last_lba = disk.size // sector_size - 1
    problems = []
    for which, lba in (("primary", 1), ("backup", None)):
        try:
            if lba is None:  # the primary's AlternateLBA is unknown when it is damaged: use the last LBA
                lba = last_lba
            header = _gpt_header(disk, lba, sector_size)
            entries = _gpt_entries(disk, header, sector_size)
        except PartitionTableError as err:
            problems.append(f"{which} GPT header at LBA {lba}: {err}")
            continue
        table = PartitionTable("gpt", warnings=[f"{p}; using the backup" for p in problems])
        _gpt_partitions(entries, header, last_lba, sector_size, table)
        return table
    raise PartitionTableError("GPT unusable: " + "; ".join(problems))


def _gpt_header(disk: Region, lba: int, sector_size: int) -> _GptHeader:
    try:
        raw = disk.read(lba * sector_size, sector_size)
    except RegionError as err:
        raise PartitionTableError(str(err)) from None
    (sig, _revision, size, crc, _reserved, my_lba, alternate, first, last, _disk_guid,
     entries_lba, count, entry_size, entries_crc) = GPT_HEADER.unpack_from(raw)
    if sig != GPT_SIGNATURE:
        raise PartitionTableError("no 'EFI PART' signature")
    if not GPT_HEADER_MIN_SIZE <= size <= sector_size:
        raise PartitionTableError(f"header size {size} is invalid")
    check = bytearray(raw[:size])
    check[16:20] = bytes(4)
    if zlib.crc32(check) != crc:
        raise PartitionTableError("header CRC32 mismatch")
    if my_lba != lba:
        raise PartitionTableError(f"header says it is at LBA {my_lba}")
    if entry_size < GPT_ENTRY_SIZE_MIN or entry_size % GPT_ENTRY_SIZE_MIN or count * entry_size > GPT_ENTRIES_MAX_BYTES:
        raise PartitionTableError(f"{count} entries of {entry_size} bytes is not a valid entry array")
    return _GptHeader(my_lba, alternate, first, last, entries_lba, count, entry_size, entries_crc)


def _gpt_entries(disk: Region, header: _GptHeader, sector_size: int) -> bytes:
    try:
        raw = disk.read(header.entries_lba * sector_size, header.entry_count * header.entry_size)
    except RegionError as err:
        raise PartitionTableError(str(err)) from None
    if zlib.crc32(raw) != header.entries_crc:
        raise PartitionTableError("partition entry array CRC32 mismatch")
    return raw


def _gpt_partitions(raw: bytes, header: _GptHeader, last_lba: int, sector_size: int, table: PartitionTable) -> None:
    for index in range(header.entry_count):
        kind, unique, first, last, _attrs, name = GPT_ENTRY.unpack_from(raw, index * header.entry_size)
        if kind == EMPTY_GUID:
            continue
        number = index + 1
        if not header.first_usable <= first <= last <= min(header.last_usable, last_lba):
            table.warnings.append(f"partition {number} (LBA {first}-{last}) lies outside the usable area")
            continue
        table.partitions.append(Partition(
            number, first * sector_size, (last - first + 1) * sector_size,
            str(uuid.UUID(bytes_le=kind)), _utf16_name(name), str(uuid.UUID(bytes_le=unique)),
        ))


def _utf16_name(raw: bytes) -> str:
    text = raw.decode("utf-16-le", errors="replace")
    return text.split("\0", 1)[0]
