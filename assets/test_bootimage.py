"""The image pieces (assets/bootimage.py), read back by the tools that consume them.

The cpio archive's header bytes against the newc format, and the archive as GNU
cpio lists and extracts it; the UKI's section layout against systemd-stub's
rule (each section after the previous, aligned); the FAT disk as its boot
sector, mtools and fsck.fat see it.
"""
from __future__ import annotations

import os
import re
import subprocess

from vmboot.assets import bootimage


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(args, capture_output=True, check=True, env=env, **kw)


def test_cpio_newc_header_bytes():
    archive = bootimage.cpio_newc([bootimage.CpioEntry("init", 0o100755, b"abc")])
    header = (b"070701" + b"00000001" + b"000081ED" + b"00000000" * 2 + b"00000001" + b"00000000"
              + b"00000003" + b"00000000" * 4 + b"00000005" + b"00000000")
    assert archive.startswith(header + b"init\0" + b"\0" + b"abc\0")  # name and data padded to 4 bytes
    trailer = archive[len(header) + 6 + 4:]
    assert trailer.startswith(b"070701" + b"00000000")
    assert b"TRAILER!!!\0" in trailer
    assert len(archive) % 4 == 0


def test_cpio_newc_is_read_back_by_gnu_cpio(tmp_path):
    entries = [bootimage.CpioEntry("dev", 0o040755), bootimage.CpioEntry("dev/console", 0o020600, rdev=(5, 1)),
               bootimage.CpioEntry("bin", 0o040755), bootimage.CpioEntry("bin/hello", 0o100755, b"#!/bin/sh\necho hi\n")]
    archive = bootimage.cpio_newc(entries)
    listing = run(["cpio", "-t", "-v", "--quiet"], input=archive).stdout.decode().splitlines()
    assert [line.split()[-1] for line in listing] == ["dev", "dev/console", "bin", "bin/hello"]
    assert [line.split()[0] for line in listing] == ["drwxr-xr-x", "crw-------", "drwxr-xr-x", "-rwxr-xr-x"]
    assert re.search(r"\s5,\s+1\s", listing[1])
    content = run(["cpio", "-i", "--to-stdout", "--quiet", "bin/hello"], input=archive).stdout
    assert content == b"#!/bin/sh\necho hi\n"


def test_uki_layout_aligns_each_section_after_the_previous():
    layout = bootimage.uki_layout(0x19134, 0x1000, [(".osrel", 0x49), (".cmdline", 0x1000), (".linux", 0x7DD7C0),
                                                 (".initrd", 1)])
    assert layout == [(".osrel", 0x1A000), (".cmdline", 0x1B000), (".linux", 0x1C000), (".initrd", 0x7FA000)]


def test_make_fat_makes_a_superfloppy_with_the_files(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"payload")
    image = tmp_path / "disk.img"
    bootimage.make_fat(image, 4 << 20, "TESTVOL", 0x12345678, {"A/B/X.BIN": tmp_path / "x.bin"})
    assert image.stat().st_size == 4 << 20
    sector = image.read_bytes()[:512]
    assert sector[0x36:0x3E] == b"FAT12   "  # the BPB's file system type: a FAT boot sector at byte 0
    assert sector[0x27:0x2B] == (0x12345678).to_bytes(4, "little")  # volume serial
    assert sector[bootimage.MBR_PARTITION_TABLE:510] == bytes(64)  # no fake partition 1
    assert sector[510:] == b"\x55\xaa"
    assert run(["mtype", "-i", str(image), "::/A/B/X.BIN"]).stdout == b"payload"
    assert "TESTVOL" in run(["mdir", "-i", str(image), "::/"]).stdout.decode()
    run(["fsck.fat", "-n", str(image)])
