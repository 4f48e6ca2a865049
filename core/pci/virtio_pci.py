"""The modern virtio-pci transport (VIRTIO 1.2 §4.1), in the core.

The core owns the transport: PCI configuration space, the BAR the guest
places, feature negotiation, the queue registers, and interrupt routing
through MSI-X (or INTx). The device behind it (virtio-blk, virtio-net) lives
elsewhere, in a thread or a sandboxed process, and only ever sees:
- ``activate(features, queues)`` when the driver sets DRIVER_OK, ``reset()``;
- its configuration space, by offset;
- a kick eventfd per queue, written here or by KVM's ioeventfd;
- a call eventfd per queue, which it signals and the core turns into an interrupt.

BAR0 layout (one 32-bit memory BAR, 32 KiB):
  0x0000 common configuration   0x1000 ISR status   0x2000 device configuration
  0x3000 notifications (4 bytes per queue)   0x4000 MSI-X table   0x5000 MSI-X PBA
"""
from __future__ import annotations

import logging
import os
import struct
import threading
from typing import Callable, Protocol

from vmboot.abi.virtio import (
    COMMON_CFG_SIZE, COMMON_CONFIG_GENERATION, COMMON_DEVICE_FEATURE, COMMON_DEVICE_FEATURE_SELECT,
    COMMON_DEVICE_STATUS, COMMON_DRIVER_FEATURE, COMMON_DRIVER_FEATURE_SELECT, COMMON_MSIX_CONFIG, COMMON_NUM_QUEUES,
    COMMON_QUEUE_DESC, COMMON_QUEUE_DEVICE, COMMON_QUEUE_DRIVER, COMMON_QUEUE_ENABLE, COMMON_QUEUE_MSIX_VECTOR,
    COMMON_QUEUE_NOTIFY_OFF, COMMON_QUEUE_SELECT, COMMON_QUEUE_SIZE, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_VERSION_1, VIRTIO_ISR_QUEUE, VIRTIO_MSI_NO_VECTOR, VIRTIO_PCI_CAP_COMMON_CFG,
    VIRTIO_PCI_CAP_DEVICE_CFG, VIRTIO_PCI_CAP_ISR_CFG, VIRTIO_PCI_CAP_NOTIFY_CFG, VIRTIO_PCI_DEVICE_ID_BASE,
    VIRTIO_PCI_SUBSYSTEM_ID_MIN, VIRTIO_PCI_VENDOR_ID, QueueSetup,
)

from .config_space import PCI_INTERRUPT_PIN, PCI_INTERRUPT_PIN_INTA, PciConfigSpace

log = logging.getLogger("vmboot.virtio_pci")

PCI_CAP_ID_VNDR = 0x09
PCI_CAP_ID_MSIX = 0x11
PCI_MSIX_FLAGS_ENABLE = 1 << 15
PCI_MSIX_FLAGS_MASKALL = 1 << 14
PCI_MSIX_ENTRY_SIZE = 16
PCI_MSIX_ENTRY_CTRL_MASKBIT = 1

BAR_INDEX = 0
BAR_SIZE = 0x8000
COMMON_OFFSET = 0x0000
ISR_OFFSET = 0x1000
DEVICE_CFG_OFFSET = 0x2000
NOTIFY_OFFSET = 0x3000
NOTIFY_OFF_MULTIPLIER = 4
MSIX_TABLE_OFFSET = 0x4000
MSIX_PBA_OFFSET = 0x5000
REGION_SIZE = 0x1000

VIRTIO_PCI_REVISION = 1


class VirtioBackend(Protocol):
    """The device behind the transport (in a thread, or a proxy to a process)."""

    device_type: int
    num_queues: int
    queue_max_size: int
    features: int
    kick_fds: list[int]
    call_fds: list[int]

    def config_read(self, offset: int, size: int) -> bytes: ...

    def config_write(self, offset: int, data: bytes) -> None: ...

    def activate(self, features: int, queues: list[QueueSetup]) -> None: ...

    def reset(self) -> None: ...


class InterruptSink(Protocol):
    def msi(self, address: int, data: int) -> None: ...


class InterruptRoutes(Protocol):
    """Who may deliver a queue's call eventfd as its MSI without us (KVM's irqfd)."""

    def route(self, fd: int, address: int, data: int) -> None: ...

    def unroute(self, fd: int) -> None: ...


class _Queue:
    def __init__(self, max_size: int):
        self.max_size = max_size
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.msix_vector = VIRTIO_MSI_NO_VECTOR
        self.enabled = False
        self.desc = self.driver = self.device = 0


