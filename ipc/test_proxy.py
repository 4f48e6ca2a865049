"""The core's handle on a device process (ipc/proxy.py).

Checked against the proxy's contract: a window reads and writes like an
in-process model; a read is one ``[READ, seq, window, offset, size]`` and its
reply, a write one posted ``[WRITE, window, offset, data]``; the registers a
device declares fast (ipc/fastpath.py) are answered with no message at all: a
counter from the clock, a mirror from the copy the device's last reply carried,
until a posted write to an offset the copy names, or any request, attach or
detach, ends it; a dead device is waited for across one restart, and one that
is gone, hangs or answers nonsense reads as all ones instead of hanging the
caller. Most tests script the device by queueing its replies on the other end
of a real channel pair (the proxy's sequence numbers start at 1); the rest
serve a real DeviceServer on a thread.
"""
from __future__ import annotations

import contextlib
import threading
import time
from types import SimpleNamespace

import pytest

from vmboot.devices.host import Hosted, build
from vmboot.ipc import fastpath
from vmboot.ipc import proxy as proxy_module
from vmboot.ipc.channel import Channel, channel_pair
from vmboot.ipc.fastpath import Copy, Counter, Mirror
from vmboot.ipc.protocol import Msg, ProtocolError
from vmboot.ipc.proxy import DeviceGone, DeviceProxy, WindowProxy
from vmboot.ipc.server import DeviceServer

JOIN_TIMEOUT = 5.0
LSR = Mirror(0, 5, 1)  # a 16550's line status, as the serial device declares it


class Link:
    """A proxy attached to a channel whose device end the test plays."""

    def __init__(self, counters=(), mirrors=(), name="dev"):
        self.ctl, theirs = channel_pair()
        self.dev = Channel(theirs)
        self.proxy = DeviceProxy(name)
        self.proxy.attach(self.ctl, list(counters), list(mirrors))

    def reply(self, *fields) -> None:
        """Queue what the device will answer next."""
        self.dev.send(*fields)

    def received(self) -> list:
        """Every message the proxy has sent the device so far."""
        out = []
        while True:
            try:
                out.append(self.dev.recv(0))
            except TimeoutError:
                return out

    def close(self) -> None:
        self.ctl.close()
        self.dev.close()


@pytest.fixture
def link():
    link = Link()
    yield link
    link.close()


@pytest.fixture
def mirrored():
    """A device with one mirror: LSR at window 0, offset 5."""
    link = Link(mirrors=[LSR])
    yield link
    link.close()


@pytest.fixture(autouse=True)
def prompt(monkeypatch):
    """A scripted device that says nothing fails a test in about a second, not 20."""
    monkeypatch.setattr(proxy_module, "CALL_TIMEOUT", 1.0)
    monkeypatch.setattr(proxy_module, "RESTART_WAIT", 1.0)


@pytest.fixture
def patient(monkeypatch):
    """The proxy's own restart wait, 10 s: long enough that no test passes by waiting it out."""
    monkeypatch.setattr(proxy_module, "RESTART_WAIT", 10.0)


@pytest.fixture
def quick(monkeypatch):
    """A device that hangs or dies is given up on in 50 ms, not 10 s."""
    monkeypatch.setattr(proxy_module, "CALL_TIMEOUT", 0.05)
    monkeypatch.setattr(proxy_module, "RESTART_WAIT", 0.05)


def prime(link: Link, value: bytes = b"\x60", ended_by=(2, 4), seq: int = 1) -> None:
    """Give the proxy a copy of LSR through one read of another register."""
    link.reply(Msg.REPLY, seq, b"\x00", [[value, list(ended_by)]])
    assert link.proxy.window(0).read(1, 1) == b"\x00"
    assert link.received() == [[Msg.READ, seq, 0, 1, 1]]


# -- forwarded reads and posted writes, scripted ---------------------------------------------------


def test_a_read_is_one_request_and_its_reply(link):
    link.reply(Msg.REPLY, 1, b"\x12\x34")
    assert link.proxy.window(3).read(0x10, 2) == b"\x12\x34"
    assert link.received() == [[Msg.READ, 1, 3, 0x10, 2]]
    assert link.proxy.stats == {"calls": 1, "posted": 0, "fast": 0}


