"""The proxy's mirrors (ipc/proxy.py, ipc/fastpath.py), and a real device server behind it.

A register a device declares a mirror is answered with no message, from the
copy the device's last reply carried, until a posted write to an offset the
copy names, or any request, attach or detach, ends it. Scripted first, as in
test_proxy.py; then end to end, with a DeviceServer on a thread serving
registers, and the real UART.
"""
from __future__ import annotations

import contextlib

import pytest

from vmboot.devices import registry
from vmboot.devices.process.main import build
from vmboot.devices.served import Served
from vmboot.ipc.channel import Channel, channel_pair
from vmboot.ipc.fastpath import Copy, Mirror, parse_fast_registers
from vmboot.ipc.protocol import Msg, ProtocolError
from vmboot.ipc.proxy import DeviceProxy
from vmboot.tests.device_link import JOIN_TIMEOUT, LSR, ProxyLink, Registers, serving

pytestmark = pytest.mark.usefixtures("prompt")


def prime(link: ProxyLink, value: bytes = b"\x60", ended_by=(2, 4), seq: int = 1) -> None:
    """Give the proxy a copy of LSR through one read of another register."""
    link.reply(Msg.REPLY, seq, b"\x00", [[value, list(ended_by)]])
    assert link.proxy.window(0).read(1, 1) == b"\x00"
    assert link.received() == [[Msg.READ, seq, 0, 1, 1]]


# -- mirrors: copies served, ended, refreshed ------------------------------------------------------


def test_a_reply_s_copy_answers_the_next_read_with_no_message(mirrored):
    prime(mirrored)
    assert mirrored.proxy.copies == {(0, 5, 1): Copy(b"\x60", frozenset({2, 4}))}
    window = mirrored.proxy.window(0)
    assert [window.read(5, 1) for _ in range(3)] == [b"\x60"] * 3
    assert mirrored.received() == []
    assert mirrored.proxy.stats == {"calls": 1, "posted": 0, "batches": 0, "fast": 3}


def test_a_copy_answers_only_its_exact_register(mirrored):
    prime(mirrored)
    mirrored.reply(Msg.REPLY, 2, b"\x01", [[b"\x60", [2, 4]]])
    mirrored.reply(Msg.REPLY, 3, b"\x01\x02", [[b"\x60", [2, 4]]])
    mirrored.reply(Msg.REPLY, 4, b"\x01", [[b"\x60", [2, 4]]])
    assert mirrored.proxy.window(1).read(5, 1) == b"\x01"  # another window
    assert mirrored.proxy.window(0).read(4, 2) == b"\x01\x02"  # a wider read over it
    assert mirrored.proxy.window(0).read(6, 1) == b"\x01"  # the next register
    assert [m[1:] for m in mirrored.received()] == [[2, 1, 5, 1], [3, 0, 4, 2], [4, 0, 6, 1]]
    assert mirrored.proxy.stats["fast"] == 0


@pytest.mark.parametrize("offset, data", [
    (2, b"\x07"),  # FCR
    (4, b"\x10"),  # MCR
    (1, b"\x00\x07"),  # IER and FCR in one write
    (3, b"\x03\x10"),  # LCR and MCR
    (0, b"\x00\x00\x00\x00\x00"),  # 0-4: covers both
])
def test_a_write_to_an_offset_the_copy_names_ends_it(mirrored, offset, data):
    prime(mirrored)
    mirrored.proxy.window(0).write(offset, data)
    assert mirrored.proxy.copies == {}
    mirrored.reply(Msg.REPLY, 2, b"\x61", [[b"\x61", [2, 4]]])
    assert mirrored.proxy.window(0).read(5, 1) == b"\x61"  # from the device, not the old copy
    assert mirrored.received() == [[Msg.WRITE, 0, offset, data], [Msg.READ, 2, 0, 5, 1]]


