"""The core's side of virtio devices: backends behind the transport, and interrupts.

``InprocBackend`` runs a device's queue worker in a thread of the core
(--devices inproc); ``ProcessBackend`` relays to a device process. The interrupt relay turns call-eventfd signals from any
device into MSI-X or INTx interrupts through the transport.
"""
from __future__ import annotations

import logging
import os
import select
import threading
import time

from vmboot.abi.errors import VmbootError
from vmboot.abi.virtio import QueueSetup
from vmboot.devices import registry
from vmboot.devices.registry import Attach, DeviceKind
from vmboot.devices.served import CONFIG_WINDOW
from vmboot.devices.virtio.worker import QueueWorker, new_eventfds
from vmboot.ipc.protocol import Msg
from vmboot.ipc.proxy import DeviceGone

from .acpi.dsdt import prt_gsi
from .disk import open_disk
from .pci.virtio_pci import BAR_SIZE, NOTIFY_OFF_MULTIPLIER, NOTIFY_OFFSET, VirtioPciDevice
from .platform import InprocHost
from .supervisor.device import DeviceConfig, DeviceProcess, Events
from .supervisor.supervisor import HELLO_TIMEOUT, Supervisor

log = logging.getLogger("vmboot.virtio")


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


class ProcessBackend:
    """A virtio device whose queues are served by a sandboxed process (vhost-user style).

    The process maps guest memory from the memfd, reads kicks from and signals
    calls to the eventfds created here; the core keeps the transport and only
    relays configuration reads, activation and reset over the channel. What the
    transport must know of the device (its features, its queue size) comes from
    the device's HELLO, checked by the supervisor against its kind.
    """

    def __init__(self, device: DeviceProcess):
        virtio = device.config.kind.virtio
        self.device_type = virtio.device_type
        self.num_queues = virtio.queues
        self.device = device
        self.kick_fds = [device.config.fds[f"kick{i}"] for i in range(self.num_queues)]
        self.call_fds = [device.config.fds[f"call{i}"] for i in range(self.num_queues)]
        self._config = device.proxy.window(CONFIG_WINDOW)
        if not device.started.wait(HELLO_TIMEOUT) or device.hello is None:
            raise VmbootError(f"device {device.name} did not start")
        self.features = device.hello.features
        self.queue_max_size = device.hello.queue_max_size

    def config_read(self, offset: int, size: int) -> bytes:
        return self._config.read(offset, size)

    def config_write(self, offset: int, data: bytes) -> None:
        self._config.write(offset, data)

    def activate(self, features: int, queues: list[QueueSetup]) -> None:
        self.device.proxy.call(Msg.ACTIVATE, features, [[q.index, q.size, q.desc, q.driver, q.device]
                                                        for q in queues])

    def reset(self) -> None:
        try:
            self.device.proxy.call(Msg.RESET)
        except DeviceGone:
            pass

    def close(self) -> None:
        for fd in self.kick_fds + self.call_fds:
            os.close(fd)


def process_backend(supervisor: Supervisor, memory, kind: DeviceKind, name: str, params: dict,
                    fds: dict[str, int], fsize: int, on_dma_write=None) -> ProcessBackend:
    """A device process of a virtio ``kind``, with guest memory, its own descriptors, and a kick and a
    call eventfd per queue; it reports its writes to guest memory to ``on_dma_write`` if given (the
    emulate backend must hear of them)."""
    fds = {"memory": memory.fd, **fds}
    for i in range(kind.virtio.queues):
        fds[f"kick{i}"], fds[f"call{i}"] = new_eventfds(2)
    params = dict(params, memory_size=memory.size, report_dma=on_dma_write is not None)
    events = Events(dma=on_dma_write) if on_dma_write is not None else Events()
    return ProcessBackend(supervisor.add(DeviceConfig(kind, name, params, events, fds, fsize)))


