"""SplitQueue (VIRTIO 1.2 §2.7): chains, rings and interrupt suppression, as a guest that gets
them right drives it. Descriptors are written into a real memfd-backed GuestMemory, as a guest
driver would. (Every way a guest can get a ring wrong: test_queue_errors.py.)"""
from __future__ import annotations

import struct

from vmboot.abi.virtio import VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_USED_ELEM_SIZE
from vmboot.devices.virtio.driver import Segment
from vmboot.tests.virtio_rig import DATA, INDIRECT, MEM_SIZE, NEXT, SIZE, TABLE, WRITE, queue, ranges, write_table


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
