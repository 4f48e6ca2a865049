"""The core's side of virtio devices: backends behind the transport, and interrupts.

``InprocBackend`` runs a device's queue worker in a thread of the core
(--devices inproc). The interrupt relay turns call-eventfd signals from any
device into MSI-X or INTx interrupts through the transport.
"""
from __future__ import annotations

import logging
import os
import select
import threading

from vmboot.devices.virtio.worker import QueueWorker, new_eventfds
from vmboot.ipc.protocol import Msg
from vmboot.ipc.proxy import DeviceGone

from .pci.virtio_pci import QueueSetup, VirtioPciDevice

log = logging.getLogger("vmboot.virtio")

CONFIG_WINDOW = 1  # a virtio device process's configuration space


class InprocBackend:
    """A virtio device whose queues are served by a thread of the core."""

    def __init__(self, device, memory, on_dma_write=None):
        self.device = device
        self.device_type = device.device_type
        self.num_queues = device.num_queues
        self.queue_max_size = device.queue_max_size
        self.features = device.features
        self.kick_fds = new_eventfds(self.num_queues)
        self.call_fds = new_eventfds(self.num_queues)
        self.worker = QueueWorker(device, memory, self.kick_fds, self.call_fds, on_dma_write)
        self.thread = threading.Thread(target=self.worker.run, name=f"{device.name}", daemon=True)
        self.thread.start()

    def config_read(self, offset: int, size: int) -> bytes:
        return self.device.config_read(offset, size)

    def config_write(self, offset: int, data: bytes) -> None:
        self.device.config_write(offset, data)

    def activate(self, features: int, queues: list[QueueSetup]) -> None:
        self.worker.activate(features, queues)

    def reset(self) -> None:
        self.worker.reset()

    def close(self) -> None:
        self.worker.stop()
        self.thread.join(2)
        self.worker.close()
        for fd in self.kick_fds + self.call_fds:
            os.close(fd)


class SidecarBackend:
    """A virtio device whose queues are served by a sandboxed process (vhost-user style).

    The process maps guest memory from the memfd, reads kicks from and signals
    calls to the eventfds created here; the core keeps the transport and only
    relays configuration reads, activation and reset over the channel.
    """

    def __init__(self, description, sidecar):
        self.device_type = description.device_type
        self.num_queues = description.num_queues
        self.queue_max_size = description.queue_max_size
        self.features = description.features
        self.sidecar = sidecar
        self.kick_fds = [sidecar.fds[f"kick{i}"] for i in range(self.num_queues)]
        self.call_fds = [sidecar.fds[f"call{i}"] for i in range(self.num_queues)]
        self._config = sidecar.proxy.window(CONFIG_WINDOW)

    def config_read(self, offset: int, size: int) -> bytes:
        return self._config.read(offset, size)

    def config_write(self, offset: int, data: bytes) -> None:
        self._config.write(offset, data)

    def activate(self, features: int, queues: list[QueueSetup]) -> None:
        self.sidecar.proxy.call(Msg.ACTIVATE, features, [[q.index, q.size, q.desc, q.driver, q.device]
                                                         for q in queues])

    def reset(self) -> None:
        try:
            self.sidecar.proxy.call(Msg.RESET)
        except DeviceGone:
            pass

    def close(self) -> None:
        for fd in self.kick_fds + self.call_fds:
            os.close(fd)


def sidecar_disk(sidecars, memory, blk, fd: int, serial: str, on_dma_write=None) -> SidecarBackend:
    """A virtio-blk device process for the disk ``fd``, described by ``blk`` (the same model,
    which the process builds again from these parameters); it reports its writes to guest
    memory to ``on_dma_write`` if given (the emulate backend must hear of them)."""
    from .sidecar import Events, Sidecar

    fds = {"memory": memory.fd, "disk": fd}
    for i in range(blk.num_queues):
        fds[f"kick{i}"], fds[f"call{i}"] = new_eventfds(2)
    params = {"name": blk.name, "memory_size": memory.size, "readonly": blk.readonly,
              "serial": serial, "report_dma": on_dma_write is not None}
    events = Events(dma=on_dma_write) if on_dma_write is not None else Events()
    sidecar = sidecars.add(Sidecar("virtio_blk", blk.name, params, "never", events, fds=fds, fsize=blk.size))
    return SidecarBackend(blk, sidecar)


