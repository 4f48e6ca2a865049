"""Devices as they are served (devices/served.py).

Checked against the module's own contract: console bytes wait in ``Output``
and go as one OUTPUT event at the end of a line, at OUTPUT_BATCH (4096) bytes,
or once the first waiting byte is OUTPUT_DELAY (2 ms) old; ``Served`` reports
the earliest deadline of its outputs and flushes what is due; its hello
declares its fast registers (ipc/fastpath.py), mirrors included, in a form the
core's parser takes. (Each kind's build is tested in its folder, test_kind.py.)
Time is a fake clock handed to ``Output``: nothing here sleeps.
"""
from __future__ import annotations

import time

import pytest

from vmboot.devices.served import OUTPUT_BATCH, OUTPUT_DELAY, Output, Served
from vmboot.ipc.fastpath import Counter, Mirror, parse_fast_registers
from vmboot.ipc.protocol import MAX_DATA_BYTES, Msg, ProtocolError, decode, encode
from vmboot.tests.fakes import Clock


def served(outputs=(), **kwargs) -> Served:
    """A Served named "x", with the outputs a device process's host would have given it."""
    device = Served({}, **kwargs)
    device.name = "x"
    device.outputs = list(outputs)
    return device


@pytest.fixture
def clock():
    return Clock(100.0)


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


def test_more_than_one_event_carries_goes_in_several(posted, clock):
    """The largest WRITE the protocol carries, after bytes already waiting: no event is too big to send."""
    out = Output(posted, 0, clock)
    out.write(b"a" * 10)
    out.write(b"b" * MAX_DATA_BYTES)
    assert posted == [(Msg.OUTPUT, 0, b"a" * 10 + b"b" * (MAX_DATA_BYTES - 10)), (Msg.OUTPUT, 0, b"b" * 10)]
    assert [decode(encode(*fields))[0] for fields in posted] == [Msg.OUTPUT, Msg.OUTPUT]  # both pass the check


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


# -- Served: outputs -------------------------------------------------------------------------------


def test_a_device_without_outputs_never_needs_waking(posted):
    device = served()
    assert device.deadline() is None
    device.flush_due(1e9)
    device.flush()
    assert posted == []


def test_the_deadline_is_the_earliest_of_the_outputs(posted, clock):
    a, b = Output(posted, 0, clock), Output(posted, 1, clock)
    device = served(outputs=[a, b])
    assert device.deadline() is None
    clock.t = 5.0
    b.write(b"b")
    assert device.deadline() == 5.0 + OUTPUT_DELAY
    clock.t = 6.0
    a.write(b"a")
    assert device.deadline() == 5.0 + OUTPUT_DELAY  # b's, still the earlier
    b.flush()
    assert device.deadline() == 6.0 + OUTPUT_DELAY


def test_flush_due_sends_only_what_is_due(posted, clock):
    a, b = Output(posted, 0, clock), Output(posted, 1, clock)
    device = served(outputs=[a, b])
    clock.t = 0.0
    a.write(b"a")  # due at 0.002
    clock.t = 0.001
    b.write(b"b")  # due at 0.003
    device.flush_due(0.0019)
    assert posted == []
    device.flush_due(0.002)  # a deadline that has come is due
    assert posted == [(Msg.OUTPUT, 0, b"a")]
    assert device.deadline() == 0.001 + OUTPUT_DELAY
    device.flush_due(0.0029)
    assert posted == [(Msg.OUTPUT, 0, b"a")]
    device.flush_due(1.0)
    assert posted == [(Msg.OUTPUT, 0, b"a"), (Msg.OUTPUT, 1, b"b")]
    assert device.deadline() is None


def test_flush_sends_every_output_whatever_its_deadline(posted, clock):
    a, b, c = Output(posted, 0, clock), Output(posted, 1, clock), Output(posted, 2, clock)
    device = served(outputs=[a, b, c])
    a.write(b"1")
    c.write(b"3")
    device.flush()
    assert posted == [(Msg.OUTPUT, 0, b"1"), (Msg.OUTPUT, 2, b"3")]
    assert device.deadline() is None


def test_outputs_are_copied_into_a_list(posted, clock):
    out = Output(posted, 0, clock)
    device = served(outputs=(out,))
    assert device.outputs == [out]
    assert Served({}).outputs == []  # until a device process's host gives it some


# -- Served: fast registers in the hello -----------------------------------------------------------


def test_a_plain_device_declares_no_fast_registers():
    device = served()
    assert device.info() == {"fast": []}
    assert device.mirrors == []


def test_mirrors_are_declared_after_the_other_fast_registers():
    counter = Counter(0, 8, 4, 1000, 2.5, 24).describe()

    def copy() -> list:
        return [b"\x60", [2, 4]]
    device = served(fast=[counter], mirrors=[(Mirror(0, 5, 1), copy), (Mirror(1, 0, 2), lambda: None)])
    assert device.info() == {"fast": [
        {"kind": "counter", "window": 0, "offset": 8, "size": 4, "frequency": 1000, "epoch": 2.5, "width": 24},
        {"kind": "mirror", "window": 0, "offset": 5, "size": 1},
        {"kind": "mirror", "window": 1, "offset": 0, "size": 2},
    ]}
    assert [m for m, _ in device.mirrors] == [Mirror(0, 5, 1), Mirror(1, 0, 2)]
    assert device.mirrors[0][1] is copy
    # What the core makes of the declaration: the same registers.
    counters, mirrors = parse_fast_registers(device.info()["fast"])
    assert counters == [Counter(0, 8, 4, 1000, 2.5, 24)]
    assert mirrors == [Mirror(0, 5, 1), Mirror(1, 0, 2)]


def test_the_fast_list_given_is_not_modified():
    fast = [Counter(0, 0, 4, 10, 0.0, 32).describe()]
    served(fast=fast, mirrors=[(Mirror(0, 5, 1), lambda: None)])
    assert len(fast) == 1


# -- Served: state ---------------------------------------------------------------------------------


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
    device = served(state=state)
    device.after_write(posted)
    assert posted == [(Msg.SNAPSHOT, {"value": 0})]  # the first: nothing sent yet
    device.after_write(posted)
    assert len(posted) == 1
    state.value = 7
    device.after_write(posted)
    assert posted == [(Msg.SNAPSHOT, {"value": 0}), (Msg.SNAPSHOT, {"value": 7})]


def test_after_write_is_silent_for_a_device_without_state(posted):
    served().after_write(posted)
    assert posted == []


def test_snapshot_restore_and_reset_requests():
    state = State()
    state.value = 3
    device = served(state=state)
    assert device.handle(Msg.SNAPSHOT, [1]) == {"value": 3}
    assert device.handle(Msg.RESTORE, [2, {"value": 9}]) is None
    assert state.restored == [{"value": 9}] and state.value == 9
    assert device.handle(Msg.RESET, [3]) is None


def test_a_restored_state_is_not_sent_back_as_a_change(posted):
    state = State()
    device = served(state=state)
    device.handle(Msg.RESTORE, [1, {"value": 4}])
    device.after_write(posted)
    assert posted == []


@pytest.mark.parametrize("kind", [Msg.SNAPSHOT, Msg.RESTORE, Msg.INPUT, Msg.ACTIVATE])
def test_requests_a_stateless_device_does_not_take(kind):
    with pytest.raises(ProtocolError, match=f"^x does not take {kind.name}$"):
        served().handle(kind, [1, {}])
