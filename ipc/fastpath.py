"""Registers the core can answer without asking the device.

A device declares, in its hello, which of its registers are side-effect free
and how to compute them, so that the hottest reads never cross processes:

- a counter: ``value = (CLOCK_MONOTONIC - epoch) * frequency mod 2**width``.
  The ACPI PM timer is one (the firmware's Stall() reads it tens of thousands
  of times). Both processes read the same system clock, so the core's answer
  is exactly what the device would have said. The core picks the epoch and
  hands it to the device, so a restarted device keeps counting from it.
- a mirror: a status register whose value the device sends with every reply,
  with the offsets of the registers whose writes may change it. The core
  answers reads from that copy until the guest writes one of those registers,
  or the core sends the device anything but a posted write (any request may
  change it). A 16550's line status is one: drivers poll it before every byte
  they send (Linux's 8250 console, the firmware's serial port library), and
  only a FIFO reset, loopback, received input or a read of the receive buffer
  change it. The device sends no copy while reading it has a side effect (an
  overrun pending, which the read clears); then reads go to the device.

The device stays the authority: the declaration is data the device sends and
the core checks (window, offset, sizes, a sane frequency); the core never
learns more about the device than this.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

from .protocol import ProtocolError

MAX_COUNTER_FREQUENCY = 10**10
MAX_FAST_REGISTERS = 16


@dataclass(frozen=True)
class Counter:
    window: int
    offset: int
    size: int
    frequency: int
    epoch: float
    width: int

    def read(self, offset: int, size: int, now: float | None = None) -> bytes | None:
        """The bytes of a read inside this register, or None if the read is not all inside it."""
        if not (self.offset <= offset and offset + size <= self.offset + self.size):
            return None
        now = time.monotonic() if now is None else now
        value = int((now - self.epoch) * self.frequency) & ((1 << self.width) - 1)
        start = offset - self.offset
        return value.to_bytes(self.size, "little")[start : start + size]

    def describe(self) -> dict:
        return {"kind": "counter", "window": self.window, "offset": self.offset, "size": self.size,
                "frequency": self.frequency, "epoch": self.epoch, "width": self.width}


@dataclass(frozen=True)
class Mirror:
    window: int
    offset: int
    size: int

    def describe(self) -> dict:
        return {"kind": "mirror", "window": self.window, "offset": self.offset, "size": self.size}


@dataclass(frozen=True)
class Copy:
    """A mirror's value as of the device's last reply, and what ends it."""

    data: bytes
    invalidated_by: frozenset[int]  # offsets in the mirror's window

    def ended_by(self, offset: int, size: int) -> bool:
        return any(offset <= o < offset + size for o in self.invalidated_by)


def byte_copy(value: int | None, invalidated_by) -> list | None:
    """A one-byte mirror's copy as a reply carries it (what ``parse_copies`` reads back):
    the device model's (value, offsets whose writes end it), or None for no copy."""
    return None if value is None else [bytes((value,)), list(invalidated_by)]


def _integer(v: object) -> bool:
    return type(v) is int


def parse_fast_registers(items: object) -> tuple[list[Counter], list[Mirror]]:
    """Check a device's declaration; anything odd is a protocol error, not a crash."""
    if not isinstance(items, list) or len(items) > MAX_FAST_REGISTERS:
        raise ProtocolError(f"fast registers must be a list of at most {MAX_FAST_REGISTERS} entries")
    counters, mirrors = [], []
    for item in items:
        if not isinstance(item, dict) or "kind" not in item:
            raise ProtocolError("malformed fast register declaration")
        kind = item["kind"]
        if kind == "counter":
            fields, cls = ("window", "offset", "size", "frequency", "epoch", "width"), Counter
        elif kind == "mirror":
            fields, cls = ("window", "offset", "size"), Mirror
        else:
            raise ProtocolError(f"unknown fast register kind {kind!r}")
        if set(item) != {"kind", *fields} or not all(_integer(item[f]) for f in fields if f != "epoch"):
            raise ProtocolError("malformed fast register declaration")
        if kind == "counter" and (type(item["epoch"]) not in (int, float) or not math.isfinite(item["epoch"])):
            raise ProtocolError("malformed fast register declaration")
        c = cls(**{f: float(item[f]) if f == "epoch" else item[f] for f in fields})
        if c.size not in (1, 2, 4, 8) or not 0 <= c.offset < 1 << 32 or not 0 <= c.window < 256:
            raise ProtocolError("fast register declaration out of range")
        if kind == "counter":
            if not 0 < c.frequency <= MAX_COUNTER_FREQUENCY or not 0 < c.width <= 8 * c.size:
                raise ProtocolError("fast register declaration out of range")
            counters.append(c)
        else:
            mirrors.append(c)
    return counters, mirrors


def parse_copies(mirrors: list[Mirror], items: object) -> list[Copy | None]:
    """The copies a reply carries, one per declared mirror (None: read it from the device)."""
    if not isinstance(items, list) or len(items) != len(mirrors):
        raise ProtocolError(f"a reply must carry {len(mirrors)} mirror copies")
    out = []
    for mirror, item in zip(mirrors, items):
        if item is None:
            out.append(None)
            continue
        if (not isinstance(item, list) or len(item) != 2 or type(item[0]) is not bytes
                or len(item[0]) != mirror.size or not isinstance(item[1], list) or len(item[1]) > 256
                or not all(type(o) is int and 0 <= o < 1 << 32 for o in item[1])):
            raise ProtocolError("malformed mirror copy")
        out.append(Copy(item[0], frozenset(item[1])))
    return out
