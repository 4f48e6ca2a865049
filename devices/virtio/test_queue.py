"""SplitQueue (VIRTIO 1.2 §2.7): chains, rings, interrupt suppression, and every way a
guest can get a ring wrong. Descriptors are written into a real memfd-backed GuestMemory,
as a guest driver would."""
from __future__ import annotations

import struct

import pytest

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import (
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_SIZE,
    VIRTQ_MAX_SIZE, VIRTQ_USED_ELEM_SIZE,
)
from vmboot.devices.virtio.driver import Arena, QueueDriver, Segment
from vmboot.devices.virtio.queue import MAX_CHAIN_BYTES, QueueBroken, SplitQueue

MEM_SIZE = 0x100000  # 1 MiB of guest RAM: everything from 0x100000 up is outside it
RING_ARENA = (0x1000, 0x10000)
SIZE = 8
DATA = 0x20000  # request buffers
TABLE = 0x40000  # indirect tables

DESC = struct.Struct("<QIHH")
NEXT, WRITE, INDIRECT = VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_F_INDIRECT


@pytest.fixture
def mem():
    with GuestMemory(MEM_SIZE) as m:
        yield m


@pytest.fixture
def drv(mem):
    return QueueDriver(mem, Arena(*RING_ARENA), SIZE)


def queue(mem, drv, indirect=False, event_idx=False) -> SplitQueue:
    return SplitQueue(mem, drv.size, drv.desc, drv.avail, drv.used, indirect=indirect, event_idx=event_idx)


def gpa_of(mem: GuestMemory, view: memoryview) -> int:
    """The guest address a view of guest RAM starts at (the tests run in one low region)."""
    import ctypes
    base = ctypes.addressof(ctypes.c_char.from_buffer(view))
    return base - mem.host_base


def ranges(mem, views) -> list[tuple[int, int]]:
    return [(gpa_of(mem, v), len(v)) for v in views]


def write_table(mem, gpa: int, descs: list[tuple[int, int, int, int]]) -> None:
    for i, d in enumerate(descs):
        mem.write(gpa + i * VIRTQ_DESC_SIZE, DESC.pack(*d))


def used_entries(mem, drv) -> tuple[int, list[tuple[int, int]]]:
    idx = struct.unpack("<H", mem.read(drv.used + 2, 2))[0]
    elems = [struct.unpack("<II", mem.read(drv.used + 4 + VIRTQ_USED_ELEM_SIZE * i, 8)) for i in range(drv.size)]
    return idx, elems


# -- chains ---------------------------------------------------------------------------------------


def test_direct_chain_splits_readable_and_writable_buffers(mem, drv):
    mem.write(DATA, b"H" * 16)
    head = drv.add([Segment(DATA, 16), Segment(DATA + 0x1000, 512, True), Segment(DATA + 0x2000, 1, True)])
    q = queue(mem, drv)
    assert q.pending() == 1
    chain = q.pop()
    assert chain.head == head == 0
    assert chain.error is None
    assert ranges(mem, chain.readable) == [(DATA, 16)]
    assert ranges(mem, chain.writable) == [(DATA + 0x1000, 512), (DATA + 0x2000, 1)]
    assert bytes(chain.readable[0]) == b"H" * 16
    assert (chain.readable_bytes, chain.writable_bytes) == (16, 513)
    chain.writable[1][0] = 0x5A  # the views are guest RAM itself
    assert mem.read(DATA + 0x2000, 1) == b"\x5a"
    assert q.pending() == 0
    assert q.pop() is None


def test_chains_come_out_in_available_ring_order(mem, drv):
    a = drv.add([Segment(DATA, 1)])
    b = drv.add([Segment(DATA + 16, 2), Segment(DATA + 32, 3, True)])
    c = drv.add([Segment(DATA + 64, 4, True)])
    q = queue(mem, drv)
    assert q.pending() == 3
    chains = [q.pop(), q.pop(), q.pop()]
    assert [ch.head for ch in chains] == [a, b, c] == [0, 1, 3]
    assert ranges(mem, chains[1].readable) == [(DATA + 16, 2)]
    assert ranges(mem, chains[1].writable) == [(DATA + 32, 3)]
    assert ranges(mem, chains[2].writable) == [(DATA + 64, 4)]
    assert q.pop() is None


