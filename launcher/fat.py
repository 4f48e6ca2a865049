"""Read files from a FAT12, FAT16 or FAT32 volume in user space, without mounting it.

Follows Microsoft's FAT specification (fatgen103, "FAT: General Overview of
On-Disk Format" 1.03): the BPB, the FAT type decided by the cluster count,
cluster chains, 32-byte directory entries, and VFAT long names (entries of
attribute 0x0F, checked against the short name's checksum). Names match
case-insensitively, as on FAT. Everything read from the disk is bounded: chains
cannot loop and a file cannot claim more clusters than the volume has.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from .region import Region, RegionError

# fatgen103 §3.1-3.3
BPB = struct.Struct("<3s8sHBHBHHBHHHII")
BPB32_FAT_SIZE = struct.Struct("<I")  # BPB_FATSz32 at byte 36
BPB32_ROOT_CLUSTER = struct.Struct("<I")  # BPB_RootClus at byte 44
FAT12_MAX_CLUSTERS = 4085  # fewer clusters than this: FAT12
FAT16_MAX_CLUSTERS = 65525  # fewer than this: FAT16, else FAT32
FAT12_EOC, FAT16_EOC, FAT32_EOC = 0xFF8, 0xFFF8, 0x0FFFFFF8  # end of chain: this value or above
FAT32_CLUSTER_MASK = 0x0FFFFFFF
FIRST_DATA_CLUSTER = 2
FAT_MAX_BYTES = 64 << 20  # the largest FAT we read into memory

# fatgen103 §6: directory entries
DIR_ENTRY = struct.Struct("<11sBBBHHHHHHHI")  # name, attr, NTRes, crt tenth, crt time, crt date, access date,
#                                                first cluster hi, write time, write date, first cluster lo, size
DIR_ENTRY_SIZE = 32
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_LONG_NAME = 0x0F
ENTRY_END = 0x00
ENTRY_FREE = 0xE5
ENTRY_KANJI_E5 = 0x05  # a first byte of 0x05 stands for 0xE5
NTRES_LOWER_BASE = 0x08  # Windows NT: the base name is lower case
NTRES_LOWER_EXT = 0x10  # ... and the extension
LFN_LAST = 0x40
LFN_ORDER_MASK = 0x1F
LFN_CHAR_OFFSETS = (*range(1, 11, 2), *range(14, 26, 2), *range(28, 32, 2))  # 13 UTF-16 units per entry


class FatError(Exception):
    """The volume is damaged or not FAT; the message names the volume."""


@dataclass(frozen=True)
class FatEntry:
    name: str  # the long name when there is one
    short_name: str
    is_dir: bool
    cluster: int
    size: int


class FatVolume:
    def __init__(self, region: Region):
        self.region = region
        try:
            self._read_bpb(region.read(0, 512))
        except RegionError as err:
            raise FatError(str(err)) from None

    def _read_bpb(self, boot: bytes) -> None:
        (_, _, self.sector_size, self.sectors_per_cluster, reserved, fats, root_entries, total16, _, fat16_size,
         _, _, _, total32) = BPB.unpack_from(boot)
        if self.sector_size not in (512, 1024, 2048, 4096) or self.sectors_per_cluster == 0 or fats == 0:
            raise FatError(f"{self.region.name}: not a FAT volume (invalid BPB)")
        fat_size = fat16_size or BPB32_FAT_SIZE.unpack_from(boot, 36)[0]
        total = total16 or total32
        root_sectors = (root_entries * DIR_ENTRY_SIZE + self.sector_size - 1) // self.sector_size
        self.fat_offset = reserved * self.sector_size
        self.fat_bytes = fat_size * self.sector_size
        self.root_offset = (reserved + fats * fat_size) * self.sector_size
        self.root_bytes = root_sectors * self.sector_size
        self.data_offset = self.root_offset + self.root_bytes
        self.cluster_bytes = self.sectors_per_cluster * self.sector_size
        if total * self.sector_size > self.region.size or self.data_offset >= total * self.sector_size:
            raise FatError(f"{self.region.name}: FAT volume larger than its partition, or without a data area")
        self.clusters = (total * self.sector_size - self.data_offset) // self.cluster_bytes
        if self.clusters < FAT12_MAX_CLUSTERS:
            self.bits, self.eoc = 12, FAT12_EOC
        elif self.clusters < FAT16_MAX_CLUSTERS:
            self.bits, self.eoc = 16, FAT16_EOC
        else:
            self.bits, self.eoc = 32, FAT32_EOC
        self.root_cluster = BPB32_ROOT_CLUSTER.unpack_from(boot, 44)[0] if self.bits == 32 else 0
        needed = (self.clusters + FIRST_DATA_CLUSTER) * self.bits // 8 + 1
        if self.fat_bytes < needed or self.fat_bytes > FAT_MAX_BYTES:
            raise FatError(f"{self.region.name}: FAT of {self.fat_bytes} bytes does not fit {self.clusters} clusters")
        self._fat: bytes | None = None

    @property
    def fat_type(self) -> str:
        return f"FAT{self.bits}"

    # --- clusters ---

    def _next(self, cluster: int) -> int:
        if self._fat is None:
            self._fat = self._read(self.fat_offset, self.fat_bytes)
        if self.bits == 12:
            pair = struct.unpack_from("<H", self._fat, cluster + cluster // 2)[0]
            return pair >> 4 if cluster & 1 else pair & 0xFFF
        if self.bits == 16:
            return struct.unpack_from("<H", self._fat, cluster * 2)[0]
        return struct.unpack_from("<I", self._fat, cluster * 4)[0] & FAT32_CLUSTER_MASK

    def _chain(self, first: int, max_bytes: int | None = None):
        """Cluster numbers from ``first``, up to the end of the chain or as many as ``max_bytes`` needs.

        A chain that leaves the volume's clusters or comes back to a cluster it passed is an error.
        """
        limit = None if max_bytes is None else -(-max_bytes // self.cluster_bytes)
        seen = set()
        cluster = first
        while limit is None or len(seen) < limit:
            if not FIRST_DATA_CLUSTER <= cluster < self.clusters + FIRST_DATA_CLUSTER:
                raise FatError(f"{self.region.name}: cluster chain reaches invalid cluster {cluster:#x}")
            if cluster in seen:
                raise FatError(f"{self.region.name}: cluster chain from {first:#x} loops")
            seen.add(cluster)
            yield cluster
            cluster = self._next(cluster)
            if cluster >= self.eoc:
                return

    def _read(self, offset: int, size: int) -> bytes:
        try:
            return self.region.read(offset, size)
        except RegionError as err:
            raise FatError(str(err)) from None

    def _read_cluster(self, cluster: int) -> bytes:
        return self._read(self.data_offset + (cluster - FIRST_DATA_CLUSTER) * self.cluster_bytes, self.cluster_bytes)

    # --- directories ---

    def _directory_bytes(self, cluster: int) -> bytes:
        if cluster == 0 and self.bits != 32:  # the fixed root directory of FAT12/16
            return self._read(self.root_offset, self.root_bytes)
        return b"".join(self._read_cluster(c) for c in self._chain(cluster or self.root_cluster))

    def listdir(self, cluster: int = 0) -> list[FatEntry]:
        """The entries of a directory (cluster 0: the root), without '.' and '..'."""
        data = self._directory_bytes(cluster)
        entries = []
        long_parts: dict[int, str] = {}
        long_sum = None
        for pos in range(0, len(data) - DIR_ENTRY_SIZE + 1, DIR_ENTRY_SIZE):
            raw = data[pos:pos + DIR_ENTRY_SIZE]
            first = raw[0]
            if first == ENTRY_END:
                break
            if first == ENTRY_FREE:
                long_parts, long_sum = {}, None
                continue
            name, attr, ntres, *_, hi, _, _, lo, size = DIR_ENTRY.unpack(raw)
            if attr & 0x3F == ATTR_LONG_NAME:
                if first & LFN_LAST:
                    long_parts, long_sum = {}, raw[13]
                if raw[13] == long_sum:
                    long_parts[first & LFN_ORDER_MASK] = _lfn_chars(raw)
                continue
            if attr & ATTR_VOLUME_ID:
                long_parts, long_sum = {}, None
                continue
            short = _short_name(name, ntres)
            long_name = None
            if long_parts and long_sum == _short_checksum(name) and sorted(long_parts) == list(
                    range(1, len(long_parts) + 1)):
                long_name = "".join(long_parts[i] for i in sorted(long_parts)).split("\0", 1)[0]
            long_parts, long_sum = {}, None
            if short in (".", ".."):
                continue
            cluster_no = (hi << 16 | lo) if self.bits == 32 else lo
            entries.append(FatEntry(long_name or short, short, bool(attr & ATTR_DIRECTORY), cluster_no, size))
        return entries

    def lookup(self, path: str) -> FatEntry | None:
        """The entry at ``path`` ("/EFI/vmboot/CLOUDHV.fd"), matching names case-insensitively; None if absent."""
        parts = [p for p in path.split("/") if p]
        cluster = 0
        entry = None
        for i, part in enumerate(parts):
            wanted = part.casefold()
            entry = next((e for e in self.listdir(cluster)
                          if e.name.casefold() == wanted or e.short_name.casefold() == wanted), None)
            if entry is None:
                return None
            if i < len(parts) - 1:
                if not entry.is_dir:
                    return None
                cluster = entry.cluster
        return entry

    def read_file(self, entry: FatEntry) -> bytes:
        if entry.is_dir:
            raise FatError(f"{self.region.name}: {entry.name} is a directory")
        if entry.size == 0:
            return b""
        if entry.size > self.clusters * self.cluster_bytes:
            raise FatError(f"{self.region.name}: {entry.name} claims {entry.size} bytes, more than the volume holds")
        data = b"".join(self._read_cluster(c) for c in self._chain(entry.cluster, entry.size))
        if len(data) < entry.size:
            raise FatError(f"{self.region.name}: {entry.name}: cluster chain ends before the file does")
        return data[:entry.size]


def _lfn_chars(raw: bytes) -> str:
    """The 13 UTF-16 units of a long-name entry; the name ends at a NUL, padded with 0xFFFF after it."""
    return b"".join(raw[i:i + 2] for i in LFN_CHAR_OFFSETS).decode("utf-16-le", errors="replace")


def _short_name(name: bytes, ntres: int) -> str:
    raw = bytearray(name)
    if raw[0] == ENTRY_KANJI_E5:
        raw[0] = 0xE5
    base = raw[:8].decode("cp437").rstrip()
    ext = raw[8:].decode("cp437").rstrip()
    if ntres & NTRES_LOWER_BASE:
        base = base.lower()
    if ntres & NTRES_LOWER_EXT:
        ext = ext.lower()
    return f"{base}.{ext}" if ext else base


def _short_checksum(name: bytes) -> int:
    """fatgen103 §7: ChkSum() of the 11-byte short name, kept in every long-name entry."""
    total = 0
    for byte in name:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total