def test_sequence_numbers_count_up_from_one(link):
    for seq in (1, 2, 3):
        link.reply(Msg.REPLY, seq, bytes([seq]))
    window = link.proxy.window(0)
    assert [window.read(0, 1) for _ in range(3)] == [b"\x01", b"\x02", b"\x03"]
    assert [m[1] for m in link.received()] == [1, 2, 3]


def test_a_write_is_posted_with_no_reply_awaited(link):
    link.proxy.window(2).write(7, bytearray(b"\xab\xcd"))
    assert link.received() == [[Msg.WRITE, 2, 7, b"\xab\xcd"]]  # bytes, whatever the caller passed
    assert link.proxy.stats == {"calls": 0, "posted": 1, "fast": 0}


def test_writes_and_reads_reach_the_device_in_order(link):
    window = link.proxy.window(0)
    link.reply(Msg.REPLY, 1, b"\x01")
    window.write(0, b"a")
    window.write(1, b"b")
    assert window.read(2, 1) == b"\x01"
    window.write(3, b"c")
    assert link.received() == [[Msg.WRITE, 0, 0, b"a"], [Msg.WRITE, 0, 1, b"b"], [Msg.READ, 1, 0, 2, 1],
                               [Msg.WRITE, 0, 3, b"c"]]


def test_call_returns_any_payload(link):
    link.reply(Msg.REPLY, 1, None)
    link.reply(Msg.REPLY, 2, {"scr": 3})
    assert link.proxy.call(Msg.RESET) is None
    assert link.proxy.call(Msg.SNAPSHOT) == {"scr": 3}
    assert link.received() == [[Msg.RESET, 1], [Msg.SNAPSHOT, 2]]
    assert link.proxy.stats["calls"] == 2


def test_stray_messages_before_the_reply_are_skipped(link):
    link.reply(Msg.REPLY, 99, b"\xee")  # an old reply
    link.reply(Msg.ERROR, 42, "about something else")
    link.reply(Msg.IRQ, 0, True)  # not a control-channel message at all
    link.reply(Msg.REPLY, 1, b"\x07")
    assert link.proxy.window(0).read(0, 1) == b"\x07"
    assert link.proxy.stats["calls"] == 1


@pytest.mark.parametrize("seq", [1, None])
def test_an_error_for_the_request_is_a_refusal(link, seq):
    link.reply(Msg.ERROR, seq, "READ: no register window 4")
    with pytest.raises(ProtocolError, match=r"^device dev refused READ: READ: no register window 4$"):
        link.proxy.call(Msg.READ, 4, 0, 1)
    assert link.proxy.stats["calls"] == 0
    assert link.proxy.ctl is link.ctl  # a refusal is no death


def test_a_refused_read_reads_as_all_ones(link):
    link.reply(Msg.ERROR, 1, "no")
    assert link.proxy.window(0).read(0, 4) == b"\xff\xff\xff\xff"
    link.reply(Msg.REPLY, 2, b"\x05")
    assert link.proxy.window(0).read(0, 1) == b"\x05"  # and the device is still used


@pytest.mark.parametrize("payload", [None, b"\x01", b"\x01\x02\x03", "ab", 7])
def test_a_reply_of_the_wrong_shape_reads_as_all_ones(link, payload):
    link.reply(Msg.REPLY, 1, payload)
    assert link.proxy.window(0).read(0, 2) == b"\xff\xff"


def test_an_undecodable_reply_reads_as_all_ones_and_the_device_stays(link):
    link.dev.send_raw(b"\xc1")
    assert link.proxy.window(0).read(0, 1) == b"\xff"
    assert link.proxy.ctl is link.ctl
    link.reply(Msg.REPLY, 2, b"\x09")
    assert link.proxy.window(0).read(0, 1) == b"\x09"


def test_windows_are_views_of_one_proxy(link):
    a, b = link.proxy.window(1), link.proxy.window(1)
    assert isinstance(a, WindowProxy) and a.proxy is link.proxy and a.index == 1
    a.write(0, b"x")
    b.write(0, b"y")
    assert link.received() == [[Msg.WRITE, 1, 0, b"x"], [Msg.WRITE, 1, 0, b"y"]]


# -- counters --------------------------------------------------------------------------------------


