"""Device models as their processes host them: windows, events, state.

``build(kind, params, fds, post)`` turns a device kind into what the device
server loop serves. The models are the same classes the core runs in-process
(--devices inproc); only their callbacks change: an interrupt or console byte
becomes an event posted to the core.
"""
from __future__ import annotations

import importlib
import os
import time
from typing import Callable

from vmboot.ipc.fastpath import Mirror
from vmboot.ipc.protocol import Msg, ProtocolError

Post = Callable[..., None]

KINDS = ("rtc", "pmtimer", "serial", "debugcon", "virtio_blk")

OUTPUT_DELAY = 0.002  # seconds the first unsent console byte may wait for more
OUTPUT_BATCH = 4096  # bytes: sent at once when this many are waiting


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
        if self.pending:
            data = bytes(self.pending)
            self.pending.clear()
            self.post(Msg.OUTPUT, self.window, data)

    def deadline(self) -> float | None:
        return self.since + OUTPUT_DELAY if self.pending else None


class Hosted:
    def __init__(self, name: str, windows: dict, state=None, fast: list | None = None,
                 outputs: list[Output] = (), mirrors: list[tuple[Mirror, Callable[[], list | None]]] = ()):
        self.name = name
        self.windows = windows
        self.state = state  # a model with snapshot()/restore(), if the device has state worth keeping
        self.fast = (fast or []) + [m.describe() for m, _ in mirrors]
        self.mirrors = list(mirrors)  # each with the function that makes its copy for a reply
        self.outputs = list(outputs)  # console output waiting to be sent
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
        if kind is Msg.RESET:
            return None
        raise ProtocolError(f"{self.name} does not take {kind.name}")


class HostedSerial(Hosted):
    def handle(self, kind: Msg, fields: list):
        if kind is Msg.INPUT:
            taken = self.state.receive(fields[1])
            return taken
        return super().handle(kind, fields)


# Everything build() may import, for the zygote to import once before it forks.
MODULES = (
    "vmboot.devices.rtc.cmos", "vmboot.devices.pmtimer.pmtimer", "vmboot.ipc.fastpath",
    "vmboot.devices.serial.uart16550", "vmboot.devices.debugcon.debugcon", "vmboot.core.memory",
    "vmboot.core.pci.virtio_pci", "vmboot.devices.virtio.worker", "vmboot.devices.virtio_blk.blk",
)


def preload() -> None:
    for module in MODULES:
        importlib.import_module(module)


def build(kind: str, params: dict, fds: dict[str, int], post: Post) -> Hosted:
    if kind == "rtc":
        from vmboot.devices.rtc.cmos import CmosRtc
        rtc = CmosRtc(now_fn=time.time)
        return Hosted("rtc", {0: rtc}, state=rtc)
    if kind == "pmtimer":
        from vmboot.devices.pmtimer.pmtimer import PM_TIMER_REGISTER_SIZE, PmTimer
        from vmboot.ipc.fastpath import Counter
        timer = PmTimer(epoch=float(params["epoch"]))
        c = timer.counter()
        fast = Counter(0, 0, PM_TIMER_REGISTER_SIZE, c.frequency, c.epoch, c.width).describe()
        return Hosted("pmtimer", {0: timer}, fast=[fast])
    if kind == "serial":
        from vmboot.devices.serial.uart16550 import Uart16550
        from vmboot.devices.serial.uart16550 import LSR
        console = Output(post, 0)
        uart = Uart16550(tx=console.write, irq=lambda level: post(Msg.IRQ, 0, level))

        def line_status() -> list | None:
            value, invalidated_by = uart.line_status_copy()
            return None if value is None else [bytes((value,)), list(invalidated_by)]
        return HostedSerial("serial", {0: uart}, state=uart, outputs=[console],
                            mirrors=[(Mirror(0, LSR, 1), line_status)])
    if kind == "debugcon":
        from vmboot.devices.debugcon.debugcon import DebugCon, PostCodes
        log = Output(post, 0)
        return Hosted("debugcon", {0: DebugCon(log.write), 1: PostCodes()}, outputs=[log])
    if kind == "virtio_blk":
        return build_virtio_blk(params, fds, post)
    raise ProtocolError(f"unknown device kind {kind!r}")


class HostedVirtio(Hosted):
    def __init__(self, name: str, device, worker, queue_setup):
        config = _ConfigWindow(device)
        super().__init__(name, {1: config})
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


def build_virtio_blk(params: dict, fds: dict[str, int], post: Post) -> Hosted:
    from vmboot.core.memory import GuestMemory
    from vmboot.core.pci.virtio_pci import QueueSetup
    from vmboot.devices.virtio.worker import QueueWorker
    from vmboot.devices.virtio_blk.blk import VirtioBlk

    memory = GuestMemory(int(params["memory_size"]), fd=fds["memory"])
    blk = VirtioBlk(fds["disk"], bool(params["readonly"]), serial=str(params["serial"]), name=str(params["name"]))

    def dma(gpa: int, length: int) -> None:
        # Posted before the worker signals the call eventfd, so the core learns
        # about the write before the guest hears about the completion.
        post(Msg.DMA, [[gpa, length]])

    kicks = [fds[f"kick{i}"] for i in range(blk.num_queues)]
    calls = [fds[f"call{i}"] for i in range(blk.num_queues)]
    worker = QueueWorker(blk, memory, kicks, calls, on_dma_write=dma if params.get("report_dma") else None)
    return HostedVirtio(str(params["name"]), blk, worker, QueueSetup)