def test_chain_as_long_as_the_table_is_accepted(mem, drv):
    drv.add([Segment(DATA + 16 * i, 16) for i in range(SIZE)])
    chain = queue(mem, drv).pop()
    assert chain.error is None
    assert ranges(mem, chain.readable) == [(DATA + 16 * i, 16) for i in range(SIZE)]


def test_zero_length_buffer_is_a_valid_empty_view(mem, drv):
    drv.add([Segment(MEM_SIZE, 0)])  # the very end of RAM, zero bytes
    chain = queue(mem, drv).pop()
    assert chain.error is None and [len(v) for v in chain.readable] == [0]


def test_indirect_chain(mem, drv):
    mem.write(DATA, b"\x11" * 16)
    head = drv.add_indirect([Segment(DATA, 16), Segment(DATA + 0x100, 4096, True), Segment(DATA + 0x2000, 1, True)],
                            TABLE)
    chain = queue(mem, drv, indirect=True).pop()
    assert chain.head == head == 0
    assert chain.error is None
    assert ranges(mem, chain.readable) == [(DATA, 16)]
    assert ranges(mem, chain.writable) == [(DATA + 0x100, 4096), (DATA + 0x2000, 1)]
    assert bytes(chain.readable[0]) == b"\x11" * 16


def test_write_flag_on_the_indirect_descriptor_itself_is_ignored(mem, drv):
    # §2.7.5.3.2: the device MUST ignore the write-only flag in a descriptor that refers to a table.
    write_table(mem, TABLE, [(DATA, 16, NEXT, 1), (DATA + 16, 8, WRITE, 0)])
    drv.write_desc(0, TABLE, 32, INDIRECT | WRITE)
    drv.publish(0)
    chain = queue(mem, drv, indirect=True).pop()
    assert chain.error is None
    assert ranges(mem, chain.readable) == [(DATA, 16)]
    assert ranges(mem, chain.writable) == [(DATA + 16, 8)]


def test_indirect_table_entries_follow_their_own_next_indices(mem, drv):
    write_table(mem, TABLE, [(DATA, 1, NEXT, 2), (DATA + 99, 9, WRITE, 0), (DATA + 8, 2, NEXT, 1)])
    drv.write_desc(3, TABLE, 48, INDIRECT)
    drv.publish(3)
    chain = queue(mem, drv, indirect=True).pop()
    assert chain.head == 3 and chain.error is None
    assert ranges(mem, chain.readable) == [(DATA, 1), (DATA + 8, 2)]
    assert ranges(mem, chain.writable) == [(DATA + 99, 9)]


def test_writable_ranges_are_recorded_for_dma_tracking(mem, drv):
    drv.add([Segment(DATA, 16), Segment(DATA + 0x100, 64, True)])
    drv.add_indirect([Segment(DATA + 0x200, 8, True)], TABLE)
    q = queue(mem, drv, indirect=True)
    q.record_dma = True
    q.pop(), q.pop()
    assert q.take_dma_writes() == [(DATA + 0x100, 64), (DATA + 0x200, 8)]
    assert q.take_dma_writes() == []


# -- the used ring ----------------------------------------------------------------------------------


def test_push_writes_the_used_element_then_the_index(mem, drv):
    drv.add([Segment(DATA, 16)])
    drv.add([Segment(DATA, 16)])
    q = queue(mem, drv)
    first, second = q.pop(), q.pop()
    q.push(second.head, 0x1234)
    q.push(first.head, 7)
    idx, elems = used_entries(mem, drv)
    assert idx == 2
    assert elems[:2] == [(1, 0x1234), (0, 7)]
    assert drv.completions() == [(1, 0x1234), (0, 7)]


