"""The 16550A UART's interrupts against the PC16550D datasheet (June 1995).

Which condition the IIR shows, in priority order, which register access clears
it, and when the line changes level. IIR values come from the datasheet's
interrupt control functions table. The interrupt line is recorded as the list
of level changes the model signals; it changes only on transitions. (The
registers themselves: test_uart16550.py.)
"""
from __future__ import annotations

from vmboot.devices.serial.uart16550 import IER, IIR, LSR, RBR, THR
from vmboot.tests.uart_rig import (
    DATA_READY, NO_INTERRUPT, OVERRUN, RECEIVED_DATA, RECEIVER_LINE_STATUS, THR_EMPTY, THRE_TEMT, fill_to_overrun, get,
    put,
)


def test_received_data_interrupt_follows_the_receiver(uart, line):
    put(uart, IER, 0x01)
    assert line.changes == []
    uart.receive(b"ab")
    assert line.changes == [True]
    assert get(uart, IIR) == RECEIVED_DATA
    get(uart, RBR)
    assert get(uart, IIR) == RECEIVED_DATA  # one byte still waiting
    get(uart, RBR)
    assert get(uart, IIR) == NO_INTERRUPT
    assert line.changes == [True, False]


def test_received_data_without_erbfi_raises_nothing_until_enabled(uart, line):
    uart.receive(b"a")
    assert get(uart, IIR) == NO_INTERRUPT
    assert line.changes == []
    put(uart, IER, 0x01)
    assert line.changes == [True]
    put(uart, IER, 0x00)
    assert line.changes == [True, False]


def test_the_line_changes_only_on_transitions(uart, line):
    put(uart, IER, 0x01)
    for byte in b"abc":
        uart.receive(bytes([byte]))
    assert line.changes == [True]


def test_enabling_etbei_raises_thre_at_once(uart, line):
    put(uart, IER, 0x02)
    assert line.changes == [True]
    assert get(uart, IIR) == THR_EMPTY


def test_reading_iir_clears_the_thre_interrupt(uart, line):
    put(uart, IER, 0x02)
    assert get(uart, IIR) == THR_EMPTY
    assert line.changes == [True, False]
    assert get(uart, IIR) == NO_INTERRUPT


def test_a_thr_write_raises_thre_again(uart, line, sent):
    put(uart, IER, 0x02)
    get(uart, IIR)
    put(uart, THR, ord("x"))
    assert sent == [b"x"]
    assert line.changes == [True, False, True]  # a fresh edge for an edge-triggered pin
    assert get(uart, IIR) == THR_EMPTY


def test_rewriting_etbei_does_not_raise_a_second_thre(uart, line):
    put(uart, IER, 0x02)
    get(uart, IIR)
    put(uart, IER, 0x03)  # ETBEI was already on
    assert get(uart, IIR) == NO_INTERRUPT
    assert line.changes == [True, False]


def test_thre_pending_without_etbei_stays_quiet(uart, line):
    put(uart, THR, ord("a"))
    assert get(uart, IIR) == NO_INTERRUPT
    assert line.changes == []


def test_received_data_outranks_thre_and_iir_read_keeps_thre(uart, line):
    put(uart, IER, 0x03)
    uart.receive(b"q")
    assert get(uart, IIR) == RECEIVED_DATA
    assert get(uart, IIR) == RECEIVED_DATA  # reading IIR only clears THRE when THRE is shown
    get(uart, RBR)
    assert get(uart, IIR) == THR_EMPTY  # still pending underneath
    assert get(uart, IIR) == NO_INTERRUPT
    assert line.changes == [True, False]


def test_receiver_line_status_has_the_highest_priority(uart, line):
    fill_to_overrun(uart)
    put(uart, IER, 0x07)
    assert get(uart, IIR) == RECEIVER_LINE_STATUS
    assert get(uart, LSR) == THRE_TEMT | OVERRUN | DATA_READY
    assert get(uart, LSR) == THRE_TEMT | DATA_READY  # reading LSR clears OE
    assert get(uart, IIR) == RECEIVED_DATA
    assert line.changes == [True]


def test_overrun_without_elsi_shows_in_lsr_only(uart, line):
    fill_to_overrun(uart)
    assert get(uart, IIR) == NO_INTERRUPT
    assert get(uart, LSR) & OVERRUN
    assert line.changes == []


def test_clearing_ier_drops_the_line(uart, line):
    put(uart, IER, 0x01)
    uart.receive(b"a")
    put(uart, IER, 0x00)
    assert line.changes == [True, False]
    assert get(uart, IIR) == NO_INTERRUPT
