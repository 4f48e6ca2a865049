"""The 16550A UART's registers, transmit, receive, FIFOs and loopback against the PC16550D datasheet.

The datasheet is the June 1995 one. Register values come from its register
summary, its reset configuration, and the description of MCR bit 4 (loopback).
The interrupt line is recorded as the list of level changes the model signals.
(Interrupts: test_uart16550_interrupts.py; the LSR copy mirrored into the
device's replies: test_uart16550_line_status.py.)
"""
from __future__ import annotations

import pytest

from vmboot.devices.serial.uart16550 import DLL, DLM, FCR, IER, IIR, LCR, LSR, MCR, MSR, RBR, RX_BUFFER_LIMIT, SCR, THR
from vmboot.tests.uart_rig import DATA_READY, FIFOS_ENABLED, LOOPBACK, NO_INTERRUPT, THR_EMPTY, THRE_TEMT, get, put

# -- reset state and plain registers ------------------------------------------------


def test_reset_state(uart, line):
    assert get(uart, IER) == 0x00
    assert get(uart, IIR) == NO_INTERRUPT
    assert get(uart, LCR) == 0x00
    assert get(uart, LSR) == THRE_TEMT  # bits 5 and 6 high, the rest low
    assert get(uart, SCR) == 0x00
    # MSR: the delta bits are low; CTS, DSR and DCD report a connected line.
    assert get(uart, MSR) == 0xB0
    # MCR starts with OUT2 set, as in cloud-hypervisor's and firecracker's UART.
    assert get(uart, MCR) == 0x08
    assert line.changes == []  # the line was never raised


def test_divisor_latch_defaults_to_9600_baud(uart):
    put(uart, LCR, 0x80)
    assert (get(uart, DLL), get(uart, DLM)) == (12, 0)  # 1.8432 MHz / (16 * 12) = 9600


@pytest.mark.parametrize("value", [0x00, 0x5A, 0xA5, 0xFF])
def test_scratch_register_keeps_what_is_written(uart, value):
    put(uart, SCR, value)
    assert get(uart, SCR) == value


def test_line_control_reads_back_every_bit(uart):
    put(uart, LCR, 0x1B)  # 8 data bits, 1 stop bit, even parity
    assert get(uart, LCR) == 0x1B
    put(uart, LCR, 0x7F)
    assert get(uart, LCR) == 0x7F


def test_ier_keeps_only_the_four_enable_bits(uart):
    put(uart, IER, 0xFF)
    assert get(uart, IER) == 0x0F


def test_mcr_keeps_only_its_five_bits(uart):
    put(uart, MCR, 0xFF)
    assert get(uart, MCR) == 0x1F


def test_lsr_and_msr_are_read_only(uart):
    put(uart, LSR, 0x00)
    put(uart, MSR, 0x00)
    assert get(uart, LSR) == THRE_TEMT
    assert get(uart, MSR) == 0xB0


def test_offsets_past_the_eight_registers_read_all_ones(uart):
    assert uart.read(8, 1) == b"\xff"


def test_a_wide_access_reaches_consecutive_registers(uart):
    put(uart, IER, 0x05)
    uart.receive(b"Z")
    assert uart.read(RBR, 2) == b"Z\x05"  # RBR, then IER
    uart.write(LCR, b"\x03\x0b")  # LCR, then MCR
    assert (get(uart, LCR), get(uart, MCR)) == (0x03, 0x0B)


# -- divisor latch access -----------------------------------------------------------------


def test_dlab_switches_offsets_0_and_1_to_the_divisor(uart, sent):
    put(uart, IER, 0x03)
    put(uart, LCR, 0x83)
    put(uart, DLL, 0x01)  # 115200 baud
    put(uart, DLM, 0x02)
    assert (get(uart, DLL), get(uart, DLM)) == (0x01, 0x02)
    assert sent == []  # a DLL write is not a transmission
    put(uart, LCR, 0x03)
    assert get(uart, IER) == 0x03  # the DLM write did not touch IER
    put(uart, LCR, 0x83)
    assert (get(uart, DLL), get(uart, DLM)) == (0x01, 0x02)


def test_dlab_read_of_offset_0_does_not_consume_received_data(uart):
    uart.receive(b"k")
    put(uart, LCR, 0x80)
    get(uart, DLL)
    put(uart, LCR, 0x00)
    assert get(uart, LSR) & DATA_READY
    assert get(uart, RBR) == ord("k")


