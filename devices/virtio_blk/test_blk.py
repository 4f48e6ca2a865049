"""The virtio block device (VIRTIO 1.2 §5.2) driven as a guest drives it: reads, writes, flush
and GET_ID, its configuration space and features. Requests are descriptor chains in guest memory,
served from a real disk file. (Discard and write zeroes: test_blk_discard.py; read-only disks and
malformed requests: test_blk_errors.py; its worker thread behind the core's in-process backend:
core/test_virtio_host.py; its process: tests/test_policy_proof.py.)"""
from __future__ import annotations

import os
import random
import struct

from vmboot.abi.virtio import (
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
)
from vmboot.devices.virtio_blk.blk import VirtioBlk
from vmboot.tests.blk_rig import DISK_SECTORS, FLUSH, GET_ID, IN, OK, OUT, SECTOR, UNSUPP, Rig, contents, header

# -- reads and writes -------------------------------------------------------------------------------


def test_in_reads_sectors_into_guest_memory(rig, disk):
    _, data, _ = disk
    done = rig.do([header(IN, 3), 2 * SECTOR, 1])
    assert done.bufs == [data[3 * SECTOR : 5 * SECTOR], bytes([OK])]
    assert done.written == 2 * SECTOR + 1
    assert rig.blk.stats["bytes_read"] == 2 * SECTOR


def test_in_reads_the_last_sector(rig, disk):
    _, data, _ = disk
    done = rig.do([header(IN, DISK_SECTORS - 1), SECTOR, 1])
    assert done.bufs == [data[-SECTOR:], bytes([OK])]


def test_out_writes_exactly_the_named_sectors(rig, disk):
    path, data, _ = disk
    payload = bytes(range(256)) * 4
    done = rig.do([header(OUT, 7), payload, 1])
    assert (done.status, done.written) == (OK, 1)
    assert contents(path) == data[: 7 * SECTOR] + payload + data[9 * SECTOR :]


def test_multi_segment_requests(rig, disk):
    path, data, _ = disk
    payload = random.Random(7).randbytes(4 * SECTOR)
    hdr = header(OUT, 100)
    # the header split across two descriptors, the data across three of odd sizes
    done = rig.do([hdr[:5], hdr[5:], payload[:100], payload[100:1500], payload[1500:], 1])
    assert done.status == OK
    assert contents(path) == data[: 100 * SECTOR] + payload + data[104 * SECTOR :]
    done = rig.do([header(IN, 99), 700, 1000, 5 * SECTOR - 1700, 1])
    expect = (data[: 100 * SECTOR] + payload)[99 * SECTOR : 104 * SECTOR]
    assert b"".join(done.bufs[:-1]) == expect
    assert (done.status, done.written) == (OK, 5 * SECTOR + 1)


def test_status_byte_may_share_a_descriptor_with_the_data(rig, disk):
    # §2.6.4 message framing: the device must not assume how descriptors divide a request
    _, data, _ = disk
    done = rig.do([header(IN, 10), SECTOR + 1])
    assert done.bufs == [data[10 * SECTOR : 11 * SECTOR] + bytes([OK])]
    assert done.written == SECTOR + 1


def test_indirect_requests(rig, disk):
    path, data, _ = disk
    payload = b"\xa5" * SECTOR
    assert rig.do([header(OUT, 20), payload, 1], indirect=True).status == OK
    done = rig.do([header(IN, 19), 3 * SECTOR, 1], indirect=True)
    assert done.bufs == [data[19 * SECTOR : 20 * SECTOR] + payload + data[21 * SECTOR : 22 * SECTOR], bytes([OK])]
    assert contents(path) == data[: 20 * SECTOR] + payload + data[21 * SECTOR :]


