"""Descriptors on the message channel (ipc/channel.py): SCM_RIGHTS, limits and leaks.

Descriptors passed with a message arrive as copies of the same open files; at
most MAX_FDS go with one message; nothing is leaked when a message with
descriptors is refused. Leaks are measured as this process's descriptor table
(/proc/self/fd) before and after: sender and receiver are the same process, so
a descriptor that arrived and was not closed shows up there.
"""
from __future__ import annotations

import os
import socket

import pytest

from vmboot.ipc.protocol import MAX_FDS, MAX_MESSAGE_BYTES, Msg, ProtocolError, encode

TOO_BIG = f"message over the {MAX_MESSAGE_BYTES}-byte limit"


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def same_file(a: int, b: int) -> bool:
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def memfd(content: bytes) -> int:
    fd = os.memfd_create("vmboot-test")
    os.write(fd, content)
    return fd


# -- descriptors -----------------------------------------------------------------------------------


def test_pass_a_pipe(pair, pipe):
    core, device = pair
    r, w = pipe
    core.send_with_fds([r], Msg.SPAWN, 1, "rtc", {"root": "/run"}, ["ctl"])
    msg, fds = device.recv_with_fds()
    try:
        assert msg == [Msg.SPAWN, 1, "rtc", {"root": "/run"}, ["ctl"]]
        assert msg[0] is Msg.SPAWN
        assert len(fds) == 1 and fds[0] not in (r, w)  # a copy, under a new number
        assert same_file(fds[0], r)
        os.write(w, b"through the pipe")
        assert os.read(fds[0], 100) == b"through the pipe"
    finally:
        os.close(fds[0])


def test_passed_descriptor_shares_the_open_file(pair):
    core, device = pair
    fd = memfd(b"hello, device")
    try:
        core.send_with_fds([fd], Msg.RESET, 1)
        msg, fds = device.recv_with_fds()
        assert msg == [Msg.RESET, 1]
        (copy,) = fds
        try:
            assert same_file(copy, fd)
            assert os.pread(copy, 13, 0) == b"hello, device"
            os.pwrite(copy, b"HELLO", 0)
            assert os.pread(fd, 13, 0) == b"HELLO, device"
            # The same open file description: one file offset between both numbers.
            os.lseek(fd, 7, os.SEEK_SET)
            assert os.lseek(copy, 0, os.SEEK_CUR) == 7
        finally:
            os.close(copy)
        # The sender's descriptor is untouched by the passing.
        assert os.pread(fd, 5, 0) == b"HELLO"
    finally:
        os.close(fd)


def test_descriptors_keep_their_order(pair):
    core, device = pair
    sent = [memfd(bytes([65 + i]) * 4) for i in range(5)]
    try:
        core.send_with_fds(sent, Msg.SPAWN, 2, "virtio-blk", {}, ["a", "b", "c", "d", "e"])
        msg, fds = device.recv_with_fds()
        try:
            assert msg[4] == ["a", "b", "c", "d", "e"]
            assert [os.pread(fd, 4, 0) for fd in fds] == [b"AAAA", b"BBBB", b"CCCC", b"DDDD", b"EEEE"]
            assert all(same_file(a, b) for a, b in zip(sent, fds))
        finally:
            for fd in fds:
                os.close(fd)
    finally:
        for fd in sent:
            os.close(fd)


def test_message_without_descriptors(pair):
    core, device = pair
    core.send(Msg.EXITED, 12, -9)
    assert device.recv_with_fds() == ([Msg.EXITED, 12, -9], [])
    core.send_with_fds([], Msg.EXITED, 13, 0)
    assert device.recv_with_fds() == ([Msg.EXITED, 13, 0], [])


def test_max_fds_pass(pair, pipe):
    core, device = pair
    r, _ = pipe
    core.send_with_fds([r] * MAX_FDS, Msg.SPAWN, 3, "rtc", {}, ["n"] * MAX_FDS)
    msg, fds = device.recv_with_fds()
    try:
        assert len(fds) == MAX_FDS == 32
        assert len(set(fds)) == MAX_FDS  # one new descriptor each, even for the same file
        assert all(same_file(fd, r) for fd in fds)
    finally:
        for fd in fds:
            os.close(fd)


def test_one_fd_over_max_fds_is_refused_without_leaks(pair, pipe):
    core, device = pair
    r, _ = pipe
    core.send_with_fds([r] * (MAX_FDS + 1), Msg.SPAWN, 4, "rtc", {}, [])
    before = open_fds()
    with pytest.raises(ProtocolError) as info:
        device.recv_with_fds()
    assert str(info.value) == "more than 32 descriptors with one message"
    assert open_fds() == before
    core.send(Msg.RESET, 5)
    assert device.recv_with_fds() == ([Msg.RESET, 5], [])  # the channel goes on


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7])
def test_max_fds_argument(pair, pipe, limit):
    core, device = pair
    r, _ = pipe
    core.send_with_fds([r] * limit, Msg.RESET, 1)
    msg, fds = device.recv_with_fds(max_fds=limit)
    for fd in fds:
        os.close(fd)
    assert len(fds) == limit
    core.send_with_fds([r] * (limit + 1), Msg.RESET, 2)
    before = open_fds()
    try:
        _, extra = device.recv_with_fds(max_fds=limit)
    except ProtocolError as err:
        assert str(err) == f"more than {limit} descriptors with one message"
    else:
        for fd in extra:
            os.close(fd)
        pytest.fail(f"{len(extra)} descriptors accepted with max_fds={limit}")
    assert open_fds() == before


@pytest.mark.parametrize("payload, error", [
    pytest.param(b"\xc1", r"^not a msgpack message \(", id="not-msgpack"),
    # Empty, but with descriptors: not end-of-file.
    pytest.param(b"", r"^not a msgpack message \(", id="empty"),
    pytest.param(encode(99, 1), r"^unknown message type 99$", id="unknown-type"),
    pytest.param(encode(Msg.SPAWN, 1, "rtc", {}, "ctl"), r"^SPAWN field 4 is invalid \(str\)$", id="bad-field"),
    pytest.param(b"\x00" * (MAX_MESSAGE_BYTES + 1), f"^{TOO_BIG}$", id="one-byte-over"),
    pytest.param(b"\x00" * (2 * MAX_MESSAGE_BYTES), f"^{TOO_BIG}$", id="truncated"),
])
def test_refused_message_closes_its_descriptors(pair, pipe, payload, error):
    core, device = pair
    r, w = pipe
    socket.send_fds(core.sock, [payload], [r, w, r])
    before = open_fds()
    with pytest.raises(ProtocolError, match=error):
        device.recv_with_fds()
    assert open_fds() == before


def test_descriptors_sent_to_plain_recv_are_dropped(pair, pipe):
    # recv() takes no ancillary data: the kernel discards the descriptors, none lands here.
    core, device = pair
    r, _ = pipe
    core.send_with_fds([r, r], Msg.RESET, 9)
    before = open_fds()
    assert device.recv(0) == [Msg.RESET, 9]
    assert open_fds() == before


def test_descriptor_passing_both_ways(pair, pipe):
    core, device = pair
    r, w = pipe
    device.send_with_fds([w], Msg.OUTPUT, 0, b"fd")
    msg, (copy,) = core.recv_with_fds()
    try:
        assert msg == [Msg.OUTPUT, 0, b"fd"]
        os.write(copy, b"via the copy")
        assert os.read(r, 100) == b"via the copy"
    finally:
        os.close(copy)
