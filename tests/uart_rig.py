"""Register values and helpers for the 16550A UART's tests (devices/serial/test_uart16550*.py).

The values are from the PC16550D datasheet (June 1995): its interrupt control
functions table and register summary."""
from __future__ import annotations

from vmboot.devices.serial.uart16550 import MCR, RX_BUFFER_LIMIT, THR, Uart16550

# IIR values, highest priority first (interrupt control functions table).
NO_INTERRUPT = 0x01
RECEIVER_LINE_STATUS = 0x06
RECEIVED_DATA = 0x04
THR_EMPTY = 0x02
FIFOS_ENABLED = 0xC0  # IIR bits 7:6 when FCR bit 0 is set

# LSR bits.
DATA_READY = 0x01
OVERRUN = 0x02
THRE_TEMT = 0x60

LOOPBACK = 0x10


class Line:
    """The UART's interrupt output: every level change it reports."""

    def __init__(self):
        self.changes: list[bool] = []

    def __call__(self, level: bool) -> None:
        self.changes.append(level)

    @property
    def level(self) -> bool:
        return bool(self.changes) and self.changes[-1]


def get(uart: Uart16550, reg: int) -> int:
    return uart.read(reg, 1)[0]


def put(uart: Uart16550, reg: int, value: int) -> None:
    uart.write(reg, bytes([value]))


def fill_to_overrun(uart: Uart16550) -> None:
    uart.receive(bytes(RX_BUFFER_LIMIT))
    put(uart, MCR, LOOPBACK)
    put(uart, THR, 0x55)  # no room left: the loopback byte overruns
