"""Device models as their processes host them (devices/host.py).

Checked against the module's own contract: console bytes wait in ``Output``
and go as one OUTPUT event at the end of a line, at OUTPUT_BATCH (4096) bytes,
or once the first waiting byte is OUTPUT_DELAY (2 ms) old; ``Hosted`` reports
the earliest deadline of its outputs and flushes what is due; its hello
declares its fast registers (ipc/fastpath.py), mirrors included, in a form the
core's parser takes; and ``build`` wires the real models to posted events.
Time is a fake clock handed to ``Output``: nothing here sleeps.
"""
from __future__ import annotations

import time

import pytest

from vmboot.devices.host import (
    KINDS, OUTPUT_BATCH, OUTPUT_DELAY, Hosted, HostedSerial, Output, build,
)
from vmboot.ipc.fastpath import Copy, Counter, Mirror, parse_copies, parse_fast_registers
from vmboot.ipc.protocol import Msg, ProtocolError
from vmboot.tests.fakes import Clock


class Posted(list):
    """The events a device posts, as the tuples of fields it passes."""

    def __call__(self, *fields) -> None:
        self.append(fields)


@pytest.fixture
def clock():
    return Clock(100.0)


@pytest.fixture
def posted():
    return Posted()


# -- Output: batching ------------------------------------------------------------------------------


def test_constants_are_those_documented():
    assert OUTPUT_DELAY == 0.002
    assert OUTPUT_BATCH == 4096


def test_bytes_without_a_newline_wait(posted, clock):
    out = Output(posted, 3, clock)
    assert out.deadline() is None
    out.write(b"a")
    out.write(b"b")
    assert posted == []
    assert bytes(out.pending) == b"ab"
    assert out.deadline() == 100.0 + OUTPUT_DELAY


def test_a_newline_sends_everything_waiting_as_one_event(posted, clock):
    out = Output(posted, 3, clock)
    out.write(b"a")
    out.write(b"b")
    out.write(b"\n")
    assert posted == [(Msg.OUTPUT, 3, b"ab\n")]
    assert out.deadline() is None
    assert out.pending == b""


def test_a_newline_inside_a_write_sends_the_whole_write(posted, clock):
    out = Output(posted, 0, clock)
    out.write(b"x")
    out.write(b"y\nz")
    assert posted == [(Msg.OUTPUT, 0, b"xy\nz")]
    assert out.deadline() is None


def test_a_carriage_return_is_not_a_line_end(posted, clock):
    out = Output(posted, 0, clock)
    out.write(b"prompt> \r")
    assert posted == []
    assert out.deadline() == 100.0 + OUTPUT_DELAY


def test_the_deadline_runs_from_the_first_waiting_byte(posted, clock):
    out = Output(posted, 0, clock)
    out.write(b"a")
    clock.t = 100.0015
    out.write(b"b")
    assert out.deadline() == 100.0 + OUTPUT_DELAY  # not 100.0035: the first byte has waited since 100.0


def test_a_flush_starts_the_next_deadline_afresh(posted, clock):
    out = Output(posted, 0, clock)
    out.write(b"a")
    out.flush()
    assert posted == [(Msg.OUTPUT, 0, b"a")]
    assert out.deadline() is None
    clock.t = 250.0
    out.write(b"b")
    assert out.deadline() == 250.0 + OUTPUT_DELAY


def test_an_empty_write_to_an_idle_output_sets_no_deadline(posted, clock):
    out = Output(posted, 0, clock)
    out.write(b"")
    assert out.deadline() is None
    out.flush()
    assert posted == []


def test_flushing_nothing_posts_nothing(posted, clock):
    out = Output(posted, 0, clock)
    out.flush()
    out.flush()
    assert posted == []


def test_a_full_batch_goes_at_once(posted, clock):
    out = Output(posted, 1, clock)
    for _ in range(OUTPUT_BATCH - 1):
        out.write(b"x")
    assert posted == []
    assert len(out.pending) == OUTPUT_BATCH - 1
    out.write(b"y")
    assert posted == [(Msg.OUTPUT, 1, b"x" * (OUTPUT_BATCH - 1) + b"y")]
    assert out.deadline() is None


