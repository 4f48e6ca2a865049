"""The 16550A UART's line_status_copy: LSR mirrored into the device's replies (ipc/fastpath.py).

The core answers LSR reads from the copy a reply carries until the guest writes
a register the copy names, or the core sends any request. The copy must equal
what a read would return, must not be offered while a read has a side effect
(an overrun, which the read clears), and must name every register whose write
can change LSR: FCR (receiver reset), MCR (loopback on), and THR in loopback.
(The UART against its datasheet: test_uart16550.py, test_uart16550_interrupts.py.)
"""
from __future__ import annotations

import random

import pytest

from vmboot.devices.serial import uart16550
from vmboot.devices.serial.uart16550 import FCR, IER, IIR, LCR, LSR, MCR, MSR, RBR, SCR, THR, Uart16550
from vmboot.ipc.fastpath import Copy
from vmboot.tests.uart_rig import DATA_READY, LOOPBACK, OVERRUN, THRE_TEMT, fill_to_overrun, get, put


def lsr_as_read(uart: Uart16550) -> int:
    """What a guest's LSR read would return now, read from a clone so the UART is untouched."""
    clone = Uart16550(tx=lambda data: None, irq=lambda level: None)
    clone.restore(uart.snapshot())
    return get(clone, LSR)


def test_line_status_copy_at_reset(uart):
    assert uart.line_status_copy() == (THRE_TEMT, (FCR, MCR))
    assert (FCR, MCR) == (2, 4)


def test_line_status_copy_shows_data_ready(uart):
    uart.receive(b"ab")
    assert uart.line_status_copy() == (THRE_TEMT | DATA_READY, (FCR, MCR))
    get(uart, RBR)
    get(uart, RBR)
    assert uart.line_status_copy() == (THRE_TEMT, (FCR, MCR))


def test_line_status_copy_names_thr_in_loopback(uart):
    put(uart, MCR, LOOPBACK)
    assert uart.line_status_copy() == (THRE_TEMT, (FCR, MCR, THR))
    put(uart, THR, 0x41)
    assert uart.line_status_copy() == (THRE_TEMT | DATA_READY, (FCR, MCR, THR))
    put(uart, MCR, 0x00)
    assert uart.line_status_copy() == (THRE_TEMT | DATA_READY, (FCR, MCR))


def test_line_status_copy_names_thr_in_loopback_even_with_dlab_set(uart):
    put(uart, MCR, LOOPBACK)
    put(uart, LCR, 0x80)
    assert uart.line_status_copy() == (THRE_TEMT, (FCR, MCR, THR))


def test_no_line_status_copy_while_an_overrun_is_pending(uart, line):
    fill_to_overrun(uart)
    assert uart.line_status_copy() == (None, ())
    assert uart.line_status_copy() == (None, ())  # asking does not clear the overrun
    assert get(uart, LSR) == THRE_TEMT | OVERRUN | DATA_READY
    assert uart.line_status_copy() == (THRE_TEMT | DATA_READY, (FCR, MCR, THR))


def test_line_status_copy_has_no_side_effect(uart, line, sent):
    put(uart, IER, 0x07)
    fill_to_overrun(uart)
    before, changes = uart.snapshot(), list(line.changes)
    uart.line_status_copy()
    assert uart.snapshot() == before
    assert line.changes == changes
    assert sent == []


def test_line_status_copy_is_what_a_read_returns(uart):
    states = []
    for step in (lambda: None, lambda: uart.receive(b"x"), lambda: put(uart, MCR, LOOPBACK),
                 lambda: put(uart, THR, 0x01), lambda: put(uart, FCR, 0x03), lambda: put(uart, LCR, 0x80)):
        step()
        value, _ = uart.line_status_copy()
        states.append(value)
        assert value == lsr_as_read(uart) == get(uart, LSR)
    assert states == [0x60, 0x61, 0x61, 0x61, 0x60, 0x60]


def test_a_receiver_fifo_reset_changes_lsr_and_is_named(uart):
    uart.receive(b"x")
    value, named = uart.line_status_copy()
    put(uart, FCR, 0x02)
    assert get(uart, LSR) != value
    assert FCR in named


def test_a_thr_write_outside_loopback_leaves_lsr_alone_and_is_not_named(uart, sent):
    value, named = uart.line_status_copy()
    put(uart, THR, 0x41)
    assert sent == [b"A"]
    assert uart.line_status_copy() == (value, named)
    assert THR not in named


