"""The device process's loop (ipc/server.py): how it ends, what wakes it, when output goes.

Console output waits no longer than its deadline (the poll timeout is the time
left to the earliest one, in whole milliseconds rounded up) and whatever is
left goes at shutdown; the loop ends when the core says SHUTDOWN or hangs up.
The timing is checked once in real time and then with a fake clock and a fake
poller, so nothing else here sleeps.
"""
from __future__ import annotations

import os
import queue
import time
from types import SimpleNamespace

from vmboot.devices.served import OUTPUT_DELAY, Output, Served
from vmboot.ipc import server as server_module
from vmboot.ipc.channel import ChannelClosed
from vmboot.ipc.protocol import Msg
from vmboot.ipc.server import DeviceServer
from vmboot.tests.device_link import JOIN_TIMEOUT, Link, Registers, drain, request, serving


def served(name: str, windows: dict, outputs=()) -> Served:
    device = Served(windows)
    device.name = name
    device.outputs = list(outputs)
    return device


def plain(post=None):
    return served("regs", {0: Registers()})


# -- ending ----------------------------------------------------------------------------------------


def test_shutdown_ends_the_loop_and_sends_waiting_output():
    """Output whose deadline is an hour away must still go before the device exits."""
    clock = lambda: time.monotonic() + 3600.0  # noqa: E731

    def served_for(post):
        out = Output(post, 0, clock)
        return served("con", {0: SimpleNamespace(read=None, write=lambda offset, data: out.write(data))},
                      outputs=[out])
    with serving(served_for) as (link, server, thread):
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
    def served_for(post):
        out = Output(post, 0)
        return served("con", {0: SimpleNamespace(read=None, write=lambda offset, data: out.write(data))},
                      outputs=[out])
    with serving(served_for) as (link, _, _):
        start = time.monotonic()
        link.ctl.send(Msg.WRITE, 0, 0, b"login: ")
        assert link.evt.recv(JOIN_TIMEOUT) == [Msg.OUTPUT, 0, b"login: "]
        waited = time.monotonic() - start
        assert OUTPUT_DELAY <= waited < 2.0


def test_watched_descriptors_wake_the_loop():
    woken = queue.Queue()
    r, w = os.pipe()
    try:
        def served_for(post):
            device = served("virtio", {0: Registers()})
            device.watch[r] = lambda: woken.put(os.read(r, 16))
            return device
        with serving(served_for) as (link, _, _):
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


class Scripted:
    """A served device whose deadlines are given, recording what the loop asks of it."""

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
    device = Scripted([
        8.0 + 2**-9,  # 1.953125 ms left: 2 ms
        8.0 + 2**-7,  # 7.8125 ms left: 8 ms
        None,  # nothing waiting: sleep until a message
        8.0,  # due now: do not sleep
        7.5,  # overdue: do not sleep
        8.0 + 2.0,  # 2 s: 2000 ms
    ])
    loop = FakeLoop(monkeypatch, 8.0, [lambda loop: None] * 6)
    server = loop.server = DeviceServer(stub_channel(1000), stub_channel(1001), device)
    server.serve()
    assert loop.timeouts == [2, 8, None, 0, 0, 2000]
    assert device.due == [8.0] * 5  # after each poll with a deadline, and only then
    assert device.flushes == 1  # the final flush
    assert loop.registered == [(1000, 1)]


def test_flush_due_gets_the_time_after_the_poll(monkeypatch):
    device = Scripted([1.0 + 2**-8, 1.0 + 2**-8])

    def wait_it_out(loop):
        loop.now = 1.0 + 2**-8

    loop = FakeLoop(monkeypatch, 1.0, [wait_it_out, lambda loop: None])
    server = loop.server = DeviceServer(stub_channel(3), stub_channel(4), device)
    server.serve()
    assert loop.timeouts == [4, 0]  # 3.90625 ms, then due
    assert device.due == [1.0 + 2**-8] * 2


def test_outputs_are_flushed_as_their_deadlines_come(monkeypatch):
    """Real Outputs on the fake clock: the earliest deadline sets the sleep, only the due one goes."""
    posted = []
    loop = None

    def clock():
        return loop.now
    a = Output(lambda *f: posted.append(f), 0, clock)
    b = Output(lambda *f: posted.append(f), 1, clock)
    device = served("two", {}, outputs=[a, b])

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
    server = loop.server = DeviceServer(stub_channel(5), stub_channel(6), device)
    server.serve()
    assert loop.timeouts == [1, 1, None]  # 1 ms to a's deadline; 0.5 ms to b's, rounded up; none
    assert posted == [(Msg.OUTPUT, 0, b"a"), (Msg.OUTPUT, 1, b"b"), (Msg.OUTPUT, 0, b"z")]  # z: at shutdown


def test_a_core_gone_at_the_final_flush_is_no_crash(monkeypatch):
    def gone(*fields):
        raise ChannelClosed()
    out = Output(gone, 0, lambda: 0.0)
    device = served("con", {}, outputs=[out])
    loop = FakeLoop(monkeypatch, 0.0, [lambda loop: out.write(b"x")])
    out.write(b"")  # nothing waiting before the loop
    server = loop.server = DeviceServer(stub_channel(7), stub_channel(8), device)
    server.serve()  # returns normally
    assert loop.timeouts == [None]
    assert out.pending == b""
