"""A device served by ipc/server.py on a thread, over real channel pairs, for the ipc tests."""
from __future__ import annotations

import contextlib
import threading

from vmboot.ipc.channel import Channel, channel_pair
from vmboot.ipc.fastpath import Mirror
from vmboot.ipc.proxy import DeviceProxy
from vmboot.ipc.server import DeviceServer

JOIN_TIMEOUT = 5.0
LSR = Mirror(0, 5, 1)  # a 16550's line status, as the serial device declares it


class Registers:
    """A register file; a read of offset 0 pops a byte from ``fifo`` (a side effect)."""

    def __init__(self, initial: bytes = bytes(range(0x10, 0x18))):
        self.regs = bytearray(initial)
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
    """The core's ends of a device's two channels (``ctl``, ``evt``), and the device's."""

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


def request(link: Link, *fields, timeout: float = JOIN_TIMEOUT) -> list:
    """Send a request on the core's control channel; return the answer."""
    link.ctl.send(*fields)
    return link.ctl.recv(timeout)


@contextlib.contextmanager
def serving(served_for):
    """A DeviceServer on a thread; yields (link, server, thread). ``served_for(post)`` makes what
    it serves (devices/served.py), given the event channel's send. On the way out the core hangs
    up, which must end the loop, and whatever the loop raised fails the test."""
    link = Link()
    served = served_for(link.dev_evt.send)
    server = DeviceServer(link.dev_ctl, link.dev_evt, served)
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
        link.close()
        assert not alive, "the server did not stop when the core hung up"
        assert errors == []


class HeldFlusher:
    """A proxy's flusher that holds its posted writes until the test calls ``run()``
    (ipc/batch.py's Flusher sends them a millisecond after the first)."""

    def __init__(self):
        self.scheduled: list = []

    def schedule(self, target) -> None:
        self.scheduled.append(target)

    def run(self) -> None:
        scheduled, self.scheduled = self.scheduled, []
        for target in scheduled:
            target.flush_held()


class ProxyLink:
    """A proxy attached to a channel whose device end the test plays; its posted writes wait
    for ``flush()``."""

    def __init__(self, counters=(), mirrors=(), name="dev"):
        self.ctl, theirs = channel_pair()
        self.dev = Channel(theirs)
        self.flusher = HeldFlusher()
        self.proxy = DeviceProxy(name, flusher=self.flusher)
        self.proxy.attach(self.ctl, list(counters), list(mirrors))

    def reply(self, *fields) -> None:
        """Queue what the device will answer next."""
        self.dev.send(*fields)

    def flush(self) -> None:
        """What the flusher's thread does a millisecond after the first waiting write."""
        self.flusher.run()

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