def test_one_write_past_the_batch_size_goes_whole(posted, clock):
    out = Output(posted, 0, clock)
    out.write(b"a" * 10)
    out.write(b"b" * OUTPUT_BATCH)
    assert posted == [(Msg.OUTPUT, 0, b"a" * 10 + b"b" * OUTPUT_BATCH)]


def test_posted_data_is_immutable_bytes_not_the_buffer(posted, clock):
    out = Output(posted, 0, clock)
    out.write(b"abc")
    out.flush()
    out.write(b"def")  # reuses the buffer: what was posted must not change
    assert type(posted[0][2]) is bytes
    assert posted == [(Msg.OUTPUT, 0, b"abc")]


def test_the_default_clock_is_the_monotonic_clock(posted):
    out = Output(posted, 0)
    before = time.monotonic()
    out.write(b"a")
    after = time.monotonic()
    assert before + OUTPUT_DELAY <= out.deadline() <= after + OUTPUT_DELAY


# -- Hosted: outputs -------------------------------------------------------------------------------


def test_a_device_without_outputs_never_needs_waking(posted):
    hosted = Hosted("x", {})
    assert hosted.deadline() is None
    hosted.flush_due(1e9)
    hosted.flush()
    assert posted == []


def test_the_deadline_is_the_earliest_of_the_outputs(posted, clock):
    a, b = Output(posted, 0, clock), Output(posted, 1, clock)
    hosted = Hosted("x", {}, outputs=[a, b])
    assert hosted.deadline() is None
    clock.t = 5.0
    b.write(b"b")
    assert hosted.deadline() == 5.0 + OUTPUT_DELAY
    clock.t = 6.0
    a.write(b"a")
    assert hosted.deadline() == 5.0 + OUTPUT_DELAY  # b's, still the earlier
    b.flush()
    assert hosted.deadline() == 6.0 + OUTPUT_DELAY


def test_flush_due_sends_only_what_is_due(posted, clock):
    a, b = Output(posted, 0, clock), Output(posted, 1, clock)
    hosted = Hosted("x", {}, outputs=[a, b])
    clock.t = 0.0
    a.write(b"a")  # due at 0.002
    clock.t = 0.001
    b.write(b"b")  # due at 0.003
    hosted.flush_due(0.0019)
    assert posted == []
    hosted.flush_due(0.002)  # a deadline that has come is due
    assert posted == [(Msg.OUTPUT, 0, b"a")]
    assert hosted.deadline() == 0.001 + OUTPUT_DELAY
    hosted.flush_due(0.0029)
    assert posted == [(Msg.OUTPUT, 0, b"a")]
    hosted.flush_due(1.0)
    assert posted == [(Msg.OUTPUT, 0, b"a"), (Msg.OUTPUT, 1, b"b")]
    assert hosted.deadline() is None


def test_flush_sends_every_output_whatever_its_deadline(posted, clock):
    a, b, c = Output(posted, 0, clock), Output(posted, 1, clock), Output(posted, 2, clock)
    hosted = Hosted("x", {}, outputs=[a, b, c])
    a.write(b"1")
    c.write(b"3")
    hosted.flush()
    assert posted == [(Msg.OUTPUT, 0, b"1"), (Msg.OUTPUT, 2, b"3")]
    assert hosted.deadline() is None


def test_outputs_are_copied_into_a_list(posted, clock):
    out = Output(posted, 0, clock)
    hosted = Hosted("x", {}, outputs=(out,))
    assert hosted.outputs == [out]


# -- Hosted: fast registers in the hello -----------------------------------------------------------


def test_a_plain_device_declares_no_fast_registers():
    hosted = Hosted("x", {})
    assert hosted.info() == {"fast": []}
    assert hosted.mirrors == []


