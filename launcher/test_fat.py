"""The user-space FAT reader, on volumes made by mkfs.fat and filled by mtools (no root needed)."""
from __future__ import annotations

import os
import struct
import subprocess

import pytest

from vmboot.launcher.fat import FatError, FatVolume
from vmboot.launcher.region import OpenDisk

MiB = 1 << 20


def make_fat(tmp_path, bits: int, size: int, extra: list[str] = ()):
    image = tmp_path / f"fat{bits}.img"
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.fat", "-F", str(bits), *extra, str(image)], check=True, capture_output=True)
    return image


def mtools(*args):
    subprocess.run(list(args), check=True, capture_output=True, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


def volume(image) -> tuple[OpenDisk, FatVolume]:
    disk = OpenDisk(str(image))
    return disk, FatVolume(disk.region)


@pytest.mark.parametrize("bits, size, extra", [(12, 2 * MiB, []), (16, 32 * MiB, []), (32, 48 * MiB, ["-s", "1"])])
def test_reads_files_in_subdirectories_by_long_and_short_name(tmp_path, bits, size, extra):
    image = make_fat(tmp_path, bits, size, extra)
    payload = os.urandom(300_000)  # many clusters
    (tmp_path / "CLOUDHV.fd").write_bytes(payload)
    (tmp_path / "vmboot.toml").write_text('memory = "2G"\n')
    mtools("mmd", "-i", str(image), "::/EFI", "::/EFI/vmboot")
    mtools("mcopy", "-i", str(image), str(tmp_path / "CLOUDHV.fd"), str(tmp_path / "vmboot.toml"), "::/EFI/vmboot/")
    disk, fat = volume(image)
    with disk:
        assert fat.fat_type == f"FAT{bits}"
        entry = fat.lookup("/EFI/vmboot/CLOUDHV.fd")
        assert (entry.name, entry.size, entry.is_dir) == ("CLOUDHV.fd", len(payload), False)
        assert fat.read_file(entry) == payload
        assert fat.lookup("/efi/VMBOOT/cloudhv.FD") == entry  # FAT names are case-insensitive
        toml = fat.lookup("/EFI/vmboot/vmboot.toml")
        assert toml.short_name == "VMBOOT~1.TOM"
        assert fat.read_file(toml) == b'memory = "2G"\n'
        assert fat.lookup("/EFI/vmboot/VMBOOT~1.TOM") == toml
        assert [e.name for e in fat.listdir()] == ["EFI"]
        assert fat.lookup("/CLOUDHV.fd") is None
        assert fat.lookup("/EFI/vmboot/CLOUDHV.fd/x") is None


def test_fragmented_file_follows_its_cluster_chain(tmp_path):
    image = make_fat(tmp_path, 16, 8 * MiB, ["-s", "1"])
    for name, size in (("a.bin", 20_000), ("b.bin", 20_000), ("c.bin", 20_000)):
        (tmp_path / name).write_bytes(b"x" * size)
        mtools("mcopy", "-i", str(image), str(tmp_path / name), "::/")
    mtools("mdel", "-i", str(image), "::/a.bin", "::/c.bin")  # two holes around b.bin
    big = os.urandom(60_000)
    (tmp_path / "big.bin").write_bytes(big)
    mtools("mcopy", "-i", str(image), str(tmp_path / "big.bin"), "::/")
    disk, fat = volume(image)
    with disk:
        entry = fat.lookup("/big.bin")
        chain = list(fat._chain(entry.cluster))
        assert any(b - a != 1 for a, b in zip(chain, chain[1:]))  # it really is fragmented
        assert fat.read_file(entry) == big
        assert sorted(e.name for e in fat.listdir()) == ["b.bin", "big.bin"]  # deleted entries are gone


def test_lowercase_short_names_use_the_nt_case_flags(tmp_path):
    image = make_fat(tmp_path, 12, 2 * MiB)
    (tmp_path / "boot.efi").write_bytes(b"abc")
    mtools("mcopy", "-i", str(image), str(tmp_path / "boot.efi"), "::/")
    disk, fat = volume(image)
    with disk:
        [entry] = fat.listdir()
        assert entry.name == "boot.efi"
        assert fat.read_file(entry) == b"abc"


def test_a_looping_cluster_chain_is_an_error_not_a_hang(tmp_path):
    image = make_fat(tmp_path, 16, 8 * MiB, ["-s", "1"])
    (tmp_path / "f.bin").write_bytes(b"y" * 5000)
    mtools("mcopy", "-i", str(image), str(tmp_path / "f.bin"), "::/")
    disk, fat = volume(image)
    with disk:
        entry = fat.lookup("/f.bin")
    data = bytearray(image.read_bytes())
    second = entry.cluster + 1
    struct.pack_into("<H", data, fat.fat_offset + 2 * second, entry.cluster)  # its 2nd cluster leads back to the 1st
    image.write_bytes(bytes(data))
    disk, fat = volume(image)
    with disk, pytest.raises(FatError, match=f"cluster chain from {entry.cluster:#x} loops"):
        fat.read_file(fat.lookup("/f.bin"))


def test_a_chain_shorter_than_the_file_is_an_error(tmp_path):
    image = make_fat(tmp_path, 16, 8 * MiB, ["-s", "1"])
    (tmp_path / "f.bin").write_bytes(b"y" * 5000)
    mtools("mcopy", "-i", str(image), str(tmp_path / "f.bin"), "::/")
    data = bytearray(image.read_bytes())
    disk, fat = volume(image)
    with disk:
        entry_at = data.index(b"F       BIN", fat.root_offset)
    struct.pack_into("<I", data, entry_at + 28, 50_000)  # the file claims ten times its clusters
    image.write_bytes(bytes(data))
    disk, fat = volume(image)
    with disk, pytest.raises(FatError, match="f.bin: cluster chain ends before the file does"):
        fat.read_file(fat.lookup("/f.bin"))


def test_not_fat_is_an_error(tmp_path):
    image = tmp_path / "zero.img"
    image.write_bytes(bytes(MiB))
    with OpenDisk(str(image)) as disk, pytest.raises(FatError, match="not a FAT volume"):
        FatVolume(disk.region)
