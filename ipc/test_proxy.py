"""The core's handle on a device process (ipc/proxy.py): forwarding, counters, failure.

Checked against the proxy's contract: a read is one ``[READ, seq, window,
offset, size]`` and its reply, a write one posted ``[WRITE, window, offset,
data]`` (held in batches while the guest polls: test_batch.py); a counter the device declares fast (ipc/fastpath.py) is read from the
clock with no message at all; a dead device is waited for across one restart,
and one that is gone, hangs or answers nonsense reads as all ones instead of
hanging the caller. The device is scripted: its replies are queued on the other
end of a real channel pair (the proxy's sequence numbers start at 1). Mirrors,
and a real DeviceServer behind the proxy, are in test_proxy_mirrors.py.
"""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from vmboot.ipc import fastpath
from vmboot.ipc.channel import Channel, channel_pair
from vmboot.ipc.fastpath import Counter
from vmboot.ipc.protocol import Msg, ProtocolError
from vmboot.ipc.proxy import DeviceGone, WindowProxy
from vmboot.tests.device_link import JOIN_TIMEOUT, ProxyLink

pytestmark = pytest.mark.usefixtures("prompt")


# -- forwarded reads and posted writes, scripted ---------------------------------------------------


def test_a_read_is_one_request_and_its_reply(link):
    link.reply(Msg.REPLY, 1, b"\x12\x34")
    assert link.proxy.window(3).read(0x10, 2) == b"\x12\x34"
    assert link.received() == [[Msg.READ, 1, 3, 0x10, 2]]
    assert link.proxy.stats == {"calls": 1, "posted": 0, "batches": 0, "fast": 0}


def test_sequence_numbers_count_up_from_one(link):
    for seq in (1, 2, 3):
        link.reply(Msg.REPLY, seq, bytes([seq]))
    window = link.proxy.window(0)
    assert [window.read(0, 1) for _ in range(3)] == [b"\x01", b"\x02", b"\x03"]
    assert [m[1] for m in link.received()] == [1, 2, 3]


def test_a_write_is_posted_with_no_reply_awaited(link):
    link.proxy.window(2).write(7, bytearray(b"\xab\xcd"))
    assert link.received() == [[Msg.WRITE, 2, 7, b"\xab\xcd"]]  # bytes, whatever the caller passed
    assert link.proxy.stats == {"calls": 0, "posted": 1, "batches": 1, "fast": 0}


def test_writes_and_reads_reach_the_device_in_order(link):
    window = link.proxy.window(0)
    link.reply(Msg.REPLY, 1, b"\x01")
    window.write(0, b"a")
    window.write(1, b"b")
    assert window.read(2, 1) == b"\x01"
    window.write(3, b"c")
    assert link.received() == [[Msg.WRITE, 0, 0, b"a"], [Msg.WRITE, 0, 1, b"b"], [Msg.READ, 1, 0, 2, 1],
                               [Msg.WRITE, 0, 3, b"c"]]
    assert link.flusher.scheduled == []  # the guest was not polling: nothing was held


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
    link = ProxyLink(counters=[PM])
    try:
        assert link.proxy.window(0).read(8, 4) == PM_BYTES
        assert link.proxy.window(0).read(9, 2) == bytes([0xED, 0x51])  # a part of it
        assert link.received() == []
        assert link.proxy.stats == {"calls": 0, "posted": 0, "batches": 0, "fast": 2}
    finally:
        link.close()


def test_reads_beside_a_counter_or_on_another_window_go_to_the_device(frozen_clock):
    link = ProxyLink(counters=[PM])
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
    link = ProxyLink(counters=[PM])
    link.close()
    assert link.proxy.window(0).read(8, 4) == PM_BYTES


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
    link.flush()
    with pytest.raises(DeviceGone):
        link.proxy.call(Msg.RESET)
    assert time.monotonic() - start < 1.0
    assert link.received() == []
    assert link.proxy.stats == {"calls": 0, "posted": 0, "batches": 0, "fast": 0}


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
    link.flush()
    assert link.proxy.stats["posted"] == 0
    assert link.proxy.ctl is link.ctl  # a lost write does not decide that the device is dead
