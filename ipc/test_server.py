"""The device side of the protocol (ipc/server.py), served over real channel pairs.

Checked against the protocol's contract (ipc/protocol.py, ipc/fastpath.py):
reads are answered ``[REPLY, seq, payload]``, and a device with mirrors adds
its copies, as they are after the request, as the fourth field; writes are
posted and answered by nothing; a message that fails to decode, is too big,
is not a request or that the device refuses gets ``[ERROR, seq or None,
text]`` and the loop goes on; console output waits no longer than its deadline
(the poll timeout is the time left to the earliest one, in whole milliseconds
rounded up) and whatever is left goes at shutdown. The loop's timing is
checked with a fake clock and a fake poller, so nothing here sleeps.
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from types import SimpleNamespace

import msgpack
import pytest

from vmboot.devices.host import OUTPUT_DELAY, Hosted, Output
from vmboot.ipc import server as server_module
from vmboot.ipc.channel import Channel, ChannelClosed, channel_pair
from vmboot.ipc.fastpath import Mirror
from vmboot.ipc.protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, Msg, ProtocolError, encode
from vmboot.ipc.server import DeviceServer, hello

JOIN_TIMEOUT = 5.0


class Registers:
    """A register file; a read of offset 0 pops a byte from ``fifo`` (a side effect)."""

    def __init__(self, size: int = 8):
        self.regs = bytearray(range(0x10, 0x10 + size))
        self.fifo: list[int] = []
        self.writes: list[tuple[int, bytes]] = []

    def read(self, offset: int, size: int) -> bytes:
        if offset == 0 and self.fifo:
            return bytes([self.fifo.pop(0)]) + bytes(self.regs[1:size])
        return bytes(self.regs[offset:offset + size])

    def write(self, offset: int, data: bytes) -> None:
        self.writes.append((offset, data))
        self.regs[offset:offset + len(data)] = data


class Link:
    """The core's ends of a device's two channels, and the device's."""

    def __init__(self):
        self.ctl, ctl_theirs = channel_pair()
        self.evt, evt_theirs = channel_pair()
        self.dev_ctl, self.dev_evt = Channel(ctl_theirs), Channel(evt_theirs)

    def close(self) -> None:
        for channel in (self.ctl, self.evt, self.dev_ctl, self.dev_evt):
            channel.close()


def drain(channel: Channel) -> list:
    """Every message waiting on a channel now."""
    out = []
    while True:
        try:
            out.append(channel.recv(0))
        except TimeoutError:
            return out


@contextlib.contextmanager
def serving(hosted_for, test_hooks: bool = False):
    """A DeviceServer on a thread. ``hosted_for(post)`` makes the hosted device, given the
    event channel's send. On the way out the core hangs up, which ends the loop."""
    link = Link()
    hosted = hosted_for(link.dev_evt.send)
    server = DeviceServer(link.dev_ctl, link.dev_evt, hosted, test_hooks)
    errors = []

    def run():
        try:
            server.serve()
        except BaseException as err:  # surfaced by the test, not lost in the thread
            errors.append(err)
    thread = threading.Thread(target=run, name="test-device-server", daemon=True)
    thread.start()
    try:
        yield link, server, thread
    finally:
        link.ctl.close()
        thread.join(JOIN_TIMEOUT)
        alive = thread.is_alive()
        for channel in (link.evt, link.dev_ctl, link.dev_evt):
            channel.close()
        assert not alive, "the server did not stop when the core hung up"
        assert errors == []


def plain(post):
    return Hosted("regs", {0: Registers(), 2: Registers()})


def request(link: Link, *fields, timeout: float = JOIN_TIMEOUT) -> list:
    link.ctl.send(*fields)
    return link.ctl.recv(timeout)


# -- replies ---------------------------------------------------------------------------------------


def test_a_read_is_answered_with_its_sequence_number():
    with serving(plain) as (link, server, _):
        assert request(link, Msg.READ, 41, 0, 2, 4) == [Msg.REPLY, 41, b"\x12\x13\x14\x15"]
        assert request(link, Msg.READ, 42, 2, 7, 1) == [Msg.REPLY, 42, b"\x17"]
        assert server.rejected == 0