def test_mirrors_are_declared_after_the_other_fast_registers():
    counter = Counter(0, 8, 4, 1000, 2.5, 24).describe()

    def copy() -> list:
        return [b"\x60", [2, 4]]
    hosted = Hosted("x", {}, fast=[counter], mirrors=[(Mirror(0, 5, 1), copy), (Mirror(1, 0, 2), lambda: None)])
    assert hosted.info() == {"fast": [
        {"kind": "counter", "window": 0, "offset": 8, "size": 4, "frequency": 1000, "epoch": 2.5, "width": 24},
        {"kind": "mirror", "window": 0, "offset": 5, "size": 1},
        {"kind": "mirror", "window": 1, "offset": 0, "size": 2},
    ]}
    assert [m for m, _ in hosted.mirrors] == [Mirror(0, 5, 1), Mirror(1, 0, 2)]
    assert hosted.mirrors[0][1] is copy
    # What the core makes of the declaration: the same registers.
    counters, mirrors = parse_fast_registers(hosted.info()["fast"])
    assert counters == [Counter(0, 8, 4, 1000, 2.5, 24)]
    assert mirrors == [Mirror(0, 5, 1), Mirror(1, 0, 2)]


def test_the_fast_list_given_is_not_modified():
    fast = [Counter(0, 0, 4, 10, 0.0, 32).describe()]
    Hosted("x", {}, fast=fast, mirrors=[(Mirror(0, 5, 1), lambda: None)])
    assert len(fast) == 1


# -- Hosted: state ---------------------------------------------------------------------------------


class State:
    def __init__(self):
        self.value = 0
        self.restored = []

    def snapshot(self) -> dict:
        return {"value": self.value}

    def restore(self, state: dict) -> None:
        self.restored.append(state)
        self.value = state["value"]


def test_after_write_posts_a_snapshot_only_when_the_state_changed(posted):
    state = State()
    hosted = Hosted("x", {}, state=state)
    hosted.after_write(posted)
    assert posted == [(Msg.SNAPSHOT, {"value": 0})]  # the first: nothing sent yet
    hosted.after_write(posted)
    assert len(posted) == 1
    state.value = 7
    hosted.after_write(posted)
    assert posted == [(Msg.SNAPSHOT, {"value": 0}), (Msg.SNAPSHOT, {"value": 7})]


def test_after_write_is_silent_for_a_device_without_state(posted):
    Hosted("x", {}).after_write(posted)
    assert posted == []


def test_snapshot_restore_and_reset_requests():
    state = State()
    state.value = 3
    hosted = Hosted("x", {}, state=state)
    assert hosted.handle(Msg.SNAPSHOT, [1]) == {"value": 3}
    assert hosted.handle(Msg.RESTORE, [2, {"value": 9}]) is None
    assert state.restored == [{"value": 9}] and state.value == 9
    assert hosted.handle(Msg.RESET, [3]) is None


def test_a_restored_state_is_not_sent_back_as_a_change(posted):
    state = State()
    hosted = Hosted("x", {}, state=state)
    hosted.handle(Msg.RESTORE, [1, {"value": 4}])
    hosted.after_write(posted)
    assert posted == []


@pytest.mark.parametrize("kind", [Msg.SNAPSHOT, Msg.RESTORE, Msg.INPUT, Msg.ACTIVATE])
def test_requests_a_stateless_device_does_not_take(kind):
    with pytest.raises(ProtocolError, match=f"^x does not take {kind.name}$"):
        Hosted("x", {}).handle(kind, [1, {}])


# -- build: the real devices -----------------------------------------------------------------------


def test_the_kinds():
    assert KINDS == ("rtc", "pmtimer", "serial", "debugcon", "virtio_blk")


def test_an_unknown_kind_is_refused(posted):
    with pytest.raises(ProtocolError, match="unknown device kind 'floppy'"):
        build("floppy", {}, {}, posted)


