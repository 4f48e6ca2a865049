"""Fixtures the serial device tests share: a 16550A UART whose transmitted bytes and interrupt line are recorded."""
from __future__ import annotations

import pytest

from vmboot.devices.serial.uart16550 import Uart16550
from vmboot.tests.uart_rig import Line


@pytest.fixture
def sent():
    return []


@pytest.fixture
def line():
    return Line()


@pytest.fixture
def uart(sent, line):
    return Uart16550(tx=sent.append, irq=line)