def test_a_loopback_thr_write_changes_lsr_and_is_named(uart):
    put(uart, MCR, LOOPBACK)
    value, named = uart.line_status_copy()
    put(uart, THR, 0x41)
    assert get(uart, LSR) != value
    assert THR in named


def test_loopback_on_is_named_before_it_is_on(uart):
    """The copy taken before loopback does not name THR, so the MCR write must end it."""
    value, named = uart.line_status_copy()
    assert THR not in named and MCR in named
    put(uart, MCR, LOOPBACK)
    put(uart, THR, 0x41)
    assert get(uart, LSR) == value | DATA_READY


WRITE_VALUES = (0x00, 0x01, 0x02, 0x03, 0x07, 0x10, 0x13, 0x80, 0x83, 0xFF)


def _line_status_states() -> dict:
    def loopback(u):
        put(u, MCR, LOOPBACK)

    def loopback_full(u):
        u.receive(bytes(uart16550.RX_BUFFER_LIMIT))
        put(u, MCR, LOOPBACK)

    def dlab(u):
        u.receive(b"z")
        put(u, LCR, 0x80)
    return {
        "reset": lambda u: None,
        "data": lambda u: u.receive(b"abc"),
        "loopback": loopback,
        "loopback with data": lambda u: (loopback(u), u.receive(b"q")),
        "loopback, receiver full": loopback_full,
        "dlab": dlab,
        "loopback and dlab": lambda u: (loopback(u), put(u, LCR, 0x80)),
    }


@pytest.mark.parametrize("state", list(_line_status_states()))
def test_every_write_that_changes_lsr_is_named(state, monkeypatch):
    """From each state, every register and a spread of values: a write that changes what an LSR
    read returns, or whether a copy may be offered, must be to a register the copy named.
    (A 16-byte receive buffer, so that a full one is cheap to make.)"""
    monkeypatch.setattr(uart16550, "RX_BUFFER_LIMIT", 16)
    setup = _line_status_states()[state]
    changed = set()
    for reg in range(8):
        for value in WRITE_VALUES:
            uart = Uart16550(tx=lambda data: None, irq=lambda level: None)
            setup(uart)
            before, named = uart.line_status_copy()
            assert before == lsr_as_read(uart)
            put(uart, reg, value)
            after, _ = uart.line_status_copy()
            after_read = lsr_as_read(uart)
            if after != before or after_read != before:
                changed.add(reg)
                assert reg in named, f"writing {value:#04x} to register {reg} changed LSR but the copy does not name it"
    assert changed <= {FCR, MCR, THR}


def test_a_copy_kept_by_the_proxy_s_rules_is_never_stale(monkeypatch):
    """A random guest against the UART, with a copy kept as ipc/proxy.py keeps it: taken after every
    request (a read or received input), ended by a write to an offset it names. Whenever the copy
    is held it must equal what an LSR read would return. A 4-byte receive buffer makes overruns
    common."""
    monkeypatch.setattr(uart16550, "RX_BUFFER_LIMIT", 4)
    rng = random.Random(16550)
    uart = Uart16550(tx=lambda data: None, irq=lambda level: None)
    copy: Copy | None = None
    served = ended = refused = served_in_loopback = 0

    def refresh():
        nonlocal copy, refused
        value, named = uart.line_status_copy()
        copy = None if value is None else Copy(bytes([value]), frozenset(named))
        refused += value is None

    refresh()
    for _ in range(3000):
        op = rng.random()
        if op < 0.55:
            reg = rng.choice((THR, THR, THR, IER, FCR, LCR, MCR, MCR, SCR))
            value = rng.choice((0x00, 0x01, 0x02, 0x03, 0x10, 0x13, 0x41, 0x80))
            data = bytes([value] * rng.choice((1, 1, 1, 2)))
            uart.write(reg, data)
            if copy is not None and copy.ended_by(reg, len(data)):
                copy, ended = None, ended + 1
        elif op < 0.75:
            if copy is not None:  # the core answers
                assert copy.data[0] == lsr_as_read(uart)
                served += 1
                served_in_loopback += bool(uart.mcr & LOOPBACK)
            else:  # the device answers, and its reply brings a copy
                get(uart, LSR)
                refresh()
        elif op < 0.9:
            get(uart, rng.choice((RBR, IIR, MSR)))
            refresh()
        else:
            uart.receive(bytes(rng.randrange(1, 4)))
            refresh()
        if copy is not None:
            assert copy.data[0] == lsr_as_read(uart)
    # The walk did what it is for.
    assert served > 200 and ended > 200 and refused > 10 and served_in_loopback > 30