class InterruptRelay:
    """One thread that turns device call eventfds into guest interrupts."""

    def __init__(self):
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._targets: dict[int, tuple[VirtioPciDevice, int]] = {}
        self._running = True
        self._poller = select.poll()
        self._poller.register(self._wake, select.POLLIN)
        self._thread: threading.Thread | None = None

    def add(self, transport: VirtioPciDevice) -> None:
        for index, fd in enumerate(transport.backend.call_fds):
            self._targets[fd] = (transport, index)
            self._poller.register(fd, select.POLLIN)

    def start(self) -> None:
        if self._targets and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="irq-relay", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while self._running:
            for fd, _ in self._poller.poll():
                try:
                    os.eventfd_read(fd)
                except BlockingIOError:
                    continue
                if fd == self._wake:
                    continue
                transport, index = self._targets[fd]
                transport.signal_queue(index)

    def close(self) -> None:
        self._running = False
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join(2)
        os.close(self._wake)


class VirtioDevices:
    """The machine's virtio devices: disks now, network later."""

    def __init__(self, memory, platform, cpu, sidecars=None):
        self.memory = memory
        self.platform = platform
        self.cpu = cpu
        self.sidecars = sidecars
        self.relay = InterruptRelay()
        self.backends: list = []
        self.fds: list[int] = []
        self._mappings: dict[VirtioPciDevice, object] = {}

    def add_disk(self, spec, index: int) -> VirtioPciDevice:
        from vmboot.devices.virtio_blk.blk import VirtioBlk

        from .acpi.dsdt import prt_gsi
        from .disk import open_disk
        from .pci.virtio_pci import PCI_CLASS_STORAGE_SCSI

        fd = open_disk(spec)
        self.fds.append(fd)
        name = f"disk{index}"
        serial = spec.id or f"vmboot-disk{index}"
        blk = VirtioBlk(fd, spec.readonly, serial=serial, name=name)
        if self.sidecars is None:
            backend = InprocBackend(blk, self.memory, on_dma_write=self.cpu.dma_written)
        else:
            dma = self.cpu.dma_written if self.cpu.name == "emulate" else None
            backend = sidecar_disk(self.sidecars, self.memory, blk, fd, serial, dma)
        self.backends.append(backend)
        slot = self.platform.pci.free_slot()
        transport = VirtioPciDevice(backend, name, PCI_CLASS_STORAGE_SCSI, msi=self.cpu,
                                    intx=self.cpu.irq_line(prt_gsi(slot, 0)), on_bar_moved=self._bar_moved)
        self.platform.pci.attach(slot, transport)
        self.relay.add(transport)
        return transport

    def _bar_moved(self, dev: VirtioPciDevice, address: int | None) -> None:
        from .pci.virtio_pci import BAR_SIZE, NOTIFY_OFF_MULTIPLIER, NOTIFY_OFFSET

        old = self._mappings.pop(dev, None)
        with self.platform.lock:
            if old is not None:
                self.platform.mmio.unregister(old)
            if address is not None:
                self._mappings[dev] = self.platform.mmio.register(address, BAR_SIZE, dev, dev.name)
        previous = old.base if old is not None else None
        for i, fd in enumerate(dev.backend.kick_fds):
            offset = NOTIFY_OFFSET + i * NOTIFY_OFF_MULTIPLIER
            self.cpu.bind_ioeventfd(fd, None if address is None else address + offset,
                                    None if previous is None else previous + offset)
        log.debug("%s: BAR0 at %s", dev.name, f"{address:#x}" if address is not None else "nowhere")

    def start(self) -> None:
        self.relay.start()

    def close(self) -> None:
        self.relay.close()
        for backend in self.backends:
            backend.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []
