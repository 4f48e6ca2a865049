"""GPT and MBR parsing, checked against sfdisk's own view of image files it wrote (no root needed)."""
from __future__ import annotations

import json
import struct
import subprocess
import uuid
import zlib

import pytest

from vmboot.launcher.partitions import GPT_HEADER, PartitionTableError, read_partition_table
from vmboot.launcher.region import OpenDisk

MiB = 1 << 20
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def sfdisk(image, script: str) -> dict:
    subprocess.run(["sfdisk", "-q", str(image)], input=script, text=True, check=True, capture_output=True)
    out = subprocess.run(["sfdisk", "--json", str(image)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["partitiontable"]


DISK = 16 * MiB


def blank(tmp_path, size=DISK, name="disk.img"):
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def table_of(path):
    with OpenDisk(str(path)) as disk:
        return read_partition_table(disk.region)


def gpt_script():
    return (f"label: gpt\n"
            f"start=2048, size=8192, type={ESP}, name=\"EFI system\"\n"
            f"start=10240, size=4096, type={LINUX}, name=root\n"
            f"start=20480, size=2048, type={LINUX}\n")


def test_gpt_matches_sfdisk(tmp_path):
    image = blank(tmp_path)
    expected = sfdisk(image, gpt_script())
    table = table_of(image)
    assert table.scheme == "gpt" and table.warnings == []
    assert [(p.number, p.start, p.size, p.type.upper(), p.guid.upper()) for p in table.partitions] == [
        (int(e["node"].removeprefix(str(image))), e["start"] * 512, e["size"] * 512, e["type"], e["uuid"])
        for e in expected["partitions"]]
    assert [p.name for p in table.partitions] == ["EFI system", "root", ""]


def test_gpt_numbers_follow_entry_slots(tmp_path):
    """An empty slot keeps its number, as Linux numbers /dev/sdXN."""
    image = blank(tmp_path)
    sfdisk(image, f"label: gpt\n3: start=2048, size=2048, type={LINUX}\n5: start=8192, size=2048, type={ESP}\n")
    assert [(p.number, p.start) for p in table_of(image).partitions] == [(3, 2048 * 512), (5, 8192 * 512)]


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("offset, problem", [
    (512 + 24, "header CRC32 mismatch"),  # inside the primary header (MyLBA)
    (1024 + 40, "partition entry array CRC32 mismatch"),  # inside the first primary entry
    (512, "no 'EFI PART' signature"),
])
def test_damaged_primary_gpt_falls_back_to_the_backup(tmp_path, offset, problem):
    image = blank(tmp_path)
    sfdisk(image, gpt_script())
    good = table_of(image).partitions
    _flip(image, offset)
    table = table_of(image)
    assert table.partitions == good
    assert table.warnings == [f"primary GPT header at LBA 1: {problem}; using the backup"]


def test_both_gpt_headers_damaged_is_an_error(tmp_path):
    image = blank(tmp_path)
    sfdisk(image, gpt_script())
    _flip(image, 512 + 24)
    _flip(image, DISK - 512 + 24)
    with pytest.raises(PartitionTableError) as err:
        table_of(image)
    last = DISK // 512 - 1
    assert str(err.value) == (f"GPT unusable: primary GPT header at LBA 1: header CRC32 mismatch; "
                              f"backup GPT header at LBA {last}: header CRC32 mismatch")


def test_protective_mbr_without_any_gpt_is_an_error(tmp_path):
    image = blank(tmp_path, 8 * MiB)
    mbr = bytearray(512)
    struct.pack_into("<B3sB3sII", mbr, 446, 0, b"", 0xEE, b"", 1, 8 * MiB // 512 - 1)
    mbr[510:512] = b"\x55\xaa"
    image.write_bytes(bytes(mbr) + bytes(8 * MiB - 512))
    with pytest.raises(PartitionTableError, match="no 'EFI PART' signature"):
        table_of(image)


def test_gpt_entry_outside_the_usable_area_is_skipped_with_a_warning(tmp_path):
    image = blank(tmp_path)
    sfdisk(image, gpt_script())
    data = bytearray(image.read_bytes())
    struct.pack_into("<Q", data, 1024 + 128 + 40, 10 ** 9)  # entry 2's last LBA, far past the disk
    _fix_gpt_crcs(data, 512)
    image.write_bytes(bytes(data))
    table = table_of(image)
    assert [p.number for p in table.partitions] == [1, 3]
    assert table.warnings == [f"partition 2 (LBA 10240-{10 ** 9}) lies outside the usable area"]


def _fix_gpt_crcs(data: bytearray, sector: int) -> None:
    """Recompute the primary header's CRCs after an edit of its entry array (the backup is left stale)."""
    fields = list(GPT_HEADER.unpack_from(data, sector))
    entries_lba, count, size = fields[10], fields[11], fields[12]
    fields[13] = zlib.crc32(data[entries_lba * sector:entries_lba * sector + count * size])
    fields[3] = 0
    GPT_HEADER.pack_into(data, sector, *fields)
    struct.pack_into("<I", data, sector + 16, zlib.crc32(data[sector:sector + fields[2]]))


def test_gpt_on_4096_byte_sectors(tmp_path):
    """Image files may come from 4Kn disks: the header is then at byte 4096."""
    sector, sectors = 4096, 2048
    data = bytearray(sector * sectors)
    data[446 + 4] = 0xEE
    struct.pack_into("<II", data, 446 + 8, 1, sectors - 1)
    data[510:512] = b"\x55\xaa"
    entry = struct.pack("<16s16sQQQ72s", uuid.UUID(LINUX).bytes_le, uuid.uuid4().bytes_le, 256, 511, 0,
                        "data".encode("utf-16-le"))
    data[2 * sector:2 * sector + 128] = entry
    header = [b"EFI PART", 0x10000, 92, 0, 0, 1, sectors - 1, 6, sectors - 6, uuid.uuid4().bytes_le, 2, 4, 128, 0]
    GPT_HEADER.pack_into(data, sector, *header)
    _fix_gpt_crcs(data, sector)
    image = tmp_path / "4kn.img"
    image.write_bytes(bytes(data))
    table = table_of(image)
    assert [(p.number, p.start, p.size, p.name) for p in table.partitions] == [(1, 256 * sector, 256 * sector, "data")]
    assert table.warnings == []


def test_mbr_primaries_and_logicals_match_sfdisk(tmp_path):
    image = blank(tmp_path, 64 * MiB)
    expected = sfdisk(image, "label: dos\nstart=2048,size=8192,type=83\nstart=10240,size=40000,type=5\n"
                             "start=12288,size=4096,type=c\nstart=18432,size=4096,type=83\n"
                             "start=60000,size=2000,type=7\n")
    table = table_of(image)
    assert table.scheme == "mbr" and table.warnings == []
    got = sorted((p.number, p.start, p.size, p.type) for p in table.partitions)
    want = sorted((int(e["node"].removeprefix(str(image))), e["start"] * 512, e["size"] * 512,
                   f"{int(e['type'], 16):#04x}") for e in expected["partitions"] if e["type"] != "5")
    assert got == want
    assert [p.number for p in table.partitions] == [1, 3, 5, 6]


def test_looping_ebr_chain_stops_with_a_warning(tmp_path):
    image = blank(tmp_path, 32 * MiB)
    sfdisk(image, "label: dos\nstart=2048,size=40000,type=5\nstart=4096,size=4096,type=83\n"
                  "start=10240,size=4096,type=83\n")
    data = bytearray(image.read_bytes())
    link = struct.unpack_from("<B3sB3sII", data, 2048 * 512 + 446 + 16)  # first EBR, at the extended start
    second = 2048 + link[4]
    assert data[second * 512 + 510:second * 512 + 512] == b"\x55\xaa"
    struct.pack_into("<B3sB3sII", data, second * 512 + 446 + 16, 0, b"", 0x05, b"", link[4], 1)  # to itself
    image.write_bytes(bytes(data))
    table = table_of(image)
    assert [(p.number, p.start) for p in table.partitions] == [(5, 4096 * 512), (6, 10240 * 512)]
    assert table.warnings == [f"extended partition: EBR chain points to sector {second}, outside or looping"]


def test_fat_superfloppy_with_a_fake_mbr_entry_has_no_table(tmp_path):
    """mkfs.fat 4.2 writes a partition entry starting at sector 0 into the boot sector of a whole-disk FAT."""
    image = blank(tmp_path, 16 * MiB)
    subprocess.run(["mkfs.vfat", "--mbr=y", str(image)], check=True, capture_output=True)
    assert image.read_bytes()[446 + 4] != 0  # the fake entry is there
    assert table_of(image).scheme == "none"


def test_blank_disk_has_no_table(tmp_path):
    assert table_of(blank(tmp_path, MiB)).scheme == "none"
