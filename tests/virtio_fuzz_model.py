"""The reference model the virtqueue fuzz tests (devices/virtio/test_fuzz*.py) check against.

``model_chain`` is VIRTIO 1.2 §2.7.5's descriptor chain walk, ``model_request`` the outcome
of one block request by §5.2.6, ``need_event`` §2.7.10's vring_need_event. With them,
``RecordingMemory``, the view of guest memory the tests check the device through: it records
every view the device takes and checks that it lies inside guest RAM.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import (
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, VIRTQ_MAX_SIZE,
)
from vmboot.devices.virtio.queue import MAX_CHAIN_BYTES
from vmboot.devices.virtio_blk.blk import MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS
from vmboot.tests.virtio_fuzz_rings import (
    DESC, DESC_AT, DISK_SECTORS, INDIRECT, MAX_VIEWS, MEM_SIZE, NEXT, SECTOR, WRITE, Scenario,
)

# -- guest memory, watched ----------------------------------------------------------------------------


class RecordingMemory:
    """GuestMemory as the device sees it, with every view it takes recorded and checked."""

    def __init__(self, mem: GuestMemory):
        self.mem = mem
        self.views: dict[int, tuple[int, int, memoryview]] = {}

    def view(self, gpa: int, length: int) -> memoryview:
        v = self.mem.view(gpa, length)  # raises outside RAM; the queue must turn that into an error
        assert 0 <= gpa and gpa + length <= MEM_SIZE, f"view {gpa:#x}+{length:#x} escaped guest RAM"
        assert len(v) == length
        assert len(self.views) < MAX_VIEWS, "the device keeps walking"
        self.views[id(v)] = (gpa, length, v)  # keeps v alive, so ids are not reused
        return v

    def where(self, v: memoryview) -> tuple[int, int]:
        gpa, length, _ = self.views[id(v)]
        return gpa, length


def snapshot(mem: GuestMemory) -> bytes:
    return mem.read(0, MEM_SIZE)


def changed(before: bytes, after: bytes) -> list[int]:
    out = []
    for start in range(0, MEM_SIZE, 256):
        if before[start : start + 256] != after[start : start + 256]:
            out += [i for i in range(start, start + 256) if before[i] != after[i]]
    return out


def in_ranges(addr: int, ranges) -> bool:
    return any(gpa <= addr < gpa + length for gpa, length in ranges)


# -- the reference model -----------------------------------------------------------------------------

class Bad(str):
    """The model's verdict on a malformed chain: why."""


NAMES = {VIRTIO_BLK_T_IN: "IN", VIRTIO_BLK_T_OUT: "OUT", VIRTIO_BLK_T_FLUSH: "FLUSH", VIRTIO_BLK_T_GET_ID: "GET_ID",
         VIRTIO_BLK_T_DISCARD: "DISCARD", VIRTIO_BLK_T_WRITE_ZEROES: "WRITE_ZEROES"}
STATUS_NAMES = {VIRTIO_BLK_S_OK: "OK", VIRTIO_BLK_S_IOERR: "IOERR", VIRTIO_BLK_S_UNSUPP: "UNSUPP"}


def in_ram(addr: int, length: int) -> bool:
    return 0 <= addr and addr + length <= MEM_SIZE


def model_chain(mem: bytes, sc: Scenario, head: int):
    """Bad(why), or (readable, writable) lists of (gpa, length), by VIRTIO 1.2 §2.7.5."""
    if head >= sc.size:
        return Bad("head out of range")
    base, count, index = DESC_AT, sc.size, head
    nested, seen, total = False, 0, 0
    readable, writable = [], []
    while True:
        if seen == count:
            return Bad("loop")
        seen += 1
        addr, length, flags, nxt = DESC.unpack_from(mem, base + 16 * index)
        if flags & INDIRECT:
            if not sc.indirect:
                return Bad("indirect not negotiated")
            if nested:
                return Bad("nested indirect")
            if flags & NEXT:
                return Bad("indirect with NEXT")
            if not length or length % 16 or length > 16 * VIRTQ_MAX_SIZE:
                return Bad("indirect table size")
            if not in_ram(addr, length):
                return Bad("indirect table outside RAM")
            base, count, index, seen, nested = addr, length // 16, 0, 0, True
            continue
        total += length
        if total > MAX_CHAIN_BYTES:
            return Bad("over 4 GiB")
        if not in_ram(addr, length):
            return Bad("buffer outside RAM")
        if flags & WRITE:
            writable.append((addr, length))
        elif writable:
            return Bad("readable after writable")
        else:
            readable.append((addr, length))
        if not flags & NEXT:
            return readable, writable
        if nxt >= count:
            return Bad("next out of range")
        index = nxt


