"""The virtio block device's DISCARD and WRITE_ZEROES requests (VIRTIO 1.2 §5.2.6), driven as a
guest drives them: blocks are freed in, and zeros read back from, a real 1 MiB disk file, and every
bad request (§5.2.6.2) leaves the disk alone. (Reads, writes and the rest: test_blk.py.)"""
from __future__ import annotations

import os
import tracemalloc

import pytest

from vmboot.abi.virtio import VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
from vmboot.devices.virtio.driver import Segment
from vmboot.tests.blk_rig import (
    DISCARD, IN, IOERR, MEM_SIZE, OK, SECTOR, UNSUPP, WRITE_ZEROES, Rig, contents, header, make_disk, segment,
)

BIG = 2048  # sectors: 1 MiB, so whole 4 KiB file-system blocks can be freed


@pytest.fixture
def big(tmp_path, mem):
    path = tmp_path / "big.img"
    data = make_disk(path, BIG * SECTOR, seed=3)
    fd = os.open(path, os.O_RDWR)
    yield path, data, Rig(mem, fd)
    os.close(fd)


def test_discard_frees_blocks_and_reads_back_zero(big):
    path, data, rig = big
    assert rig.blk.features >> VIRTIO_BLK_F_DISCARD & 1
    blocks = os.stat(path).st_blocks
    assert blocks == BIG  # fully allocated (st_blocks counts 512-byte units)
    done = rig.do([header(DISCARD), segment(512, 512), 1])
    assert (done.status, done.written) == (OK, 1)
    assert os.stat(path).st_blocks == blocks - 512
    assert contents(path) == data[: 512 * SECTOR] + bytes(512 * SECTOR) + data[1024 * SECTOR :]
    done = rig.do([header(IN, 511), 3 * SECTOR, 1])  # and through the device
    assert done.bufs[0] == data[511 * SECTOR : 512 * SECTOR] + bytes(2 * SECTOR)


def test_discard_of_several_segments(big):
    path, data, rig = big
    done = rig.do([header(DISCARD), segment(8, 8) + segment(1000, 24), 1])
    assert done.status == OK
    expect = bytearray(data)
    expect[8 * SECTOR : 16 * SECTOR] = bytes(8 * SECTOR)
    expect[1000 * SECTOR : 1024 * SECTOR] = bytes(24 * SECTOR)
    assert contents(path) == bytes(expect)
    assert os.stat(path).st_blocks == BIG - 8 - 24  # both ranges are whole 4 KiB blocks


def test_discard_of_zero_sectors_does_nothing(big):
    path, data, rig = big
    done = rig.do([header(DISCARD), segment(5, 0), 1])  # fallocate(2) itself refuses a zero length
    assert (done.status, done.written) == (OK, 1)
    assert contents(path) == data


def test_write_zeroes_zeroes_unaligned_sectors(big):
    path, data, rig = big
    done = rig.do([header(WRITE_ZEROES), segment(3, 5), 1])
    assert (done.status, done.written) == (OK, 1)
    assert contents(path) == data[: 3 * SECTOR] + bytes(5 * SECTOR) + data[8 * SECTOR :]


def test_write_zeroes_with_unmap_frees_blocks(big):
    path, data, rig = big
    done = rig.do([header(WRITE_ZEROES), segment(64, 64, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP), 1])
    assert done.status == OK
    assert os.stat(path).st_blocks == BIG - 64
    assert contents(path) == data[: 64 * SECTOR] + bytes(64 * SECTOR) + data[128 * SECTOR :]


@pytest.mark.parametrize("kind,payload,status", [
    # §5.2.6.2: UNSUPP for an unknown flag, and for the unmap flag on a discard
    pytest.param(DISCARD, segment(0, 8, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP), UNSUPP, id="discard-with-unmap"),
    pytest.param(DISCARD, segment(0, 8, 2), UNSUPP, id="discard-unknown-flag"),
    pytest.param(WRITE_ZEROES, segment(0, 8, 3), UNSUPP, id="write-zeroes-unknown-flag"),
    pytest.param(DISCARD, segment(BIG - 4, 8), IOERR, id="past-the-end"),
    pytest.param(DISCARD, segment(2**64 - 1, 1), IOERR, id="largest-sector"),
    pytest.param(DISCARD, segment(0, 8)[:15], IOERR, id="partial-segment"),
    pytest.param(DISCARD, b"", IOERR, id="no-segment"),
    pytest.param(DISCARD, segment(0, 1) * 33, IOERR, id="over-max-discard-seg"),
    pytest.param(WRITE_ZEROES, segment(0, (1 << 22) + 1), IOERR, id="over-max-write-zeroes-sectors"),
    pytest.param(DISCARD, segment(0, 8) + segment(BIG, 1), IOERR, id="second-segment-out-of-range"),
    pytest.param(DISCARD, segment(0, 8) + segment(8, 8, 1), UNSUPP, id="second-segment-unmap"),
])
def test_bad_discard_requests_leave_the_disk_alone(big, kind, payload, status):
    path, data, rig = big
    parts = [header(kind)] + ([payload] if payload else []) + [1]
    done = rig.do(parts)
    assert (done.status, done.written) == (status, 1)
    assert contents(path) == data
    assert os.stat(path).st_blocks == BIG


def test_discard_payload_size_is_checked_before_it_is_copied(big, mem):
    # Descriptors may overlap: 64 of them naming all 4 MiB of RAM make a 256 MiB "payload".
    # The device must refuse it by its length, without copying it.
    path, data, rig = big
    hdr, status, table = rig.arena.alloc(16), rig.arena.alloc(1), rig.arena.alloc(16 * 66)
    mem.write(hdr, header(DISCARD))
    segs = [Segment(hdr, 16)] + [Segment(0, MEM_SIZE)] * 64 + [Segment(status, 1, True)]
    head = rig.drv.add_indirect(segs, table)
    tracemalloc.start()
    try:
        rig.blk.process(rig.queue)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rig.drv.completions() == [(head, 1)]
    assert mem.read(status, 1) == bytes([IOERR])
    assert peak < 1 << 20
    assert contents(path) == data
