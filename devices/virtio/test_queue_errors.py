"""SplitQueue (VIRTIO 1.2 §2.7) against every way a guest can get a ring wrong: a bad chain fails
its request and the queue goes on; a bad ring makes the queue unusable. Descriptors are written
into a real memfd-backed GuestMemory, as a guest driver would. (Well-formed chains and rings:
test_queue.py.)"""
from __future__ import annotations

import struct

import pytest

from vmboot.abi.virtio import VIRTQ_MAX_SIZE
from vmboot.devices.virtio.driver import Segment
from vmboot.devices.virtio.queue import MAX_CHAIN_BYTES, QueueBroken, SplitQueue
from vmboot.tests.virtio_rig import DATA, INDIRECT, MEM_SIZE, NEXT, SIZE, TABLE, WRITE, queue, ranges, write_table

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
