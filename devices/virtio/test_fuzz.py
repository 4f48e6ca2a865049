"""Fuzzing the virtqueue walker and the block device with hypothesis.

A guest controls every byte of its rings, so the generated rings are hostile: random
addresses, lengths, flags and next indices, huge values, loops, indirect tables inside
indirect tables, available indices running far ahead. They are written into a real
memfd-backed GuestMemory and thrown at SplitQueue, then at VirtioBlk.process with a real
disk file behind it.

Each outcome is checked against a small reference model of the spec (VIRTIO 1.2 §2.7,
§5.2.6), step by step: every pop is compared with the model's chain for the same memory,
and between two pops only the bytes of the current chain's device-writable buffers and the
used ring may change in guest memory, and only the sectors a valid OUT, DISCARD or
WRITE_ZEROES request names may change on disk. Every view of guest memory the device takes
is recorded and checked to lie inside guest RAM.
"""
from __future__ import annotations

import os
import random
import struct
import tempfile
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import (
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE, VIRTQ_MAX_SIZE,
)
from vmboot.devices.virtio.queue import MAX_CHAIN_BYTES, QueueBroken, SplitQueue
from vmboot.devices.virtio_blk.blk import MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, VirtioBlk

FUZZ = settings(max_examples=300, deadline=None, print_blob=True, suppress_health_check=[HealthCheck.too_slow])

# Guest memory layout: 64 KiB of RAM, the rings for a queue of up to 16 entries, indirect
# tables, then request headers, discard segments and data. Descriptors may point anywhere.
MEM_SIZE = 0x10000
DESC_AT, AVAIL_AT, USED_AT = 0x1000, 0x2000, 0x3000
TABLES_AT, TABLE_STRIDE, TABLES = 0x4000, 0x200, 4
HEADERS_AT, HEADERS = 0x5000, 8
STATUS_AT = 0x5080
SEGMENTS_AT, SEGMENTS = 0x5100, 32
DATA_AT = 0x6000
SECTOR = 512
DISK_SECTORS = 64
NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT
DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
MAX_POPS = 1000  # a walk that never ends shows up as too many pops or views, not as a hang
MAX_VIEWS = 100_000

# -- strategies -------------------------------------------------------------------------------------

u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 2**64 - 1)
KINDS = [VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_DISCARD,
         VIRTIO_BLK_T_WRITE_ZEROES]

