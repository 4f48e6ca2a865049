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

from vmboot.ipc.protocol import Msg, ProtocolError

Post = Callable[..., None]

KINDS = ("rtc", "pmtimer", "serial", "debugcon", "virtio_blk")


class Hosted:
    def __init__(self, name: str, windows: dict, state=None, fast: list | None = None):
        self.name = name
        self.windows = windows
        self.state = state  # a model with snapshot()/restore(), if the device has state worth keeping
        self.fast = fast or []
        self.watch: dict[int, Callable[[], None]] = {}
        self._last_snapshot = None

    def info(self) -> dict:
        return {"fast": self.fast}

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
        uart = Uart16550(tx=lambda data: post(Msg.OUTPUT, 0, data), irq=lambda level: post(Msg.IRQ, 0, level))
        return HostedSerial("serial", {0: uart}, state=uart)
    if kind == "debugcon":
        from vmboot.devices.debugcon.debugcon import DebugCon, PostCodes
        return Hosted("debugcon", {0: DebugCon(lambda data: post(Msg.OUTPUT, 0, data)), 1: PostCodes()})
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
