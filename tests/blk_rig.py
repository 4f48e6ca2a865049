"""A guest driver and a VirtioBlk sharing one queue, for devices/virtio_blk/test_blk*.py.

Requests are built, placed in guest memory and completed as a guest would."""
from __future__ import annotations

import os
import random
import struct

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import (
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
)
from vmboot.devices.virtio.driver import Arena, QueueDriver, Segment
from vmboot.devices.virtio.queue import SplitQueue
from vmboot.devices.virtio_blk.blk import VirtioBlk

SECTOR = 512
DISK_SECTORS = 128  # 64 KiB
MEM_SIZE = 0x400000
QSIZE = 16
FILL = 0xEE  # what device-writable buffers hold before the device writes them
IN, OUT, FLUSH, GET_ID = VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID
DISCARD, WRITE_ZEROES = VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES
OK, IOERR, UNSUPP = VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP


def header(kind: int, sector: int = 0, reserved: int = 0) -> bytes:
    return struct.pack("<IIQ", kind, reserved, sector)  # struct virtio_blk_req's header (§5.2.6)


def segment(sector: int, count: int, flags: int = 0) -> bytes:
    return struct.pack("<QII", sector, count, flags)  # struct virtio_blk_discard_write_zeroes


def make_disk(path, size: int, seed: int = 1) -> bytes:
    data = random.Random(seed).randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return data


class Done:
    """One completed request: the used-ring length and the device-writable buffers afterwards."""

    def __init__(self, written: int, bufs: list[bytes]):
        self.written = written
        self.bufs = bufs

    @property
    def status(self) -> int:
        return self.bufs[-1][-1]


class Rig:
    """A guest driver and a VirtioBlk sharing one queue in guest memory."""

    def __init__(self, mem: GuestMemory, fd: int, readonly: bool = False, serial: str = ""):
        self.mem = mem
        self.drv = QueueDriver(mem, Arena(0x1000, 0x10000), QSIZE)
        self.arena = Arena(0x10000, MEM_SIZE)
        self.blk = VirtioBlk(fd, readonly=readonly, serial=serial)
        self.queue = SplitQueue(mem, QSIZE, self.drv.desc, self.drv.avail, self.drv.used, indirect=True)

    def place(self, parts: list[bytes | int]) -> tuple[list[Segment], list[Segment]]:
        """bytes: a device-readable buffer holding them; int: a device-writable buffer of that size."""
        segs = []
        for part in parts:
            if isinstance(part, int):
                gpa = self.arena.alloc(max(part, 1))
                self.mem.write(gpa, bytes([FILL]) * part)
                segs.append(Segment(gpa, part, True))
            else:
                gpa = self.arena.alloc(max(len(part), 1))
                self.mem.write(gpa, part)
                segs.append(Segment(gpa, len(part)))
        return segs, [s for s in segs if s.writable]

    def do(self, parts: list[bytes | int], indirect: bool = False) -> Done:
        segs, writable = self.place(parts)
        if indirect:
            head = self.drv.add_indirect(segs, self.arena.alloc(16 * len(segs)))
        else:
            head = self.drv.add(segs)
        assert self.blk.process(self.queue) is True
        [(done_head, written)] = self.drv.completions()
        assert done_head == head
        return Done(written, [self.mem.read(s.gpa, s.length) for s in writable])


def contents(path) -> bytes:
    return path.read_bytes()
