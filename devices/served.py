"""A device as it is served: its register windows, its state, its fast registers.

A kind's ``build`` (devices/registry.py) returns a :class:`Served`, and the
same object is served two ways: by the device process's loop (ipc/server.py,
through devices/process/), or straight from the core's bus (``--devices
inproc``), which uses only ``windows`` and ``input``. A virtio kind's build
returns its device model instead; :class:`ServedVirtio` serves it in a device
process, with the queue worker that walks its rings.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from vmboot.ipc.fastpath import Mirror
from vmboot.ipc.protocol import MAX_DATA_BYTES, Msg, ProtocolError

Post = Callable[..., None]

OUTPUT_DELAY = 0.002  # seconds the first unsent console byte may wait for more
OUTPUT_BATCH = 4096  # bytes: sent at once when this many are waiting
CONFIG_WINDOW = 1  # a virtio device's configuration space, as its process serves it


class Output:
    """A console's bytes on their way to the core, as OUTPUT events.

    A guest writes its console a byte at a time (Linux's 8250 console polls the
    line status before every one), and an event per byte would wake the core
    as often. So bytes wait: they go at the end of a line, at OUTPUT_BATCH bytes,
    or once the first of them has waited OUTPUT_DELAY (a prompt, an echoed key).
    The device's loop calls ``flush_due`` and sleeps no longer than ``deadline``.
    """

    def __init__(self, post: Post, window: int, clock: Callable[[], float] = time.monotonic):
        self.post = post
        self.window = window
        self.clock = clock
        self.pending = bytearray()
        self.since = 0.0

    def write(self, data: bytes) -> None:
        if not self.pending:
            self.since = self.clock()
        self.pending += data
        if b"\n" in data or len(self.pending) >= OUTPUT_BATCH:
            self.flush()

    def flush(self) -> None:
        """Send what waits, in events no larger than the protocol carries."""
        data = bytes(self.pending)
        self.pending.clear()
        for start in range(0, len(data), MAX_DATA_BYTES):
            self.post(Msg.OUTPUT, self.window, data[start:start + MAX_DATA_BYTES])

    def deadline(self) -> float | None:
        return self.since + OUTPUT_DELAY if self.pending else None


class Served:
    """What ipc/server.py's loop serves, and the core's bus maps in-process."""

    def __init__(self, windows: dict, state=None, fast: list | None = None,
                 mirrors: list[tuple[Mirror, Callable[[], list | None]]] = (),
                 input: Callable[[bytes], int] | None = None):
        self.name = ""  # the core's name for it (HELLO), set by whoever serves it
        self.windows = windows  # window number -> model with read(offset, size) / write(offset, data)
        self.state = state  # a model with snapshot()/restore(), if the device has state worth keeping
        self.fast = (fast or []) + [m.describe() for m, _ in mirrors]
        self.mirrors = list(mirrors)  # each with the function that makes its copy for a reply
        self.input = input  # console input (INPUT), for a device that takes it
        self.outputs: list[Output] = []  # console output waiting to be sent (the process's host fills it)
        self.watch: dict[int, Callable[[], None]] = {}
        self._last_snapshot = None

    def info(self) -> dict:
        return {"fast": self.fast}

    def deadline(self) -> float | None:
        """When the loop must wake to send waiting output (time.monotonic), or None."""
        return min((d for d in (o.deadline() for o in self.outputs) if d is not None), default=None)

    def flush_due(self, now: float) -> None:
        for output in self.outputs:
            deadline = output.deadline()
            if deadline is not None and deadline <= now:
                output.flush()

    def flush(self) -> None:
        for output in self.outputs:
            output.flush()

    def after_write(self, post: Post) -> None:
        """After a guest write: if the device's state changed, send the core a snapshot."""
        if self.state is None:
            return
        snap = self.state.snapshot()
        if snap != self._last_snapshot:
            self._last_snapshot = snap
            post(Msg.SNAPSHOT, snap)

    def handle(self, kind: Msg, fields: list):
        if kind is Msg.SNAPSHOT and self.state is not None:
            return self.state.snapshot()
        if kind is Msg.RESTORE and self.state is not None:
            self.state.restore(fields[1])
            self._last_snapshot = self.state.snapshot()
            return None
        if kind is Msg.INPUT and self.input is not None:
            return self.input(fields[1])
        if kind is Msg.RESET:
            return None
        raise ProtocolError(f"{self.name} does not take {kind.name}")


class ServedVirtio(Served):
    """A virtio device model in its process: its configuration space, and its queues on a worker."""

    def __init__(self, device, worker, queue_setup):
        super().__init__({CONFIG_WINDOW: _ConfigWindow(device)})
        self.device = device
        self.worker = worker
        self.queue_setup = queue_setup  # imported before the sandbox, like everything
        for index, fd in enumerate(worker.kick_fds):
            self.watch[fd] = self._kick(index, fd)

    def _kick(self, index: int, fd: int):
        def serve() -> None:
            try:
                os.eventfd_read(fd)
            except BlockingIOError:
                return
            self.worker.serve(index)
        return serve

    def info(self) -> dict:
        return {"fast": [], "features": self.device.features, "num_queues": self.device.num_queues,
                "queue_max_size": self.device.queue_max_size, "device_type": self.device.device_type}

    def handle(self, kind: Msg, fields: list):
        if kind is Msg.ACTIVATE:
            _, features, queues = fields
            self.worker.activate(features, [self.queue_setup(*q) for q in queues])
            return None
        if kind is Msg.RESET:
            self.worker.reset()
            return None
        return super().handle(kind, fields)


class _ConfigWindow:
    """Window 1 of a virtio device: its configuration space."""

    def __init__(self, device):
        self.device = device

    def read(self, offset: int, size: int) -> bytes:
        return self.device.config_read(offset, size)

    def write(self, offset: int, data: bytes) -> None:
        self.device.config_write(offset, data)
