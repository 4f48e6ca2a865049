"""The in-process virtio backend (core/virtio_host.py): a device model on a worker thread,
woken by the kick eventfd, answering on the call eventfd, as --devices inproc runs virtio_blk."""
from __future__ import annotations

import os
import random
import struct
import time

import pytest

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import VIRTIO_BLK_S_OK, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, QueueSetup
from vmboot.core.virtio_host import InprocBackend
from vmboot.devices.virtio.driver import Arena, QueueDriver, Segment, kick_and_wait
from vmboot.devices.virtio_blk.blk import VirtioBlk

SECTOR = 512
MEM_SIZE = 0x400000
QSIZE = 16
IN, OUT, OK = VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_S_OK


def header(kind: int, sector: int) -> bytes:
    return struct.pack("<IIQ", kind, 0, sector)  # struct virtio_blk_req's header (VIRTIO 1.2 §5.2.6)


def contents(path) -> bytes:
    return path.read_bytes()


@pytest.fixture
def mem():
    with GuestMemory(MEM_SIZE) as m:
        yield m


@pytest.fixture
def disk(tmp_path):
    path = tmp_path / "disk.img"
    data = random.Random(1).randbytes(128 * SECTOR)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDWR)
    yield path, data, fd
    os.close(fd)


def test_requests_through_the_worker_thread(mem, disk):
    path, data, fd = disk
    blk = VirtioBlk(fd)
    backend = InprocBackend(blk, mem)
    try:
        drv = QueueDriver(mem, Arena(0x1000, 0x10000), QSIZE)
        backend.activate(blk.features, [QueueSetup(0, QSIZE, drv.desc, drv.avail, drv.used)])
        arena = Arena(0x10000, MEM_SIZE)
        hdr, buf, status = arena.alloc(16), arena.alloc(4 * SECTOR), arena.alloc(1)
        payload = random.Random(9).randbytes(4 * SECTOR)
        mem.write(hdr, header(OUT, 40))
        mem.write(buf, payload)
        head = drv.add([Segment(hdr, 16), Segment(buf, 4 * SECTOR), Segment(status, 1, True)])
        assert kick_and_wait(backend.kick_fds[0], backend.call_fds[0], drv, 1) == [(head, 1)]
        assert mem.read(status, 1) == bytes([OK])
        assert contents(path) == data[: 40 * SECTOR] + payload + data[44 * SECTOR :]

        mem.write(hdr, header(IN, 42))
        mem.write(buf, bytes(4 * SECTOR))
        head = drv.add([Segment(hdr, 16), Segment(buf, 4 * SECTOR, True), Segment(status, 1, True)])
        assert kick_and_wait(backend.kick_fds[0], backend.call_fds[0], drv, 1) == [(head, 4 * SECTOR + 1)]
        assert mem.read(buf, 4 * SECTOR) == payload[2 * SECTOR :] + data[44 * SECTOR : 46 * SECTOR]
    finally:
        backend.close()


def test_worker_keeps_serving_after_a_broken_queue_is_reset(mem, disk):
    _, data, fd = disk
    blk = VirtioBlk(fd)
    backend = InprocBackend(blk, mem)
    try:
        drv = QueueDriver(mem, Arena(0x1000, 0x10000), QSIZE)
        setup = [QueueSetup(0, QSIZE, drv.desc, drv.avail, drv.used)]
        backend.activate(blk.features, setup)
        mem.write(drv.avail + 2, struct.pack("<H", QSIZE + 1))  # a ring gone bad
        os.eventfd_write(backend.kick_fds[0], 1)
        deadline = time.monotonic() + 5
        while not backend.worker.broken and time.monotonic() < deadline:
            time.sleep(0.002)
        assert backend.worker.broken == {0}
        backend.reset()
        drv = QueueDriver(mem, Arena(0x1000, 0x10000), QSIZE)  # the driver starts over
        backend.activate(blk.features, setup)
        arena = Arena(0x10000, MEM_SIZE)
        hdr, buf, status = arena.alloc(16), arena.alloc(SECTOR), arena.alloc(1)
        mem.write(hdr, header(IN, 2))
        head = drv.add([Segment(hdr, 16), Segment(buf, SECTOR, True), Segment(status, 1, True)])
        assert kick_and_wait(backend.kick_fds[0], backend.call_fds[0], drv, 1) == [(head, SECTOR + 1)]
        assert mem.read(buf, SECTOR) == data[2 * SECTOR : 3 * SECTOR]
    finally:
        backend.close()


