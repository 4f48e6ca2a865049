"""The PC CMOS RTC and NVRAM (a Motorola MC146818A behind ports 0x70/0x71).

Offsets: 0 is the index register (bit 7 masks NMI), 1 is the data register.
Register names and bits follow the MC146818A datasheet. The century byte at
0x32 is the PC convention that ACPI's FADT CENTURY field points to.

The clock is the host's UTC time from ``now_fn`` plus an offset that the guest
sets by writing the time with SET held. Register D's VRT bit always reads 1,
which the firmware's RTC driver checks.
"""
from __future__ import annotations

import calendar
import time
from typing import Callable

from vmboot.abi.layout import CMOS_CENTURY

INDEX = 0
DATA = 1
INDEX_NMI_DISABLE = 0x80
INDEX_MASK = 0x7F

# Clock registers.
REG_SECONDS = 0x00
REG_SECONDS_ALARM = 0x01
REG_MINUTES = 0x02
REG_MINUTES_ALARM = 0x03
REG_HOURS = 0x04
REG_HOURS_ALARM = 0x05
REG_DAY_OF_WEEK = 0x06
REG_DAY_OF_MONTH = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_A = 0x0A
REG_B = 0x0B
REG_C = 0x0C
REG_D = 0x0D
REG_CENTURY = CMOS_CENTURY
CMOS_SIZE = 128

REG_A_UIP = 0x80  # update in progress
REG_A_DV_32KHZ = 0x20  # divider chain: 32.768 kHz time base
REG_A_RS_1024HZ = 0x06
REG_A_WRITABLE = 0x7F

REG_B_SET = 0x80
REG_B_PIE = 0x40
REG_B_AIE = 0x20
REG_B_UIE = 0x10
REG_B_SQWE = 0x08
REG_B_DM_BINARY = 0x04
REG_B_24H = 0x02
REG_B_DSE = 0x01

REG_D_VRT = 0x80  # valid RAM and time

HOURS_PM = 0x80  # 12-hour mode

# The update cycle takes 1984 us; UIP rises 244 us before it starts (datasheet, Figure 12).
UIP_WINDOW = 244e-6 + 1984e-6

CLOCK_REGISTERS = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK, REG_DAY_OF_MONTH,
                   REG_MONTH, REG_YEAR, REG_CENTURY)


def to_bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def from_bcd(value: int) -> int:
    return (value >> 4) * 10 + (value & 0x0F)


