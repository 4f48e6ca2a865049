"""Posted writes in batches (ipc/batch.py, through ipc/proxy.py): held while the guest polls.

A write is held when the access just before it was a read the core answered itself (here a
counter, as the PM timer's); held writes go as one ``[WRITES, [[window, offset, data], ...]]``
(or a ``WRITE`` when alone) with the next request or posted message, with the next write that
follows no poll, when full or old, or from the flusher, whose share ProxyLink holds until the
test lets it run (tests/device_link.py); one test runs the real Flusher's thread.
"""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from vmboot.ipc import fastpath
from vmboot.ipc import proxy as proxy_module
from vmboot.ipc.batch import HOLD_AGE, MAX_BATCH, Flusher
from vmboot.ipc.channel import Channel, channel_pair
from vmboot.ipc.fastpath import Counter
from vmboot.ipc.protocol import Msg
from vmboot.ipc.proxy import DeviceProxy
from vmboot.tests.device_link import JOIN_TIMEOUT, ProxyLink

pytestmark = pytest.mark.usefixtures("prompt")

PM = Counter(window=0, offset=8, size=4, frequency=3_579_545, epoch=100.0, width=24)
PM_BYTES = bytes([0xE5, 0xED, 0x51, 0x00])  # int(1.5 s * 3579545 Hz) = 0x51EDE5, little-endian


@pytest.fixture
def frozen_clock(monkeypatch):
    """fastpath's clock, held at 101.5 s."""
    monkeypatch.setattr(fastpath, "time", SimpleNamespace(monotonic=lambda: 101.5))


@pytest.fixture
def polled(frozen_clock):
    """A device with a counter, which the core answers itself: reading it is polling."""
    link = ProxyLink(counters=[PM])
    yield link
    link.close()


def poll(link: ProxyLink) -> None:
    assert link.proxy.window(0).read(PM.offset, PM.size) == PM_BYTES


def test_writes_while_the_guest_polls_are_held_and_go_as_one_message(polled):
    window = polled.proxy.window(0)
    for byte in b"ok":  # what Linux's 8250 console does: a status read answered in the core, a write
        poll(polled)
        window.write(0, bytes([byte]))
    assert polled.received() == []
    assert polled.flusher.scheduled == [polled.proxy]  # once, for the batch
    polled.reply(Msg.REPLY, 1, b"\x01")
    assert window.read(2, 1) == b"\x01"  # a request: the batch goes first
    assert polled.received() == [[Msg.WRITES, [[0, 0, b"o"], [0, 0, b"k"]]], [Msg.READ, 1, 0, 2, 1]]
    assert polled.proxy.stats == {"calls": 1, "posted": 2, "batches": 1, "fast": 2}
    polled.flush()  # the flusher's turn, late: nothing is left to send
    assert polled.received() == []


def test_a_write_that_does_not_follow_a_poll_takes_the_held_ones_with_it(polled):
    """A driver filling a FIFO and then waiting for the interrupt: the device hears of it at once."""
    window = polled.proxy.window(0)
    poll(polled)
    window.write(0, b"a")
    window.write(0, b"b")
    assert polled.received() == [[Msg.WRITES, [[0, 0, b"a"], [0, 0, b"b"]]]]


def test_the_flusher_sends_what_the_guest_left_held(polled):
    poll(polled)
    polled.proxy.window(0).write(0, b">")
    assert polled.received() == []
    polled.flush()
    assert polled.received() == [[Msg.WRITE, 0, 0, b">"]]
    assert polled.proxy.stats["batches"] == 1


def test_a_full_batch_goes_at_once(polled):
    window = polled.proxy.window(1)
    for i in range(MAX_BATCH):
        poll(polled)
        window.write(i, bytes([i & 0xFF]))
    assert polled.received() == [[Msg.WRITES, [[1, i, bytes([i & 0xFF])] for i in range(MAX_BATCH)]]]


def test_a_batch_goes_with_the_first_write_after_hold_age(polled, monkeypatch):
    now = [50.0]
    monkeypatch.setattr(proxy_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    window = polled.proxy.window(0)
    for byte, later in ((b"a", HOLD_AGE / 2), (b"b", HOLD_AGE / 2), (b"c", 0)):
        poll(polled)
        window.write(0, byte)
        if byte != b"c":
            assert polled.received() == []
        now[0] += later
    assert polled.received() == [[Msg.WRITES, [[0, 0, b"a"], [0, 0, b"b"], [0, 0, b"c"]]]]


def test_a_write_larger_than_a_bus_access_goes_alone_after_the_held_ones(polled):
    window = polled.proxy.window(0)
    poll(polled)
    window.write(0, b"a")
    poll(polled)
    window.write(4, b"0123456789")
    assert polled.received() == [[Msg.WRITE, 0, 0, b"a"], [Msg.WRITE, 0, 4, b"0123456789"]]


def test_shutdown_goes_after_the_held_writes(polled):
    """The guest's last console bytes are not lost when the VM ends."""
    poll(polled)
    polled.proxy.window(0).write(0, b"\n")
    polled.proxy.post(Msg.SHUTDOWN)
    assert polled.received() == [[Msg.WRITE, 0, 0, b"\n"], [Msg.SHUTDOWN]]


def test_held_writes_to_a_device_that_died_are_lost(polled):
    poll(polled)
    polled.proxy.window(0).write(0, b"x")
    polled.proxy.detach(for_good=False)
    polled.flush()
    assert polled.received() == []
    assert polled.proxy.stats["posted"] == 0


def test_the_flusher_keeps_writes_held_between_two_lives_for_the_next(polled):
    poll(polled)
    polled.proxy.detach(for_good=False)  # the device died; the supervisor is restarting it
    polled.proxy.window(0).write(0, b"x")
    polled.flush()  # no device to send to: kept, and looked at again later
    assert polled.flusher.scheduled == [polled.proxy]
    ctl, theirs = channel_pair()
    dev = Channel(theirs)
    try:
        polled.proxy.attach(ctl, [PM])
        polled.flush()
        assert dev.recv(0) == [Msg.WRITE, 0, 0, b"x"]
    finally:
        ctl.close()
        dev.close()


def test_the_flusher_thread_sends_a_batch_after_its_delay(frozen_clock):
    ctl, theirs = channel_pair()
    dev = Channel(theirs)
    proxy = DeviceProxy("dev", flusher=Flusher(delay=0.02))
    proxy.attach(ctl, [PM])
    window = proxy.window(0)
    try:
        start = time.monotonic()
        for byte in b"hi":
            window.read(PM.offset, PM.size)
            window.write(0, bytes([byte]))
        assert dev.recv(JOIN_TIMEOUT) == [Msg.WRITES, [[0, 0, b"h"], [0, 0, b"i"]]]
        assert 0.02 <= time.monotonic() - start < JOIN_TIMEOUT
        window.read(PM.offset, PM.size)
        window.write(0, b"!")  # a new batch, a new delay
        assert dev.recv(JOIN_TIMEOUT) == [Msg.WRITE, 0, 0, b"!"]
    finally:
        ctl.close()
        dev.close()
