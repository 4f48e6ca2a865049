"""The message channel (ipc/channel.py) over a real SOCK_SEQPACKET socketpair.

What is checked against: the module's promises (one message per packet, every
received message decoded and checked by ipc/protocol.py, a dead peer seen at
once as ChannelClosed) and the limits it names: MAX_MESSAGE_BYTES per message,
SOCKET_BUFFER for both socket buffers. Descriptors are in test_channel_fds.py.
"""
from __future__ import annotations

import errno
import os
import socket

import pytest

from vmboot.abi.linux import SO_RCVBUFFORCE, SO_SNDBUFFORCE
from vmboot.ipc.channel import SOCKET_BUFFER, Channel, ChannelClosed, channel_pair, size_buffers
from vmboot.ipc.protocol import MAX_MESSAGE_BYTES, Msg, ProtocolError, encode

TOO_BIG = f"message over the {MAX_MESSAGE_BYTES}-byte limit"


# -- the pair -------------------------------------------------------------------------------


def test_socket_buffer_holds_several_largest_messages():
    assert SOCKET_BUFFER == 4 * MAX_MESSAGE_BYTES


def test_channel_pair(pair):
    core, device = pair
    for sock in (core.sock, device.sock):
        assert sock.family == socket.AF_UNIX
        assert sock.type == socket.SOCK_SEQPACKET
    assert core.sock.get_inheritable() is False  # the core's end stays in the core
    assert device.sock.get_inheritable() is True  # the device's end is handed over at spawn


def test_channel_pair_buffers(pair):
    # The kernel reports twice what was set. Forced (CAP_NET_ADMIN): all of SOCKET_BUFFER;
    # otherwise capped by net.core.{w,r}mem_max. Either way, not the default.
    caps = {}
    for name in ("wmem_max", "rmem_max"):
        with open(f"/proc/sys/net/core/{name}") as f:
            caps[name] = int(f.read())
    for channel in pair:
        sndbuf = channel.sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        rcvbuf = channel.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert sndbuf in (2 * SOCKET_BUFFER, 2 * min(SOCKET_BUFFER, caps["wmem_max"]))
        assert rcvbuf in (2 * SOCKET_BUFFER, 2 * min(SOCKET_BUFFER, caps["rmem_max"]))


class FakeSocket:
    """Records setsockopt calls; refuses the *FORCE options if told to."""

    def __init__(self, refuse: OSError | None = None):
        self.calls: list[tuple[int, int, int]] = []
        self.refuse = refuse

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.calls.append((level, option, value))
        if self.refuse is not None and option in (SO_SNDBUFFORCE, SO_RCVBUFFORCE):
            raise self.refuse


def test_size_buffers_forced():
    sock = FakeSocket()
    size_buffers(sock)
    assert sock.calls == [(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER),
                          (socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER)]


def test_size_buffers_falls_back_without_privilege():
    sock = FakeSocket(refuse=OSError(errno.EPERM, "Operation not permitted"))
    assert type(sock.refuse) is PermissionError  # what the kernel's EPERM becomes
    size_buffers(sock)
    assert sock.calls == [(socket.SOL_SOCKET, SO_SNDBUFFORCE, SOCKET_BUFFER),
                          (socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER),
                          (socket.SOL_SOCKET, SO_RCVBUFFORCE, SOCKET_BUFFER),
                          (socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)]


def test_size_buffers_does_not_hide_other_errors():
    with pytest.raises(OSError) as info:
        size_buffers(FakeSocket(refuse=OSError(errno.ENOPROTOOPT, "Protocol not available")))
    assert info.value.errno == errno.ENOPROTOOPT


def test_fileno_and_from_fd(pair):
    core, device = pair
    assert core.fileno() == core.sock.fileno() >= 0
    fd = device.sock.detach()
    again = Channel.from_fd(fd)
    try:
        assert again.fileno() == fd
        assert again.sock.type == socket.SOCK_SEQPACKET
        core.send(Msg.RESET, 5)
        assert again.recv(0) == [Msg.RESET, 5]
        again.send(Msg.REPLY, 5, None)
        assert core.recv(0) == [Msg.REPLY, 5, None]
    finally:
        again.close()


# -- messages --------------------------------------------------------------------------------


def test_send_and_recv_both_ways(pair):
    core, device = pair
    core.send(Msg.READ, 1, 0, 0x3F8, 1)
    assert device.recv() == [Msg.READ, 1, 0, 0x3F8, 1]
    device.send(Msg.REPLY, 1, b"\x60")
    msg = core.recv(timeout=0)
    assert msg == [Msg.REPLY, 1, b"\x60"]
    assert msg[0] is Msg.REPLY


def test_one_message_per_packet_in_order(pair):
    core, device = pair
    sent = [(Msg.WRITE, 0, 0, b"a"), (Msg.WRITE, 0, 0, b"bc"), (Msg.READ, 2, 0, 5, 1), (Msg.SHUTDOWN,)]
    for fields in sent:
        core.send(*fields)
    assert [device.recv(0) for _ in sent] == [list(f) for f in sent]
    with pytest.raises(TimeoutError):
        device.recv(0)  # nothing merged, nothing left over


def test_send_raw_and_recv_raw_are_exact(pair):
    core, device = pair
    for data in (b"\x91\x0a", b"\xc1 not msgpack", bytes(range(256)), b"\x00" * MAX_MESSAGE_BYTES):
        core.send_raw(data)
        assert device.recv_raw(0) == data


def test_send_encodes_with_protocol_encode(pair):
    core, device = pair
    core.send(Msg.OUTPUT, 0, b"hi")
    assert device.recv_raw() == encode(Msg.OUTPUT, 0, b"hi") == b"\x93\x0b\x00\xc4\x02hi"


