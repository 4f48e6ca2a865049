"""Fixtures the block device tests share: guest RAM, a disk image of random sectors, and a Rig on it."""
from __future__ import annotations

import os

import pytest

from vmboot.abi.memory import GuestMemory
from vmboot.tests.blk_rig import DISK_SECTORS, MEM_SIZE, SECTOR, Rig, make_disk


@pytest.fixture
def mem():
    with GuestMemory(MEM_SIZE) as m:
        yield m


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    return path, make_disk(path, DISK_SECTORS * SECTOR)


@pytest.fixture
def disk(image):
    path, data = image
    fd = os.open(path, os.O_RDWR)
    yield path, data, fd
    os.close(fd)


@pytest.fixture
def rig(mem, disk):
    return Rig(mem, disk[2], serial="vmboot-test")
