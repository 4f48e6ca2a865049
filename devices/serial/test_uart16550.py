"""The 16550A UART against the PC16550D datasheet (June 1995).

Register values come from the datasheet's register summary, its reset
configuration and interrupt control tables, and the description of MCR bit 4
(loopback). The interrupt line is recorded as the list of level changes the
model signals.
"""
from __future__ import annotations

import pytest

from vmboot.devices.serial.uart16550 import (
    DLL, DLM, FCR, IER, IIR, LCR, LSR, MCR, MSR, RBR, RX_BUFFER_LIMIT, SCR, THR, Uart16550,
)

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


@pytest.fixture
def sent():
    return []


@pytest.fixture
def line():
    return Line()


@pytest.fixture
def uart(sent, line):
    return Uart16550(tx=sent.append, irq=line)


def get(uart: Uart16550, reg: int) -> int:
    return uart.read(reg, 1)[0]


def put(uart: Uart16550, reg: int, value: int) -> None:
    uart.write(reg, bytes([value]))


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


# -- interrupts --------------------------------------------------------------------------------


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


def fill_to_overrun(uart: Uart16550) -> None:
    uart.receive(bytes(RX_BUFFER_LIMIT))
    put(uart, MCR, LOOPBACK)
    put(uart, THR, 0x55)  # no room left: the loopback byte overruns


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


# -- line_status_copy: LSR mirrored into the device's replies (ipc/fastpath.py) ----------------------
#
# The core answers LSR reads from the copy a reply carries until the guest writes
# a register the copy names, or the core sends any request. The copy must equal
# what a read would return, must not be offered while a read has a side effect
# (an overrun, which the read clears), and must name every register whose write
# can change LSR: FCR (receiver reset), MCR (loopback on), and THR in loopback.

import random  # noqa: E402

from vmboot.devices.serial import uart16550  # noqa: E402
from vmboot.ipc.fastpath import Copy  # noqa: E402


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
