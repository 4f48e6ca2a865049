"""Split virtqueues (VIRTIO 1.2 §2.7), walked by the device that owns them.

Everything in the rings is written by the guest, so everything is checked:
every address and length must lie inside guest RAM (GuestMemory.view raises
otherwise), a chain may hold at most as many descriptors as its table (so a
loop ends), an indirect table must be a whole number of descriptors and may not
hold another indirect descriptor, and device-readable buffers must come before
device-writable ones. A bad chain fails that one request: it is returned to the
used ring with nothing written, and the device carries on. A bad ring (its
available index runs more than a queue's worth ahead) breaks only that queue.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Protocol

from vmboot.abi.virtio import (
    VIRTQ_AVAIL_F_NO_INTERRUPT, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE, VIRTQ_DESC_SIZE,
    VIRTQ_MAX_SIZE, VIRTQ_USED_ELEM_SIZE,
)

DESC = struct.Struct("<QIHH")  # addr, len, flags, next
U16 = struct.Struct("<H")
USED_ELEM = struct.Struct("<II")  # id, len
MAX_CHAIN_BYTES = 1 << 32


class Memory(Protocol):
    def view(self, gpa: int, length: int) -> memoryview: ...


class QueueBroken(Exception):
    """The ring itself is inconsistent; the device must stop using this queue."""


@dataclass
class Chain:
    """One request: a head index and its buffers, split by direction."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)
    error: str | None = None  # why the chain is unusable; then it carries no buffers

    @property
    def readable_bytes(self) -> int:
        return sum(len(b) for b in self.readable)

    @property
    def writable_bytes(self) -> int:
        return sum(len(b) for b in self.writable)


def _aligned(addr: int, alignment: int) -> bool:
    return addr % alignment == 0


class SplitQueue:
    def __init__(self, memory: Memory, size: int, desc: int, avail: int, used: int,
                 indirect: bool = False, event_idx: bool = False):
        if not size or size & (size - 1) or size > VIRTQ_MAX_SIZE:
            raise QueueBroken(f"queue size {size} is not a power of 2 up to {VIRTQ_MAX_SIZE}")
        if not (_aligned(desc, 16) and _aligned(avail, 2) and _aligned(used, 4)):
            raise QueueBroken("misaligned ring address")
        self.size = size
        self.indirect = indirect
        self.event_idx = event_idx
        try:
            self.desc = memory.view(desc, VIRTQ_DESC_SIZE * size)
            self.avail = memory.view(avail, 6 + 2 * size)  # flags, idx, ring[size], used_event
            self.used = memory.view(used, 6 + VIRTQ_USED_ELEM_SIZE * size)  # flags, idx, ring[size], avail_event
        except Exception as err:
            raise QueueBroken(f"ring outside guest memory: {err}") from None
        self.memory = memory
        self.record_dma = False  # remember device-writable ranges (emulate: drop stale code)
        self._dma_writes: list[tuple[int, int]] = []
        self.last_avail = 0
        self.used_idx = U16.unpack_from(self.used, 2)[0]
        self.signalled_used = self.used_idx  # used index at the last interrupt (event-idx)

    # -- the available ring ------------------------------------------------------------
    def pending(self) -> int:
        avail_idx = U16.unpack_from(self.avail, 2)[0]
        count = (avail_idx - self.last_avail) & 0xFFFF
        if count > self.size:
            raise QueueBroken(f"available index {avail_idx} is {count} entries ahead of a {self.size}-entry queue")
        return count

    def pop(self) -> Chain | None:
        """The next request, or None. A malformed chain comes back with ``error`` set."""
        if not self.pending():
            return None
        head = U16.unpack_from(self.avail, 4 + 2 * (self.last_avail % self.size))[0]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:  # avail_event: kick me again only past this point
            U16.pack_into(self.used, 4 + VIRTQ_USED_ELEM_SIZE * self.size, self.last_avail)
        if head >= self.size:
            return Chain(head, error=f"head index {head} is outside the {self.size}-entry table")
        try:
            return self._walk(head)
        except _BadChain as bad:
            return Chain(head, error=str(bad))

    def _walk(self, head: int) -> Chain:
        chain = Chain(head)
        table, count, index = self.desc, self.size, head
        in_indirect = False
        seen = 0
        total = 0
        while True:
            if seen >= count:
                raise _BadChain(f"descriptor chain from {head} loops or is longer than its table ({count})")
            seen += 1
            addr, length, flags, nxt = DESC.unpack_from(table, index * VIRTQ_DESC_SIZE)
            if flags & VIRTQ_DESC_F_INDIRECT:
                if not self.indirect:
                    raise _BadChain("indirect descriptor, but VIRTIO_RING_F_INDIRECT_DESC was not negotiated")
                if in_indirect:
                    raise _BadChain("indirect descriptor inside an indirect table")
                if flags & VIRTQ_DESC_F_NEXT:
                    raise _BadChain("indirect descriptor with NEXT set")
                if not length or length % VIRTQ_DESC_SIZE or length // VIRTQ_DESC_SIZE > VIRTQ_MAX_SIZE:
                    raise _BadChain(f"indirect table of {length} bytes is not 1..{VIRTQ_MAX_SIZE} descriptors")
                table = self._view(addr, length)
                count, index, seen, in_indirect = length // VIRTQ_DESC_SIZE, 0, 0, True
                continue
            total += length
            if total > MAX_CHAIN_BYTES:
                raise _BadChain("descriptor chain larger than 4 GiB")
            buf = self._view(addr, length)
            if flags & VIRTQ_DESC_F_WRITE:
                chain.writable.append(buf)
                if self.record_dma:
                    self._dma_writes.append((addr, length))
            elif chain.writable:
                raise _BadChain("device-readable buffer after a device-writable one")
            else:
                chain.readable.append(buf)
            if not flags & VIRTQ_DESC_F_NEXT:
                return chain
            if nxt >= count:
                raise _BadChain(f"next index {nxt} is outside the {count}-entry table")
            index = nxt

    def _view(self, addr: int, length: int) -> memoryview:
        try:
            return self.memory.view(addr, length)
        except Exception:
            raise _BadChain(f"buffer {addr:#x}+{length:#x} is outside guest memory") from None

    def take_dma_writes(self) -> list[tuple[int, int]]:
        """Guest ranges handed to the device for writing since the last call."""
        writes, self._dma_writes = self._dma_writes, []
        return writes

    # -- the used ring --------------------------------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Return a request to the driver, with ``written`` bytes written into its buffers."""
        USED_ELEM.pack_into(self.used, 4 + VIRTQ_USED_ELEM_SIZE * (self.used_idx % self.size), head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        U16.pack_into(self.used, 2, self.used_idx)  # after the element: the driver reads idx first

    def needs_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last one (§2.7.7)."""
        new, old = self.used_idx, self.signalled_used
        if new == old:
            return False
        self.signalled_used = new
        if self.event_idx:
            used_event = U16.unpack_from(self.avail, 4 + 2 * self.size)[0]
            return (new - used_event - 1) & 0xFFFF < (new - old) & 0xFFFF
        return not U16.unpack_from(self.avail, 0)[0] & VIRTQ_AVAIL_F_NO_INTERRUPT


class _BadChain(Exception):
    pass
