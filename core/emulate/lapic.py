"""A local APIC for the emulate backend (Intel SDM Vol. 3A, chapter 11).

Transport-blind like every device model: it sees offsets into its 4 KiB page.
It keeps IRR/ISR/TMR as 256-bit integers, computes the processor priority,
runs the timer in one-shot and periodic modes with the divide register, and
handles EOI, the spurious-vector register and self-IPIs through the ICR.

Two callbacks connect it to the CPU: ``raise_intr()`` when an interrupt becomes
deliverable, and :meth:`intack` when the CPU accepts one. Time comes from
``now_fn``; deadlines go to a timer queue, so tests can drive both.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger("vmboot.lapic")

# Register offsets (SDM Table 11-1).
APIC_ID = 0x020
APIC_VERSION = 0x030
APIC_TPR = 0x080
APIC_APR = 0x090
APIC_PPR = 0x0A0
APIC_EOI = 0x0B0
APIC_RRD = 0x0C0
APIC_LDR = 0x0D0
APIC_DFR = 0x0E0
APIC_SVR = 0x0F0
APIC_ISR = 0x100
APIC_TMR = 0x180
APIC_IRR = 0x200
APIC_ESR = 0x280
APIC_LVT_CMCI = 0x2F0
APIC_ICR_LOW = 0x300
APIC_ICR_HIGH = 0x310
APIC_LVT_TIMER = 0x320
APIC_LVT_THERMAL = 0x330
APIC_LVT_PERF = 0x340
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_LVT_ERROR = 0x370
APIC_TIMER_INITIAL = 0x380
APIC_TIMER_CURRENT = 0x390
APIC_TIMER_DIVIDE = 0x3E0

APIC_VERSION_VALUE = 0x00050014  # version 0x14 (xAPIC), max LVT entry 5
LVT_REGISTERS = (APIC_LVT_CMCI, APIC_LVT_TIMER, APIC_LVT_THERMAL, APIC_LVT_PERF,
                 APIC_LVT_LINT0, APIC_LVT_LINT1, APIC_LVT_ERROR)

LVT_VECTOR = 0xFF
LVT_MASKED = 1 << 16
LVT_TIMER_MODE_SHIFT = 17
LVT_TIMER_MODE_MASK = 0x3
TIMER_ONE_SHOT = 0
TIMER_PERIODIC = 1
TIMER_TSC_DEADLINE = 2

SVR_ENABLE = 1 << 8
SVR_RESET = 0xFF

ICR_VECTOR = 0xFF
ICR_DELIVERY_MODE_SHIFT = 8
ICR_DELIVERY_FIXED = 0
ICR_DELIVERY_INIT = 5
ICR_DELIVERY_STARTUP = 6
ICR_DEST_SHORTHAND_SHIFT = 18
ICR_SHORTHAND_NONE = 0
ICR_SHORTHAND_SELF = 1
ICR_SHORTHAND_ALL = 2
ICR_SHORTHAND_OTHERS = 3
ICR_LOW_WRITABLE = 0x000CCFFF  # the delivery status bit (12) is read-only; 13, 16, 17 are reserved

# IA32_APIC_BASE (SDM §11.4.4).
APIC_DEFAULT_BASE = 0xFEE00000
APIC_BASE_BSP = 1 << 8
APIC_BASE_ENABLE = 1 << 11

# The firmware assumes a 1 GHz APIC timer clock (PcdFSBClock); Linux measures it.
APIC_BUS_FREQUENCY = 1_000_000_000


def _highest(bits: int) -> int:
    return bits.bit_length() - 1  # -1 when empty


def timer_divisor(dcr: int) -> int:
    """SDM Figure 11-10: bits 3, 1, 0 select 2, 4, ..., 128, or 1 for 0b111."""
    value = ((dcr >> 1) & 0x4) | (dcr & 0x3)
    return 1 << ((value + 1) & 0x7)


class LocalApic:
    def __init__(self, now_fn: Callable[[], float], timers, raise_intr: Callable[[], None],
                 eoi_level: Callable[[int], None] = lambda vector: None, apic_id: int = 0):
        self.now_fn = now_fn
        self.timers = timers
        self.raise_intr = raise_intr
        self.eoi_level = eoi_level  # tells the IOAPIC a level-triggered vector finished
        self.lock = threading.RLock()
        self.apic_id = apic_id
        self.base_msr = APIC_DEFAULT_BASE | APIC_BASE_ENABLE | (APIC_BASE_BSP if apic_id == 0 else 0)
        self.irr = 0
        self.isr = 0
        self.tmr = 0
        self.tpr = 0
        self.svr = SVR_RESET
        self.ldr = 0
        self.dfr = 0xFFFFFFFF
        self.esr = 0
        self.icr_low = 0
        self.icr_high = 0
        self.lvt = {reg: LVT_MASKED for reg in LVT_REGISTERS}
        self.divide = 0
        self.initial_count = 0
        self.timer_start = 0.0  # when the current count was last (re)loaded
        self._timer = None  # the scheduled expiry, if any
        self._timer_generation = 0  # which arming an expiry belongs to
        self.timer_fires = 0
        self._oneshot_fired = False  # the current one-shot countdown has interrupted

    # -- state ------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.base_msr & APIC_BASE_ENABLE) and bool(self.svr & SVR_ENABLE)

    def ppr(self) -> int:
        isrv = _highest(self.isr)
        isr_class = (isrv & 0xF0) if isrv >= 0 else 0
        return self.tpr & 0xFF if (self.tpr & 0xF0) >= isr_class else isr_class

    def _deliverable(self) -> int:
        """The vector the CPU would take now, or -1."""
        if not self.enabled:
            return -1
        vector = _highest(self.irr)
        if vector < 0 or (vector & 0xF0) <= (self.ppr() & 0xF0):
            return -1
        return vector

    def has_interrupt(self) -> bool:
        with self.lock:
            return self._deliverable() >= 0

    def _update(self) -> None:
        if self._deliverable() >= 0:
            self.raise_intr()

    # -- interrupt flow ------------------------------------------------------------
    def accept(self, vector: int, level: bool = False) -> None:
        """An interrupt arrives (from the IOAPIC, the timer or an IPI)."""
        if vector < 16:
            with self.lock:
                self.esr |= 1 << 6  # received illegal vector
            return
        with self.lock:
            bit = 1 << vector
            self.irr |= bit
            self.tmr = (self.tmr | bit) if level else (self.tmr & ~bit)
            self._update()

    def intack(self) -> int:
        """The CPU takes the highest deliverable interrupt: IRR to ISR. -1 if none."""
        with self.lock:
            vector = self._deliverable()
            if vector < 0:
                return -1
            bit = 1 << vector
            self.irr &= ~bit
            self.isr |= bit
            self._update()  # something of a higher class may still be pending
            return vector

    def _eoi(self) -> int | None:
        """Retire the highest in-service vector; returns it if it was level-triggered.

        The caller tells the IOAPIC after releasing this LAPIC's lock: the IOAPIC
        delivers into the LAPIC under its own lock, so the order is IOAPIC, then LAPIC.
        """
        vector = _highest(self.isr)
        if vector < 0:
            return None
        bit = 1 << vector
        self.isr &= ~bit
        level = self.tmr & bit
        self._update()
        return vector if level else None

    # -- timer ------------------------------------------------------------------------
    def _timer_mode(self) -> int:
        return (self.lvt[APIC_LVT_TIMER] >> LVT_TIMER_MODE_SHIFT) & LVT_TIMER_MODE_MASK

    def _tick_seconds(self) -> float:
        return timer_divisor(self.divide) / APIC_BUS_FREQUENCY

    def _ticks_since_start(self) -> int:
        """Whole timer ticks since the count was loaded.

        Counted in whole APIC bus cycles, rounded: a float clock read exactly at
        a deadline can land a hair short of it, and must not count a tick less.
        """
        cycles = round((self.now_fn() - self.timer_start) * APIC_BUS_FREQUENCY)
        return cycles // timer_divisor(self.divide)

    def current_count(self) -> int:
        if not self.initial_count or self._timer_mode() == TIMER_TSC_DEADLINE:
            return 0
        ticks = self._ticks_since_start()
        if self._timer_mode() == TIMER_PERIODIC:
            return self.initial_count - ticks % self.initial_count
        return max(self.initial_count - ticks, 0)

    def _arm(self) -> None:
        self._timer_generation += 1  # an expiry already on its way belongs to the old arming
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.initial_count or self._timer_mode() == TIMER_TSC_DEADLINE:
            return
        ticks = self._ticks_since_start()
        if self._timer_mode() == TIMER_PERIODIC:
            periods = ticks // self.initial_count + 1
        elif self._oneshot_fired:
            return  # this one-shot countdown already reached zero and interrupted
        else:
            # A count may run out before it is even armed (62 ticks at divide 16
            # is 1 us, less than this code takes): then the deadline is in the
            # past and the timer queue fires it at once. Dropping it would lose
            # the interrupt and leave a guest asleep forever.
            periods = 1
        deadline = self.timer_start + periods * self.initial_count * self._tick_seconds()
        generation = self._timer_generation
        self._timer = self.timers.schedule(deadline, lambda: self._expire(generation))

    def _expire(self, generation: int) -> None:
        with self.lock:
            if generation != self._timer_generation:
                return  # re-armed or stopped after the queue took this expiry
            self._timer = None
            self.timer_fires += 1
            lvt = self.lvt[APIC_LVT_TIMER]
            if self._timer_mode() == TIMER_PERIODIC:
                self._arm()
            else:
                self._oneshot_fired = True
            if not lvt & LVT_MASKED and self.enabled:
                self.accept(lvt & LVT_VECTOR)

    # -- register access ------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        reg, shift = offset & ~0xF, (offset & 0xF)
        if shift + size > 4:
            return bytes(size)
        with self.lock:
            value = self._read_reg(reg)
        return (value & 0xFFFFFFFF).to_bytes(4, "little")[shift : shift + size]

    def write(self, offset: int, data: bytes) -> None:
        if offset & 0xF or len(data) != 4:
            return  # the SDM requires aligned 32-bit accesses
        with self.lock:
            level_eoi = self._write_reg(offset, int.from_bytes(data, "little"))
        if level_eoi is not None:
            self.eoi_level(level_eoi)

    def _read_reg(self, reg: int) -> int:
        if reg == APIC_ID:
            return self.apic_id << 24
        if reg == APIC_VERSION:
            return APIC_VERSION_VALUE
        if reg == APIC_TPR:
            return self.tpr
        if reg == APIC_PPR:
            return self.ppr()
        if reg == APIC_LDR:
            return self.ldr
        if reg == APIC_DFR:
            return self.dfr
        if reg == APIC_SVR:
            return self.svr
        if APIC_ISR <= reg < APIC_ISR + 0x80:
            return (self.isr >> ((reg - APIC_ISR) >> 4 << 5)) & 0xFFFFFFFF
        if APIC_TMR <= reg < APIC_TMR + 0x80:
            return (self.tmr >> ((reg - APIC_TMR) >> 4 << 5)) & 0xFFFFFFFF
        if APIC_IRR <= reg < APIC_IRR + 0x80:
            return (self.irr >> ((reg - APIC_IRR) >> 4 << 5)) & 0xFFFFFFFF
        if reg == APIC_ESR:
            return self.esr
        if reg == APIC_ICR_LOW:
            return self.icr_low
        if reg == APIC_ICR_HIGH:
            return self.icr_high
        if reg in self.lvt:
            return self.lvt[reg]
        if reg == APIC_TIMER_INITIAL:
            return self.initial_count
        if reg == APIC_TIMER_CURRENT:
            return self.current_count()
        if reg == APIC_TIMER_DIVIDE:
            return self.divide
        return 0

    def _write_reg(self, reg: int, value: int) -> int | None:
        """Apply a register write; returns a level-triggered vector that was EOIed, if any."""
        if reg == APIC_TPR:
            self.tpr = value & 0xFF
            self._update()
        elif reg == APIC_EOI:
            return self._eoi()
        elif reg == APIC_LDR:
            self.ldr = value & 0xFF000000
        elif reg == APIC_DFR:
            self.dfr = value | 0x0FFFFFFF
        elif reg == APIC_SVR:
            self.svr = value & 0x13FF
            if not self.svr & SVR_ENABLE:
                for r in self.lvt:
                    self.lvt[r] |= LVT_MASKED
            self._update()
        elif reg == APIC_ESR:
            self.esr = 0
        elif reg == APIC_ICR_HIGH:
            self.icr_high = value & 0xFF000000
        elif reg == APIC_ICR_LOW:
            self.icr_low = value & ICR_LOW_WRITABLE
            self._send_ipi()
        elif reg in self.lvt:
            if not self.svr & SVR_ENABLE:
                value |= LVT_MASKED
            old_mode = self._timer_mode()
            self.lvt[reg] = value & 0x000717FF if reg == APIC_LVT_TIMER else value & 0x0001F7FF
            if reg == APIC_LVT_TIMER and self._timer_mode() != old_mode:
                self._arm()
        elif reg == APIC_TIMER_INITIAL:
            self.initial_count = value
            self.timer_start = self.now_fn()
            self._oneshot_fired = False  # a new countdown
            self._arm()
        elif reg == APIC_TIMER_DIVIDE:
            count = self.current_count()
            self.divide = value & 0xB
            if self.initial_count:
                # keep the count where it is, and count on at the new rate
                self.timer_start = self.now_fn() - (self.initial_count - count) * self._tick_seconds()
                self._arm()

    def _send_ipi(self) -> None:
        icr = self.icr_low
        mode = (icr >> ICR_DELIVERY_MODE_SHIFT) & 0x7
        shorthand = (icr >> ICR_DEST_SHORTHAND_SHIFT) & 0x3
        to_self = shorthand in (ICR_SHORTHAND_SELF, ICR_SHORTHAND_ALL) or (
            shorthand == ICR_SHORTHAND_NONE and self.icr_high >> 24 == self.apic_id)
        if mode == ICR_DELIVERY_FIXED:
            if to_self:
                self.accept(icr & ICR_VECTOR)
        elif mode in (ICR_DELIVERY_INIT, ICR_DELIVERY_STARTUP):
            pass  # one vCPU: there is no application processor to start
        else:
            log.debug("IPI delivery mode %d ignored", mode)