@pytest.mark.parametrize("window, offset, data", [
    (0, 0, b"A"),  # THR, outside loopback
    (0, 1, b"\x0f"),  # IER
    (0, 3, b"\x03"),  # LCR
    (0, 5, b"\x00"),  # LSR itself: read-only, not named
    (0, 7, b"\x55"),  # SCR
    (0, 0, b"\x01\x02"),  # 0-1: neither 2 nor 4
    (1, 2, b"\x07"),  # offset 2 of another window
    (1, 0, b"\x00" * 8),
])
def test_a_write_elsewhere_keeps_the_copy(mirrored, window, offset, data):
    prime(mirrored)
    mirrored.proxy.window(window).write(offset, data)
    assert mirrored.proxy.window(0).read(5, 1) == b"\x60"
    assert mirrored.received() == [[Msg.WRITE, window, offset, data]]
    assert mirrored.proxy.stats == {"calls": 1, "posted": 1, "batches": 1, "fast": 1}


def test_the_copy_s_own_offsets_decide_not_the_mirror_s(mirrored):
    """In loopback the device adds THR (offset 0) to what ends the copy."""
    prime(mirrored, b"\x60", (2, 4, 0))
    mirrored.proxy.window(0).write(0, b"A")
    assert mirrored.proxy.copies == {}


def test_a_copy_ending_on_nothing_survives_every_write(mirrored):
    prime(mirrored, b"\x42", ())
    for offset in range(8):
        mirrored.proxy.window(0).write(offset, b"\xff")
    assert mirrored.proxy.window(0).read(5, 1) == b"\x42"


def test_any_request_ends_the_copies_before_it_is_sent(mirrored):
    """A request that fails leaves no copy: what it did to the device is unknown."""
    prime(mirrored)
    mirrored.reply(Msg.ERROR, 2, "refused")
    with pytest.raises(ProtocolError):
        mirrored.proxy.call(Msg.INPUT, b"k")
    assert mirrored.proxy.copies == {}
    mirrored.reply(Msg.REPLY, 3, b"\x61", [None])
    assert mirrored.proxy.window(0).read(5, 1) == b"\x61"
    assert [m[0] for m in mirrored.received()] == [Msg.INPUT, Msg.READ]


def test_every_reply_refreshes_the_copies(mirrored):
    prime(mirrored)
    mirrored.reply(Msg.REPLY, 2, 1, [[b"\x61", [2, 4]]])
    assert mirrored.proxy.call(Msg.INPUT, b"k") == 1
    assert mirrored.proxy.window(0).read(5, 1) == b"\x61"  # the new copy, not the old
    assert mirrored.proxy.copies == {(0, 5, 1): Copy(b"\x61", frozenset({2, 4}))}


def test_a_reply_without_a_copy_leaves_none(mirrored):
    prime(mirrored)
    mirrored.reply(Msg.REPLY, 2, b"\x00", [None])  # an overrun pending: reads must go to the device
    mirrored.proxy.window(0).read(0, 1)
    assert mirrored.proxy.copies == {}
    mirrored.reply(Msg.REPLY, 3, b"\x63", [[b"\x61", [2, 4]]])
    assert mirrored.proxy.window(0).read(5, 1) == b"\x63"
    assert mirrored.proxy.window(0).read(5, 1) == b"\x61"
    assert mirrored.proxy.stats["fast"] == 1


@pytest.mark.parametrize("copies", [
    "missing",  # a three-field reply
    [],  # too few
    [None, None],  # too many
    [[b"\x60\x00", [2]]],  # the wrong size for the register
    [[b"\x60", [-1]]],  # an offset that is no offset
    [[b"\x60", "2"]],
    [[b"\x60"]],
    ["\x60"],
])
def test_a_malformed_copy_is_ignored_and_the_reply_still_counts(mirrored, copies):
    prime(mirrored)
    if copies == "missing":
        mirrored.reply(Msg.REPLY, 2, b"\x05")
    else:
        mirrored.reply(Msg.REPLY, 2, b"\x05", copies)
    assert mirrored.proxy.window(0).read(0, 1) == b"\x05"
    assert mirrored.proxy.copies == {}
    mirrored.reply(Msg.REPLY, 3, b"\x60", [None])
    assert mirrored.proxy.window(0).read(5, 1) == b"\x60"
    assert len(mirrored.received()) == 2