@dataclass
class Outcome:
    """What the device must do with one chain."""

    status: int | None  # None: no status byte to write
    written: int
    disk: bytes  # the disk afterwards
    status_gpa: int | None = None
    data_in: list = field(default_factory=list)  # (gpa, length) the data of a good IN lands in
    read_from: int = 0  # disk offset of that data
    what: str = ""  # for hypothesis's statistics


def model_request(mem: bytes, disk: bytes, chain, readonly: bool, can_discard: bool) -> Outcome:
    """The outcome of one request, by VIRTIO 1.2 §5.2.6."""
    if isinstance(chain, Bad):
        return Outcome(None, 0, disk, what=f"malformed chain: {chain}")
    readable, writable = chain
    if not writable or not writable[-1][1]:
        return Outcome(None, 0, disk, what="no status byte")
    gpa, length = writable[-1]
    status_gpa = gpa + length - 1
    data_in = writable[:-1] + ([(gpa, length - 1)] if length > 1 else [])
    data_len = sum(n for _, n in data_in)

    def done(status, written=1, new_disk=disk, **kw):
        name = NAMES.get(kind, "unknown type") if len(out) >= 16 else "short header"
        return Outcome(status, written, new_disk, status_gpa, what=f"{name}: {STATUS_NAMES[status]}", **kw)

    out = b"".join(mem[a : a + n] for a, n in readable)
    kind = None
    if len(out) < 16:
        return done(VIRTIO_BLK_S_IOERR)
    kind, _, sector = struct.unpack_from("<IIQ", out)
    payload = out[16:]

    def in_range(first: int, nbytes: int) -> bool:
        return nbytes % SECTOR == 0 and first + nbytes // SECTOR <= DISK_SECTORS

    if kind == VIRTIO_BLK_T_IN:
        if not in_range(sector, data_len):
            return done(VIRTIO_BLK_S_IOERR)
        return done(VIRTIO_BLK_S_OK, data_len + 1, data_in=data_in, read_from=sector * SECTOR)
    if kind == VIRTIO_BLK_T_OUT:
        if readonly or not in_range(sector, len(payload)):
            return done(VIRTIO_BLK_S_IOERR)
        start = sector * SECTOR
        return done(VIRTIO_BLK_S_OK, new_disk=disk[:start] + payload + disk[start + len(payload) :])
    if kind == VIRTIO_BLK_T_FLUSH:
        return done(VIRTIO_BLK_S_OK)
    if kind == VIRTIO_BLK_T_GET_ID:
        return done(VIRTIO_BLK_S_OK, min(data_len, 20) + 1)
    if kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        if readonly or not can_discard:
            return done(VIRTIO_BLK_S_UNSUPP)
        if not payload or len(payload) % 16 or len(payload) // 16 > MAX_DISCARD_SEGMENTS:
            return done(VIRTIO_BLK_S_IOERR)
        new = bytearray(disk)
        for i in range(0, len(payload), 16):
            first, count, flags = struct.unpack_from("<QII", payload, i)
            if flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or (kind == VIRTIO_BLK_T_DISCARD and flags):
                return done(VIRTIO_BLK_S_UNSUPP)
            if count > MAX_DISCARD_SECTORS or not in_range(first, count * SECTOR):
                return done(VIRTIO_BLK_S_IOERR)
            new[first * SECTOR : (first + count) * SECTOR] = bytes(count * SECTOR)
        return done(VIRTIO_BLK_S_OK, new_disk=bytes(new))
    return done(VIRTIO_BLK_S_UNSUPP)


def need_event(event: int, new: int, old: int) -> bool:
    """vring_need_event (§2.7.10)."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


def check_chain(rec: RecordingMemory, mem: bytes, chain, expect) -> None:
    if isinstance(expect, Bad):
        assert chain.error and chain.readable == [] and chain.writable == [], chain
        return
    assert chain.error is None, chain.error
    readable, writable = expect
    assert [rec.where(v) for v in chain.readable] == readable
    assert [rec.where(v) for v in chain.writable] == writable
    for v in chain.readable + chain.writable:  # the views show guest RAM at those addresses
        gpa, length = rec.where(v)
        assert bytes(v) == mem[gpa : gpa + length]