def test_a_write_is_posted_and_the_next_read_sees_it():
    with serving(plain) as (link, server, _):
        regs = server.hosted.windows[0]
        link.ctl.send(Msg.WRITE, 0, 4, b"\xaa\xbb")
        assert request(link, Msg.READ, 1, 0, 3, 4) == [Msg.REPLY, 1, b"\x13\xaa\xbb\x16"]
        assert regs.writes == [(4, b"\xaa\xbb")]
        assert drain(link.ctl) == []  # the write itself got no answer


def test_a_write_that_changes_state_posts_a_snapshot_event():
    class Model(Registers):
        def snapshot(self) -> dict:
            return {"regs": bytes(self.regs)}

    def hosted_for(post):
        model = Model(2)
        return Hosted("stateful", {0: model}, state=model)
    with serving(hosted_for) as (link, _, _):
        link.ctl.send(Msg.WRITE, 0, 1, b"\x99")
        assert link.evt.recv(JOIN_TIMEOUT) == [Msg.SNAPSHOT, {"regs": b"\x10\x99"}]
        link.ctl.send(Msg.WRITE, 0, 1, b"\x99")  # the same state: no second snapshot
        assert request(link, Msg.READ, 1, 0, 0, 1) == [Msg.REPLY, 1, b"\x10"]
        assert drain(link.evt) == []


def test_a_device_without_mirrors_sends_three_field_replies():
    with serving(plain) as (link, _, _):
        link.ctl.send(Msg.RESET, 9)
        raw = link.ctl.recv_raw(JOIN_TIMEOUT)
        assert msgpack.unpackb(raw) == [int(Msg.REPLY), 9, None]


def test_replies_carry_one_copy_per_mirror():
    def hosted_for(post):
        return Hosted("m", {0: Registers()},
                      mirrors=[(Mirror(0, 5, 1), lambda: [b"\x60", [2, 4]]), (Mirror(0, 6, 2), lambda: None)])
    with serving(hosted_for) as (link, _, _):
        assert request(link, Msg.READ, 3, 0, 1, 1) == [Msg.REPLY, 3, b"\x11", [[b"\x60", [2, 4]], None]]


def test_copies_are_taken_after_the_request_is_served():
    """A read with a side effect changes what the mirror says; the reply must carry the new value."""
    def hosted_for(post):
        regs = Registers()
        regs.fifo = [0xA1, 0xA2]
        return Hosted("m", {0: regs}, mirrors=[(Mirror(0, 5, 1), lambda: [bytes([len(regs.fifo)]), [0]])])
    with serving(hosted_for) as (link, _, _):
        assert request(link, Msg.READ, 1, 0, 0, 1) == [Msg.REPLY, 1, b"\xa1", [[b"\x01", [0]]]]
        assert request(link, Msg.READ, 2, 0, 0, 1) == [Msg.REPLY, 2, b"\xa2", [[b"\x00", [0]]]]


@pytest.mark.parametrize("kind, fields, payload", [
    (Msg.RESET, [5], None),
    (Msg.SNAPSHOT, [5], {"v": 1}),
    (Msg.RESTORE, [5, {"v": 2}], None),
])
def test_every_reply_carries_the_copies_not_only_reads(kind, fields, payload):
    class Model(Registers):
        v = 1

        def snapshot(self) -> dict:
            return {"v": self.v}

        def restore(self, state: dict) -> None:
            self.v = state["v"]

    def hosted_for(post):
        model = Model()
        return Hosted("m", {0: model}, state=model, mirrors=[(Mirror(0, 5, 1), lambda: [bytes([model.v]), []])])
    with serving(hosted_for) as (link, _, _):
        after = 2 if kind is Msg.RESTORE else 1
        assert request(link, kind, *fields) == [Msg.REPLY, 5, payload, [[bytes([after]), []]]]