def test_copies_from_a_device_that_declared_no_mirrors_are_ignored(link):
    link.reply(Msg.REPLY, 1, b"\x00", [[b"\x60", [2]]])
    link.proxy.window(0).read(0, 1)
    assert link.proxy.copies == {}
    link.reply(Msg.REPLY, 2, b"\x61")
    assert link.proxy.window(0).read(5, 1) == b"\x61"


def test_several_mirrors_keep_their_own_copies():
    a, b = Mirror(0, 5, 1), Mirror(1, 0, 2)
    link = ProxyLink(mirrors=[a, b])
    try:
        link.reply(Msg.REPLY, 1, None, [[b"\x60", [2]], [b"\x34\x12", [0]]])
        link.proxy.call(Msg.RESET)
        assert link.proxy.window(0).read(5, 1) == b"\x60"
        assert link.proxy.window(1).read(0, 2) == b"\x34\x12"
        link.proxy.window(1).write(0, b"\x00")  # ends b's only
        assert link.proxy.copies == {(0, 5, 1): Copy(b"\x60", frozenset({2}))}
        link.reply(Msg.REPLY, 2, None, [None, [b"\x00\x00", [0]]])
        link.proxy.call(Msg.RESET)
        assert link.proxy.copies == {(1, 0, 2): Copy(b"\x00\x00", frozenset({0}))}
    finally:
        link.close()


def test_attach_ends_the_copies(mirrored):
    prime(mirrored)
    ctl, theirs = channel_pair()
    dev = Channel(theirs)
    try:
        mirrored.proxy.attach(ctl, [], [LSR])
        assert mirrored.proxy.copies == {}
        assert mirrored.proxy.generation == 2
        dev.send(Msg.REPLY, 2, b"\x61", [None])
        assert mirrored.proxy.window(0).read(5, 1) == b"\x61"  # asked of the new device
        assert dev.recv(0) == [Msg.READ, 2, 0, 5, 1]  # sequence numbers go on across lives
    finally:
        ctl.close()
        dev.close()


@pytest.mark.parametrize("for_good", [False, True])
def test_detach_ends_the_copies(mirrored, quick, for_good):
    prime(mirrored)
    mirrored.proxy.detach(for_good)
    assert mirrored.proxy.copies == {}
    assert mirrored.proxy.window(0).read(5, 1) == b"\xff"  # no copy, no device


def test_a_write_ends_copies_even_when_the_device_is_gone(mirrored):
    prime(mirrored)
    mirrored.dev.close()
    mirrored.proxy.window(0).write(2, b"\x07")
    assert mirrored.proxy.copies == {}


# -- a real device server on a thread --------------------------------------------------------------


def served(name: str, windows: dict, **kwargs) -> Served:
    device = Served(windows, **kwargs)
    device.name = name
    return device


@contextlib.contextmanager
def proxied(served_for, mirrors=(), counters=()):
    """A proxy attached to a DeviceServer on a thread; yields (proxy, what it serves, events)."""
    with serving(served_for) as (link, server, _):
        proxy = DeviceProxy(server.served.name)
        proxy.attach(link.ctl, list(counters), list(mirrors))
        yield proxy, server.served, link.evt
        proxy.post(Msg.SHUTDOWN)


def test_a_window_reads_and_writes_like_the_model():
    with proxied(lambda post: served("regs", {0: Registers(bytes(16)), 1: Registers(bytes(16))})) as (proxy, device, _):
        w0, w1 = proxy.window(0), proxy.window(1)
        w0.write(2, b"\x11\x22\x33")
        w1.write(0, b"\x99")
        assert w0.read(1, 4) == b"\x00\x11\x22\x33"
        assert w1.read(0, 2) == b"\x99\x00"
        assert w0.read(15, 1) == b"\x00"
        assert proxy.window(7).read(0, 2) == b"\xff\xff"  # a window the device lacks: refused
        assert w0.read(2, 1) == b"\x11"  # and it goes on
        assert device.windows[0].regs[:6] == bytearray(b"\x00\x00\x11\x22\x33\x00")
        assert proxy.stats == {"calls": 4, "posted": 2, "batches": 2, "fast": 0}


