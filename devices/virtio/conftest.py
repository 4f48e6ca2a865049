"""Fixtures the SplitQueue tests share: 1 MiB of guest RAM and a guest driver's queue in it."""
from __future__ import annotations

import pytest

from vmboot.abi.memory import GuestMemory
from vmboot.devices.virtio.driver import Arena, QueueDriver
from vmboot.tests.virtio_rig import MEM_SIZE, RING_ARENA, SIZE


@pytest.fixture
def mem():
    with GuestMemory(MEM_SIZE) as m:
        yield m


@pytest.fixture
def drv(mem):
    return QueueDriver(mem, Arena(*RING_ARENA), SIZE)
