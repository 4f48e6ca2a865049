"""The virtio-pci transport's virtqueues as a guest driver sees them: set-up, activation, reset, notifications.

The queue registers of the common configuration structure, DRIVER_OK and reset
(§2.4, §3.1.1), the device-specific configuration region (§4.1.4.6) and the
notification region (§4.1.4.4). The device behind it is a fake that records
what the transport asks of it (tests/virtio_pci_rig.py)."""
from __future__ import annotations

import pytest

from vmboot.abi.virtio import (
    COMMON_DEVICE_STATUS, COMMON_MSIX_CONFIG, COMMON_QUEUE_DESC, COMMON_QUEUE_DEVICE, COMMON_QUEUE_DRIVER,
    COMMON_QUEUE_ENABLE, COMMON_QUEUE_MSIX_VECTOR, COMMON_QUEUE_NOTIFY_OFF, COMMON_QUEUE_SELECT, COMMON_QUEUE_SIZE,
    VIRTIO_F_VERSION_1, VIRTIO_MSI_NO_VECTOR, QueueSetup,
)
from vmboot.core.pci.virtio_pci import DEVICE_CFG_OFFSET, NOTIFY_OFFSET
from vmboot.tests.virtio_pci_rig import (
    S_ACK, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK, bar_read, bar_write, negotiate, setup_queue, start,
)

# -- queues -------------------------------------------------------------------------------------------


def test_queue_registers(dev):
    setup_queue(dev, 1, 128, 0x1_2345_6000, 0x7000, 0x8000, vector=2)
    assert bar_read(dev, COMMON_QUEUE_SELECT, 2) == 1
    assert bar_read(dev, COMMON_QUEUE_SIZE, 2) == 128
    assert bar_read(dev, COMMON_QUEUE_DESC, 8) == 0x1_2345_6000
    assert bar_read(dev, COMMON_QUEUE_DESC + 4, 4) == 1
    assert bar_read(dev, COMMON_QUEUE_DRIVER, 8) == 0x7000
    assert bar_read(dev, COMMON_QUEUE_DEVICE, 8) == 0x8000
    assert bar_read(dev, COMMON_QUEUE_MSIX_VECTOR, 2) == 2
    assert bar_read(dev, COMMON_QUEUE_ENABLE, 2) == 1
    assert bar_read(dev, COMMON_QUEUE_NOTIFY_OFF, 2) == 1
    bar_write(dev, COMMON_QUEUE_SELECT, 2, 0)  # queue 0 is untouched
    assert bar_read(dev, COMMON_QUEUE_SIZE, 2) == 256
    assert bar_read(dev, COMMON_QUEUE_DESC, 8) == 0
    assert bar_read(dev, COMMON_QUEUE_NOTIFY_OFF, 2) == 0


@pytest.mark.parametrize("size", [0, 100, 512, 0xFFFF])
def test_queue_size_must_be_a_power_of_two_up_to_the_maximum(dev, size):
    bar_write(dev, COMMON_QUEUE_SIZE, 2, 64)
    bar_write(dev, COMMON_QUEUE_SIZE, 2, size)
    assert bar_read(dev, COMMON_QUEUE_SIZE, 2) == 64


def test_queue_vector_beyond_the_table_reads_no_vector(dev):
    bar_write(dev, COMMON_QUEUE_MSIX_VECTOR, 2, 3)
    assert bar_read(dev, COMMON_QUEUE_MSIX_VECTOR, 2) == VIRTIO_MSI_NO_VECTOR


def test_nonexistent_queue(dev):
    bar_write(dev, COMMON_QUEUE_SELECT, 2, 2)
    assert bar_read(dev, COMMON_QUEUE_SIZE, 2) == 0  # §4.1.4.3.1: size 0 means no such queue
    bar_write(dev, COMMON_QUEUE_SIZE, 2, 16)
    bar_write(dev, COMMON_QUEUE_ENABLE, 2, 1)
    assert bar_read(dev, COMMON_QUEUE_SIZE, 2) == 0
    assert bar_read(dev, COMMON_QUEUE_ENABLE, 2) == 0


def test_driver_ok_activates_the_enabled_queues(dev, backend):
    features = 1 << VIRTIO_F_VERSION_1 | 1 << 9
    negotiate(dev, features)
    setup_queue(dev, 1, 64, 0x10000, 0x11000, 0x12000)
    assert backend.calls == []
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)
    assert backend.calls == [("activate", features, [QueueSetup(1, 64, 0x10000, 0x11000, 0x12000)])]
    setup_queue(dev, 1, 32, 0x20000, 0x21000, 0x22000)  # live queues are fixed
    assert bar_read(dev, COMMON_QUEUE_SIZE, 2) == 64
    assert bar_read(dev, COMMON_QUEUE_DESC, 8) == 0x10000
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)
    assert len(backend.calls) == 1  # activated once


def test_reset_on_status_zero(dev, backend, machine):
    negotiate(dev, 1 << VIRTIO_F_VERSION_1)
    setup_queue(dev, 0, 64, 0x10000, 0x11000, 0x12000, vector=1)
    bar_write(dev, COMMON_MSIX_CONFIG, 2, 0)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, 0)
    assert backend.calls[-1] == ("reset",)
    assert machine.intx == [False]
    assert bar_read(dev, COMMON_DEVICE_STATUS, 1) == 0  # §2.4: the driver waits for 0
    assert bar_read(dev, COMMON_MSIX_CONFIG, 2) == VIRTIO_MSI_NO_VECTOR
    assert dev.driver_features == 0
    bar_write(dev, COMMON_QUEUE_SELECT, 2, 0)
    assert bar_read(dev, COMMON_QUEUE_SIZE, 2) == 256
    assert bar_read(dev, COMMON_QUEUE_ENABLE, 2) == 0
    assert bar_read(dev, COMMON_QUEUE_DESC, 8) == 0
    assert bar_read(dev, COMMON_QUEUE_MSIX_VECTOR, 2) == VIRTIO_MSI_NO_VECTOR
    setup_queue(dev, 0, 16, 0x30000, 0x31000, 0x32000)  # writable again
    assert bar_read(dev, COMMON_QUEUE_SIZE, 2) == 16


def test_device_config_region_goes_to_the_backend(dev, backend):
    assert dev.read(DEVICE_CFG_OFFSET + 4, 4) == bytes([4, 5, 6, 7])
    dev.write(DEVICE_CFG_OFFSET + 8, b"\x01\x02")
    assert backend.calls == [("config_write", 8, b"\x01\x02")]


# -- notifications (§4.1.4.4) -------------------------------------------------------------------------


def test_notify_writes_the_queues_kick_eventfd(dev, backend):
    bar_write(dev, NOTIFY_OFFSET + 4, 2, 1)
    assert backend.kicked(1) == 0  # not before DRIVER_OK
    start(dev)
    bar_write(dev, NOTIFY_OFFSET + 4, 2, 1)  # queue_notify_off 1 * multiplier 4
    assert (backend.kicked(0), backend.kicked(1)) == (0, 1)
    bar_write(dev, NOTIFY_OFFSET, 2, 0)
    bar_write(dev, NOTIFY_OFFSET, 2, 0)
    assert (backend.kicked(0), backend.kicked(1)) == (2, 0)
    bar_write(dev, NOTIFY_OFFSET + 8, 2, 2)  # no queue 2
    assert (backend.kicked(0), backend.kicked(1)) == (0, 0)
    assert dev.kicks == 5  # every notification that came this way, as --stats counts them
