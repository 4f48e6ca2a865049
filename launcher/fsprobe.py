"""Recognise a file system by its on-disk signature, as blkid does, without mounting it."""
from __future__ import annotations

import struct

from .region import Region, RegionError

# Supported: vmboot reads these (fat.py, iso9660.py) or mounts them (mountns.py).
XFS = "xfs"
EXT4 = "ext4"  # ext2, ext3 and ext4: the ext4 driver mounts all three
VFAT = "vfat"
ISO9660 = "iso9660"
SUPPORTED = (XFS, EXT4, VFAT, ISO9660)

# xfs_format.h: struct xfs_dsb starts with sb_magicnum
XFS_SB_MAGIC = b"XFSB"
# ext4.h: the superblock is at byte 1024, s_magic at offset 0x38 in it
EXT_SUPERBLOCK_OFFSET = 1024
EXT_MAGIC_OFFSET = EXT_SUPERBLOCK_OFFSET + 0x38
EXT_SUPER_MAGIC = 0xEF53
# ECMA-119 §8.1: volume descriptors from sector 16 (2048 bytes), standard identifier at byte 1
ISO_VD_OFFSET = 16 * 2048
ISO_STANDARD_ID = b"CD001"

# Recognised only to name them in "unsupported" reports.
OTHER_SIGNATURES = (
    (0, b"LUKS\xba\xbe", "crypto_LUKS"),
    (0, b"hsqs", "squashfs"),
    (3, b"NTFS    ", "ntfs"),
    (0x10040, b"_BHRfS_M", "btrfs"),
    (4096 - 10, b"SWAPSPACE2", "swap"),  # at the end of the first 4 KiB page
    (0x1000, b"\xfc\x4e\x2b\xa9", "md_raid"),  # md superblock 1.2, at 4 KiB
)

# Microsoft FAT specification (fatgen103) §3: the BIOS parameter block
FAT_BPB = struct.Struct("<3s8sHBHBHHBHHHII")  # jump, OEM, bytes/sector, sectors/cluster, reserved, FATs,
#                                               root entries, total16, media, FAT size16, ...
FAT_SECTOR_SIZES = (512, 1024, 2048, 4096)
FAT_BOOT_SIGNATURE = b"\x55\xaa"


def probe(region: Region) -> str | None:
    """The file system on ``region``: one of SUPPORTED, another name (unsupported), or None."""
    def at(offset: int, size: int) -> bytes:
        if offset + size > region.size:
            return b""
        try:
            return region.read(offset, size)
        except RegionError:
            return b""

    if at(0, 4) == XFS_SB_MAGIC:
        return XFS
    magic = at(EXT_MAGIC_OFFSET, 2)
    if magic and struct.unpack("<H", magic)[0] == EXT_SUPER_MAGIC:
        return EXT4
    if at(ISO_VD_OFFSET + 1, 5) == ISO_STANDARD_ID:
        return ISO9660
    if is_fat_boot_sector(at(0, 512)):
        return VFAT
    for offset, signature, name in OTHER_SIGNATURES:
        if at(offset, len(signature)) == signature:
            return name
    return None


def is_fat_boot_sector(sector: bytes) -> bool:
    """fatgen103's checks on a BPB: sector size, power-of-two cluster size, reserved sectors, FAT count."""
    if len(sector) < 512 or sector[510:512] != FAT_BOOT_SIGNATURE:
        return False
    jump, _, bytes_per_sector, per_cluster, reserved, fats, _, _, media, *_ = FAT_BPB.unpack_from(sector)
    return (jump[0] in (0xEB, 0xE9)
            and bytes_per_sector in FAT_SECTOR_SIZES
            and per_cluster in (1, 2, 4, 8, 16, 32, 64, 128)
            and reserved >= 1
            and fats >= 1
            and (media == 0xF0 or media >= 0xF8))