class CmosRtc:
    def __init__(self, now_fn: Callable[[], float] = time.time, nvram: bytes | None = None):
        self.now_fn = now_fn
        self.ram = bytearray(CMOS_SIZE)
        if nvram:
            self.ram[: len(nvram)] = nvram[:CMOS_SIZE]
        self.ram[REG_A] = REG_A_DV_32KHZ | REG_A_RS_1024HZ
        self.ram[REG_B] = REG_B_24H
        self.ram[REG_C] = 0
        self.ram[REG_D] = REG_D_VRT
        self.index = 0
        self.offset = 0.0  # guest time minus host time, in seconds
        self._held: dict[int, int] | None = None  # clock registers while SET is held

    # -- state for snapshots --------------------------------------------------------
    def snapshot(self) -> dict:
        held = None if self._held is None else bytes(self._held[r] for r in CLOCK_REGISTERS)
        return {"ram": bytes(self.ram), "index": self.index, "offset": self.offset, "held": held}

    def restore(self, state: dict) -> None:
        self.ram[:] = state["ram"]
        self.index = state["index"]
        self.offset = state["offset"]
        held = state.get("held")
        self._held = None if held is None else dict(zip(CLOCK_REGISTERS, held))

    # -- time ---------------------------------------------------------------------------
    def _clock(self) -> dict[int, int]:
        """Clock registers for the current guest time, in the guest's chosen format."""
        if self._held is not None:
            return self._held
        t = time.gmtime(int(self.now_fn() + self.offset))
        binary = self.ram[REG_B] & REG_B_DM_BINARY
        enc = (lambda v: v) if binary else to_bcd
        hour = t.tm_hour
        if not self.ram[REG_B] & REG_B_24H:
            pm = hour >= 12
            hour = hour % 12 or 12
            hours = enc(hour) | (HOURS_PM if pm else 0)
        else:
            hours = enc(hour)
        return {
            REG_SECONDS: enc(t.tm_sec),
            REG_MINUTES: enc(t.tm_min),
            REG_HOURS: hours,
            REG_DAY_OF_WEEK: enc((t.tm_wday + 1) % 7 + 1),  # Sunday is 1
            REG_DAY_OF_MONTH: enc(t.tm_mday),
            REG_MONTH: enc(t.tm_mon),
            REG_YEAR: enc(t.tm_year % 100),
            REG_CENTURY: enc(t.tm_year // 100),
        }

    def _set_clock_from(self, regs: dict[int, int]) -> None:
        binary = self.ram[REG_B] & REG_B_DM_BINARY
        dec = (lambda v: v) if binary else from_bcd
        hours = regs[REG_HOURS]
        if not self.ram[REG_B] & REG_B_24H:
            pm = hours & HOURS_PM
            hour = dec(hours & ~HOURS_PM) % 12 + (12 if pm else 0)
        else:
            hour = dec(hours)
        try:
            guest = calendar.timegm((
                dec(regs[REG_CENTURY]) * 100 + dec(regs[REG_YEAR]), dec(regs[REG_MONTH]),
                dec(regs[REG_DAY_OF_MONTH]), hour, dec(regs[REG_MINUTES]), dec(regs[REG_SECONDS]),
            ))
        except (ValueError, OverflowError):
            return  # a nonsensical date leaves the clock as it was
        self.offset = guest - int(self.now_fn())

    def _uip(self) -> bool:
        frac = self.now_fn() % 1.0
        return frac >= 1.0 - UIP_WINDOW

    # -- guest side ------------------------------------------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        return bytes(self._read_port(offset + i) for i in range(size))

    def write(self, offset: int, data: bytes) -> None:
        for i, value in enumerate(data):
            self._write_port(offset + i, value)

    def index_copy(self) -> tuple[int, tuple[int, ...]]:
        """The index port as a read returns it, and the ports whose writes change that: it is
        write-only, so always 0xFF, whatever is written. The firmware's CMOS library reads it
        before every access (to keep the NMI-disable bit), so the core answers it itself."""
        return self._read_port(INDEX), ()

    def _read_port(self, port: int) -> int:
        if port == INDEX:
            return 0xFF  # the index register is write-only
        if port != DATA:
            return 0xFF
        reg = self.index
        if reg in CLOCK_REGISTERS:
            return self._clock()[reg]
        if reg == REG_A:
            return self.ram[REG_A] | (REG_A_UIP if self._held is None and self._uip() else 0)
        if reg == REG_C:
            value = self.ram[REG_C]
            self.ram[REG_C] = 0  # reading C acknowledges the interrupt flags
            return value
        if reg == REG_D:
            return REG_D_VRT
        return self.ram[reg]

    def _write_port(self, port: int, value: int) -> None:
        if port == INDEX:
            self.index = value & INDEX_MASK
            return
        if port != DATA:
            return
        reg = self.index
        if reg in CLOCK_REGISTERS:
            if self._held is not None:
                self._held[reg] = value
            else:
                # A write without SET moves the clock at once (Linux does this).
                regs = dict(self._clock())
                regs[reg] = value
                self._set_clock_from(regs)
        elif reg == REG_A:
            self.ram[REG_A] = value & REG_A_WRITABLE
        elif reg == REG_B:
            if value & REG_B_SET and self._held is None:
                self._held = dict(self._clock())
            elif not value & REG_B_SET and self._held is not None:
                held, self._held = self._held, None
                self.ram[REG_B] = value
                self._set_clock_from(held)
                return
            self.ram[REG_B] = value
        elif reg in (REG_C, REG_D):
            pass  # read-only
        else:
            self.ram[reg] = value
