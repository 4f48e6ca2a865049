"""The modern virtio-pci transport (VIRTIO 1.2 §4.1) as a guest driver sees it: PCI identity, BAR0, features.

PCI configuration space and its virtio capabilities (§4.1.2, §4.1.4), BAR0's
sizing and placement, the common configuration structure and feature
negotiation (§3.1.1, §4.1.4.3). The device behind it is a fake that records what
the transport asks of it (tests/virtio_pci_rig.py). Queues and notifications:
test_virtio_pci_queues.py; MSI-X (PCI Local Bus Specification 3.0 §6.8.2) and
INTx: test_virtio_pci_interrupts.py."""
from __future__ import annotations

import struct

from vmboot.abi.virtio import (
    COMMON_CONFIG_GENERATION, COMMON_DEVICE_FEATURE, COMMON_DEVICE_FEATURE_SELECT, COMMON_DEVICE_STATUS,
    COMMON_DRIVER_FEATURE, COMMON_DRIVER_FEATURE_SELECT, COMMON_MSIX_CONFIG, COMMON_NUM_QUEUES, COMMON_QUEUE_ENABLE,
    COMMON_QUEUE_MSIX_VECTOR, COMMON_QUEUE_SIZE, VIRTIO_F_VERSION_1, VIRTIO_MSI_NO_VECTOR, VIRTIO_RING_F_INDIRECT_DESC,
)
from vmboot.core.pci.config_space import (
    PCI_BASE_ADDRESS_0, PCI_CAPABILITY_LIST, PCI_CLASS_PROG, PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_DEVICE_ID,
    PCI_HEADER_TYPE, PCI_INTERRUPT_PIN, PCI_REVISION_ID, PCI_STATUS, PCI_STATUS_CAP_LIST, PCI_SUBSYSTEM_ID,
    PCI_SUBSYSTEM_VENDOR_ID, PCI_VENDOR_ID,
)
from vmboot.core.pci.virtio_pci import BAR_SIZE
from vmboot.tests.virtio_pci_rig import (
    MSIX_CAP, OFFERED, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL, S_ACK, S_DRIVER, S_FEATURES_OK, bar_read,
    bar_write, cfg_read, cfg_write, negotiate,
)

# -- PCI identity (§4.1.2) -------------------------------------------------------------------------


def test_ids_class_and_revision(dev):
    assert cfg_read(dev, PCI_VENDOR_ID, 2) == 0x1AF4
    assert cfg_read(dev, PCI_DEVICE_ID, 2) == 0x1042  # 0x1040 + block
    assert cfg_read(dev, PCI_REVISION_ID, 1) == 1
    assert dev.config_read(PCI_CLASS_PROG, 3) == b"\x00\x00\x01"  # mass storage, SCSI, as QEMU says
    assert cfg_read(dev, PCI_HEADER_TYPE, 1) == 0
    assert cfg_read(dev, PCI_SUBSYSTEM_VENDOR_ID, 2) == 0x1AF4
    assert cfg_read(dev, PCI_SUBSYSTEM_ID, 2) == 0x40  # >= 0x40: a modern-only device
    assert cfg_read(dev, PCI_INTERRUPT_PIN, 1) == 1  # INTA#
    assert cfg_read(dev, PCI_STATUS, 2) & PCI_STATUS_CAP_LIST


def test_capability_list(dev):
    caps = []
    ptr = cfg_read(dev, PCI_CAPABILITY_LIST, 1)
    while ptr:
        cap_id, nxt = dev.config_read(ptr, 2)
        length = dev.config_read(ptr + 2, 1)[0] if cap_id == 0x09 else 12
        caps.append((ptr, dev.config_read(ptr, length)))
        ptr = nxt
    assert caps == [
        # struct virtio_pci_cap: vndr, next, len, cfg_type, bar, id, pad[2], offset, length (§4.1.4)
        (0x40, bytes([0x09, 0x50, 16, 1, 0, 0, 0, 0]) + struct.pack("<II", 0x0000, 0x38)),  # common cfg
        (0x50, bytes([0x09, 0x64, 20, 2, 0, 0, 0, 0]) + struct.pack("<III", 0x3000, 8, 4)),  # notify, multiplier 4
        (0x64, bytes([0x09, 0x74, 16, 3, 0, 0, 0, 0]) + struct.pack("<II", 0x1000, 1)),  # ISR
        (0x74, bytes([0x09, 0x84, 16, 4, 0, 0, 0, 0]) + struct.pack("<II", 0x2000, 0x1000)),  # device cfg
        # MSI-X: ID 0x11, table size 3 (N-1 = 2), table at BAR0+0x4000, PBA at BAR0+0x5000 (BIR 0)
        (MSIX_CAP, bytes([0x11, 0x00]) + struct.pack("<HII", 2, 0x4000, 0x5000)),
    ]


def test_capabilities_are_read_only_but_msix_control_bits(dev):
    before = dev.config_read(0x40, 0x50)
    for off in range(0x40, 0x90, 4):
        cfg_write(dev, off, 4, 0xFFFFFFFF)
    after = dev.config_read(0x40, 0x50)
    assert after[: MSIX_CAP + 2 - 0x40] == before[: MSIX_CAP + 2 - 0x40]
    assert cfg_read(dev, MSIX_CAP + 2, 2) == PCI_MSIX_FLAGS_ENABLE | PCI_MSIX_FLAGS_MASKALL | 2
    assert after[MSIX_CAP + 4 - 0x40 :] == before[MSIX_CAP + 4 - 0x40 :]


