"""The driver's side of a split virtqueue, in guest memory: for tests and benchmarks.

It plays what a guest's virtio driver does: lay out the descriptor table and
rings, write descriptor chains, publish them in the available ring, kick, and
collect completions from the used ring. The device under test sees nothing
but guest memory and eventfds, exactly as in a VM.
"""
from __future__ import annotations

import os
import select
import struct
from dataclasses import dataclass

from vmboot.abi.virtio import (
    VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_SIZE, VIRTQ_USED_ELEM_SIZE,
)

DESC = struct.Struct("<QIHH")


@dataclass
class Segment:
    """One buffer of a request: ``length`` bytes at ``gpa``, device-writable or not."""

    gpa: int
    length: int
    writable: bool = False


class Arena:
    """A bump allocator over a range of guest memory."""

    def __init__(self, start: int, end: int):
        self.next = start
        self.end = end

    def alloc(self, size: int, align: int = 16) -> int:
        addr = (self.next + align - 1) // align * align
        if addr + size > self.end:
            raise MemoryError("test arena exhausted")
        self.next = addr + size
        return addr


class QueueDriver:
    def __init__(self, memory, arena: Arena, size: int):
        self.memory = memory
        self.size = size
        self.desc = arena.alloc(VIRTQ_DESC_SIZE * size, 16)
        self.avail = arena.alloc(6 + 2 * size, 2)
        self.used = arena.alloc(6 + VIRTQ_USED_ELEM_SIZE * size, 4)
        memory.write(self.desc, bytes(VIRTQ_DESC_SIZE * size))
        memory.write(self.avail, bytes(6 + 2 * size))
        memory.write(self.used, bytes(6 + VIRTQ_USED_ELEM_SIZE * size))
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.chain_descs: dict[int, list[int]] = {}

    # -- building requests ------------------------------------------------------------------
    def write_desc(self, index: int, addr: int, length: int, flags: int, next_index: int = 0) -> None:
        self.memory.write(self.desc + index * VIRTQ_DESC_SIZE, DESC.pack(addr, length, flags, next_index))

    def add(self, segments: list[Segment]) -> int:
        """Publish a chain of direct descriptors; returns its head index."""
        if len(segments) > len(self.free):
            raise RuntimeError("queue full")
        indices = [self.free.pop(0) for _ in segments]
        for i, (index, seg) in enumerate(zip(indices, segments)):
            last = i == len(segments) - 1
            flags = (VIRTQ_DESC_F_WRITE if seg.writable else 0) | (0 if last else VIRTQ_DESC_F_NEXT)
            self.write_desc(index, seg.gpa, seg.length, flags, 0 if last else indices[i + 1])
        self.chain_descs[indices[0]] = indices
        self.publish(indices[0])
        return indices[0]

    def add_indirect(self, segments: list[Segment], table: int) -> int:
        """Publish a chain held in an indirect table at guest address ``table``."""
        for i, seg in enumerate(segments):
            last = i == len(segments) - 1
            flags = (VIRTQ_DESC_F_WRITE if seg.writable else 0) | (0 if last else VIRTQ_DESC_F_NEXT)
            self.memory.write(table + i * VIRTQ_DESC_SIZE, DESC.pack(seg.gpa, seg.length, flags, 0 if last else i + 1))
        head = self.free.pop(0)
        self.write_desc(head, table, VIRTQ_DESC_SIZE * len(segments), VIRTQ_DESC_F_INDIRECT)
        self.chain_descs[head] = [head]
        self.publish(head)
        return head

    def publish(self, head: int) -> None:
        self.memory.write(self.avail + 4 + 2 * (self.avail_idx % self.size), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write(self.avail + 2, struct.pack("<H", self.avail_idx))

    # -- completions ------------------------------------------------------------------------------
    def used_idx(self) -> int:
        return struct.unpack("<H", self.memory.read(self.used + 2, 2))[0]

    def completions(self) -> list[tuple[int, int]]:
        """(head, written bytes) for every chain the device used since the last call."""
        out = []
        end = self.used_idx()
        while self.last_used != end:
            slot = self.used + 4 + VIRTQ_USED_ELEM_SIZE * (self.last_used % self.size)
            head, written = struct.unpack("<II", self.memory.read(slot, 8))
            out.append((head, written))
            self.free.extend(self.chain_descs.pop(head, []))
            self.last_used = (self.last_used + 1) & 0xFFFF
        # used_event (§2.7.10): with VIRTIO_RING_F_EVENT_IDX, interrupt me for the next one used
        self.memory.write(self.avail + 4 + 2 * self.size, struct.pack("<H", self.last_used))
        return out


def kick_and_wait(kick_fd: int, call_fd: int, driver: QueueDriver, count: int, timeout: float = 5.0):
    """Kick the device, then wait (on the call eventfd) until ``count`` chains completed."""
    os.eventfd_write(kick_fd, 1)
    done = driver.completions()
    while len(done) < count:
        ready, _, _ = select.select([call_fd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{len(done)} of {count} requests completed")
        try:
            os.eventfd_read(call_fd)
        except BlockingIOError:
            pass
        done += driver.completions()
    return done
