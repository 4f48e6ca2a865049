"""Hostile virtqueues for the hypothesis fuzz tests (devices/virtio/test_fuzz*.py).

The guest memory layout, the strategies that draw rings, and lay_out, which writes one
into a GuestMemory. A guest controls every byte of its rings, so the generated rings are
hostile: random addresses, lengths, flags and next indices, huge values, loops, indirect
tables inside indirect tables, available indices running far ahead. ``wild`` draws garbage
that is sometimes by chance a request, ``plausible`` well-formed requests with a few fields
then broken.
"""
from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import (
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT,
    VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_MAX_SIZE,
)
from vmboot.devices.virtio_blk.blk import MAX_DISCARD_SECTORS

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
