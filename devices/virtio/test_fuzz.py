"""Fuzzing the virtqueue walker, SplitQueue, with hypothesis.

Hostile rings (tests/virtio_fuzz_rings.py) are written into a real memfd-backed GuestMemory
and thrown at SplitQueue. Each outcome is checked against a small reference model of the spec
(VIRTIO 1.2 §2.7, tests/virtio_fuzz_model.py): every pop is compared with the model's chain for
the same memory, and its views must show guest RAM at the model's addresses; the used ring gets
one entry per consumed head, in order, and nothing else in guest memory changes; whether the
driver is interrupted follows §2.7.7 and §2.7.10. Every view of guest memory the queue takes is
recorded and checked to lie inside guest RAM. (The block device behind the queue:
test_fuzz_blk.py.)
"""
from __future__ import annotations

import struct

import pytest
from hypothesis import event, given

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import VIRTQ_AVAIL_F_NO_INTERRUPT
from vmboot.devices.virtio.queue import QueueBroken, SplitQueue
from vmboot.tests.virtio_fuzz_model import Bad, RecordingMemory, changed, check_chain, model_chain, need_event, snapshot
from vmboot.tests.virtio_fuzz_rings import AVAIL_AT, DESC_AT, FUZZ, MEM_SIZE, U16, USED_AT, Scenario, lay_out, scenarios

# -- the queue alone --------------------------------------------------------------------------------


def used_ring(mem: bytes, sc: Scenario) -> tuple[int, list[tuple[int, int]]]:
    idx = U16.unpack_from(mem, USED_AT + 2)[0]
    return idx, [struct.unpack_from("<II", mem, USED_AT + 4 + 8 * i) for i in range(sc.size)]


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