def test_many_requests_in_one_kick(rig, disk):
    path, data, _ = disk
    heads = []
    for i in range(5):
        segs, _ = rig.place([header(OUT, i), bytes([i]) * SECTOR, 1])
        heads.append(rig.drv.add(segs))
    assert rig.blk.process(rig.queue) is True
    assert rig.drv.completions() == [(h, 1) for h in heads]
    assert contents(path) == b"".join(bytes([i]) * SECTOR for i in range(5)) + data[5 * SECTOR :]


# -- other request types ----------------------------------------------------------------------------


def test_flush_syncs_the_disk(rig, disk, monkeypatch):
    synced = []
    monkeypatch.setattr(os, "fdatasync", synced.append)
    done = rig.do([header(FLUSH), 1])
    assert (done.status, done.written) == (OK, 1)
    assert synced == [disk[2]]


def test_get_id_returns_the_serial_nul_padded(rig):
    done = rig.do([header(GET_ID), 20, 1])
    assert done.bufs == [b"vmboot-test" + bytes(9), bytes([OK])]
    assert done.written == 21


def test_get_id_of_a_20_byte_serial_has_no_terminator(mem, disk):
    rig = Rig(mem, disk[2], serial="0123456789abcdefghijKLMN")
    done = rig.do([header(GET_ID), 20, 1])
    assert done.bufs == [b"0123456789abcdefghij", bytes([OK])]


def test_unknown_request_type_is_unsupported(rig, disk):
    path, data, _ = disk
    done = rig.do([header(99, 0), b"x" * SECTOR, 1])
    assert (done.status, done.written) == (UNSUPP, 1)
    assert contents(path) == data


# -- configuration and features (§5.2.3, §5.2.4) ------------------------------------------------------


def test_config_space_bytes(rig):
    blk = rig.blk
    cfg = blk.config_read(0, 60)
    assert struct.unpack_from("<Q", cfg, 0)[0] == DISK_SECTORS  # capacity
    assert struct.unpack_from("<I", cfg, 8)[0] == 0  # size_max (not offered)
    assert struct.unpack_from("<I", cfg, 12)[0] == 254  # seg_max: queue size less header and status
    assert struct.unpack_from("<I", cfg, 20)[0] == 512  # blk_size
    assert struct.unpack_from("<H", cfg, 34)[0] == 1  # num_queues
    assert struct.unpack_from("<III", cfg, 36) == (1 << 22, 32, 1)  # discard: sectors, segments, alignment
    assert struct.unpack_from("<II", cfg, 48) == (1 << 22, 32)  # write zeroes: sectors, segments
    assert cfg[56] == 1  # write_zeroes_may_unmap
    assert cfg == (struct.pack("<QII", DISK_SECTORS, 0, 254) + bytes(4) + struct.pack("<I", 512) + bytes(10)
                   + struct.pack("<HIIIIIB", 1, 1 << 22, 32, 1, 1 << 22, 32, 1) + bytes(3))
    assert blk.config_read(8, 4) == bytes(4)
    assert blk.config_read(0, 2) == struct.pack("<H", DISK_SECTORS)
    assert blk.config_read(58, 4) == bytes(4)  # past the structure: zeros
    assert blk.config_read(0x100, 4) == bytes(4)
    blk.config_write(0, b"\xff" * 8)  # nothing is writable
    assert blk.config_read(0, 8) == struct.pack("<Q", DISK_SECTORS)


def test_features_offered_on_a_writable_file(rig):
    assert rig.blk.features == (1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC
                                | 1 << VIRTIO_RING_F_EVENT_IDX | 1 << VIRTIO_BLK_F_SEG_MAX | 1 << VIRTIO_BLK_F_BLK_SIZE
                                | 1 << VIRTIO_BLK_F_FLUSH | 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES)
    assert rig.blk.features == 0x1_3000_6244


def test_capacity_rounds_down_to_whole_sectors(tmp_path):
    path = tmp_path / "odd.img"
    path.write_bytes(bytes(3 * SECTOR + 100))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert VirtioBlk(fd, readonly=True).capacity == 3
    finally:
        os.close(fd)
