"""A fake device and a guest driver's register helpers for the virtio-pci tests (core/pci/test_virtio_pci*.py).

The helpers program the transport as a driver does (VIRTIO 1.2 §3.1.1, driver
initialization, through the common configuration structure of §4.1.4.3); the
fake device records what the transport asks of it."""
from __future__ import annotations

import os

from vmboot.abi.virtio import (
    COMMON_DEVICE_STATUS, COMMON_DRIVER_FEATURE, COMMON_DRIVER_FEATURE_SELECT, COMMON_QUEUE_DESC, COMMON_QUEUE_DEVICE,
    COMMON_QUEUE_DRIVER, COMMON_QUEUE_ENABLE, COMMON_QUEUE_MSIX_VECTOR, COMMON_QUEUE_SELECT, COMMON_QUEUE_SIZE,
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK,
    VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_MSI_NO_VECTOR, VIRTIO_RING_F_INDIRECT_DESC,
)

PCI_MSIX_FLAGS_ENABLE = 1 << 15  # PCI 3.0 §6.8.2.3 Message Control
PCI_MSIX_FLAGS_MASKALL = 1 << 14
MSIX_CAP = 0x84  # where test_virtio_pci.py's capability walk finds it
OFFERED = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC | 1 << 9
S_ACK, S_DRIVER = VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER
S_FEATURES_OK, S_DRIVER_OK = VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_DRIVER_OK


class FakeBackend:
    device_type = VIRTIO_ID_BLOCK
    num_queues = 2
    queue_max_size = 256
    features = OFFERED

    def __init__(self):
        self.kick_fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(self.num_queues)]
        self.call_fds = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(self.num_queues)]
        self.config = bytearray(range(64))
        self.calls: list = []

    def config_read(self, offset, size):
        return bytes(self.config[offset : offset + size])

    def config_write(self, offset, data):
        self.calls.append(("config_write", offset, bytes(data)))

    def activate(self, features, queues):
        self.calls.append(("activate", features, queues))

    def reset(self):
        self.calls.append(("reset",))

    def kicked(self, index: int) -> int:
        try:
            return os.eventfd_read(self.kick_fds[index])
        except BlockingIOError:
            return 0

    def close(self):
        for fd in self.kick_fds + self.call_fds:
            os.close(fd)


class Machine:
    """What the transport is wired to: an MSI sink, an INTx line and the BAR mapper."""

    def __init__(self):
        self.msis: list[tuple[int, int]] = []
        self.intx: list[bool] = []
        self.moves: list[int | None] = []

    def msi(self, address, data):
        self.msis.append((address, data))


def cfg_read(dev, offset, size):
    return int.from_bytes(dev.config_read(offset, size), "little")


def cfg_write(dev, offset, size, value):
    dev.config_write(offset, value.to_bytes(size, "little"))


def bar_read(dev, offset, size):
    return int.from_bytes(dev.read(offset, size), "little")


def bar_write(dev, offset, size, value):
    dev.write(offset, value.to_bytes(size, "little"))


def negotiate(dev, features: int) -> int:
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK | S_DRIVER)
    for select in (0, 1):
        bar_write(dev, COMMON_DRIVER_FEATURE_SELECT, 4, select)
        bar_write(dev, COMMON_DRIVER_FEATURE, 4, features >> (32 * select) & 0xFFFFFFFF)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK)
    return bar_read(dev, COMMON_DEVICE_STATUS, 1)


def setup_queue(dev, index, size, desc, driver, device, vector=VIRTIO_MSI_NO_VECTOR):
    bar_write(dev, COMMON_QUEUE_SELECT, 2, index)
    bar_write(dev, COMMON_QUEUE_SIZE, 2, size)
    for off, addr in ((COMMON_QUEUE_DESC, desc), (COMMON_QUEUE_DRIVER, driver), (COMMON_QUEUE_DEVICE, device)):
        bar_write(dev, off, 4, addr & 0xFFFFFFFF)  # as Linux does: two 32-bit halves
        bar_write(dev, off + 4, 4, addr >> 32)
    bar_write(dev, COMMON_QUEUE_MSIX_VECTOR, 2, vector)
    bar_write(dev, COMMON_QUEUE_ENABLE, 2, 1)


def start(dev):
    negotiate(dev, 1 << VIRTIO_F_VERSION_1)
    setup_queue(dev, 0, 64, 0x10000, 0x11000, 0x12000, vector=0)
    setup_queue(dev, 1, 64, 0x20000, 0x21000, 0x22000, vector=1)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)
