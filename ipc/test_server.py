"""The device side of the protocol (ipc/server.py): what it answers and what it refuses.

Checked against the protocol's contract (ipc/protocol.py, ipc/fastpath.py),
over real channel pairs: reads are answered ``[REPLY, seq, payload]``, and a
device with mirrors adds its copies, as they are after the request, as the
fourth field; writes are posted and answered by nothing; a message that fails
to decode, is too big, is not a request or that the device refuses gets
``[ERROR, seq or None, text]`` and the loop goes on; HELLO is answered with the
device's info, or refused. The loop's ending and its timing are in
test_server_loop.py.
"""
from __future__ import annotations

import threading

import msgpack
import pytest

from vmboot.devices import registry
from vmboot.devices.process.main import build
from vmboot.devices.served import Served
from vmboot.ipc.fastpath import Mirror
from vmboot.ipc.protocol import MAX_MESSAGE_BYTES, PROTOCOL_VERSION, Msg, ProtocolError, encode
from vmboot.ipc.server import hello
from vmboot.tests.device_link import JOIN_TIMEOUT, Registers, drain, request, serving


def served(name: str, windows: dict, **kwargs) -> Served:
    device = Served(windows, **kwargs)
    device.name = name
    return device


def plain(post):
    return served("regs", {0: Registers(), 2: Registers()})


# -- replies ---------------------------------------------------------------------------------------


def test_a_read_is_answered_with_its_sequence_number():
    with serving(plain) as (link, server, _):
        assert request(link, Msg.READ, 41, 0, 2, 4) == [Msg.REPLY, 41, b"\x12\x13\x14\x15"]
        assert request(link, Msg.READ, 42, 2, 7, 1) == [Msg.REPLY, 42, b"\x17"]
        assert server.rejected == 0


def test_a_write_is_posted_and_the_next_read_sees_it():
    with serving(plain) as (link, server, _):
        regs = server.served.windows[0]
        link.ctl.send(Msg.WRITE, 0, 4, b"\xaa\xbb")
        assert request(link, Msg.READ, 1, 0, 3, 4) == [Msg.REPLY, 1, b"\x13\xaa\xbb\x16"]
        assert regs.writes == [(4, b"\xaa\xbb")]
        assert drain(link.ctl) == []  # the write itself got no answer


class Stateful(Registers):
    """Registers whose state is worth a snapshot."""

    def snapshot(self) -> dict:
        return {"regs": bytes(self.regs)}


def test_a_batch_of_writes_happens_in_order_with_one_snapshot():
    def served_for(post):
        model = Stateful(b"\x10\x11\x12")
        return served("stateful", {0: model, 2: Registers()}, state=model)
    with serving(served_for) as (link, server, _):
        link.ctl.send(Msg.WRITES, [[0, 1, b"\x99"], [2, 0, b"\x01"], [0, 1, b"\x98"], [0, 2, b"\x97"]])
        assert link.evt.recv(JOIN_TIMEOUT) == [Msg.SNAPSHOT, {"regs": b"\x10\x98\x97"}]
        assert request(link, Msg.READ, 1, 0, 1, 2) == [Msg.REPLY, 1, b"\x98\x97"]
        assert server.served.windows[0].writes == [(1, b"\x99"), (1, b"\x98"), (2, b"\x97")]
        assert server.served.windows[2].writes == [(0, b"\x01")]
        assert drain(link.evt) == [] and drain(link.ctl) == []  # one snapshot for the batch, no answer


def test_a_refused_write_in_a_batch_is_refused_alone():
    with serving(plain) as (link, server, _):
        link.ctl.send(Msg.WRITES, [[0, 0, b"a"], [9, 0, b"x"], [0, 1, b"b"]])
        assert link.evt.recv(JOIN_TIMEOUT) == [Msg.ERROR, None, "WRITE: no register window 9"]
        assert request(link, Msg.READ, 1, 0, 0, 2) == [Msg.REPLY, 1, b"ab"]
        assert server.rejected == 1


