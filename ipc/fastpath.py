"""Registers the core can answer without asking the device.

A device declares, in its hello, which of its registers are side-effect free
and how to compute them, so that the hottest reads never cross processes:

- a counter: ``value = (CLOCK_MONOTONIC - epoch) * frequency mod 2**width``.
  The ACPI PM timer is one (the firmware's Stall() reads it tens of thousands
  of times). Both processes read the same system clock, so the core's answer
  is exactly what the device would have said. The core picks the epoch and
  hands it to the device, so a restarted device keeps counting from it.

The device stays the authority: the declaration is data the device sends and
the core checks (window, offset, sizes, a sane frequency); the core never
learns more about the device than this.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from .protocol import ProtocolError

MAX_COUNTER_FREQUENCY = 10**10


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


def parse_fast_registers(items: object) -> list[Counter]:
    """Check a device's declaration; anything odd is a protocol error, not a crash."""
    if not isinstance(items, list) or len(items) > 16:
        raise ProtocolError("fast registers must be a list of at most 16 entries")
    out = []
    for item in items:
        try:
            if item["kind"] != "counter":
                raise ProtocolError(f"unknown fast register kind {item['kind']!r}")
            c = Counter(int(item["window"]), int(item["offset"]), int(item["size"]), int(item["frequency"]),
                        float(item["epoch"]), int(item["width"]))
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("malformed fast register declaration") from None
        if (c.size not in (1, 2, 4, 8) or not 0 < c.frequency <= MAX_COUNTER_FREQUENCY
                or not 0 < c.width <= 8 * c.size or c.offset < 0):
            raise ProtocolError("fast register declaration out of range")
        out.append(c)
    return out