def test_used_ring_wraps_around_the_table(mem, drv):
    q = queue(mem, drv)
    for i in range(SIZE + 3):
        q.push(i % SIZE, i)
    idx, elems = used_entries(mem, drv)
    assert idx == SIZE + 3
    assert elems[:3] == [(0, 8), (1, 9), (2, 10)]
    assert elems[3:] == [(i, i) for i in range(3, SIZE)]


def test_used_index_wraps_at_16_bits(mem, drv):
    mem.write(drv.used + 2, struct.pack("<H", 0xFFFF))
    q = queue(mem, drv)  # takes the used index the driver left
    q.push(5, 1)
    q.push(6, 2)
    idx, elems = used_entries(mem, drv)
    assert idx == 1
    assert elems[0xFFFF % SIZE] == (5, 1)
    assert elems[0] == (6, 2)


def test_available_index_wraps_at_16_bits(mem, drv):
    q = queue(mem, drv)
    q.last_avail = drv.avail_idx = 0xFFFF
    drv.add([Segment(DATA, 1)])
    drv.add([Segment(DATA + 8, 2)])
    assert struct.unpack("<H", mem.read(drv.avail + 2, 2))[0] == 1
    assert q.pending() == 2
    assert [ranges(mem, q.pop().readable), ranges(mem, q.pop().readable)] == [[(DATA, 1)], [(DATA + 8, 2)]]
    assert q.last_avail == 1
    assert q.pop() is None


# -- interrupt suppression (§2.7.7, §2.7.10) ----------------------------------------------------


def set_avail_flags(mem, drv, flags):
    mem.write(drv.avail, struct.pack("<H", flags))


def set_used_event(mem, drv, value):
    mem.write(drv.avail + 4 + 2 * drv.size, struct.pack("<H", value))


def avail_event(mem, drv) -> int:
    return struct.unpack("<H", mem.read(drv.used + 4 + VIRTQ_USED_ELEM_SIZE * drv.size, 2))[0]


def test_no_interrupt_without_new_used_entries(mem, drv):
    assert queue(mem, drv).needs_interrupt() is False


def test_interrupt_after_push_unless_driver_set_no_interrupt(mem, drv):
    q = queue(mem, drv)
    q.push(0, 0)
    assert q.needs_interrupt() is True
    assert q.needs_interrupt() is False  # nothing new since
    set_avail_flags(mem, drv, VIRTQ_AVAIL_F_NO_INTERRUPT)
    q.push(1, 0)
    assert q.needs_interrupt() is False
    set_avail_flags(mem, drv, 0)
    q.push(2, 0)
    assert q.needs_interrupt() is True


def test_event_idx_interrupts_only_when_used_event_is_crossed(mem, drv):
    q = queue(mem, drv, event_idx=True)
    set_avail_flags(mem, drv, VIRTQ_AVAIL_F_NO_INTERRUPT)  # ignored once event-idx is negotiated
    set_used_event(mem, drv, 0)
    q.push(0, 0)  # used idx 0 -> 1 crosses used_event 0
    assert q.needs_interrupt() is True
    set_used_event(mem, drv, 4)
    q.push(1, 0)
    q.push(2, 0)  # 1 -> 3: entry 4 not yet used
    assert q.needs_interrupt() is False
    q.push(3, 0)
    q.push(4, 0)  # 3 -> 5: entry 4 used now
    assert q.needs_interrupt() is True
    q.push(5, 0)  # 5 -> 6, used_event still 4: already signalled
    assert q.needs_interrupt() is False


def test_event_idx_comparison_wraps_at_16_bits(mem, drv):
    mem.write(drv.used + 2, struct.pack("<H", 0xFFFE))
    q = queue(mem, drv, event_idx=True)
    set_used_event(mem, drv, 0xFFFF)
    q.push(0, 0)  # 0xFFFE -> 0xFFFF: used_event 0xFFFF not reached
    assert q.needs_interrupt() is False
    q.push(1, 0)
    q.push(2, 0)  # 0xFFFF -> 1 crosses 0xFFFF
    assert q.needs_interrupt() is True


