"""Guest memory laid out for the SplitQueue tests (devices/virtio/test_queue*.py), and helpers to read it."""
from __future__ import annotations

import ctypes
import struct

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_SIZE
from vmboot.devices.virtio.queue import SplitQueue

MEM_SIZE = 0x100000  # 1 MiB of guest RAM: everything from 0x100000 up is outside it
RING_ARENA = (0x1000, 0x10000)
SIZE = 8
DATA = 0x20000  # request buffers
TABLE = 0x40000  # indirect tables

DESC = struct.Struct("<QIHH")
NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT


def queue(mem, drv, indirect=False, event_idx=False) -> SplitQueue:
    return SplitQueue(mem, drv.size, drv.desc, drv.avail, drv.used, indirect=indirect, event_idx=event_idx)


def gpa_of(mem: GuestMemory, view: memoryview) -> int:
    """The guest address a view of guest RAM starts at (the tests run in one low region)."""
    base = ctypes.addressof(ctypes.c_char.from_buffer(view))
    return base - mem.host_base


def ranges(mem, views) -> list[tuple[int, int]]:
    return [(gpa_of(mem, v), len(v)) for v in views]


def write_table(mem, gpa: int, descs: list[tuple[int, int, int, int]]) -> None:
    for i, d in enumerate(descs):
        mem.write(gpa + i * VIRTQ_DESC_SIZE, DESC.pack(*d))