def test_a_mirror_served_end_to_end():
    """The device's copy is its register's value; writes it names make the next read go out."""
    def served_for(post):
        regs = Registers(bytes(16))
        regs.regs[5] = 0x60
        return served("m", {0: regs}, mirrors=[(LSR, lambda: [bytes(regs.regs[5:6]), [2]])])
    with proxied(served_for, mirrors=[LSR]) as (proxy, device, _):
        window = proxy.window(0)
        regs = device.windows[0]
        assert window.read(5, 1) == b"\x60"  # the first goes to the device
        regs.regs[5] = 0x70  # behind the proxy's back: the copy is what the device said last
        assert window.read(5, 1) == b"\x60"
        assert proxy.stats == {"calls": 1, "posted": 0, "batches": 0, "fast": 1}
        window.write(7, b"\x01")
        assert window.read(5, 1) == b"\x60"
        window.write(2, b"\x01")  # named: the copy ends
        assert window.read(5, 1) == b"\x70"
        assert window.read(5, 1) == b"\x70"
        assert proxy.stats == {"calls": 2, "posted": 2, "batches": 1, "fast": 3}


def next_output(evt: Channel) -> list:
    """The next OUTPUT event, past the SNAPSHOT events a stateful device posts after writes."""
    while True:
        msg = evt.recv(JOIN_TIMEOUT)
        if msg[0] is not Msg.SNAPSHOT:
            return msg


def test_the_serial_line_status_through_the_proxy():
    """The real UART: its line status is served from copies exactly while that is correct."""
    def serial(post):
        return build(registry.get("serial"), "serial", {}, {}, post)
    _, mirrors = parse_fast_registers(serial(lambda *fields: None).info()["fast"])  # as the supervisor does
    with proxied(serial, mirrors=mirrors) as (proxy, device, evt):
        uart = proxy.window(0)
        assert uart.read(5, 1) == b"\x60"
        assert proxy.stats["calls"] == 1
        for byte in b"ok\n":  # what Linux's console does: poll LSR, write THR
            assert uart.read(5, 1) == b"\x60"
            uart.write(0, bytes([byte]))
        assert next_output(evt) == [Msg.OUTPUT, 0, b"ok\n"]  # the flusher's thread sent the batch
        assert proxy.stats == {"calls": 1, "posted": 3, "batches": 1, "fast": 3}
        uart.write(4, b"\x10")  # MCR: loopback
        assert uart.read(5, 1) == b"\x60"
        assert proxy.stats["calls"] == 2
        uart.write(0, b"A")  # received, in loopback: LSR now says data ready
        assert uart.read(5, 1) == b"\x61"
        assert uart.read(0, 1) == b"A"  # RBR, from the device
        assert uart.read(5, 1) == b"\x60"  # the reply to that read brought the new copy
        assert proxy.stats == {"calls": 4, "posted": 5, "batches": 3, "fast": 4}
        assert proxy.call(Msg.INPUT, b"xy") == 2
        assert uart.read(5, 1) == b"\x61"
        assert proxy.stats["fast"] == 5
        # IER, MCR and MSR (loopback: MSR follows MCR, here all clear) come from copies too ...
        assert (uart.read(1, 1), uart.read(4, 1), uart.read(6, 1)) == (b"\x00", b"\x10", b"\x00")
        assert proxy.stats["fast"] == 8 and proxy.stats["calls"] == 5
        uart.write(3, b"\x80")  # ... until LCR sets DLAB: offset 1 reads the divisor's high byte
        uart.write(1, b"\x01")
        assert uart.read(1, 1) == b"\x01"
        assert proxy.stats["calls"] == 6