def test_received_bytes_do_not_change_with_the_next_message(pair):
    # The channel receives into one buffer for its whole life: what it returns must be a copy.
    core, device = pair
    core.send_raw(b"first")
    first = device.recv_raw()
    core.send_raw(b"SECOND")
    assert device.recv_raw() == b"SECOND"
    assert first == b"first" and type(first) is bytes


def test_recv_timeout_with_nothing_pending(pair):
    core, device = pair
    with pytest.raises(TimeoutError):
        device.recv(timeout=0)
    with pytest.raises(TimeoutError):
        device.recv_raw(timeout=0.001)


def test_recv_checks_every_message(pair):
    core, device = pair
    core.send_raw(b"\xc1")
    with pytest.raises(ProtocolError, match=r"^not a msgpack message \("):
        device.recv(0)
    core.send(99, 1)
    with pytest.raises(ProtocolError, match=r"^unknown message type 99$"):
        device.recv(0)
    core.send(Msg.READ, 1, 0, 0, 3)
    with pytest.raises(ProtocolError, match=r"^READ field 4 is invalid \(int\)$"):
        device.recv(0)
    core.send(Msg.RESET)
    with pytest.raises(ProtocolError, match=r"^RESET has 0 fields, expected 1$"):
        device.recv(0)
    # A refused message is consumed; the channel goes on with the next one.
    core.send(Msg.RESET, 2)
    assert device.recv(0) == [Msg.RESET, 2]


# -- oversized messages ----------------------------------------------------------------------


def test_largest_message_passes(pair):
    core, device = pair
    payload = b"\x5a" * (MAX_MESSAGE_BYTES - 8)
    raw = encode(Msg.REPLY, 1, payload)
    assert len(raw) == MAX_MESSAGE_BYTES
    core.send_raw(raw)
    assert device.recv(0) == [Msg.REPLY, 1, payload]


@pytest.mark.parametrize("size", [MAX_MESSAGE_BYTES + 1, MAX_MESSAGE_BYTES + 2, 2 * MAX_MESSAGE_BYTES])
def test_oversized_message_is_refused_and_consumed(pair, size):
    # One byte over fits the receive buffer (checked by size); more is cut by the kernel (MSG_TRUNC).
    core, device = pair
    core.send_raw(b"\x00" * size)
    core.send(Msg.RESET, 7)
    with pytest.raises(ProtocolError) as info:
        device.recv_raw(0)
    assert str(info.value) == TOO_BIG
    assert device.recv(0) == [Msg.RESET, 7]  # the rest of the big one is not read as a message


def test_oversized_message_is_refused_by_recv(pair):
    core, device = pair
    core.send_raw(encode(Msg.REPLY, 1, b"\x00" * MAX_MESSAGE_BYTES))
    with pytest.raises(ProtocolError, match=TOO_BIG):
        device.recv(0)


# -- peer hang-up --------------------------------------------------------------------------------


@pytest.mark.parametrize("receive", [
    lambda ch: ch.recv(),
    lambda ch: ch.recv(timeout=0),  # end-of-file makes the socket readable: no wait
    lambda ch: ch.recv_raw(),
    lambda ch: ch.recv_with_fds(),
], ids=["recv", "recv-timeout", "recv_raw", "recv_with_fds"])
def test_peer_hang_up_is_channel_closed(pair, receive):
    core, device = pair
    device.close()
    with pytest.raises(ChannelClosed):
        receive(core)
    with pytest.raises(ChannelClosed):
        receive(core)  # and stays so


def test_messages_sent_before_hang_up_still_arrive(pair):
    core, device = pair
    device.send(Msg.OUTPUT, 0, b"last words")
    device.send(Msg.EXITED, 1, 0)
    device.close()
    assert core.recv(0) == [Msg.OUTPUT, 0, b"last words"]
    assert core.recv(0) == [Msg.EXITED, 1, 0]
    with pytest.raises(ChannelClosed):
        core.recv(0)


@pytest.mark.parametrize("send", [
    lambda ch: ch.send(Msg.SHUTDOWN),
    lambda ch: ch.send_raw(b"\x91\x0a"),
    lambda ch: ch.send_with_fds([ch.fileno()], Msg.SHUTDOWN),
], ids=["send", "send_raw", "send_with_fds"])
def test_send_to_a_gone_peer_is_channel_closed(pair, send):
    core, device = pair
    device.close()
    with pytest.raises(ChannelClosed):
        send(core)


def test_dead_process_shows_as_end_of_file():
    core, theirs = channel_pair()
    pid = os.fork()
    if pid == 0:  # the device: answer one message on the inherited end, then die
        code = 1
        try:
            device = Channel.from_fd(theirs.fileno())
            msg = device.recv(5)
            device.send(Msg.REPLY, msg[1], os.getpid())
            code = 0
        finally:
            os._exit(code)
    theirs.close()
    try:
        core.send(Msg.RESET, 41)
        assert core.recv(5) == [Msg.REPLY, 41, pid]
        with pytest.raises(ChannelClosed):
            core.recv(5)
    finally:
        _, status = os.waitpid(pid, 0)
        core.close()
    assert os.waitstatus_to_exitcode(status) == 0


def test_own_closed_channel_reads_as_closed(pair):
    core, _ = pair
    core.close()
    with pytest.raises(ChannelClosed):
        core.recv()


def test_own_closed_channel_reads_as_closed_with_a_timeout(pair):
    # recv() promises TimeoutError, ChannelClosed or ProtocolError, timeout or not.
    core, _ = pair
    core.close()
    with pytest.raises(ChannelClosed):
        core.recv(timeout=1)
