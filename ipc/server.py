"""The device side of the protocol: one loop that serves a device.

It answers the core's requests on the control channel, posts events on the
event channel, and wakes for any extra descriptors the device watches (a
virtio device's kick eventfds). A request that fails to decode, or that the
device rejects, gets an ERROR reply and a log line; the loop goes on. A posted
write the device rejects gets an ERROR event instead: no call waits for it, and
an ERROR on the control channel would read as the refusal of the next request.
"""
from __future__ import annotations

import logging
import math
import select
import sys
import time
from typing import Callable, Protocol

from .channel import Channel, ChannelClosed
from .protocol import PROTOCOL_VERSION, SEQ, Msg, ProtocolError

log = logging.getLogger("vmboot.device")


class Served(Protocol):
    """What a device process serves (devices/served.py)."""

    name: str
    windows: dict  # window number -> model with read(offset, size) / write(offset, data)
    watch: dict[int, Callable[[], None]]  # extra fds to wake for
    mirrors: list  # (Mirror, a function returning its copy: [data, invalidating offsets] or None)

    def info(self) -> dict: ...

    def after_write(self, post: Callable[..., None]) -> None: ...  # a guest write is done: snapshot if changed

    def handle(self, kind: Msg, fields: list) -> object: ...

    def deadline(self) -> float | None: ...  # when waiting output must go (time.monotonic)

    def flush_due(self, now: float) -> None: ...

    def flush(self) -> None: ...


class DeviceServer:
    def __init__(self, ctl: Channel, evt: Channel, served: Served):
        self.ctl = ctl
        self.evt = evt
        self.served = served
        self.running = True
        self.rejected = 0

    def post(self, *fields) -> None:
        """Send an event to the core (posted)."""
        try:
            self.evt.send(*fields)
        except ChannelClosed:
            self.running = False

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.ctl.fileno(), select.POLLIN)
        for fd in self.served.watch:
            poller.register(fd, select.POLLIN)
        ctl = self.ctl.fileno()
        while self.running:
            deadline = self.served.deadline()
            timeout = None if deadline is None else max(0, math.ceil((deadline - time.monotonic()) * 1000))
            for fd, events in poller.poll(timeout):
                if fd == ctl:
                    self._serve_one()
                else:
                    self.served.watch[fd]()
            if deadline is not None:
                self.served.flush_due(time.monotonic())
        try:
            self.served.flush()  # what the guest wrote last, before SHUTDOWN
        except ChannelClosed:
            pass

    def _serve_one(self) -> None:
        try:
            msg = self.ctl.recv()
        except ChannelClosed:
            self.running = False  # the core is gone: so are we
            return
        except ProtocolError as err:
            self._reject(None, str(err))
            return
        kind, fields = msg[0], msg[1:]
        seq = fields[0] if kind not in (Msg.WRITE, Msg.WRITES, Msg.SHUTDOWN, Msg.HELLO) and fields else None
        if seq is not None and not SEQ(seq):  # SNAPSHOT's field is checked loosely: it is also an event's
            self._reject(None, f"{kind.name}: invalid sequence number")
            return
        try:
            if kind is Msg.READ:
                _, window, offset, size = fields
                self._reply(seq, self._window(window).read(offset, size))
            elif kind is Msg.WRITE:
                window, offset, data = fields
                self._window(window).write(offset, data)
                self.served.after_write(self.post)
            elif kind is Msg.WRITES:
                self._writes(fields[0])
            elif kind is Msg.SHUTDOWN:
                self.running = False
            elif kind in (Msg.RESET, Msg.SNAPSHOT, Msg.RESTORE, Msg.INPUT, Msg.ACTIVATE):
                self._reply(seq, self.served.handle(kind, fields))
            else:
                raise ProtocolError("not a request")
        except ChannelClosed:
            self.running = False
        except (ProtocolError, ValueError, KeyError, TypeError, IndexError, OSError) as err:
            if kind in (Msg.WRITE, Msg.WRITES):  # posted: no call waits, so the refusal is an event
                self._refuse_posted(f"{kind.name}: {err}")
            else:
                self._reject(seq, f"{kind.name}: {err}")

    def _writes(self, writes: list) -> None:
        """A batch of posted writes (ipc/batch.py), each as its own WRITE: one refused is
        refused alone, and the rest still happen, in order."""
        try:
            for window, offset, data in writes:
                try:
                    self._window(window).write(offset, data)
                except (ProtocolError, ValueError, KeyError, TypeError, IndexError, OSError) as err:
                    self._refuse_posted(f"WRITE: {err}")
        finally:
            self.served.after_write(self.post)

    def _reply(self, seq: int, payload) -> None:
        """A reply, with the copies of the device's mirrors as they are now (ipc/fastpath.py)."""
        if self.served.mirrors:
            self.ctl.send(Msg.REPLY, seq, payload, [copy() for _, copy in self.served.mirrors])
        else:
            self.ctl.send(Msg.REPLY, seq, payload)

    def _window(self, window: int):
        try:
            return self.served.windows[window]
        except KeyError:
            raise ProtocolError(f"no register window {window}") from None

    def _reject(self, seq: int | None, why: str) -> None:
        self.rejected += 1
        log.warning("%s: rejected a message: %s", self.served.name, why)
        try:
            self.ctl.send(Msg.ERROR, seq, why[:4096])
        except ChannelClosed:
            self.running = False

    def _refuse_posted(self, why: str) -> None:
        self.rejected += 1
        log.warning("%s: rejected a message: %s", self.served.name, why)
        self.post(Msg.ERROR, None, why[:4096])


def hello(ctl: Channel, info_for: Callable[[str, dict], dict]) -> tuple[str, dict]:
    """Answer the core's HELLO; returns the device name and parameters it sent."""
    msg = ctl.recv(timeout=30)
    if msg[0] is not Msg.HELLO or len(msg) != 4:
        raise ProtocolError("the core must speak first, with HELLO")
    _, version, name, params = msg
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"core speaks protocol {version}, this device {PROTOCOL_VERSION}")
    if type(name) is not str or type(params) is not dict:
        raise ProtocolError("malformed HELLO")
    ctl.send(Msg.HELLO, PROTOCOL_VERSION, info_for(name, params))
    return name, params


def log_to_stderr(name: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"vmboot-core: device {name}: %(message)s"))
    root = logging.getLogger("vmboot")
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if level != "warn" else "WARNING")
    root.propagate = False
