"""Read files from an ISO 9660 image in user space, without mounting it.

ECMA-119 4th edition: volume descriptors from sector 16, directory records,
both-endian numbers (the little-endian half is read). Names come, in order of
preference, from Rock Ridge "NM" entries (IEEE P1282, in the System Use area as
SUSP entries, following "CE" continuation areas), from a Joliet supplementary
volume descriptor (UCS-2 names), or from the plain ISO name without its ";1"
version. Names match case-insensitively. Multi-extent files are not supported.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .region import Region, RegionError

SECTOR = 2048
VD_FIRST_SECTOR = 16  # ECMA-119 §6.2.1: the system area is sectors 0-15
VD_MAX = 64  # bound on the volume descriptor set
VD_PRIMARY, VD_SUPPLEMENTARY, VD_TERMINATOR = 1, 2, 255
STANDARD_ID = b"CD001"
JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")  # UCS-2 levels 1-3, at byte 88 of the SVD
ROOT_RECORD_OFFSET = 156  # ECMA-119 §8.4.18
BLOCK_SIZE_OFFSET = 128  # logical block size, both-endian 16-bit

# ECMA-119 §9.1: directory record
DIR_RECORD = struct.Struct("<BBI4sI4s7sBBBHHB")  # length, ext attr length, extent LE/BE, size LE/BE, date,
#                                                  flags, unit size, gap, volume seq LE/BE, name length
FLAG_DIRECTORY = 0x02
FLAG_MULTI_EXTENT = 0x80
MAX_DIRECTORY_BYTES = 16 << 20

# SUSP (IEEE P1281) entries: signature (2), length, version
SUSP_HEADER = struct.Struct("<2sBB")
SUSP_CE = struct.Struct("<I4xI4xI4x")  # continuation: block, offset, length (both-endian: LE then BE)
RR_NM_CONTINUE = 0x01
SUSP_MAX_CONTINUATIONS = 8


class IsoError(Exception):
    """The image is damaged or not ISO 9660; the message names it."""


@dataclass(frozen=True)
class IsoEntry:
    name: str
    is_dir: bool
    extent: int  # logical block
    size: int


class IsoVolume:
    def __init__(self, region: Region):
        self.region = region
        primary = joliet = None
        for index in range(VD_MAX):
            vd = self._read((VD_FIRST_SECTOR + index) * SECTOR, SECTOR)
            if vd[1:6] != STANDARD_ID:
                raise IsoError(f"{region.name}: volume descriptor {index} has no CD001 identifier")
            if vd[0] == VD_TERMINATOR:
                break
            if vd[0] == VD_PRIMARY and primary is None:
                primary = vd
            elif vd[0] == VD_SUPPLEMENTARY and vd[88:91] in JOLIET_ESCAPES and joliet is None:
                joliet = vd
        if primary is None:
            raise IsoError(f"{region.name}: ISO 9660 image without a primary volume descriptor")
        self.block = struct.unpack_from("<H", primary, BLOCK_SIZE_OFFSET)[0]
        if self.block not in (512, 1024, 2048):
            raise IsoError(f"{region.name}: logical block size {self.block} is invalid")
        self.root = self._entry(primary[ROOT_RECORD_OFFSET:ROOT_RECORD_OFFSET + 34], joliet=False)
        self.joliet = joliet is not None and not self._has_rock_ridge(self.root)
        if self.joliet:
            self.root = self._entry(joliet[ROOT_RECORD_OFFSET:ROOT_RECORD_OFFSET + 34], joliet=True)

    def _read(self, offset: int, size: int) -> bytes:
        try:
            return self.region.read(offset, size)
        except RegionError as err:
            raise IsoError(str(err)) from None

    def _records(self, directory: IsoEntry):
        if directory.size > MAX_DIRECTORY_BYTES:
            raise IsoError(f"{self.region.name}: directory of {directory.size} bytes")
        data = self._read(directory.extent * self.block, directory.size)
        pos = 0
        while pos < len(data):
            length = data[pos]
            if length == 0:  # records do not cross sectors: the rest of this one is padding
                pos = (pos // SECTOR + 1) * SECTOR
                continue
            if length < DIR_RECORD.size or pos + length > len(data):
                raise IsoError(f"{self.region.name}: damaged directory record at block {directory.extent}")
            yield data[pos:pos + length]
            pos += length

    def _has_rock_ridge(self, root: IsoEntry) -> bool:
        first = next(iter(self._records(root)), b"")  # the root's "." record carries SUSP "SP"
        return _system_use(first)[:2] == b"SP"

    def _entry(self, record: bytes, joliet: bool) -> IsoEntry:
        length, _, extent, _, size, _, _, flags, _, _, _, _, name_len = DIR_RECORD.unpack_from(record)
        raw_name = record[DIR_RECORD.size:DIR_RECORD.size + name_len]
        if flags & FLAG_MULTI_EXTENT:
            raise IsoError(f"{self.region.name}: multi-extent files are not supported")
        name = self._rock_ridge_name(record) if not joliet else None
        if name is None:
            name = _plain_name(raw_name, joliet)
        return IsoEntry(name, bool(flags & FLAG_DIRECTORY), extent, size)

    def _rock_ridge_name(self, record: bytes) -> str | None:
        area = _system_use(record)
        parts: list[bytes] = []
        for _ in range(SUSP_MAX_CONTINUATIONS):
            next_area = None
            pos = 0
            while pos + SUSP_HEADER.size <= len(area):
                sig, length, _ = SUSP_HEADER.unpack_from(area, pos)
                if length < SUSP_HEADER.size or pos + length > len(area):
                    break
                body = area[pos + SUSP_HEADER.size:pos + length]
                if sig == b"NM" and body:
                    parts.append(body[1:])
                    if not body[0] & RR_NM_CONTINUE:
                        return b"".join(parts).decode("utf-8", errors="replace")
                elif sig == b"CE" and len(body) >= SUSP_CE.size:
                    block, offset, size = SUSP_CE.unpack_from(body)
                    next_area = (block * self.block + offset, size)
                elif sig == b"ST":
                    break
                pos += length
            if next_area is None or next_area[1] > SECTOR:
                break
            area = self._read(*next_area)
        return b"".join(parts).decode("utf-8", errors="replace") if parts else None

    def listdir(self, directory: IsoEntry | None = None) -> list[IsoEntry]:
        directory = directory or self.root
        entries = []
        for record in self._records(directory):
            name_len = record[32]
            raw_name = record[DIR_RECORD.size:DIR_RECORD.size + name_len]
            if raw_name in (b"\0", b"\1"):  # "." and ".."
                continue
            entries.append(self._entry(record, self.joliet))
        return entries

    def lookup(self, path: str) -> IsoEntry | None:
        entry = self.root
        for part in (p for p in path.split("/") if p):
            if not entry.is_dir:
                return None
            wanted = part.casefold()
            entry = next((e for e in self.listdir(entry) if e.name.casefold() == wanted), None)
            if entry is None:
                return None
        return entry

    def read_file(self, entry: IsoEntry) -> bytes:
        if entry.is_dir:
            raise IsoError(f"{self.region.name}: {entry.name} is a directory")
        return self._read(entry.extent * self.block, entry.size)


def _system_use(record: bytes) -> bytes:
    name_len = record[32]
    start = DIR_RECORD.size + name_len + (0 if name_len % 2 else 1)  # a padding byte keeps the area even
    return record[start:record[0]]


def _plain_name(raw: bytes, joliet: bool) -> str:
    name = raw.decode("utf-16-be", errors="replace") if joliet else raw.decode("ascii", errors="replace")
    name = name.split(";", 1)[0]
    return name[:-1] if name.endswith(".") else name