def test_the_serial_line_status_travels_with_replies():
    from vmboot.devices.host import build
    with serving(lambda post: build("serial", {}, {}, post)) as (link, _, _):
        assert request(link, Msg.READ, 1, 0, 5, 1) == [Msg.REPLY, 1, b"\x60", [[b"\x60", [2, 4]]]]
        assert request(link, Msg.INPUT, 2, b"ok") == [Msg.REPLY, 2, 2, [[b"\x61", [2, 4]]]]
        link.ctl.send(Msg.WRITE, 0, 4, b"\x10")  # loopback on
        assert request(link, Msg.READ, 3, 0, 0, 1) == [Msg.REPLY, 3, b"o", [[b"\x61", [2, 4, 0]]]]
        assert request(link, Msg.READ, 4, 0, 0, 1) == [Msg.REPLY, 4, b"k", [[b"\x60", [2, 4, 0]]]]


def test_test_hooks_answer_when_on():
    with serving(plain, test_hooks=True) as (link, _, _):
        assert request(link, Msg.TEST, 8, "nothing") == [Msg.REPLY, 8, "survived"]


# -- what is refused -------------------------------------------------------------------------------

REFUSED = {
    "not msgpack": (b"\xc1", None, "not a msgpack message (FormatError)"),
    "not an array": (msgpack.packb({"a": 1}), None, "a message must be an array starting with its type"),
    "unknown type": (encode(99, 1), None, "unknown message type 99"),
    "bad field": (encode(Msg.READ, 1, 0, 0, 3), None, "READ field 4 is invalid (int)"),
    "missing field": (encode(Msg.READ, 1, 0, 0), None, "READ has 3 fields, expected 4"),
    "a byte too big": (b"\x00" * (MAX_MESSAGE_BYTES + 1), None, f"message over the {MAX_MESSAGE_BYTES}-byte limit"),
    "far too big": (b"\x00" * (3 * MAX_MESSAGE_BYTES), None, f"message over the {MAX_MESSAGE_BYTES}-byte limit"),
    "no such window": (encode(Msg.READ, 6, 9, 0, 1), 6, "READ: no register window 9"),
    "a reply": (encode(Msg.REPLY, 7, None), 7, "REPLY: not a request"),
    "an interrupt": (encode(Msg.IRQ, 3, True), 3, "IRQ: not a request"),
    "a hello": (encode(Msg.HELLO, 1, "x", {}), None, "HELLO: not a request"),
    "hooks off": (encode(Msg.TEST, 4, "abort"), 4, "TEST: test hooks are off"),
    "not taken": (encode(Msg.INPUT, 5, b"x"), 5, "INPUT: regs does not take INPUT"),
    "no state": (encode(Msg.RESTORE, 6, {}), 6, "RESTORE: regs does not take RESTORE"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_bad_message_gets_an_error_and_the_server_goes_on(name):
    raw, seq, text = REFUSED[name]
    with serving(plain) as (link, server, thread):
        link.ctl.send_raw(raw)
        assert link.ctl.recv(JOIN_TIMEOUT) == [Msg.ERROR, seq, text]
        assert server.rejected == 1
        assert request(link, Msg.READ, 77, 0, 0, 1) == [Msg.REPLY, 77, b"\x10"]
        assert thread.is_alive()


def test_a_refused_posted_write_is_reported_as_an_event_not_a_reply():
    # No call waits for a posted write: an ERROR on the control channel would be taken as the
    # refusal of whatever read the core sends next.
    with serving(plain) as (link, server, _):
        link.ctl.send(Msg.WRITE, 9, 0, b"x")
        assert link.evt.recv(JOIN_TIMEOUT) == [Msg.ERROR, None, "WRITE: no register window 9"]
        assert server.rejected == 1
        assert request(link, Msg.READ, 77, 0, 0, 1) == [Msg.REPLY, 77, b"\x10"]
        assert drain(link.evt) == []


def test_a_hung_device_answers_the_hook_then_nothing():
    with serving(plain, test_hooks=True) as (link, server, thread):
        assert request(link, Msg.TEST, 8, "hang") == [Msg.REPLY, 8, "survived"]
        link.ctl.send(Msg.READ, 9, 0, 0, 1)
        with pytest.raises(TimeoutError):
            link.ctl.recv(0.2)
        assert thread.is_alive()  # and it ends when the core hangs up (serving's exit checks)


def test_errors_are_counted_and_the_device_stays_intact():
    with serving(plain) as (link, server, _):
        for seq in range(1, 6):
            link.ctl.send_raw(b"\xc1")
            link.ctl.send(Msg.READ, seq, 9, 0, 1)
        replies = [link.ctl.recv(JOIN_TIMEOUT) for _ in range(10)]
        assert [r[:2] for r in replies] == [m for seq in range(1, 6) for m in ([Msg.ERROR, None], [Msg.ERROR, seq])]
        assert server.rejected == 10
        assert request(link, Msg.READ, 99, 0, 0, 2) == [Msg.REPLY, 99, b"\x10\x11"]


def test_an_error_text_is_cut_to_what_the_protocol_allows():
    class Loud(Registers):
        def read(self, offset: int, size: int) -> bytes:
            raise ValueError("x" * 10000)
    with serving(lambda post: Hosted("loud", {0: Loud()})) as (link, _, _):
        reply = request(link, Msg.READ, 1, 0, 0, 1)
        assert reply[:2] == [Msg.ERROR, 1]
        assert reply[2] == ("READ: " + "x" * 10000)[:4096]


@pytest.mark.parametrize("seq", ["x", -1, 1 << 40])
def test_a_snapshot_request_with_a_bad_sequence_number_is_refused(seq):
    """SNAPSHOT's schema takes any field (the device's SNAPSHOT event carries a state there), so
    a core request [SNAPSHOT, "x"] decodes; the server must still refuse it rather than echo a
    sequence number that no REPLY may carry. Everything the server sends must decode."""
    class Model(Registers):
        def snapshot(self) -> dict:
            return {}

    def hosted_for(post):
        model = Model()
        return Hosted("m", {0: model}, state=model)
    with serving(hosted_for) as (link, _, _):
        link.ctl.send(Msg.SNAPSHOT, seq)
        reply = link.ctl.recv(JOIN_TIMEOUT)  # raises ProtocolError if the server sent a malformed message
        assert reply[:2] == [Msg.ERROR, None]


# -- ending ----------------------------------------------------------------------------------------


def test_shutdown_ends_the_loop_and_sends_waiting_output():
    """Output whose deadline is an hour away must still go before the device exits."""
    clock = lambda: time.monotonic() + 3600.0  # noqa: E731

    def hosted_for(post):
        out = Output(post, 0, clock)
        return Hosted("con", {0: SimpleNamespace(read=None, write=lambda offset, data: out.write(data))},
                      outputs=[out])
    with serving(hosted_for) as (link, server, thread):
        link.ctl.send(Msg.WRITE, 0, 0, b"last words")
        link.ctl.send(Msg.SHUTDOWN)
        thread.join(JOIN_TIMEOUT)
        assert not thread.is_alive()
        assert server.running is False
        assert drain(link.evt) == [[Msg.OUTPUT, 0, b"last words"]]


def test_the_core_hanging_up_ends_the_loop():
    link = Link()
    try:
        server = DeviceServer(link.dev_ctl, link.dev_evt, plain(None))
        link.ctl.close()
        server.serve()  # returns: the core is gone
        assert server.running is False
    finally:
        for channel in (link.evt, link.dev_ctl, link.dev_evt):
            channel.close()


def test_an_event_to_a_core_that_is_gone_stops_the_server():
    link = Link()
    try:
        server = DeviceServer(link.dev_ctl, link.dev_evt, plain(None))
        server.post(Msg.IRQ, 0, True)
        assert link.evt.recv(1) == [Msg.IRQ, 0, True]
        assert server.running is True
        link.evt.close()
        server.post(Msg.IRQ, 0, False)
        assert server.running is False
    finally:
        for channel in (link.ctl, link.dev_ctl, link.dev_evt):
            channel.close()


# -- output deadlines, in real time ----------------------------------------------------------------


def test_waiting_output_goes_by_its_deadline_without_another_request():
    def hosted_for(post):
        out = Output(post, 0)
        return Hosted("con", {0: SimpleNamespace(read=None, write=lambda offset, data: out.write(data))},
                      outputs=[out])
    with serving(hosted_for) as (link, _, _):
        start = time.monotonic()
        link.ctl.send(Msg.WRITE, 0, 0, b"login: ")
        assert link.evt.recv(JOIN_TIMEOUT) == [Msg.OUTPUT, 0, b"login: "]
        waited = time.monotonic() - start
        assert OUTPUT_DELAY <= waited < 2.0


def test_watched_descriptors_wake_the_loop():
    woken = queue.Queue()
    r, w = os.pipe()
    try:
        def hosted_for(post):
            hosted = Hosted("virtio", {0: Registers()})
            hosted.watch[r] = lambda: woken.put(os.read(r, 16))
            return hosted
        with serving(hosted_for) as (link, _, _):
            os.write(w, b"kick")
            assert woken.get(timeout=JOIN_TIMEOUT) == b"kick"
            assert request(link, Msg.READ, 1, 0, 0, 1) == [Msg.REPLY, 1, b"\x10"]
    finally:
        os.close(r)
        os.close(w)


# -- output deadlines, with a fake clock and poller ------------------------------------------------


class FakeLoop:
    """Stands in for select.poll and time.monotonic in ipc/server.py. Each poll records its
    timeout and runs the next step of a script, which may move the clock or stop the server."""

    def __init__(self, monkeypatch, now: float, steps: list):
        self.now = now
        self.steps = list(steps)
        self.timeouts: list = []
        self.registered: list = []
        self.server: DeviceServer | None = None
        monkeypatch.setattr(server_module, "select", SimpleNamespace(poll=lambda: self, POLLIN=1))
        monkeypatch.setattr(server_module, "time", SimpleNamespace(monotonic=lambda: self.now))

    def register(self, fd, events) -> None:
        self.registered.append((fd, events))

    def poll(self, timeout):
        self.timeouts.append(timeout)
        step = self.steps.pop(0)
        step(self)
        if not self.steps:
            self.server.running = False
        return []


class ScriptedHosted:
    """A hosted device whose deadlines are given, recording what the loop asks of it."""

    name = "scripted"
    windows: dict = {}
    mirrors: list = []

    def __init__(self, deadlines: list):
        self.deadlines = list(deadlines)
        self.watch = {}
        self.due: list[float] = []
        self.flushes = 0

    def deadline(self):
        return self.deadlines.pop(0)

    def flush_due(self, now: float) -> None:
        self.due.append(now)

    def flush(self) -> None:
        self.flushes += 1


def stub_channel(fd: int):
    return SimpleNamespace(fileno=lambda: fd)


def test_the_poll_timeout_is_the_time_left_to_the_deadline_rounded_up(monkeypatch):
    # Times are binary fractions so that the arithmetic is exact.
    hosted = ScriptedHosted([
        8.0 + 2**-9,  # 1.953125 ms left: 2 ms
        8.0 + 2**-7,  # 7.8125 ms left: 8 ms
        None,  # nothing waiting: sleep until a message
        8.0,  # due now: do not sleep
        7.5,  # overdue: do not sleep
        8.0 + 2.0,  # 2 s: 2000 ms
    ])
    loop = FakeLoop(monkeypatch, 8.0, [lambda loop: None] * 6)
    server = loop.server = DeviceServer(stub_channel(1000), stub_channel(1001), hosted)
    server.serve()
    assert loop.timeouts == [2, 8, None, 0, 0, 2000]
    assert hosted.due == [8.0] * 5  # after each poll with a deadline, and only then
    assert hosted.flushes == 1  # the final flush
    assert loop.registered == [(1000, 1)]


def test_flush_due_gets_the_time_after_the_poll(monkeypatch):
    hosted = ScriptedHosted([1.0 + 2**-8, 1.0 + 2**-8])

    def wait_it_out(loop):
        loop.now = 1.0 + 2**-8

    loop = FakeLoop(monkeypatch, 1.0, [wait_it_out, lambda loop: None])
    server = loop.server = DeviceServer(stub_channel(3), stub_channel(4), hosted)
    server.serve()
    assert loop.timeouts == [4, 0]  # 3.90625 ms, then due
    assert hosted.due == [1.0 + 2**-8] * 2


def test_outputs_are_flushed_as_their_deadlines_come(monkeypatch):
    """Real Outputs on the fake clock: the earliest deadline sets the sleep, only the due one goes."""
    posted = []
    loop = None

    def clock():
        return loop.now
    a = Output(lambda *f: posted.append(f), 0, clock)
    b = Output(lambda *f: posted.append(f), 1, clock)
    hosted = Hosted("two", {}, outputs=[a, b])

    def first(loop):
        assert posted == []
        loop.now = 0.0025  # past a's deadline (0.002), before b's (0.003)

    def second(loop):
        assert posted == [(Msg.OUTPUT, 0, b"a")]
        loop.now = 0.003  # b's deadline, exactly

    def third(loop):
        assert posted == [(Msg.OUTPUT, 0, b"a"), (Msg.OUTPUT, 1, b"b")]
        a.write(b"z")  # waits; the server stops before its deadline

    loop = FakeLoop(monkeypatch, 0.0, [first, second, third])
    a.write(b"a")  # due at 0.002
    loop.now = 0.001
    b.write(b"b")  # due at 0.003
    server = loop.server = DeviceServer(stub_channel(5), stub_channel(6), hosted)
    server.serve()
    assert loop.timeouts == [1, 1, None]  # 1 ms to a's deadline; 0.5 ms to b's, rounded up; none
    assert posted == [(Msg.OUTPUT, 0, b"a"), (Msg.OUTPUT, 1, b"b"), (Msg.OUTPUT, 0, b"z")]  # z: at shutdown


def test_a_core_gone_at_the_final_flush_is_no_crash(monkeypatch):
    def gone(*fields):
        raise ChannelClosed()
    out = Output(gone, 0, lambda: 0.0)
    hosted = Hosted("con", {}, outputs=[out])
    loop = FakeLoop(monkeypatch, 0.0, [lambda loop: out.write(b"x")])
    out.write(b"")  # nothing waiting before the loop
    server = loop.server = DeviceServer(stub_channel(7), stub_channel(8), hosted)
    server.serve()  # returns normally
    assert loop.timeouts == [None]
    assert out.pending == b""


# -- hello -----------------------------------------------------------------------------------------


def test_hello_answers_with_the_device_info(pair):
    core, device = pair
    asked = []

    def info_for(name, params):
        asked.append((name, params))
        return {"fast": []}
    core.send(Msg.HELLO, PROTOCOL_VERSION, "serial", {"log_level": "warn"})
    assert hello(device, info_for) == ("serial", {"log_level": "warn"})
    assert asked == [("serial", {"log_level": "warn"})]
    assert core.recv(1) == [Msg.HELLO, PROTOCOL_VERSION, {"fast": []}]


@pytest.mark.parametrize("fields, text", [
    ((Msg.HELLO, PROTOCOL_VERSION + 1, "x", {}), f"core speaks protocol {PROTOCOL_VERSION + 1}, "
                                                 f"this device {PROTOCOL_VERSION}"),
    ((Msg.READ, 1, 0, 0, 1), "the core must speak first, with HELLO"),
    ((Msg.HELLO, PROTOCOL_VERSION, {}), "the core must speak first, with HELLO"),  # a device's hello
    ((Msg.HELLO, PROTOCOL_VERSION, 5, {}), "malformed HELLO"),
    ((Msg.HELLO, PROTOCOL_VERSION, "x", [1]), "malformed HELLO"),
])
def test_hello_refuses_anything_else(pair, fields, text):
    core, device = pair
    core.send(*fields)
    with pytest.raises(ProtocolError) as caught:
        hello(device, lambda name, params: pytest.fail("no device may be built"))
    assert str(caught.value) == text
    assert drain(core) == []  # and nothing is said back