data_addresses = st.integers(0, (MEM_SIZE - DATA_AT) // SECTOR - 3).map(lambda k: DATA_AT + k * SECTOR)
addresses = st.one_of(
    st.sampled_from([HEADERS_AT + 16 * i for i in range(HEADERS)]),
    st.sampled_from([SEGMENTS_AT + 16 * i for i in range(SEGMENTS)]),
    data_addresses,
    st.integers(0, MEM_SIZE),  # anywhere, the rings included
    st.sampled_from([MEM_SIZE - 1, MEM_SIZE, MEM_SIZE + 1, 0xC0000000, 0xFFFFFFFF, 2**63, 2**64 - 16, 2**64 - 1]),
    u64,
)
lengths = st.one_of(
    st.sampled_from([0, 1, 8, 15, 16, 17, 32, 48, 511, 512, 513, 1024, 2048, MEM_SIZE, 0xFFFFFFFF]),
    st.integers(0, 4).map(lambda k: k * SECTOR + 1),  # data and the status byte in one buffer
    st.integers(0, 2 * SECTOR),
    u32,
)
chain_flags = st.sampled_from([0, NEXT, WRITE, NEXT | WRITE, INDIRECT, INDIRECT | NEXT, INDIRECT | WRITE])
flag_values = st.one_of(chain_flags, chain_flags, u16)
# one_of picks a branch uniformly: repeat the plausible ones to favour them
near = st.integers(0, DISK_SECTORS - 4)
sectors = st.one_of(near, near, near, st.integers(DISK_SECTORS - 3, DISK_SECTORS + 1),  # the end of the disk
                    st.sampled_from([2**63, 2**64 - 1]), u64)


@st.composite
def descriptor(draw, index: int, entries: int) -> tuple[int, int, int, int]:
    """One descriptor; often the next link of an ordinary chain, or a reference to an indirect table."""
    nxt = draw(st.one_of(st.just(index + 1), st.integers(0, entries + 1), u16))
    if draw(st.integers(0, 5)) == 0:
        slot = draw(st.integers(0, TABLES - 1))
        length = draw(st.one_of(st.integers(0, 8).map(lambda n: 16 * n), st.integers(0, 200),
                                st.just(16 * (VIRTQ_MAX_SIZE + 1))))
        flags = INDIRECT | draw(st.sampled_from([0, 0, WRITE, NEXT]))
        return TABLES_AT + slot * TABLE_STRIDE, length, flags, nxt
    return draw(addresses), draw(lengths), draw(flag_values), nxt


@st.composite
def table(draw, entries: int) -> list[tuple[int, int, int, int]]:
    return [draw(descriptor(i, entries)) for i in range(entries)]


@st.composite
def request_header(draw) -> bytes:
    kind = draw(st.one_of(st.sampled_from(KINDS), u32))
    return struct.pack("<IIQ", kind, draw(u32), draw(sectors))


@st.composite
def discard_segment(draw) -> bytes:
    small = st.integers(0, DISK_SECTORS - 8)
    sector = draw(st.one_of(small, small, st.integers(0, DISK_SECTORS + 2), u64))
    count = draw(st.one_of(st.integers(0, 8), st.integers(0, 8), st.integers(0, 16), st.just(MAX_DISCARD_SECTORS + 1),
                           u32))
    flags = draw(st.one_of(st.just(0), st.just(0), st.just(VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP), u32))
    return struct.pack("<QII", sector, count, flags)


@dataclass
class Scenario:
    size: int
    indirect: bool
    event_idx: bool
    descs: list  # the descriptor table
    tables: list  # TABLES indirect tables
    ring: list  # the available ring's entries
    avail_idx: int
    avail_flags: int
    used_event: int
    used_idx: int
    blobs: list  # (gpa, bytes): request headers and discard segments
    seed: int  # for the bytes everywhere else


@st.composite
def wild(draw) -> Scenario:
    """Random rings: mostly garbage, sometimes by chance a request."""
    size = draw(st.sampled_from([1, 2, 4, 8, 16]))
    headers = draw(st.lists(request_header(), min_size=HEADERS, max_size=HEADERS))
    segments = draw(st.lists(discard_segment(), min_size=SEGMENTS, max_size=SEGMENTS))
    return Scenario(
        size=size,
        indirect=draw(st.booleans()),
        event_idx=draw(st.booleans()),
        descs=draw(table(size)),
        tables=[draw(table(draw(st.integers(0, 8)))) for _ in range(TABLES)],
        ring=draw(st.lists(st.one_of(st.integers(0, size - 1), st.integers(0, size + 1), u16),
                           min_size=size, max_size=size)),
        avail_idx=draw(st.one_of(st.integers(1, size), st.integers(size + 1, size + 3), u16)),
        avail_flags=draw(st.sampled_from([0, VIRTQ_AVAIL_F_NO_INTERRUPT])),
        used_event=draw(st.one_of(st.integers(0, size + 1), u16)),
        used_idx=draw(st.one_of(st.just(0), u16)),
        blobs=[(HEADERS_AT, b"".join(headers)), (SEGMENTS_AT, b"".join(segments))],
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@st.composite
def request_parts(draw, r: int) -> tuple[list[tuple[int, int, bool]], list]:
    """A plausible request r: its buffers (gpa, length, device-writable) and the blobs they read."""
    kind = draw(st.sampled_from(KINDS + [KINDS[0], KINDS[1], 99]))
    hdr_at = HEADERS_AT + 16 * r
    blobs = [(hdr_at, struct.pack("<IIQ", kind, 0, draw(sectors)))]
    parts = [(hdr_at, 8, False), (hdr_at + 8, 8, False)] if draw(st.booleans()) else [(hdr_at, 16, False)]
    data_len = st.integers(1, 2).map(lambda k: k * SECTOR)
    if kind in (VIRTIO_BLK_T_OUT, 99):
        parts += [(draw(data_addresses), draw(data_len), False) for _ in range(draw(st.integers(0, 2)))]
    elif kind in (VIRTIO_BLK_T_IN, VIRTIO_BLK_T_GET_ID):
        parts += [(draw(data_addresses), draw(data_len) if kind == VIRTIO_BLK_T_IN else 20, True)
                  for _ in range(draw(st.integers(0, 2)))]
    elif kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
        segs = draw(st.lists(discard_segment(), min_size=1, max_size=4))
        seg_at = SEGMENTS_AT + 64 * r
        blobs.append((seg_at, b"".join(segs)))
        parts.append((seg_at, 16 * len(segs), False))
    if parts[-1][2] and draw(st.booleans()):  # the status byte at the end of the data buffer
        gpa, length, _ = parts.pop()
        parts.append((gpa, length + 1, True))
    else:
        parts.append((STATUS_AT + r, 1, True))
    return parts, blobs


@st.composite
def plausible(draw) -> Scenario:
    """Well-formed requests, direct or indirect, then a few fields changed at random."""
    size = draw(st.sampled_from([16, 8, 4, 2]))
    indirect = draw(st.booleans())
    descs = [(0, 0, 0, 0)] * size
    tables: list[list] = [[] for _ in range(TABLES)]
    blobs, ring = [], []
    free, table_slot = 0, 0
    for r in range(draw(st.integers(1, HEADERS))):
        parts, more = draw(request_parts(r))
        if indirect and table_slot < TABLES and draw(st.booleans()):
            if free >= size:
                break
            tables[table_slot] = [(gpa, n, (WRITE if w else 0) | (NEXT if i + 1 < len(parts) else 0), i + 1)
                                  for i, (gpa, n, w) in enumerate(parts)]
            descs[free] = (TABLES_AT + table_slot * TABLE_STRIDE, 16 * len(parts), INDIRECT, 0)
            head, free, table_slot = free, free + 1, table_slot + 1
        else:
            if free + len(parts) > size:
                break
            for i, (gpa, n, w) in enumerate(parts):
                last = i + 1 == len(parts)
                descs[free + i] = (gpa, n, (WRITE if w else 0) | (0 if last else NEXT), 0 if last else free + i + 1)
            head, free = free, free + len(parts)
        blobs += more
        ring.append(head)
    avail_idx = draw(st.one_of(st.just(len(ring)), st.just(len(ring)), st.integers(0, size + 2)))
    ring += draw(st.lists(u16, min_size=size - len(ring), max_size=size - len(ring)))
    for i in range(table_slot, TABLES):  # spare tables hold a harmless one-buffer chain
        tables[i] = [(DATA_AT, 16, 0, 0)]
    for _ in range(draw(st.one_of(st.just(0), st.integers(1, 3)))):  # break something
        where = draw(st.sampled_from([-1] + list(range(table_slot))))  # the main table, or one a request uses
        target = descs if where < 0 else tables[where]
        used = free if where < 0 else len(target)
        if not used:
            continue
        i = draw(st.integers(0, used - 1))
        addr, length, flags, nxt = target[i]
        how = draw(st.sampled_from([0, 1, 1, 2, 2, 3, 3]))
        if how == 0:  # one field, any value
            entry = [addr, length, flags, nxt]
            field_index = draw(st.integers(0, 3))
            entry[field_index] = draw([addresses, lengths, flag_values, u16][field_index])
            target[i] = tuple(entry)
        elif how == 1:  # flip WRITE, NEXT or INDIRECT
            target[i] = (addr, length, flags ^ draw(st.sampled_from([WRITE, NEXT, INDIRECT])), nxt)
        elif how == 2:  # link back into the chain: a loop, or a chain running into another
            target[i] = (addr, length, flags | NEXT, draw(st.integers(0, used - 1)))
        else:  # point at an indirect table (inside one, that is nesting)
            slot = draw(st.integers(0, TABLES - 1))
            target[i] = (TABLES_AT + slot * TABLE_STRIDE, 16 * draw(st.integers(1, 4)), INDIRECT, 0)
    return Scenario(size=size, indirect=indirect, event_idx=draw(st.booleans()), descs=descs, tables=tables,
                    ring=ring, avail_idx=avail_idx,
                    avail_flags=draw(st.sampled_from([0, VIRTQ_AVAIL_F_NO_INTERRUPT])),
                    used_event=draw(st.one_of(st.integers(0, size + 1), u16)),
                    used_idx=draw(st.one_of(st.just(0), u16)), blobs=blobs, seed=draw(st.integers(0, 2**32 - 1)))


scenarios = st.one_of(plausible(), wild())


def lay_out(mem: GuestMemory, sc: Scenario) -> None:
    mem.write(0, random.Random(sc.seed).randbytes(MEM_SIZE))  # whatever the guest left in RAM
    mem.write(DESC_AT, b"".join(DESC.pack(*d) for d in sc.descs))
    for i, entries in enumerate(sc.tables):
        mem.write(TABLES_AT + i * TABLE_STRIDE, b"".join(DESC.pack(*d) for d in entries))
    mem.write(AVAIL_AT, struct.pack(f"<HH{sc.size}HH", sc.avail_flags, sc.avail_idx, *sc.ring, sc.used_event))
    mem.write(USED_AT, struct.pack("<HH", 0, sc.used_idx))
    for gpa, blob in sc.blobs:
        mem.write(gpa, blob)


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


# -- the queue alone --------------------------------------------------------------------------------


def used_ring(mem: bytes, sc: Scenario) -> tuple[int, list[tuple[int, int]]]:
    idx = U16.unpack_from(mem, USED_AT + 2)[0]
    return idx, [struct.unpack_from("<II", mem, USED_AT + 4 + 8 * i) for i in range(sc.size)]


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


@FUZZ
@given(scenarios)
def test_split_queue_against_the_model(sc):
    with GuestMemory(MEM_SIZE) as mem:
        lay_out(mem, sc)
        rec = RecordingMemory(mem)
        q = SplitQueue(rec, sc.size, DESC_AT, AVAIL_AT, USED_AT, indirect=sc.indirect, event_idx=sc.event_idx)
        q.record_dma = True
        before = snapshot(mem)
        pending = sc.avail_idx  # the device starts at 0
        consumed = []
        if pending > sc.size:
            with pytest.raises(QueueBroken):
                q.pop()
            assert snapshot(mem) == before  # a broken ring is left as it was
            return
        for n in range(pending):
            head = sc.ring[n % sc.size]
            chain = q.pop()
            now = snapshot(mem)  # pushes may have changed tables that overlap the used ring
            expect = model_chain(now, sc, head)
            assert chain.head == head
            check_chain(rec, now, chain, expect)
            dma = q.take_dma_writes()
            event(f"chain: {expect}" if isinstance(expect, Bad) else "chain: good")
            if not isinstance(expect, Bad):
                assert dma == expect[1]
            consumed.append((head, chain.writable_bytes))
            q.push(head, chain.writable_bytes)
        assert q.pop() is None
        after = snapshot(mem)
        # the used ring has one entry per consumed head, in order; nothing else changed
        idx, elems = used_ring(after, sc)
        assert idx == (sc.used_idx + pending) & 0xFFFF
        assert [elems[(sc.used_idx + i) % sc.size] for i in range(pending)] == consumed
        used_end = USED_AT + 4 + 8 * sc.size
        avail_event = U16.unpack_from(after, used_end)[0]
        assert avail_event == (pending if sc.event_idx and pending else U16.unpack_from(before, used_end)[0])
        assert all(USED_AT + 2 <= i < used_end + 2 for i in changed(before, after))
        wants = q.needs_interrupt()
        if not pending:
            assert wants is False
        elif sc.event_idx:
            assert wants == need_event(sc.used_event, idx, sc.used_idx)
        else:
            assert wants == (not sc.avail_flags & VIRTQ_AVAIL_F_NO_INTERRUPT)


# -- the block device ----------------------------------------------------------------------------------


class Lockstep(SplitQueue):
    """A SplitQueue that checks the device's effects of the last chain at every pop."""

    def __init__(self, rec: RecordingMemory, sc: Scenario, blk: VirtioBlk, disk_fd: int):
        super().__init__(rec, sc.size, DESC_AT, AVAIL_AT, USED_AT, indirect=sc.indirect, event_idx=sc.event_idx)
        self.rec, self.sc, self.blk, self.disk_fd = rec, sc, blk, disk_fd
        self.mem_after_pop = snapshot(rec.mem)
        self.outstanding: tuple[int, Outcome, list] | None = None
        self.expect_used = sc.used_idx
        self.pops = 0
        self.broke = False

    def disk(self) -> bytes:
        return os.pread(self.disk_fd, DISK_SECTORS * SECTOR + 4096, 0)  # a write past the end shows as growth

    def used_region(self) -> tuple[int, int]:
        return USED_AT, 6 + 8 * self.sc.size

    def pop(self):
        self.pops += 1
        assert self.pops < MAX_POPS
        now = snapshot(self.rec.mem)
        self._check_last(now)
        pending = (U16.unpack_from(now, AVAIL_AT + 2)[0] - self.last_avail) & 0xFFFF
        head = U16.unpack_from(now, AVAIL_AT + 4 + 2 * (self.last_avail % self.sc.size))[0]
        if pending > self.sc.size:
            with pytest.raises(QueueBroken):
                super().pop()
            self.broke = True
            raise QueueBroken("as the model expects")
        chain = super().pop()
        if not pending:
            assert chain is None
            return None
        after = snapshot(self.rec.mem)
        avail_event = USED_AT + 4 + 8 * self.sc.size
        assert all(avail_event <= i < avail_event + 2 for i in changed(now, after))
        expect = model_chain(after, self.sc, head)
        assert chain.head == head
        check_chain(self.rec, after, chain, expect)
        outcome = model_request(after, self.disk(), expect, self.blk.readonly, self.blk.can_discard)
        writable = [] if isinstance(expect, Bad) else expect[1]
        event(outcome.what)
        self.outstanding = (head, outcome, writable)
        self.mem_after_pop = after
        return chain

    def _check_last(self, now: bytes) -> None:
        if self.outstanding is None:
            return
        head, outcome, writable = self.outstanding
        self.outstanding = None
        used = self.used_region()
        # guest memory: only the chain's writable buffers and the used ring may have changed
        for i in changed(self.mem_after_pop, now):
            assert in_ranges(i, writable) or in_ranges(i, [used]), f"device wrote {i:#x} outside its buffers"
        # the used ring: one more entry, for this head, with the bytes written
        self.expect_used = (self.expect_used + 1) & 0xFFFF
        assert U16.unpack_from(now, USED_AT + 2)[0] == self.expect_used
        slot = USED_AT + 4 + 8 * ((self.expect_used - 1) % self.sc.size)
        assert struct.unpack_from("<II", now, slot) == (head, outcome.written)
        # the disk: exactly what a valid write, discard or write-zeroes names
        disk = self.disk()
        assert disk == outcome.disk
        if outcome.status is not None and not in_ranges(outcome.status_gpa, [used]):
            assert now[outcome.status_gpa] == outcome.status
        if not outcome.data_in:
            return
        # the data of a good IN, where no other write of this request lands on it
        spans = sorted(outcome.data_in + [(outcome.status_gpa, 1), used])
        if all(a + n <= b for (a, n), (b, _) in zip(spans, spans[1:])):
            data = b"".join(now[a : a + n] for a, n in outcome.data_in)
            assert data == disk[outcome.read_from : outcome.read_from + len(data)]


@FUZZ
@given(scenarios, st.sampled_from([False, False, False, True]))
def test_block_device_against_the_model(sc, readonly):
    with tempfile.TemporaryDirectory() as tmp, GuestMemory(MEM_SIZE) as mem:
        path = os.path.join(tmp, "disk.img")
        with open(path, "wb") as f:
            f.write(random.Random(sc.seed ^ 1).randbytes(DISK_SECTORS * SECTOR))
        fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        try:
            blk = VirtioBlk(fd, readonly=readonly, serial="fuzz")
            lay_out(mem, sc)
            rec = RecordingMemory(mem)
            q = Lockstep(rec, sc, blk, fd)
            try:
                wants = blk.process(q)
            except QueueBroken:
                assert q.broke  # only ever for a ring the model calls broken
                return
            end = snapshot(mem)
            new = U16.unpack_from(end, USED_AT + 2)[0]
            if new == sc.used_idx:
                assert wants is False
            elif sc.event_idx:
                assert wants == need_event(U16.unpack_from(end, AVAIL_AT + 4 + 2 * sc.size)[0], new, sc.used_idx)
            else:
                assert wants == (not U16.unpack_from(end, AVAIL_AT)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT)
        finally:
            os.close(fd)