def test_avail_event_publishes_how_far_the_device_has_read(mem, drv):
    mem.write(drv.used + 4 + VIRTQ_USED_ELEM_SIZE * SIZE, b"\xcd\xab")
    drv.add([Segment(DATA, 1)])
    drv.add([Segment(DATA, 1)])
    q = queue(mem, drv, event_idx=True)
    q.pop()
    assert avail_event(mem, drv) == 1
    q.pop()
    assert avail_event(mem, drv) == 2


def test_avail_event_untouched_without_event_idx(mem, drv):
    mem.write(drv.used + 4 + VIRTQ_USED_ELEM_SIZE * SIZE, b"\xcd\xab")
    drv.add([Segment(DATA, 1)])
    queue(mem, drv).pop()
    assert avail_event(mem, drv) == 0xABCD


# -- bad chains: the request fails, the queue goes on ------------------------------------------------


def pop_one(mem, drv, descs: dict[int, tuple[int, int, int, int]], head: int = 0, **kw):
    for index, d in descs.items():
        drv.write_desc(index, *d)
    drv.publish(head)
    q = queue(mem, drv, **kw)
    chain = q.pop()
    assert q.last_avail == 1  # consumed, so the device returns it
    return chain


def assert_failed(chain, head: int, error: str) -> None:
    assert chain.head == head
    assert chain.error == error
    assert chain.readable == [] and chain.writable == []


def test_loop_of_two(mem, drv):
    chain = pop_one(mem, drv, {0: (DATA, 1, NEXT, 1), 1: (DATA, 1, NEXT, 0)})
    assert_failed(chain, 0, "descriptor chain from 0 loops or is longer than its table (8)")


def test_descriptor_pointing_at_itself(mem, drv):
    chain = pop_one(mem, drv, {5: (DATA, 1, NEXT, 5)}, head=5)
    assert_failed(chain, 5, "descriptor chain from 5 loops or is longer than its table (8)")


def test_loop_inside_an_indirect_table(mem, drv):
    write_table(mem, TABLE, [(DATA, 1, NEXT, 1), (DATA, 1, NEXT, 0)])
    chain = pop_one(mem, drv, {0: (TABLE, 32, INDIRECT, 0)}, indirect=True)
    assert_failed(chain, 0, "descriptor chain from 0 loops or is longer than its table (2)")


def test_next_index_outside_the_table(mem, drv):
    chain = pop_one(mem, drv, {0: (DATA, 1, NEXT, SIZE)})
    assert_failed(chain, 0, "next index 8 is outside the 8-entry table")


def test_next_index_outside_an_indirect_table(mem, drv):
    write_table(mem, TABLE, [(DATA, 1, NEXT, 1), (DATA, 1, NEXT, 2)])
    chain = pop_one(mem, drv, {0: (TABLE, 32, INDIRECT, 0)}, indirect=True)
    assert_failed(chain, 0, "next index 2 is outside the 2-entry table")


def test_head_index_outside_the_table(mem, drv):
    drv.publish(SIZE)
    drv.add([Segment(DATA, 1)])
    q = queue(mem, drv)
    assert_failed(q.pop(), SIZE, "head index 8 is outside the 8-entry table")
    good = q.pop()  # the next request is served as usual
    assert good.error is None and ranges(mem, good.readable) == [(DATA, 1)]