class InterruptRelay:
    """One thread that turns device call eventfds into guest interrupts, for the fds the CPU
    backend does not deliver itself (route(): KVM's irqfd takes the fd off this thread, unless
    ``kernel`` is false)."""

    def __init__(self, cpu, kernel: bool = True):
        self.cpu = cpu
        self.kernel = kernel
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._targets: dict[int, tuple[VirtioPciDevice, int]] = {}
        self._running = True
        self._epoll = select.epoll()
        self._epoll.register(self._wake, select.EPOLLIN)
        self._thread: threading.Thread | None = None

    def add(self, transport: VirtioPciDevice) -> None:
        for index, fd in enumerate(transport.backend.call_fds):
            self._targets[fd] = (transport, index)
            self._epoll.register(fd, select.EPOLLIN)

    # The InterruptRoutes of every transport (core/pci/virtio_pci.py).
    def route(self, fd: int, address: int, data: int) -> None:
        if self.kernel and self.cpu.route_msi(fd, address, data):
            self._epoll.modify(fd, 0)  # the kernel consumes it now: never wake for it

    def unroute(self, fd: int) -> None:
        if self.kernel:
            self.cpu.unroute_msi(fd)
        self._epoll.modify(fd, select.EPOLLIN)
        os.eventfd_write(self._wake, 1)  # a signal that came as the route went: look at it

    def start(self) -> None:
        if self._targets and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="irq-relay", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while self._running:
            for fd, _ in self._epoll.poll():
                if fd == self._wake:
                    os.eventfd_read(fd)
                    fds = list(self._targets)  # after unroute(): a signal may sit there unseen
                else:
                    fds = [fd]
                for ready in fds:
                    try:
                        os.eventfd_read(ready)
                    except BlockingIOError:
                        continue
                    transport, index = self._targets[ready]
                    transport.signal_queue(index)

    def close(self) -> None:
        self._running = False
        os.eventfd_write(self._wake, 1)
        if self._thread is not None:
            self._thread.join(2)
        self._epoll.close()
        os.close(self._wake)


class VirtioDevices:
    """The machine's virtio devices: disks now, network later."""

    def __init__(self, memory, platform, cpu, supervisor: Supervisor | None = None, kernel_eventfds: bool = True):
        """``kernel_eventfds``: let the CPU backend carry notifications and interrupts where it can
        (KVM's ioeventfd and irqfd); when false, every kick is an exit and every interrupt goes
        through the relay thread."""
        self.memory = memory
        self.platform = platform
        self.cpu = cpu
        self.supervisor = supervisor
        self.kernel_eventfds = kernel_eventfds
        self.relay = InterruptRelay(cpu, kernel_eventfds)
        self.transports: list[VirtioPciDevice] = []
        self.backends: list = []
        self.fds: list[int] = []
        self._mappings: dict[VirtioPciDevice, object] = {}

    def add_disk(self, spec, index: int) -> VirtioPciDevice:
        """A disk (--disk): a device of the kind the registry attaches per disk, which takes the
        parameters name, readonly and serial, and the descriptor "disk"."""
        fd = open_disk(spec)
        self.fds.append(fd)
        params = {"name": f"disk{index}", "readonly": spec.readonly, "serial": spec.id or f"vmboot-disk{index}"}
        size = os.lseek(fd, 0, os.SEEK_END)  # a file's or a block device's: the most the device may write
        return self._add(registry.kinds(Attach.DISK)[0], params["name"], params, {"disk": fd}, size)

    def _add(self, kind: DeviceKind, name: str, params: dict, fds: dict[str, int], fsize: int) -> VirtioPciDevice:
        if self.supervisor is None:
            host = InprocHost([], {}, time.time, time.monotonic, dma=self.cpu.dma_written)
            backend = InprocBackend(kind.build(params, fds, host), self.memory, on_dma_write=self.cpu.dma_written)
        else:
            dma = self.cpu.dma_written if self.cpu.name == "emulate" else None
            backend = process_backend(self.supervisor, self.memory, kind, name, params, fds, fsize, dma)
        self.backends.append(backend)
        slot = self.platform.pci.free_slot()
        transport = VirtioPciDevice(backend, name, kind.virtio.pci_class, msi=self.cpu,
                                    intx=self.cpu.irq_line(prt_gsi(slot, 0)), on_bar_moved=self._bar_moved,
                                    routes=self.relay)
        self.platform.pci.attach(slot, transport)
        self.relay.add(transport)
        self.transports.append(transport)
        return transport

    def _bar_moved(self, dev: VirtioPciDevice, address: int | None) -> None:
        old = self._mappings.pop(dev, None)
        with self.platform.lock:
            if old is not None:
                self.platform.mmio.unregister(old)
            if address is not None:
                self._mappings[dev] = self.platform.mmio.register(address, BAR_SIZE, dev, dev.name)
        previous = old.base if old is not None else None
        for i, fd in enumerate(dev.backend.kick_fds if self.kernel_eventfds else ()):
            offset = NOTIFY_OFFSET + i * NOTIFY_OFF_MULTIPLIER
            self.cpu.bind_ioeventfd(fd, None if address is None else address + offset,
                                    None if previous is None else previous + offset)
        log.debug("%s: BAR0 at %s", dev.name, f"{address:#x}" if address is not None else "nowhere")

    def start(self) -> None:
        self.relay.start()

    def stats(self) -> dict[str, str]:
        """The data path's work that reached the core's Python, per device (--stats)."""
        return {f"virtio {t.name}": f"{t.kicks} kicks through MMIO exits, {t.interrupts} interrupts sent by the core"
                for t in self.transports}

    def close(self) -> None:
        self.relay.close()
        for backend in self.backends:
            backend.close()
        for fd in self.fds:
            os.close(fd)
        self.fds = []