# -- BAR0 ---------------------------------------------------------------------------------------------


def test_bar_sizing(dev, machine):
    assert cfg_read(dev, PCI_BASE_ADDRESS_0, 4) == 0  # 32-bit, non-prefetchable memory, unassigned
    cfg_write(dev, PCI_BASE_ADDRESS_0, 4, 0xFFFFFFFF)
    assert cfg_read(dev, PCI_BASE_ADDRESS_0, 4) == ~(BAR_SIZE - 1) & 0xFFFFFFFF == 0xFFFF8000
    for bar in range(1, 6):
        cfg_write(dev, PCI_BASE_ADDRESS_0 + 4 * bar, 4, 0xFFFFFFFF)
        assert cfg_read(dev, PCI_BASE_ADDRESS_0 + 4 * bar, 4) == 0  # not implemented
    cfg_write(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY)  # decoding the sizing pattern maps nothing
    assert machine.moves == []


def test_bar_placement_follows_the_guest(dev, machine):
    cfg_write(dev, PCI_BASE_ADDRESS_0, 4, 0xC0001234)  # low bits below the size are not writable
    assert cfg_read(dev, PCI_BASE_ADDRESS_0, 4) == 0xC0000000
    assert machine.moves == []  # memory decoding still off
    cfg_write(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY)
    assert machine.moves == [0xC0000000]
    cfg_write(dev, PCI_BASE_ADDRESS_0, 4, 0xC0010000)  # moved while decoding
    assert machine.moves == [0xC0000000, 0xC0010000]
    cfg_write(dev, PCI_COMMAND, 2, 0)
    assert machine.moves[-1] is None
    cfg_write(dev, PCI_BASE_ADDRESS_0, 4, 0xC0020000)  # moved while not decoding: nothing to map
    assert machine.moves == [0xC0000000, 0xC0010000, None]
    cfg_write(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY)
    assert machine.moves == [0xC0000000, 0xC0010000, None, 0xC0020000]
    cfg_write(dev, PCI_COMMAND, 2, PCI_COMMAND_MEMORY)  # no change, no call
    assert len(machine.moves) == 4
    assert dev.bar_address == 0xC0020000


# -- common configuration and feature negotiation (§3.1.1, §4.1.4.3) ----------------------------------


def test_device_features_by_select(dev):
    assert bar_read(dev, COMMON_DEVICE_FEATURE, 4) == OFFERED & 0xFFFFFFFF == 0x10000200
    bar_write(dev, COMMON_DEVICE_FEATURE_SELECT, 4, 1)
    assert bar_read(dev, COMMON_DEVICE_FEATURE_SELECT, 4) == 1
    assert bar_read(dev, COMMON_DEVICE_FEATURE, 4) == 1  # VERSION_1 is bit 32
    bar_write(dev, COMMON_DEVICE_FEATURE_SELECT, 4, 2)
    assert bar_read(dev, COMMON_DEVICE_FEATURE, 4) == 0


def test_common_config_initial_values(dev):
    assert bar_read(dev, COMMON_NUM_QUEUES, 2) == 2
    assert bar_read(dev, COMMON_DEVICE_STATUS, 1) == 0
    assert bar_read(dev, COMMON_CONFIG_GENERATION, 1) == 0
    assert bar_read(dev, COMMON_MSIX_CONFIG, 2) == VIRTIO_MSI_NO_VECTOR
    assert bar_read(dev, COMMON_QUEUE_SIZE, 2) == 256
    assert bar_read(dev, COMMON_QUEUE_MSIX_VECTOR, 2) == VIRTIO_MSI_NO_VECTOR
    assert bar_read(dev, COMMON_QUEUE_ENABLE, 2) == 0


def test_features_ok_accepted(dev):
    features = 1 << VIRTIO_F_VERSION_1 | 1 << VIRTIO_RING_F_INDIRECT_DESC
    assert negotiate(dev, features) == S_ACK | S_DRIVER | S_FEATURES_OK
    bar_write(dev, COMMON_DRIVER_FEATURE_SELECT, 4, 0)
    assert bar_read(dev, COMMON_DRIVER_FEATURE, 4) == 1 << VIRTIO_RING_F_INDIRECT_DESC
    bar_write(dev, COMMON_DRIVER_FEATURE, 4, 0xFFFFFFFF)  # frozen once FEATURES_OK is set
    assert bar_read(dev, COMMON_DRIVER_FEATURE, 4) == 1 << VIRTIO_RING_F_INDIRECT_DESC
    assert dev.driver_features == features


def test_features_ok_refused_without_version_1(dev):
    assert negotiate(dev, 1 << VIRTIO_RING_F_INDIRECT_DESC) == S_ACK | S_DRIVER  # FEATURES_OK does not stick


def test_features_ok_refused_with_bits_not_offered(dev):
    assert negotiate(dev, 1 << VIRTIO_F_VERSION_1 | 1 << 3) == S_ACK | S_DRIVER
    assert negotiate(dev, 1 << VIRTIO_F_VERSION_1 | 1 << 40) == S_ACK | S_DRIVER


def test_msix_config_vector(dev):
    bar_write(dev, COMMON_MSIX_CONFIG, 2, 2)
    assert bar_read(dev, COMMON_MSIX_CONFIG, 2) == 2
    bar_write(dev, COMMON_MSIX_CONFIG, 2, 3)  # the table has 3 entries: 0..2
    assert bar_read(dev, COMMON_MSIX_CONFIG, 2) == VIRTIO_MSI_NO_VECTOR
