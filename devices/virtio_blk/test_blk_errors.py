"""The virtio block device (VIRTIO 1.2 §5.2) against requests it must refuse: writes to a
read-only disk (§5.2.5: VIRTIO_BLK_F_RO), sectors out of range, lengths that are not whole
sectors, missing status bytes, short headers and malformed chains. Each fails alone, leaves the
real disk file as it was, and the next request is served. (Requests that succeed: test_blk.py.)"""
from __future__ import annotations

import os

import pytest

from vmboot.abi.virtio import (
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VIRTQ_DESC_F_NEXT,
)
from vmboot.tests.blk_rig import (
    DISCARD, DISK_SECTORS, FILL, FLUSH, IN, IOERR, OK, OUT, SECTOR, UNSUPP, WRITE_ZEROES, Rig, contents, header,
    segment,
)

# -- read-only disks --------------------------------------------------------------------------------


@pytest.fixture
def ro(image, mem):
    path, data = image
    fd = os.open(path, os.O_RDONLY)
    yield path, data, Rig(mem, fd, readonly=True)
    os.close(fd)


def test_read_only_disk_offers_ro_and_no_discard(ro):
    _, _, rig = ro
    assert rig.blk.features == (1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC
                                | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_BLK_SIZE
                                | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_RO)


def test_read_only_disk_refuses_writes(ro):
    path, data, rig = ro
    done = rig.do([header(OUT, 0), b"\0" * SECTOR, 1])
    assert (done.status, done.written) == (IOERR, 1)
    assert rig.do([header(DISCARD), segment(0, 8), 1]).status == UNSUPP
    assert rig.do([header(WRITE_ZEROES), segment(0, 8), 1]).status == UNSUPP
    assert contents(path) == data


def test_read_only_disk_reads_and_flushes(ro, monkeypatch):
    _, data, rig = ro
    synced = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    assert rig.do([header(IN, 5), SECTOR, 1]).bufs == [data[5 * SECTOR : 6 * SECTOR], bytes([OK])]
    assert rig.do([header(FLUSH), 1]).status == OK
    assert synced == []


# -- malformed requests -----------------------------------------------------------------------------


@pytest.mark.parametrize("sector,length", [
    (DISK_SECTORS, SECTOR),  # just past the end
    (DISK_SECTORS - 1, 2 * SECTOR),  # straddling it
    (2**64 - 1, SECTOR),  # the largest sector number
    (2**63, SECTOR),
])
def test_out_of_range_sectors(rig, disk, sector, length):
    path, data, _ = disk
    done = rig.do([header(IN, sector), length, 1])
    assert done.bufs == [bytes([FILL]) * length, bytes([IOERR])]  # nothing read into the buffer
    assert done.written == 1
    done = rig.do([header(OUT, sector), b"\x55" * length, 1])
    assert (done.status, done.written) == (IOERR, 1)
    assert contents(path) == data


@pytest.mark.parametrize("length", [1, 100, SECTOR - 1, SECTOR + 1, 3 * SECTOR + 7])
def test_lengths_that_are_not_whole_sectors(rig, disk, length):
    path, data, _ = disk
    done = rig.do([header(IN, 0), length, 1])
    assert done.bufs == [bytes([FILL]) * length, bytes([IOERR])]
    done = rig.do([header(OUT, 0), b"\x55" * length, 1])
    assert done.status == IOERR
    assert contents(path) == data


def test_request_without_a_status_byte_is_returned_untouched(rig, disk):
    path, data, _ = disk
    segs, _ = rig.place([header(OUT, 0), b"\x55" * SECTOR])
    head = rig.drv.add(segs)
    rig.blk.process(rig.queue)
    assert rig.drv.completions() == [(head, 0)]
    assert contents(path) == data
    assert rig.blk.stats["errors"] == 1


def test_empty_status_descriptor_counts_as_missing(rig, disk):
    path, data, _ = disk
    segs, _ = rig.place([header(OUT, 0), b"\x55" * SECTOR, 0])
    head = rig.drv.add(segs)
    rig.blk.process(rig.queue)
    assert rig.drv.completions() == [(head, 0)]
    assert contents(path) == data


@pytest.mark.parametrize("hdr", [b"", header(IN, 0)[:8], header(IN, 0)[:15]])
def test_short_header(rig, hdr):
    done = rig.do(([hdr] if hdr else []) + [SECTOR, 1])
    assert done.bufs == [bytes([FILL]) * SECTOR, bytes([IOERR])]
    assert done.written == 1


def test_malformed_chain_is_returned_and_the_next_request_served(rig, disk):
    _, data, _ = disk
    rig.drv.write_desc(0, 0x10000, 16, VIRTQ_DESC_F_NEXT, 0)  # a loop
    rig.drv.free.remove(0)
    rig.drv.publish(0)
    rig.blk.process(rig.queue)
    assert rig.drv.completions() == [(0, 0)]
    done = rig.do([header(IN, 1), SECTOR, 1])
    assert done.bufs == [data[SECTOR : 2 * SECTOR], bytes([OK])]
    assert rig.blk.stats["errors"] == 1
    assert rig.blk.stats["requests"] == 2
