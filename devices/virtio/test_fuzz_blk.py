"""Fuzzing the block device, VirtioBlk.process, with hypothesis.

Hostile rings (tests/virtio_fuzz_rings.py) are written into a real memfd-backed GuestMemory
and served by VirtioBlk.process with a real disk file behind it. Each outcome is checked against
a small reference model of the spec (VIRTIO 1.2 §2.7, §5.2.6, tests/virtio_fuzz_model.py), step
by step: every pop is compared with the model's chain for the same memory, and between two pops
only the bytes of the current chain's device-writable buffers and the used ring may change in
guest memory, and only the sectors a valid OUT, DISCARD or WRITE_ZEROES request names may change
on disk. Every view of guest memory the device takes is recorded and checked to lie inside guest
RAM. (The queue alone: test_fuzz.py.)
"""
from __future__ import annotations

import os
import random
import struct
import tempfile

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import VIRTQ_AVAIL_F_NO_INTERRUPT
from vmboot.devices.virtio.queue import QueueBroken, SplitQueue
from vmboot.devices.virtio_blk.blk import VirtioBlk
from vmboot.tests.virtio_fuzz_model import (
    Bad, Outcome, RecordingMemory, changed, check_chain, in_ranges, model_chain, model_request, need_event, snapshot,
)
from vmboot.tests.virtio_fuzz_rings import (
    AVAIL_AT, DESC_AT, DISK_SECTORS, FUZZ, MAX_POPS, MEM_SIZE, SECTOR, U16, USED_AT, Scenario, lay_out, scenarios,
)

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