@pytest.fixture
def frozen_clock(monkeypatch):
    """fastpath's clock, held at 101.5 s."""
    monkeypatch.setattr(fastpath, "time", SimpleNamespace(monotonic=lambda: 101.5))


PM = Counter(window=0, offset=8, size=4, frequency=3_579_545, epoch=100.0, width=24)
PM_BYTES = bytes([0xE5, 0xED, 0x51, 0x00])  # int(1.5 s * 3579545 Hz) = 5369317 = 0x51EDE5, little-endian


def test_a_counter_is_read_from_the_clock_with_no_message(frozen_clock):
    link = Link(counters=[PM])
    try:
        assert link.proxy.window(0).read(8, 4) == PM_BYTES
        assert link.proxy.window(0).read(9, 2) == bytes([0xED, 0x51])  # a part of it
        assert link.received() == []
        assert link.proxy.stats == {"calls": 0, "posted": 0, "fast": 2}
    finally:
        link.close()


def test_reads_beside_a_counter_or_on_another_window_go_to_the_device(frozen_clock):
    link = Link(counters=[PM])
    try:
        for seq in (1, 2, 3):
            link.reply(Msg.REPLY, seq, b"\x00" * 4)
        link.proxy.window(0).read(12, 4)  # after it
        link.proxy.window(0).read(6, 4)  # overlapping its start
        link.proxy.window(1).read(8, 4)  # the same offset, another window
        assert [m[2:] for m in link.received()] == [[0, 12, 4], [0, 6, 4], [1, 8, 4]]
        assert link.proxy.stats["fast"] == 0
    finally:
        link.close()


def test_a_counter_needs_a_live_device_no_more_than_its_clock(frozen_clock):
    link = Link(counters=[PM])
    link.close()
    assert link.proxy.window(0).read(8, 4) == PM_BYTES


# -- mirrors: copies served, ended, refreshed ------------------------------------------------------


def test_a_reply_s_copy_answers_the_next_read_with_no_message(mirrored):
    prime(mirrored)
    assert mirrored.proxy.copies == {(0, 5, 1): Copy(b"\x60", frozenset({2, 4}))}
    window = mirrored.proxy.window(0)
    assert [window.read(5, 1) for _ in range(3)] == [b"\x60"] * 3
    assert mirrored.received() == []
    assert mirrored.proxy.stats == {"calls": 1, "posted": 0, "fast": 3}


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
    assert mirrored.proxy.stats == {"calls": 1, "posted": 1, "fast": 1}


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
    link = Link(mirrors=[a, b])
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


# -- a real device server on a thread --------------------------------------------------------------


@contextlib.contextmanager
def served(hosted_for, mirrors=(), counters=()):
    """A proxy attached to a DeviceServer on a thread; yields (proxy, hosted, events)."""
    ctl, ctl_theirs = channel_pair()
    evt, evt_theirs = channel_pair()
    dev_ctl, dev_evt = Channel(ctl_theirs), Channel(evt_theirs)
    hosted = hosted_for(dev_evt.send)
    server = DeviceServer(dev_ctl, dev_evt, hosted)
    thread = threading.Thread(target=server.serve, name="test-device", daemon=True)
    thread.start()
    proxy = DeviceProxy(hosted.name)
    proxy.attach(ctl, list(counters), list(mirrors))
    try:
        yield proxy, hosted, evt
    finally:
        proxy.post(Msg.SHUTDOWN)
        thread.join(JOIN_TIMEOUT)
        alive = thread.is_alive()
        if alive:
            ctl.close()  # the core hanging up ends it too
            thread.join(JOIN_TIMEOUT)
        for channel in (ctl, evt, dev_ctl, dev_evt):
            channel.close()
        assert not alive