def test_serial_declares_its_line_status_as_a_mirror(posted):
    serial = build("serial", {}, {}, posted)
    assert isinstance(serial, HostedSerial)
    assert serial.info() == {"fast": [{"kind": "mirror", "window": 0, "offset": 5, "size": 1}]}
    counters, mirrors = parse_fast_registers(serial.info()["fast"])
    assert counters == [] and mirrors == [Mirror(0, 5, 1)]


def test_serial_line_status_copy_follows_the_uart(posted):
    serial = build("serial", {}, {}, posted)
    uart = serial.windows[0]
    (mirror, copy), = serial.mirrors
    assert copy() == [b"\x60", [2, 4]]  # THRE|TEMT; ended by writes to FCR and MCR
    assert parse_copies([mirror], [copy()]) == [Copy(b"\x60", frozenset({2, 4}))]
    assert serial.handle(Msg.INPUT, [1, b"k"]) == 1
    assert copy() == [b"\x61", [2, 4]]  # data ready
    uart.write(4, b"\x10")  # MCR: loopback, after which THR writes are received
    assert copy() == [b"\x61", [2, 4, 0]]
    assert uart.read(5, 1) == b"\x61"  # the copy is what a read returns


def test_serial_sends_no_copy_while_an_overrun_is_pending(posted):
    serial = build("serial", {}, {}, posted)
    uart = serial.windows[0]
    (mirror, copy), = serial.mirrors
    uart.write(4, b"\x10")  # loopback
    serial.handle(Msg.INPUT, [1, b"\x00" * 65536])  # the receive buffer, full
    uart.write(0, b"!")  # one more: an overrun
    assert copy() is None
    assert parse_copies([mirror], [copy()]) == [None]
    assert uart.read(5, 1) == b"\x63"  # DR|OE|THRE|TEMT, and the read clears OE
    assert copy() == [b"\x61", [2, 4, 0]]


def test_serial_output_and_interrupt_become_events(posted):
    serial = build("serial", {}, {}, posted)
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
    serial = build("serial", {}, {}, posted)
    uart = serial.windows[0]
    uart.write(7, b"\x5a")  # SCR
    state = serial.handle(Msg.SNAPSHOT, [1])
    assert state["scr"] == 0x5A
    other = build("serial", {}, {}, Posted())
    other.handle(Msg.RESTORE, [2, state])
    assert other.windows[0].read(7, 1) == b"\x5a"


def test_debugcon_output_is_batched_on_window_zero(posted):
    debugcon = build("debugcon", {}, {}, posted)
    assert sorted(debugcon.windows) == [0, 1]
    assert debugcon.info() == {"fast": []}
    debugcon.windows[0].write(0, b"Boot")
    assert posted == []
    debugcon.windows[0].write(0, b"\n")
    assert posted == [(Msg.OUTPUT, 0, b"Boot\n")]
    debugcon.windows[1].write(0, b"\x42")  # a POST code: no event
    assert debugcon.windows[1].read(0, 1) == b"\x42"
    assert posted == [(Msg.OUTPUT, 0, b"Boot\n")]


def test_pmtimer_declares_its_counter_with_the_core_s_epoch(posted):
    pmtimer = build("pmtimer", {"epoch": 12.5}, {}, posted)
    assert pmtimer.info() == {"fast": [
        {"kind": "counter", "window": 0, "offset": 0, "size": 4, "frequency": 3_579_545, "epoch": 12.5, "width": 32},
    ]}
    assert pmtimer.mirrors == [] and pmtimer.outputs == []
    counters, _ = parse_fast_registers(pmtimer.info()["fast"])
    # The core's answer and the device's agree at the same instant.
    now = 20.25
    assert counters[0].read(0, 4, now) == (int(7.75 * 3_579_545) & 0xFFFFFFFF).to_bytes(4, "little")


def test_rtc_keeps_state_and_no_fast_registers(posted):
    rtc = build("rtc", {}, {}, posted)
    assert rtc.info() == {"fast": []}
    assert rtc.state is rtc.windows[0]
    assert isinstance(rtc.handle(Msg.SNAPSHOT, [1]), dict)
