"""core/disk.py: opening and locking disk images for vmboot-core's --disk."""
from __future__ import annotations

import os
import random

import pytest

from vmboot.abi.errors import VmbootError
from vmboot.core.disk import DiskSpec, open_disk


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    path.write_bytes(random.Random(1).randbytes(64 << 10))
    return path, path.read_bytes()


def test_open_missing_image(tmp_path):
    with pytest.raises(VmbootError, match=f"^--disk {tmp_path}/nope.img: no such file$"):
        open_disk(DiskSpec(tmp_path / "nope.img"))


def test_open_directory(tmp_path):
    with pytest.raises(VmbootError, match=f"^--disk {tmp_path}: Is a directory$"):
        open_disk(DiskSpec(tmp_path))
    with pytest.raises(VmbootError, match=f"^--disk {tmp_path}: not a regular file or a block device$"):
        open_disk(DiskSpec(tmp_path, readonly=True))


@pytest.mark.parametrize("size", [0, 100, 511, 1000, 4096 + 1])
def test_open_image_of_odd_size(tmp_path, size):
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(size))
    with pytest.raises(VmbootError, match=f"^--disk {path}: size {size} is not a positive multiple of 512 bytes$"):
        open_disk(DiskSpec(path))


def test_open_char_device_is_refused():
    with pytest.raises(VmbootError, match="^--disk /dev/null: not a regular file or a block device$"):
        open_disk(DiskSpec("/dev/null", readonly=True))


def test_open_gives_a_close_on_exec_descriptor_at_the_start(image):
    path, _ = image
    fd = open_disk(DiskSpec(path))
    try:
        assert not os.get_inheritable(fd)
        assert os.fstat(fd).st_ino == os.stat(path).st_ino
    finally:
        os.close(fd)


def test_writable_image_is_locked_against_every_other_open(image):
    path, _ = image
    fd = open_disk(DiskSpec(path))
    try:
        for readonly in (False, True):
            with pytest.raises(VmbootError, match=f"^--disk {path}: in use by another VM \\(it is locked\\)$"):
                open_disk(DiskSpec(path, readonly=readonly))
    finally:
        os.close(fd)
    os.close(open_disk(DiskSpec(path)))  # the lock went with the descriptor


def test_read_only_image_can_be_shared_but_not_written(image):
    path, _ = image
    first = open_disk(DiskSpec(path, readonly=True))
    second = open_disk(DiskSpec(path, readonly=True))
    try:
        with pytest.raises(VmbootError, match="in use by another VM"):
            open_disk(DiskSpec(path))
        with pytest.raises(OSError):
            os.write(first, b"x")  # opened read-only
    finally:
        os.close(first)
        os.close(second)
