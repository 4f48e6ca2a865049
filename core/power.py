"""Power-off and reset registers.

- ACPI sleep control at 0x600 (ACPI 6.5, §4.8.3.7 "Sleep Control and Status
  Registers", for HW-reduced ACPI). Writing SLP_EN with SLP_TYP 5 (the value our
  DSDT's _S5 names) powers off. The same byte is the FADT's RESET_REG, whose
  RESET_VALUE 1 resets.
- The reset control register at 0xCF9 (Intel ICH/PCH datasheets: SYS_RST and
  RST_CPU).
- The i8042 keyboard controller's command 0xFE, "pulse the reset line".
"""
from __future__ import annotations

from typing import Protocol

SLP_EN = 0x20
SLP_TYP_SHIFT = 2
SLP_TYP_MASK = 0x07
SLP_TYP_S5 = 5  # matches the DSDT's _S5 package
ACPI_RESET_VALUE = 1  # FADT RESET_VALUE

CF9_SYS_RST = 0x02
CF9_RST_CPU = 0x04

I8042_CMD_PULSE_RESET = 0xFE
I8042_STATUS_IDLE = 0x00  # output buffer empty, input buffer empty


class PowerEvents(Protocol):
    def poweroff(self, source: str) -> None: ...

    def reset(self, source: str) -> None: ...


class AcpiSleepControl:
    def __init__(self, events: PowerEvents):
        self.events = events

    def read(self, offset: int, size: int) -> bytes:
        return bytes(size)  # sleep status: no wake event

    def write(self, offset: int, data: bytes) -> None:
        value = data[0]
        if value & SLP_EN and (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLP_TYP_S5:
            self.events.poweroff("ACPI sleep control (S5)")
        elif value == ACPI_RESET_VALUE:
            self.events.reset("ACPI reset register")


class ResetControl:
    def __init__(self, events: PowerEvents):
        self.events = events
        self.value = 0

    def read(self, offset: int, size: int) -> bytes:
        return bytes([self.value]) * size

    def write(self, offset: int, data: bytes) -> None:
        value = data[0]
        if value & CF9_RST_CPU and not self.value & CF9_RST_CPU:
            self.events.reset("reset control register 0xCF9")
        self.value = value & ~CF9_RST_CPU & 0xFF


class I8042Command:
    """Port 0x64: status on read; only the reset command does anything."""

    def __init__(self, events: PowerEvents):
        self.events = events

    def read(self, offset: int, size: int) -> bytes:
        return bytes([I8042_STATUS_IDLE]) * size

    def write(self, offset: int, data: bytes) -> None:
        if data[0] == I8042_CMD_PULSE_RESET:
            self.events.reset("i8042 reset command")