class VirtioPciDevice:
    def __init__(self, backend: VirtioBackend, name: str, class_code: int, msi: InterruptSink,
                 intx: Callable[[bool], None], on_bar_moved: Callable[["VirtioPciDevice", int | None], None],
                 routes: InterruptRoutes | None = None):
        self.backend = backend
        self.routes = routes
        self._routed: dict[int, tuple[int, int]] = {}  # queue -> the MSI its call eventfd is routed to
        self.name = name
        self.msi_sink = msi
        self.intx = intx
        self.on_bar_moved = on_bar_moved
        self.lock = threading.RLock()
        self.config = PciConfigSpace(VIRTIO_PCI_VENDOR_ID, VIRTIO_PCI_DEVICE_ID_BASE + backend.device_type,
                                     class_code, revision=VIRTIO_PCI_REVISION,
                                     subsystem_vendor_id=VIRTIO_PCI_VENDOR_ID,
                                     subsystem_id=VIRTIO_PCI_SUBSYSTEM_ID_MIN)
        self.config.data[PCI_INTERRUPT_PIN] = PCI_INTERRUPT_PIN_INTA
        self.config.add_memory_bar(BAR_INDEX, BAR_SIZE)
        self._add_virtio_cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_OFFSET, COMMON_CFG_SIZE)
        self._add_virtio_cap(VIRTIO_PCI_CAP_NOTIFY_CFG, NOTIFY_OFFSET, NOTIFY_OFF_MULTIPLIER * backend.num_queues,
                             struct.pack("<I", NOTIFY_OFF_MULTIPLIER))
        self._add_virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1)
        self._add_virtio_cap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, REGION_SIZE)
        self.msix_vectors = backend.num_queues + 1
        self.msix_cap = self.config.add_capability(
            PCI_CAP_ID_MSIX,
            struct.pack("<HII", self.msix_vectors - 1, MSIX_TABLE_OFFSET | BAR_INDEX, MSIX_PBA_OFFSET | BAR_INDEX),
            writable=struct.pack("<H", PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL))
        self.config.on_change = self._bar_changed
        self.bar_address: int | None = None
        self.msix_table = bytearray(PCI_MSIX_ENTRY_SIZE * self.msix_vectors)
        for v in range(self.msix_vectors):
            self.msix_table[v * PCI_MSIX_ENTRY_SIZE + 12] = PCI_MSIX_ENTRY_CTRL_MASKBIT
        self.msix_pending = 0
        self.queues = [_Queue(backend.queue_max_size) for _ in range(backend.num_queues)]
        # The data path's work that reached this code (the core's Python) rather than the kernel:
        # notifications taken as MMIO exits, and queue interrupts sent from here (--stats).
        self.kicks = self.interrupts = 0
        self._reset_transport()

    def _add_virtio_cap(self, cfg_type: int, offset: int, length: int, extra: bytes = b"") -> None:
        # struct virtio_pci_cap (§4.1.4) after cap_vndr and cap_next: cap_len (of the whole
        # structure), cfg_type, bar, id, padding[2], offset, length
        body = struct.pack("<BBBB2xII", 16 + len(extra), cfg_type, BAR_INDEX, 0, offset, length) + extra
        self.config.add_capability(PCI_CAP_ID_VNDR, body)

    def _reset_transport(self) -> None:
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.msix_config = VIRTIO_MSI_NO_VECTOR
        self.status = 0
        self.config_generation = 0
        self.queue_select = 0
        self.isr = 0
        for q in self.queues:
            q.reset()

    # -- PCI configuration space (the PciFunction protocol) --------------------------------
    def config_read(self, offset: int, size: int) -> bytes:
        with self.lock:
            return self.config.read(offset, size)

    def config_write(self, offset: int, data: bytes) -> None:
        with self.lock:
            self.config.write(offset, data)
            control = self.msix_cap + 2  # Message Control: clearing Function Mask sends what is pending
            if offset < control + 2 and offset + len(data) > control:
                self._deliver_pending()
                self._update_routes()

    def _bar_changed(self) -> None:
        addr = self.config.bar_address(BAR_INDEX)
        if addr != self.bar_address:
            self.bar_address = addr
            self.on_bar_moved(self, addr)

    @property
    def msix_enabled(self) -> bool:
        return bool(self.config.get16(self.msix_cap + 2) & PCI_MSIX_FLAGS_ENABLE)

    @property
    def msix_masked(self) -> bool:
        return bool(self.config.get16(self.msix_cap + 2) & PCI_MSIX_FLAGS_MASKALL)

    # -- BAR0 (a device on the MMIO bus, seen by offset) -------------------------------------
    def read(self, offset: int, size: int) -> bytes:
        with self.lock:
            region, off = offset & ~(REGION_SIZE - 1), offset & (REGION_SIZE - 1)
            if region == COMMON_OFFSET:
                return self._common_read(off, size)
            if region == ISR_OFFSET:
                isr, self.isr = self.isr, 0  # reading ISR acknowledges the interrupt
                if isr:
                    self.intx(False)
                return bytes([isr]).ljust(size, b"\0")
            if region == DEVICE_CFG_OFFSET:
                return self.backend.config_read(off, size)
            if region == MSIX_TABLE_OFFSET and off + size <= len(self.msix_table):
                return bytes(self.msix_table[off : off + size])
            if region == MSIX_PBA_OFFSET and off < 8:
                return self.msix_pending.to_bytes(8, "little")[off : off + size].ljust(size, b"\0")
            return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        with self.lock:
            region, off = offset & ~(REGION_SIZE - 1), offset & (REGION_SIZE - 1)
            if region == COMMON_OFFSET:
                self._common_write(off, data)
            elif region == DEVICE_CFG_OFFSET:
                self.backend.config_write(off, data)
            elif region == NOTIFY_OFFSET:
                self.kick(off // NOTIFY_OFF_MULTIPLIER)
            elif region == MSIX_TABLE_OFFSET and off + len(data) <= len(self.msix_table):
                self.msix_table[off : off + len(data)] = data
                self._deliver_pending()
                self._update_routes()

    def kick(self, index: int) -> None:
        """The driver notified queue ``index`` (what KVM's ioeventfd does without us)."""
        self.kicks += 1
        if 0 <= index < len(self.queues) and self.status & VIRTIO_CONFIG_S_DRIVER_OK:
            os.eventfd_write(self.backend.kick_fds[index], 1)

    def _common_read(self, off: int, size: int) -> bytes:
        q = self.queues[self.queue_select] if self.queue_select < len(self.queues) else None
        fields = {
            COMMON_DEVICE_FEATURE_SELECT: (self.device_feature_select, 4),
            COMMON_DEVICE_FEATURE: ((self.backend.features >> (32 * self.device_feature_select)) & 0xFFFFFFFF
                                    if self.device_feature_select < 2 else 0, 4),
            COMMON_DRIVER_FEATURE_SELECT: (self.driver_feature_select, 4),
            COMMON_DRIVER_FEATURE: ((self.driver_features >> (32 * self.driver_feature_select)) & 0xFFFFFFFF
                                    if self.driver_feature_select < 2 else 0, 4),
            COMMON_MSIX_CONFIG: (self.msix_config, 2),
            COMMON_NUM_QUEUES: (len(self.queues), 2),
            COMMON_DEVICE_STATUS: (self.status, 1),
            COMMON_CONFIG_GENERATION: (self.config_generation, 1),
            COMMON_QUEUE_SELECT: (self.queue_select, 2),
            COMMON_QUEUE_SIZE: (q.size if q else 0, 2),
            COMMON_QUEUE_MSIX_VECTOR: (q.msix_vector if q else VIRTIO_MSI_NO_VECTOR, 2),
            COMMON_QUEUE_ENABLE: (int(q.enabled) if q else 0, 2),
            COMMON_QUEUE_NOTIFY_OFF: (self.queue_select if q else 0, 2),
            COMMON_QUEUE_DESC: (q.desc if q else 0, 8),
            COMMON_QUEUE_DRIVER: (q.driver if q else 0, 8),
            COMMON_QUEUE_DEVICE: (q.device if q else 0, 8),
        }
        for base, (value, width) in fields.items():
            if base <= off and off + size <= base + width:
                return value.to_bytes(width, "little")[off - base : off - base + size]
        return bytes(size)

    def _common_write(self, off: int, data: bytes) -> None:
        value = int.from_bytes(data, "little")
        q = self.queues[self.queue_select] if self.queue_select < len(self.queues) else None
        if off == COMMON_DEVICE_FEATURE_SELECT:
            self.device_feature_select = value
        elif off == COMMON_DRIVER_FEATURE_SELECT:
            self.driver_feature_select = value
        elif off == COMMON_DRIVER_FEATURE and self.driver_feature_select < 2 and not self.status & \
                VIRTIO_CONFIG_S_FEATURES_OK:
            shift = 32 * self.driver_feature_select
            self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)
        elif off == COMMON_MSIX_CONFIG:  # §4.1.5.1.2: a vector the device lacks reads back as NO_VECTOR
            self.msix_config = value if value < self.msix_vectors else VIRTIO_MSI_NO_VECTOR
        elif off == COMMON_DEVICE_STATUS:
            self._set_status(value)
            self._update_routes()
        elif off == COMMON_QUEUE_SELECT:
            self.queue_select = value
        elif q is None or self.status & VIRTIO_CONFIG_S_DRIVER_OK:
            return  # no such queue, or the queues are live and fixed
        elif off == COMMON_QUEUE_SIZE:
            if value and not value & (value - 1) and value <= q.max_size:
                q.size = value
        elif off == COMMON_QUEUE_MSIX_VECTOR:
            q.msix_vector = value if value < self.msix_vectors else VIRTIO_MSI_NO_VECTOR
            self._update_routes()
        elif off == COMMON_QUEUE_ENABLE:
            q.enabled = value == 1
        elif COMMON_QUEUE_DESC <= off < COMMON_QUEUE_DESC + 8:
            q.desc = _merge64(q.desc, off - COMMON_QUEUE_DESC, data)
        elif COMMON_QUEUE_DRIVER <= off < COMMON_QUEUE_DRIVER + 8:
            q.driver = _merge64(q.driver, off - COMMON_QUEUE_DRIVER, data)
        elif COMMON_QUEUE_DEVICE <= off < COMMON_QUEUE_DEVICE + 8:
            q.device = _merge64(q.device, off - COMMON_QUEUE_DEVICE, data)

    def _set_status(self, value: int) -> None:
        if value == 0:
            self.backend.reset()
            self._reset_transport()
            self.intx(False)
            return
        if value & VIRTIO_CONFIG_S_FEATURES_OK and not self.status & VIRTIO_CONFIG_S_FEATURES_OK:
            offered = self.backend.features
            if self.driver_features & ~offered or not self.driver_features >> VIRTIO_F_VERSION_1 & 1:
                log.info("%s: driver features %#x not accepted", self.name, self.driver_features)
                value &= ~VIRTIO_CONFIG_S_FEATURES_OK  # the driver reads FEATURES_OK back and gives up
        if value & VIRTIO_CONFIG_S_DRIVER_OK and not self.status & VIRTIO_CONFIG_S_DRIVER_OK:
            queues = [QueueSetup(i, q.size, q.desc, q.driver, q.device)
                      for i, q in enumerate(self.queues) if q.enabled]
            self.backend.activate(self.driver_features, queues)
        self.status = value

    # -- interrupts ---------------------------------------------------------------------------
    def signal_queue(self, index: int) -> None:
        """The device used buffers on queue ``index``: interrupt the driver."""
        with self.lock:
            if not 0 <= index < len(self.queues):
                return
            self.interrupts += 1
            if self.msix_enabled:
                self._send_msix(self.queues[index].msix_vector)
            else:
                self.isr |= VIRTIO_ISR_QUEUE
                self.intx(True)

    def _send_msix(self, vector: int) -> None:
        if vector >= self.msix_vectors:
            return
        entry = self.msix_table[vector * PCI_MSIX_ENTRY_SIZE:(vector + 1) * PCI_MSIX_ENTRY_SIZE]
        addr_lo, addr_hi, data, ctrl = struct.unpack("<IIII", entry)
        if self.msix_masked or ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT:
            self.msix_pending |= 1 << vector
            return
        self.msi_sink.msi(addr_hi << 32 | addr_lo, data)

    def _msix_target(self, vector: int) -> tuple[int, int] | None:
        """(address, data) of ``vector`` if a message to it would be sent now, else None."""
        if not self.msix_enabled or self.msix_masked or vector >= self.msix_vectors:
            return None
        entry = self.msix_table[vector * PCI_MSIX_ENTRY_SIZE:(vector + 1) * PCI_MSIX_ENTRY_SIZE]
        addr_lo, addr_hi, data, ctrl = struct.unpack("<IIII", entry)
        return None if ctrl & PCI_MSIX_ENTRY_CTRL_MASKBIT else (addr_hi << 32 | addr_lo, data)

    def _update_routes(self) -> None:
        """Keep each live queue's call eventfd routed to its MSI in the kernel, where the CPU backend can.

        While a vector is masked (or MSI-X is off) the route is removed, so that the device's
        signals reach signal_queue() and set the pending bit (PCI Local Bus 3.0, §6.8.2.9)."""
        if self.routes is None:
            return
        for index, q in enumerate(self.queues):
            live = self.status & VIRTIO_CONFIG_S_DRIVER_OK and q.enabled
            target = self._msix_target(q.msix_vector) if live else None
            if target == self._routed.get(index):
                continue
            fd = self.backend.call_fds[index]
            if target is None:
                del self._routed[index]
                self.routes.unroute(fd)
            else:
                self._routed[index] = target
                self.routes.route(fd, *target)

    def _deliver_pending(self) -> None:
        if not self.msix_enabled:
            return
        pending, self.msix_pending = self.msix_pending, 0
        for vector in range(self.msix_vectors):
            if pending >> vector & 1:
                self._send_msix(vector)


def _merge64(old: int, shift_bytes: int, data: bytes) -> int:
    raw = bytearray(old.to_bytes(8, "little"))
    raw[shift_bytes : shift_bytes + len(data)] = data
    return int.from_bytes(raw[:8], "little")
