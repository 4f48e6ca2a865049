"""The virtio block device (VIRTIO 1.2 §5.2) driven as a guest drives it: requests are
descriptor chains in guest memory, served from a real disk file. (Its worker thread behind the
core's in-process backend: core/test_virtio_host.py; its process: tests/test_policy_proof.py.)"""
from __future__ import annotations

import os
import random
import struct
import tracemalloc

import pytest

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import (
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
    VIRTQ_DESC_F_NEXT,
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


@pytest.fixture
def mem():
    with GuestMemory(MEM_SIZE) as m:
        yield m


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    return path, make_disk(path, DISK_SECTORS * SECTOR)


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


@pytest.fixture
def disk(image):
    path, data = image
    fd = os.open(path, os.O_RDWR)
    yield path, data, fd
    os.close(fd)


@pytest.fixture
def rig(mem, disk):
    return Rig(mem, disk[2], serial="vmboot-test")


def contents(path) -> bytes:
    return path.read_bytes()


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


# -- discard and write zeroes (§5.2.6) --------------------------------------------------------------

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