@pytest.mark.parametrize("addr,length", [
    (MEM_SIZE - 4, 8),  # straddles the end of RAM
    (MEM_SIZE, 1),  # just past it
    (0, 0xFFFFFFFF),  # a huge length
    (0xFFFFFFFFFFFFFFF0, 0x20),  # addr + len wraps past 2**64
    (0xFFFFFFFFFFFFFFFF, 1),
    (0xC0000000, 16),  # the 32-bit device hole
])
def test_buffer_outside_guest_ram(mem, drv, addr, length):
    chain = pop_one(mem, drv, {0: (addr, length, WRITE, 0)})
    assert_failed(chain, 0, f"buffer {addr:#x}+{length:#x} is outside guest memory")


def test_one_bad_buffer_fails_the_whole_chain(mem, drv):
    chain = pop_one(mem, drv, {0: (DATA, 16, NEXT, 1), 1: (DATA + 16, 512, WRITE | NEXT, 2),
                               2: (MEM_SIZE - 1, 2, WRITE, 0)})
    assert_failed(chain, 0, f"buffer {MEM_SIZE - 1:#x}+0x2 is outside guest memory")


def test_indirect_table_outside_guest_ram(mem, drv):
    chain = pop_one(mem, drv, {0: (MEM_SIZE - 16, 32, INDIRECT, 0)}, indirect=True)
    assert_failed(chain, 0, f"buffer {MEM_SIZE - 16:#x}+0x20 is outside guest memory")


def test_indirect_without_the_feature(mem, drv):
    write_table(mem, TABLE, [(DATA, 1, 0, 0)])
    chain = pop_one(mem, drv, {0: (TABLE, 16, INDIRECT, 0)}, indirect=False)
    assert_failed(chain, 0, "indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated")


def test_indirect_table_inside_an_indirect_table(mem, drv):
    write_table(mem, TABLE, [(DATA, 1, NEXT, 1), (TABLE + 0x100, 16, INDIRECT, 0)])
    write_table(mem, TABLE + 0x100, [(DATA, 1, 0, 0)])
    chain = pop_one(mem, drv, {0: (TABLE, 32, INDIRECT, 0)}, indirect=True)
    assert_failed(chain, 0, "indirect descriptor inside an indirect table")


def test_indirect_descriptor_with_next(mem, drv):
    write_table(mem, TABLE, [(DATA, 1, 0, 0)])
    chain = pop_one(mem, drv, {0: (TABLE, 16, INDIRECT | NEXT, 1), 1: (DATA, 1, 0, 0)}, indirect=True)
    assert_failed(chain, 0, "indirect descriptor with NEXT set")


@pytest.mark.parametrize("length", [0, 8, 24, 17, 16 * (VIRTQ_MAX_SIZE + 1)])
def test_indirect_table_size_not_a_whole_number_of_descriptors(mem, drv, length):
    chain = pop_one(mem, drv, {0: (TABLE, length, INDIRECT, 0)}, indirect=True)
    assert_failed(chain, 0, f"indirect table of {length} bytes is not 1..{VIRTQ_MAX_SIZE} descriptors")


def test_readable_after_writable(mem, drv):
    chain = pop_one(mem, drv, {0: (DATA, 16, NEXT, 1), 1: (DATA + 16, 8, WRITE | NEXT, 2), 2: (DATA + 32, 8, 0, 0)})
    assert_failed(chain, 0, "device-readable buffer after a device-writable one")


def test_readable_after_writable_in_an_indirect_table(mem, drv):
    write_table(mem, TABLE, [(DATA, 8, WRITE | NEXT, 1), (DATA + 8, 8, 0, 0)])
    chain = pop_one(mem, drv, {0: (TABLE, 32, INDIRECT, 0)}, indirect=True)
    assert_failed(chain, 0, "device-readable buffer after a device-writable one")


def test_chain_over_4_gib_in_total(mem, drv):
    # Buffers may overlap, so a chain that stays inside 1 MiB of RAM can still name > 4 GiB.
    count = MAX_CHAIN_BYTES // MEM_SIZE + 1
    write_table(mem, TABLE, [(0, MEM_SIZE, NEXT, i + 1) for i in range(count - 1)] + [(0, MEM_SIZE, 0, 0)])
    chain = pop_one(mem, drv, {0: (TABLE, 16 * count, INDIRECT, 0)}, indirect=True)
    assert_failed(chain, 0, "descriptor chain larger than 4 GiB")