def test_a_write_that_changes_state_posts_a_snapshot_event():
    def served_for(post):
        model = Stateful(b"\x10\x11")
        return served("stateful", {0: model}, state=model)
    with serving(served_for) as (link, _, _):
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
    def served_for(post):
        return served("m", {0: Registers()},
                      mirrors=[(Mirror(0, 5, 1), lambda: [b"\x60", [2, 4]]), (Mirror(0, 6, 2), lambda: None)])
    with serving(served_for) as (link, _, _):
        assert request(link, Msg.READ, 3, 0, 1, 1) == [Msg.REPLY, 3, b"\x11", [[b"\x60", [2, 4]], None]]


def test_copies_are_taken_after_the_request_is_served():
    """A read with a side effect changes what the mirror says; the reply must carry the new value."""
    def served_for(post):
        regs = Registers()
        regs.fifo = [0xA1, 0xA2]
        return served("m", {0: regs}, mirrors=[(Mirror(0, 5, 1), lambda: [bytes([len(regs.fifo)]), [0]])])
    with serving(served_for) as (link, _, _):
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

    def served_for(post):
        model = Model()
        return served("m", {0: model}, state=model, mirrors=[(Mirror(0, 5, 1), lambda: [bytes([model.v]), []])])
    with serving(served_for) as (link, _, _):
        after = 2 if kind is Msg.RESTORE else 1
        assert request(link, kind, *fields) == [Msg.REPLY, 5, payload, [[bytes([after]), []]]]


def test_the_serial_line_status_travels_with_replies():
    def copies(lsr: bytes, loopback: bool) -> list:  # LSR, then IER, MCR and MSR (devices/serial/kind.py)
        mcr, msr = (b"\x10", b"\x00") if loopback else (b"\x08", b"\xb0")  # OUT2 at reset; DCD|DSR|CTS
        return [[lsr, [2, 4, 0] if loopback else [2, 4]], [b"\x00", [1, 3]], [mcr, [4]], [msr, [4]]]
    with serving(lambda post: build(registry.get("serial"), "serial", {}, {}, post)) as (link, _, _):
        assert request(link, Msg.READ, 1, 0, 5, 1) == [Msg.REPLY, 1, b"\x60", copies(b"\x60", False)]
        assert request(link, Msg.INPUT, 2, b"ok") == [Msg.REPLY, 2, 2, copies(b"\x61", False)]
        link.ctl.send(Msg.WRITE, 0, 4, b"\x10")  # loopback on
        assert request(link, Msg.READ, 3, 0, 0, 1) == [Msg.REPLY, 3, b"o", copies(b"\x61", True)]
        assert request(link, Msg.READ, 4, 0, 0, 1) == [Msg.REPLY, 4, b"k", copies(b"\x60", True)]


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


def test_a_device_stuck_in_a_read_answers_nothing_and_ends_when_the_core_hangs_up():
    stuck, release = threading.Event(), threading.Event()

    class Stuck(Registers):
        def read(self, offset: int, size: int) -> bytes:
            stuck.set()
            release.wait(JOIN_TIMEOUT)
            return super().read(offset, size)
    try:
        with serving(lambda post: served("stuck", {0: Stuck()})) as (link, server, thread):
            link.ctl.send(Msg.READ, 9, 0, 0, 1)
            assert stuck.wait(JOIN_TIMEOUT)
            with pytest.raises(TimeoutError):
                link.ctl.recv(0.2)
            assert thread.is_alive()
            release.set()  # unstuck, it answers, then sees the core hang up (serving's exit checks)
            assert link.ctl.recv(JOIN_TIMEOUT) == [Msg.REPLY, 9, b"\x10"]
    finally:
        release.set()


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
    with serving(lambda post: served("loud", {0: Loud()})) as (link, _, _):
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

    def served_for(post):
        model = Model()
        return served("m", {0: model}, state=model)
    with serving(served_for) as (link, _, _):
        link.ctl.send(Msg.SNAPSHOT, seq)
        reply = link.ctl.recv(JOIN_TIMEOUT)  # raises ProtocolError if the server sent a malformed message
        assert reply[:2] == [Msg.ERROR, None]


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
