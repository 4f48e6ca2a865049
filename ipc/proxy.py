"""The core's handle on a device process.

``DeviceProxy.window(n)`` is a bus device with the same read/write contract as
an in-process model. Writes are posted, in batches (ipc/batch.py). Reads are
synchronous, after every write before them (the batch goes first, and the
channel keeps order), except reads the device lets the
core answer itself (ipc/fastpath.py): a counter, or a mirror's copy from the
device's last reply. If the device dies mid-call, the call waits for the
supervisor to restart it and then tries once more; a device that stays dead
answers all ones. A device that does not answer within CALL_TIMEOUT is hung:
the proxy tells the supervisor (``on_hang``), which kills it, and the death is
handled as any other.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import Callable

from .batch import FLUSHER, HOLD_AGE, MAX_BATCH, Flusher
from .channel import Channel, ChannelClosed
from .fastpath import Copy, Counter, Mirror, parse_copies
from .protocol import MAX_BATCHED_BYTES, Msg, ProtocolError

log = logging.getLogger("vmboot.ipc")

CALL_TIMEOUT = 10.0  # seconds; a healthy device answers in microseconds
RESTART_WAIT = 10.0


class DeviceGone(Exception):
    """The device is dead and will not be back."""


class DeviceProxy:
    def __init__(self, name: str, flusher: Flusher = FLUSHER):
        self.name = name
        self.flusher = flusher
        self._waiting: list[list] = []  # posted writes held: [window, offset, data]
        self._held_since = 0.0  # when the first of them was written
        self.polling = False  # the guest's last access was a read answered in the core
        self.lock = threading.RLock()
        self.ctl: Channel | None = None
        self.counters: list[Counter] = []
        self.mirrors: list[Mirror] = []
        self.copies: dict[tuple[int, int, int], Copy] = {}  # (window, offset, size) -> the mirror's copy
        self._seq = itertools.count(1)
        self._alive = threading.Condition(self.lock)
        self.generation = 0  # bumps at every (re)start
        self.dead_for_good = False
        self.stats = {"calls": 0, "posted": 0, "batches": 0, "fast": 0}
        self.on_hang: Callable[[], None] | None = None  # set by the supervisor: kill the hung device

    # -- wiring (by the supervisor) ---------------------------------------------------
    def attach(self, ctl: Channel, counters: list[Counter], mirrors: list[Mirror] = ()) -> None:
        with self.lock:
            self.ctl = ctl
            self.counters = counters
            self.mirrors = list(mirrors)
            self.copies = {}
            self.generation += 1
            self._alive.notify_all()

    def detach(self, for_good: bool) -> None:
        with self.lock:
            self.ctl = None
            self._waiting = []  # writes to a dead device are lost, as on a bus with nothing there
            self.copies = {}
            self.dead_for_good = for_good
            self._alive.notify_all()

    def _channel(self) -> Channel:
        """The live channel, waiting for a restart if the device is between lives."""
        if self.ctl is None:
            if not self.dead_for_good:
                self._alive.wait_for(lambda: self.ctl is not None or self.dead_for_good, RESTART_WAIT)
            if self.ctl is None:
                raise DeviceGone(self.name)
        return self.ctl

    # -- requests --------------------------------------------------------------------------------
    def call(self, kind: Msg, *fields):
        """A request and its reply. Retries once across a restart."""
        with self.lock:
            for attempt in (1, 2):
                ctl = self._channel()
                seq = next(self._seq) & 0xFFFFFFFF
                self.copies = {}  # a request may change what they mirror
                self.polling = False
                try:
                    self._send_waiting(ctl)
                    ctl.send(kind, seq, *fields)
                    while True:
                        msg = ctl.recv(CALL_TIMEOUT)
                        if msg[0] is Msg.REPLY and msg[1] == seq:
                            self.stats["calls"] += 1
                            if self.mirrors:
                                self._keep_copies(msg)
                            return msg[2]
                        if msg[0] is Msg.ERROR and msg[1] in (seq, None):
                            raise ProtocolError(f"device {self.name} refused {kind.name}: {msg[2]}")
                        log.debug("%s: stray %s on the control channel", self.name, msg[0].name)
                except (ChannelClosed, TimeoutError) as err:
                    if ctl is self.ctl:
                        self.ctl = None  # the supervisor will attach a new one, or give up
                        if isinstance(err, TimeoutError) and self.on_hang is not None:
                            self.on_hang()  # alive but not answering: only its death ends the wait
                    if attempt == 2:
                        raise DeviceGone(self.name) from None

    def _keep_copies(self, reply: list) -> None:
        try:
            copies = parse_copies(self.mirrors, reply[3] if len(reply) > 3 else None)
        except ProtocolError as err:
            log.warning("device %s: %s", self.name, err)
            return
        self.copies = {(m.window, m.offset, m.size): c for m, c in zip(self.mirrors, copies) if c is not None}

    def write(self, window: int, offset: int, data: bytes) -> None:
        """A posted register write; it ends the copies it may change, in the same step. It waits
        while the guest is polling the device (ipc/batch.py), else goes at once."""
        with self.lock:
            if self.copies:
                self.copies = {key: c for key, c in self.copies.items()
                               if key[0] != window or not c.ended_by(offset, len(data))}
            polling, self.polling = self.polling, False
            if len(data) > MAX_BATCHED_BYTES:
                self.post(Msg.WRITE, window, offset, data)
                return
            self._waiting.append([window, offset, data])
            if polling and len(self._waiting) < MAX_BATCH:
                now = time.monotonic()  # only for a write that may be held
                if len(self._waiting) == 1:
                    self._held_since = now
                    self.flusher.schedule(self)
                    return
                if now - self._held_since < HOLD_AGE:
                    return
            self.flush()

    def post(self, kind: Msg, *fields) -> None:
        """A posted message, after the writes waiting before it."""
        with self.lock:
            try:
                ctl = self._channel()
                self._send_waiting(ctl)
                ctl.send(kind, *fields)
                if kind is Msg.WRITE:
                    self.stats["posted"] += 1
            except (ChannelClosed, DeviceGone):
                self._waiting = []  # posted to a dead device: lost, as on a bus with nothing there

    def flush(self) -> None:
        """Send the held writes now, waiting for the device's first start (or a restart), as
        a posted message does."""
        with self.lock:
            try:
                self._send_waiting(self._channel())
            except (ChannelClosed, DeviceGone):
                self._waiting = []

    def flush_held(self) -> None:
        """The Flusher's turn: send the held writes if the device is up; between two of its
        lives, keep them for the next (as a posted write waits for the restart) and look again."""
        with self.lock:
            if self.ctl is None and not self.dead_for_good:
                if self._waiting:
                    self.flusher.schedule(self)
                return
            self.flush()

    def _send_waiting(self, ctl: Channel) -> None:
        """The waiting writes, as one message (a WRITE when there is one); they are gone from
        here whether or not the send works."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, []
        if len(waiting) == 1:
            ctl.send(Msg.WRITE, *waiting[0])
        else:
            ctl.send(Msg.WRITES, waiting)
        self.stats["posted"] += len(waiting)
        self.stats["batches"] += 1

    def window(self, index: int) -> "WindowProxy":
        return WindowProxy(self, index)


class WindowProxy:
    """One register window of a device process, as the bus sees it."""

    def __init__(self, proxy: DeviceProxy, index: int):
        self.proxy = proxy
        self.index = index

    def read(self, offset: int, size: int) -> bytes:
        proxy = self.proxy
        copy = proxy.copies.get((self.index, offset, size))
        if copy is not None:
            proxy.stats["fast"] += 1
            proxy.polling = True
            return copy.data
        for counter in proxy.counters:
            if counter.window == self.index:
                data = counter.read(offset, size)
                if data is not None:
                    proxy.stats["fast"] += 1
                    proxy.polling = True
                    return data
        try:
            data = self.proxy.call(Msg.READ, self.index, offset, size)
        except (DeviceGone, ProtocolError) as err:
            log.debug("%s", err)
            return b"\xff" * size
        if type(data) is not bytes or len(data) != size:
            log.warning("device %s answered a %d-byte read with %r", self.proxy.name, size, type(data).__name__)
            return b"\xff" * size
        return data

    def write(self, offset: int, data: bytes) -> None:
        self.proxy.write(self.index, offset, bytes(data))