def test_a_failed_chain_does_not_stop_the_queue(mem, drv):
    drv.write_desc(0, DATA, 1, NEXT, 0)  # loops
    drv.publish(0)
    drv.write_desc(1, DATA + 8, 4, WRITE, 0)
    drv.publish(1)
    q = queue(mem, drv)
    assert q.pop().error is not None
    chain = q.pop()
    assert chain.head == 1 and chain.error is None
    assert ranges(mem, chain.writable) == [(DATA + 8, 4)]


# -- bad rings: the queue cannot be used --------------------------------------------------------------


@pytest.mark.parametrize("desc,avail,used,why", [
    (0x1008, 0x2000, 0x3000, "misaligned ring address"),
    (0x1000, 0x2001, 0x3000, "misaligned ring address"),
    (0x1000, 0x2000, 0x3002, "misaligned ring address"),
])
def test_misaligned_rings(mem, desc, avail, used, why):
    with pytest.raises(QueueBroken, match=f"^{why}$"):
        SplitQueue(mem, SIZE, desc, avail, used)


@pytest.mark.parametrize("desc,avail,used", [
    (MEM_SIZE - 16, 0x2000, 0x3000),  # the table runs past the end of RAM
    (0x1000, MEM_SIZE - 2 * SIZE, 0x3000),  # avail ring's used_event just outside
    (0x1000, 0x2000, MEM_SIZE - 4),  # used ring
    (0x1000, 0x2000, 0xFFFFFFFFFFFFFFFC),
    (0xFEC00000, 0x2000, 0x3000),  # device memory, not RAM
])
def test_rings_outside_guest_ram(mem, desc, avail, used):
    with pytest.raises(QueueBroken, match="^ring outside guest memory: guest range 0x[0-9a-f]+\\+0x[0-9a-f]+ is "
                                          "outside guest RAM$"):
        SplitQueue(mem, SIZE, desc, avail, used)


@pytest.mark.parametrize("size", [0, 3, 6, 2 * VIRTQ_MAX_SIZE])
def test_queue_size_must_be_a_power_of_two_up_to_32768(mem, size):
    with pytest.raises(QueueBroken, match=f"^queue size {size} is not a power of 2 up to 32768$"):
        SplitQueue(mem, size, 0x1000, 0x2000, 0x3000)


def test_largest_queue_fits(mem):
    q = SplitQueue(mem, VIRTQ_MAX_SIZE, 0x80000, 0x2000, 0x20000)
    assert len(q.desc) == 16 * VIRTQ_MAX_SIZE
    assert len(q.avail) == 6 + 2 * VIRTQ_MAX_SIZE
    assert len(q.used) == 6 + 8 * VIRTQ_MAX_SIZE


def test_available_index_a_whole_queue_ahead_is_fine(mem, drv):
    for _ in range(SIZE):
        drv.add([Segment(DATA, 1)])
    assert queue(mem, drv).pending() == SIZE


def test_available_index_more_than_a_queue_ahead_breaks_the_queue(mem, drv):
    mem.write(drv.avail + 2, struct.pack("<H", SIZE + 1))
    q = queue(mem, drv)
    with pytest.raises(QueueBroken, match="^available index 9 is 9 entries ahead of a 8-entry queue$"):
        q.pending()
    with pytest.raises(QueueBroken):
        q.pop()
    assert q.last_avail == 0


def test_available_index_moving_backwards_breaks_the_queue(mem, drv):
    drv.add([Segment(DATA, 1)])
    q = queue(mem, drv)
    q.pop()
    mem.write(drv.avail + 2, struct.pack("<H", 0))  # the driver took one back
    with pytest.raises(QueueBroken, match="^available index 0 is 65535 entries ahead of a 8-entry queue$"):
        q.pop()
