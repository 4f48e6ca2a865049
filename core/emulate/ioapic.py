"""An I/O APIC for the emulate backend (Intel 82093AA datasheet).

Offsets: IOREGSEL at 0x00, IOWIN at 0x10, and the EOI register at 0x40 of
newer I/O APICs. 24 redirection entries route GSIs to the local APIC.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("vmboot.ioapic")

IOREGSEL = 0x00
IOWIN = 0x10
IOAPIC_EOI = 0x40

IOAPICID = 0x00
IOAPICVER = 0x01
IOAPICARB = 0x02
IOREDTBL = 0x10

IOAPIC_PINS = 24
IOAPIC_VERSION = 0x20
IOAPICVER_VALUE = ((IOAPIC_PINS - 1) << 16) | IOAPIC_VERSION

RTE_VECTOR = 0xFF
RTE_DELIVERY_MODE_SHIFT = 8
RTE_DELIVERY_FIXED = 0
RTE_DELIVERY_LOWEST = 1
RTE_DELIVERY_STATUS = 1 << 12
RTE_POLARITY_LOW = 1 << 13
RTE_REMOTE_IRR = 1 << 14
RTE_TRIGGER_LEVEL = 1 << 15
RTE_MASKED = 1 << 16
RTE_READ_ONLY = RTE_DELIVERY_STATUS | RTE_REMOTE_IRR
RTE_RESET = RTE_MASKED


class IoApic:
    def __init__(self, deliver: Callable[[int, bool], None]):
        """``deliver(vector, level_triggered)`` hands an interrupt to the local APIC."""
        self.deliver = deliver
        self.lock = threading.RLock()
        self.regsel = 0
        self.ioapic_id = 0
        self.rte = [RTE_RESET] * IOAPIC_PINS
        self.levels = [False] * IOAPIC_PINS  # the pin's asserted state (after polarity)
        self.delivered = [0] * IOAPIC_PINS

    # -- interrupt lines ----------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        """Drive GSI ``pin``; ``level`` is the line's active (asserted) state."""
        if not 0 <= pin < IOAPIC_PINS:
            return
        with self.lock:
            was = self.levels[pin]
            self.levels[pin] = level
            entry = self.rte[pin]
            if entry & RTE_TRIGGER_LEVEL:
                if level:
                    self._service(pin)
            elif level and not was:
                self._service(pin)

    def _service(self, pin: int) -> None:
        entry = self.rte[pin]
        if entry & RTE_MASKED:
            return
        level = bool(entry & RTE_TRIGGER_LEVEL)
        if level and entry & RTE_REMOTE_IRR:
            return
        mode = (entry >> RTE_DELIVERY_MODE_SHIFT) & 0x7
        if mode not in (RTE_DELIVERY_FIXED, RTE_DELIVERY_LOWEST):
            log.debug("GSI %d: delivery mode %d not supported", pin, mode)
            return
        if level:
            self.rte[pin] |= RTE_REMOTE_IRR
        self.delivered[pin] += 1
        self.deliver(entry & RTE_VECTOR, level)

    def eoi(self, vector: int) -> None:
        """A level-triggered interrupt with ``vector`` was serviced."""
        with self.lock:
            for pin, entry in enumerate(self.rte):
                if entry & RTE_TRIGGER_LEVEL and entry & RTE_REMOTE_IRR and entry & RTE_VECTOR == vector:
                    self.rte[pin] &= ~RTE_REMOTE_IRR
                    if self.levels[pin]:
                        self._service(pin)

    # -- registers --------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        with self.lock:
            if offset == IOREGSEL:
                value = self.regsel
            elif offset == IOWIN:
                value = self._read_indirect(self.regsel)
            else:
                value = 0
        return value.to_bytes(4, "little")[:size].ljust(size, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        value = int.from_bytes(data[:4], "little")
        with self.lock:
            if offset == IOREGSEL:
                self.regsel = value & 0xFF
            elif offset == IOWIN:
                self._write_indirect(self.regsel, value)
            elif offset == IOAPIC_EOI:
                self.eoi(value & 0xFF)

    def _read_indirect(self, reg: int) -> int:
        if reg == IOAPICID:
            return self.ioapic_id << 24
        if reg == IOAPICVER:
            return IOAPICVER_VALUE
        if reg == IOAPICARB:
            return self.ioapic_id << 24
        if IOREDTBL <= reg < IOREDTBL + 2 * IOAPIC_PINS:
            pin, high = divmod(reg - IOREDTBL, 2)
            return (self.rte[pin] >> 32) & 0xFFFFFFFF if high else self.rte[pin] & 0xFFFFFFFF
        return 0

    def _write_indirect(self, reg: int, value: int) -> None:
        if reg == IOAPICID:
            self.ioapic_id = (value >> 24) & 0xF
        elif IOREDTBL <= reg < IOREDTBL + 2 * IOAPIC_PINS:
            pin, high = divmod(reg - IOREDTBL, 2)
            old = self.rte[pin]
            if high:
                self.rte[pin] = (old & 0xFFFFFFFF) | (value << 32)
            else:
                low = (value & ~RTE_READ_ONLY) | (old & RTE_READ_ONLY)
                self.rte[pin] = (old & ~0xFFFFFFFF) | (low & 0xFFFFFFFF)
            # unmasking an asserted level-triggered line delivers it now
            if self.levels[pin] and self.rte[pin] & RTE_TRIGGER_LEVEL:
                self._service(pin)