def test_iir_and_fcr_do_not_depend_on_dlab(uart):
    put(uart, LCR, 0x80)
    put(uart, FCR, 0x01)
    assert get(uart, IIR) == FIFOS_ENABLED | NO_INTERRUPT


# -- transmit and receive ----------------------------------------------------------------------


def test_each_thr_write_transmits_one_byte(uart, sent):
    for byte in b"ok\n":
        put(uart, THR, byte)
    assert sent == [b"o", b"k", b"\n"]
    assert get(uart, LSR) == THRE_TEMT  # transmission is instantaneous


def test_received_bytes_are_read_in_order_then_data_ready_clears(uart):
    assert uart.receive(b"hi") == 2
    assert get(uart, LSR) == THRE_TEMT | DATA_READY
    assert get(uart, RBR) == ord("h")
    assert get(uart, LSR) & DATA_READY
    assert get(uart, RBR) == ord("i")
    assert get(uart, LSR) == THRE_TEMT
    assert get(uart, RBR) == 0  # an empty receiver


def test_host_buffer_never_overruns_the_guest(uart):
    assert uart.receive(bytes(RX_BUFFER_LIMIT - 1)) == RX_BUFFER_LIMIT - 1
    assert uart.receive(b"abc") == 1  # one byte of room left
    assert uart.receive(b"x") == 0
    assert get(uart, LSR) == THRE_TEMT | DATA_READY  # no overrun error


# -- FIFO control ------------------------------------------------------------------------------


def test_fifo_enable_shows_in_iir_bits_7_and_6(uart):
    put(uart, FCR, 0x01)
    assert get(uart, IIR) == FIFOS_ENABLED | NO_INTERRUPT
    put(uart, IER, 0x02)
    assert get(uart, IIR) == FIFOS_ENABLED | THR_EMPTY
    put(uart, FCR, 0x00)
    assert get(uart, IIR) == NO_INTERRUPT


def test_receiver_fifo_reset_discards_data_and_its_interrupt(uart, line):
    put(uart, IER, 0x01)
    uart.receive(b"stale")
    put(uart, FCR, 0x07)  # enable, reset RX and TX, as EDK2's SerialPortLib does
    assert get(uart, LSR) == THRE_TEMT
    assert get(uart, IIR) == FIFOS_ENABLED | NO_INTERRUPT
    assert line.changes == [True, False]
    uart.receive(b"n")
    assert get(uart, RBR) == ord("n")


def test_fifo_enable_without_reset_keeps_data(uart):
    uart.receive(b"kept")
    put(uart, FCR, 0x01)
    assert bytes(get(uart, RBR) for _ in range(4)) == b"kept"


# -- loopback ---------------------------------------------------------------------------------


def test_loopback_returns_transmitted_bytes_to_the_receiver(uart, sent, line):
    put(uart, IER, 0x01)
    put(uart, MCR, LOOPBACK)
    put(uart, THR, 0xA5)
    assert sent == []  # nothing leaves the chip
    assert line.changes == [True]
    assert get(uart, LSR) == THRE_TEMT | DATA_READY
    assert get(uart, RBR) == 0xA5
    put(uart, MCR, 0x00)
    put(uart, THR, 0x5A)
    assert sent == [b"\x5a"]


# MCR bit -> MSR bit in loopback: DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
LOOPBACK_WIRING = {0x01: 0x20, 0x02: 0x10, 0x04: 0x40, 0x08: 0x80}


@pytest.mark.parametrize("outputs", range(16))
def test_loopback_wires_modem_outputs_to_modem_inputs(uart, outputs):
    put(uart, MCR, LOOPBACK | outputs)
    expected = 0
    for mcr_bit, msr_bit in LOOPBACK_WIRING.items():
        if outputs & mcr_bit:
            expected |= msr_bit
    assert get(uart, MSR) == expected


def test_reset_restores_defaults_and_lowers_the_line(uart, line):
    put(uart, IER, 0x01)
    put(uart, SCR, 0x77)
    put(uart, LCR, 0x83)
    put(uart, DLL, 0x01)
    uart.receive(b"abc")
    uart.reset()
    assert line.changes == [True, False]
    assert (get(uart, IER), get(uart, LCR), get(uart, SCR), get(uart, LSR)) == (0, 0, 0, THRE_TEMT)
    put(uart, LCR, 0x80)
    assert get(uart, DLL) == 12