class Registers:
    def __init__(self):
        self.regs = bytearray(16)

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.regs[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        self.regs[offset:offset + len(data)] = data


def test_a_window_reads_and_writes_like_the_model():
    with served(lambda post: Hosted("regs", {0: Registers(), 1: Registers()})) as (proxy, hosted, _):
        w0, w1 = proxy.window(0), proxy.window(1)
        w0.write(2, b"\x11\x22\x33")
        w1.write(0, b"\x99")
        assert w0.read(1, 4) == b"\x00\x11\x22\x33"
        assert w1.read(0, 2) == b"\x99\x00"
        assert w0.read(15, 1) == b"\x00"
        assert proxy.window(7).read(0, 2) == b"\xff\xff"  # a window the device lacks: refused
        assert w0.read(2, 1) == b"\x11"  # and it goes on
        assert hosted.windows[0].regs[:6] == bytearray(b"\x00\x00\x11\x22\x33\x00")
        assert proxy.stats == {"calls": 4, "posted": 2, "fast": 0}


def test_a_mirror_served_end_to_end():
    """The device's copy is its register's value; writes it names make the next read go out."""
    def hosted_for(post):
        regs = Registers()
        regs.regs[5] = 0x60
        return Hosted("m", {0: regs}, mirrors=[(LSR, lambda: [bytes(regs.regs[5:6]), [2]])])
    with served(hosted_for, mirrors=[LSR]) as (proxy, hosted, _):
        window = proxy.window(0)
        regs = hosted.windows[0]
        assert window.read(5, 1) == b"\x60"  # the first goes to the device
        regs.regs[5] = 0x70  # behind the proxy's back: the copy is what the device said last
        assert window.read(5, 1) == b"\x60"
        assert proxy.stats == {"calls": 1, "posted": 0, "fast": 1}
        window.write(7, b"\x01")
        assert window.read(5, 1) == b"\x60"
        window.write(2, b"\x01")  # named: the copy ends
        assert window.read(5, 1) == b"\x70"
        assert window.read(5, 1) == b"\x70"
        assert proxy.stats == {"calls": 2, "posted": 2, "fast": 3}


def next_output(evt: Channel) -> list:
    """The next OUTPUT event, past the SNAPSHOT events a stateful device posts after writes."""
    while True:
        msg = evt.recv(JOIN_TIMEOUT)
        if msg[0] is not Msg.SNAPSHOT:
            return msg


def test_the_serial_line_status_through_the_proxy():
    """The real UART: its line status is served from copies exactly while that is correct."""
    with served(lambda post: build("serial", {}, {}, post), mirrors=[LSR]) as (proxy, hosted, evt):
        uart = proxy.window(0)
        assert uart.read(5, 1) == b"\x60"
        assert proxy.stats["calls"] == 1
        for byte in b"ok\n":  # what Linux's console does: poll LSR, write THR
            assert uart.read(5, 1) == b"\x60"
            uart.write(0, bytes([byte]))
        assert proxy.stats == {"calls": 1, "posted": 3, "fast": 3}
        assert next_output(evt) == [Msg.OUTPUT, 0, b"ok\n"]
        uart.write(4, b"\x10")  # MCR: loopback
        assert uart.read(5, 1) == b"\x60"
        assert proxy.stats["calls"] == 2
        uart.write(0, b"A")  # received, in loopback: LSR now says data ready
        assert uart.read(5, 1) == b"\x61"
        assert uart.read(0, 1) == b"A"  # RBR, from the device
        assert uart.read(5, 1) == b"\x60"  # the reply to that read brought the new copy
        assert proxy.stats == {"calls": 4, "posted": 5, "fast": 4}
        assert proxy.call(Msg.INPUT, b"xy") == 2
        assert uart.read(5, 1) == b"\x61"
        assert proxy.stats["fast"] == 5


# -- a device that dies, hangs or is gone ----------------------------------------------------------


def test_a_dead_device_reads_as_all_ones_without_hanging(link, quick):
    link.dev.close()
    start = time.monotonic()
    assert link.proxy.window(0).read(0, 2) == b"\xff\xff"
    assert time.monotonic() - start < 2.0
    assert link.proxy.ctl is None  # left for the supervisor to replace
    with pytest.raises(DeviceGone, match="^dev$"):
        link.proxy.call(Msg.RESET)


def test_a_device_dying_mid_call_is_noticed_at_once(link, quick):
    done = []

    def die():
        done.append(link.dev.recv(JOIN_TIMEOUT))  # the request arrives; the device dies
        link.dev.close()
    killer = threading.Thread(target=die)
    killer.start()
    try:
        with pytest.raises(DeviceGone):
            link.proxy.call(Msg.READ, 0, 0, 1)
    finally:
        killer.join(JOIN_TIMEOUT)
    assert done == [[Msg.READ, 1, 0, 0, 1]]


def test_a_hung_device_times_out(link, quick):
    start = time.monotonic()
    assert link.proxy.window(0).read(0, 1) == b"\xff"
    assert time.monotonic() - start < 2.0
    assert link.received() == [[Msg.READ, 1, 0, 0, 1]]  # asked once; the second try found no device
    assert link.proxy.ctl is None


def test_a_hung_device_is_reported_to_the_supervisor_once(link, quick):
    hangs = []
    link.proxy.on_hang = lambda: hangs.append(link.proxy.ctl)
    assert link.proxy.window(0).read(0, 1) == b"\xff"
    assert hangs == [None]  # told after the proxy let go of the channel, and only once
    assert link.proxy.window(0).read(0, 1) == b"\xff"  # no channel: nothing more to report
    assert hangs == [None]


def test_a_dead_device_is_not_reported_as_hung(link, quick):
    hangs = []
    link.proxy.on_hang = lambda: hangs.append(True)
    link.dev.close()
    assert link.proxy.window(0).read(0, 1) == b"\xff"
    assert hangs == []


def test_the_call_waits_for_a_restart_and_asks_again(link, patient):
    """The supervisor attaches the restarted device while the call waits; the call goes on there."""
    ctl2, theirs = channel_pair()
    dev2 = Channel(theirs)
    dev2.send(Msg.REPLY, 2, b"\x42")  # the new device's answer to the second try
    seen = []

    def supervisor():
        seen.append(link.dev.recv(JOIN_TIMEOUT))
        link.dev.close()  # the device dies with the request
        link.proxy.attach(ctl2, [], [])  # blocks until the call lets go of the lock to wait
    thread = threading.Thread(target=supervisor)
    thread.start()
    try:
        assert link.proxy.window(0).read(3, 1) == b"\x42"
    finally:
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()
    try:
        assert seen == [[Msg.READ, 1, 0, 3, 1]]
        assert dev2.recv(0) == [Msg.READ, 2, 0, 3, 1]
        assert link.proxy.ctl is ctl2
        assert link.proxy.generation == 2
        assert link.proxy.stats["calls"] == 1
    finally:
        ctl2.close()
        dev2.close()


def test_a_device_gone_for_good_answers_at_once(link, patient):
    """No waiting for a restart that will not come."""
    link.proxy.detach(for_good=True)
    start = time.monotonic()
    assert link.proxy.window(0).read(0, 4) == b"\xff" * 4
    link.proxy.window(0).write(0, b"x")  # lost, silently
    with pytest.raises(DeviceGone):
        link.proxy.call(Msg.RESET)
    assert time.monotonic() - start < 1.0
    assert link.received() == []
    assert link.proxy.stats == {"calls": 0, "posted": 0, "fast": 0}


def test_detach_for_good_wakes_a_call_waiting_for_a_restart(link, patient):
    """The reader must be woken, not time out."""
    link.proxy.detach(for_good=False)
    result = []
    thread = threading.Thread(target=lambda: result.append(link.proxy.window(0).read(0, 1)))
    start = time.monotonic()
    thread.start()
    try:
        waiters = link.proxy._alive._waiters  # CPython's Condition: one entry per waiting thread
        while not waiters and time.monotonic() - start < JOIN_TIMEOUT:
            time.sleep(0.001)
        assert len(waiters) == 1  # the reader waits for a restart, the lock released
        link.proxy.detach(for_good=True)
    finally:
        thread.join(JOIN_TIMEOUT)
    assert result == [b"\xff"]
    assert time.monotonic() - start < 5.0
    assert link.received() == []


def test_a_posted_write_to_a_dead_device_is_lost_quietly(link):
    link.dev.close()
    link.proxy.window(0).write(0, b"x")
    assert link.proxy.stats["posted"] == 0
    assert link.proxy.ctl is link.ctl  # a lost write does not decide that the device is dead


def test_a_write_ends_copies_even_when_the_device_is_gone(mirrored):
    prime(mirrored)
    mirrored.dev.close()
    mirrored.proxy.window(0).write(2, b"\x07")
    assert mirrored.proxy.copies == {}
