"""The real work that proves the virtio_blk policy: requests through a real virtqueue.

The exercise runner (core/exercise.py) starts the real device process, sandboxed,
and hands this a bench: guest memory, the device's proxy and its kick and call
eventfds, and the disk the device serves. Here the driver's side of the queue
(devices/virtio/driver.py) writes requests into guest memory and kicks, as a
guest's driver would; every request type the device offers runs, and each
result is checked on the disk and in guest memory.
"""
from __future__ import annotations

import os
import struct

from vmboot.abi.virtio import (
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_SECTOR_SIZE, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, QueueSetup,
)
from vmboot.devices.registry import ExerciseFailed
from vmboot.devices.virtio.driver import Arena, QueueDriver, Segment, kick_and_wait

HEADER = struct.Struct("<IIQ")
RANGE = struct.Struct("<QII")  # a discard or write-zeroes segment: sector, count, flags
QUEUE_SIZE = 64
ROUNDS = 40


class Requests:
    def __init__(self, bench):
        self.bench = bench
        memory = bench.memory
        arena = Arena(0x10000, memory.size)
        self.driver = QueueDriver(memory, arena, QUEUE_SIZE)
        self.header, self.status = arena.alloc(HEADER.size), arena.alloc(1)
        self.data = arena.alloc(1 << 20, 4096)
        backend = bench.backend
        backend.activate(backend.features, [QueueSetup(0, QUEUE_SIZE, self.driver.desc, self.driver.avail,
                                                       self.driver.used)])
        self.served = 0

    def do(self, kind: int, sector: int, data: int = 0, writable: bool = False) -> int:
        memory = self.bench.memory
        memory.write(self.header, HEADER.pack(kind, 0, sector))
        memory.write(self.status, b"\xff")
        segments = [Segment(self.header, HEADER.size)]
        if data:
            half = max(VIRTIO_BLK_SECTOR_SIZE, data // 2 // VIRTIO_BLK_SECTOR_SIZE * VIRTIO_BLK_SECTOR_SIZE)
            segments += [Segment(self.data, half, writable), Segment(self.data + half, data - half, writable)] \
                if data > half else [Segment(self.data, data, writable)]
        self.driver.add(segments + [Segment(self.status, 1, True)])
        kick_and_wait(self.bench.backend.kick_fds[0], self.bench.backend.call_fds[0], self.driver, 1)
        self.served += 1
        return memory.read(self.status, 1)[0]


def exercise(bench) -> int:
    """Every request type, checked; returns how many requests the device served."""
    r, memory, disk = Requests(bench), bench.memory, bench.disk_fd
    for i in range(ROUNDS):
        sector, length = (i * 7 % 64) * 8, (1 + i % 16) * 4096
        payload = os.urandom(length)
        memory.write(r.data, payload)
        if r.do(VIRTIO_BLK_T_OUT, sector, length) != VIRTIO_BLK_S_OK or \
                os.pread(disk, length, sector * VIRTIO_BLK_SECTOR_SIZE) != payload:
            raise ExerciseFailed(f"a write of {length} bytes at sector {sector} is not on the disk")
        memory.write(r.data, bytes(length))
        if r.do(VIRTIO_BLK_T_IN, sector, length, writable=True) != VIRTIO_BLK_S_OK or \
                memory.read(r.data, length) != payload:
            raise ExerciseFailed(f"a read of {length} bytes at sector {sector} differs from the disk")
    if r.do(VIRTIO_BLK_T_FLUSH, 0) != VIRTIO_BLK_S_OK:
        raise ExerciseFailed("FLUSH failed")
    for kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        memory.write(r.data, RANGE.pack(128, 128, 0))
        if r.do(kind, 0, RANGE.size) != VIRTIO_BLK_S_OK:
            raise ExerciseFailed(f"request type {kind} failed")
        if os.pread(disk, 128 * VIRTIO_BLK_SECTOR_SIZE, 128 * VIRTIO_BLK_SECTOR_SIZE) != bytes(65536):
            raise ExerciseFailed(f"request type {kind} left data behind")
    if r.do(VIRTIO_BLK_T_GET_ID, 0, VIRTIO_BLK_ID_BYTES, writable=True) != VIRTIO_BLK_S_OK or \
            memory.read(r.data, VIRTIO_BLK_ID_BYTES).rstrip(b"\0").decode() != bench.serial:
        raise ExerciseFailed("GET_ID did not return the disk's serial")
    if r.do(VIRTIO_BLK_T_IN, os.fstat(disk).st_size // VIRTIO_BLK_SECTOR_SIZE, 4096, writable=True) \
            != VIRTIO_BLK_S_IOERR:
        raise ExerciseFailed("a read past the end of the disk did not fail")
    return r.served
