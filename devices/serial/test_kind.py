"""The serial kind as a device process builds it (devices/serial/kind.py): its windows, events and state."""
from __future__ import annotations

from vmboot.devices import registry
from vmboot.devices.process.main import build
from vmboot.ipc.fastpath import Copy, Mirror, parse_copies, parse_fast_registers
from vmboot.ipc.protocol import Msg


def make(params: dict, posted):
    return build(registry.get("serial"), "serial", params, {}, posted)


def test_serial_declares_its_line_status_and_pure_registers_as_mirrors(posted):
    serial = make({}, posted)
    assert serial.input is not None  # it takes console input
    assert serial.info() == {"fast": [{"kind": "mirror", "window": 0, "offset": offset, "size": 1}
                                      for offset in (5, 1, 4, 6)]}  # LSR, IER, MCR, MSR
    counters, mirrors = parse_fast_registers(serial.info()["fast"])
    assert counters == [] and mirrors == [Mirror(0, 5, 1), Mirror(0, 1, 1), Mirror(0, 4, 1), Mirror(0, 6, 1)]


def test_serial_register_copies_follow_the_uart(posted):
    serial = make({}, posted)
    uart = serial.windows[0]
    copies = [copy for _, copy in serial.mirrors[1:]]
    assert [c() for c in copies] == [[b"\x00", [1, 3]], [b"\x08", [4]], [b"\xb0", [4]]]  # IER, MCR=OUT2, MSR
    uart.write(1, b"\x03")
    uart.write(4, b"\x13")  # loopback, DTR and RTS: MSR shows DSR and CTS
    assert [c() for c in copies] == [[b"\x03", [1, 3]], [b"\x13", [4]], [b"\x30", [4]]]
    uart.write(3, b"\x80")  # DLAB: offset 1 is the divisor's high byte
    assert copies[0]() == [b"\x00", [1, 3]]
    assert [uart.read(offset, 1) for offset in (1, 4, 6)] == [b"\x00", b"\x13", b"\x30"]  # as a read returns


def test_serial_line_status_copy_follows_the_uart(posted):
    serial = make({}, posted)
    uart = serial.windows[0]
    mirror, copy = serial.mirrors[0]
    assert copy() == [b"\x60", [2, 4]]  # THRE|TEMT; ended by writes to FCR and MCR
    assert parse_copies([mirror], [copy()]) == [Copy(b"\x60", frozenset({2, 4}))]
    assert serial.handle(Msg.INPUT, [1, b"k"]) == 1
    assert copy() == [b"\x61", [2, 4]]  # data ready
    uart.write(4, b"\x10")  # MCR: loopback, after which THR writes are received
    assert copy() == [b"\x61", [2, 4, 0]]
    assert uart.read(5, 1) == b"\x61"  # the copy is what a read returns


def test_serial_sends_no_copy_while_an_overrun_is_pending(posted):
    serial = make({}, posted)
    uart = serial.windows[0]
    mirror, copy = serial.mirrors[0]
    uart.write(4, b"\x10")  # loopback
    serial.handle(Msg.INPUT, [1, b"\x00" * 65536])  # the receive buffer, full
    uart.write(0, b"!")  # one more: an overrun
    assert copy() is None
    assert parse_copies([mirror], [copy()]) == [None]
    assert uart.read(5, 1) == b"\x63"  # DR|OE|THRE|TEMT, and the read clears OE
    assert copy() == [b"\x61", [2, 4, 0]]


def test_serial_output_and_interrupt_become_events(posted):
    serial = make({}, posted)
    uart = serial.windows[0]
    uart.write(1, b"\x02")  # IER: THR empty interrupt
    assert posted == [(Msg.IRQ, 0, True)]
    for byte in b"hi":
        uart.write(0, bytes([byte]))
    assert posted == [(Msg.IRQ, 0, True)]  # "hi" waits for the end of its line
    assert serial.deadline() is not None
    uart.write(0, b"\n")
    assert posted == [(Msg.IRQ, 0, True), (Msg.OUTPUT, 0, b"hi\n")]
    assert serial.deadline() is None


def test_serial_snapshot_round_trip(posted):
    serial = make({}, posted)
    uart = serial.windows[0]
    uart.write(7, b"\x5a")  # SCR
    state = serial.handle(Msg.SNAPSHOT, [1])
    assert state["scr"] == 0x5A
    other = make({}, lambda *fields: None)
    other.handle(Msg.RESTORE, [2, state])
    assert other.windows[0].read(7, 1) == b"\x5a"
