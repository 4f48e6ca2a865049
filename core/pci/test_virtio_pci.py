"""The modern virtio-pci transport (VIRTIO 1.2 §4.1) as a guest driver sees it: PCI
configuration space, BAR0's regions, feature negotiation, queue set-up, notifications,
MSI-X (PCI Local Bus Specification 3.0 §6.8.2) and INTx. The device behind it is a fake
that records what the transport asks of it."""
from __future__ import annotations

import os
import struct

import pytest

from vmboot.abi.pci import PCI_CLASS_STORAGE_SCSI
from vmboot.abi.virtio import (
    COMMON_CONFIG_GENERATION, COMMON_DEVICE_FEATURE, COMMON_DEVICE_FEATURE_SELECT, COMMON_DEVICE_STATUS,
    COMMON_DRIVER_FEATURE, COMMON_DRIVER_FEATURE_SELECT, COMMON_MSIX_CONFIG, COMMON_NUM_QUEUES, COMMON_QUEUE_DESC,
    COMMON_QUEUE_DEVICE, COMMON_QUEUE_DRIVER, COMMON_QUEUE_ENABLE, COMMON_QUEUE_MSIX_VECTOR, COMMON_QUEUE_NOTIFY_OFF,
    COMMON_QUEUE_SELECT, COMMON_QUEUE_SIZE, VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER,
    VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_F_VERSION_1, VIRTIO_ID_BLOCK, VIRTIO_MSI_NO_VECTOR,
    VIRTIO_RING_F_INDIRECT_DESC, QueueSetup,
)
from vmboot.core.pci.config_space import (
    PCI_BASE_ADDRESS_0, PCI_CAPABILITY_LIST, PCI_CLASS_PROG, PCI_COMMAND, PCI_COMMAND_MEMORY, PCI_DEVICE_ID,
    PCI_HEADER_TYPE, PCI_INTERRUPT_PIN, PCI_REVISION_ID, PCI_STATUS, PCI_STATUS_CAP_LIST, PCI_SUBSYSTEM_ID,
    PCI_SUBSYSTEM_VENDOR_ID, PCI_VENDOR_ID,
)
from vmboot.core.pci.virtio_pci import (
    BAR_SIZE, DEVICE_CFG_OFFSET, ISR_OFFSET, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET, NOTIFY_OFFSET, VirtioPciDevice,
)

PCI_MSIX_FLAGS_ENABLE = 1 << 15  # PCI 3.0 §6.8.2.3 Message Control
PCI_MSIX_FLAGS_MASKALL = 1 << 14
MSIX_CAP = 0x84  # where the capability walk below finds it
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


@pytest.fixture
def backend():
    b = FakeBackend()
    yield b
    b.close()


@pytest.fixture
def machine():
    return Machine()


@pytest.fixture
def dev(backend, machine):
    return VirtioPciDevice(backend, "disk0", PCI_CLASS_STORAGE_SCSI, msi=machine, intx=machine.intx.append,
                           on_bar_moved=lambda d, addr: machine.moves.append(addr))


def cfg_read(dev, offset, size):
    return int.from_bytes(dev.config_read(offset, size), "little")


def cfg_write(dev, offset, size, value):
    dev.config_write(offset, value.to_bytes(size, "little"))


def bar_read(dev, offset, size):
    return int.from_bytes(dev.read(offset, size), "little")


def bar_write(dev, offset, size, value):
    dev.write(offset, value.to_bytes(size, "little"))


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


def negotiate(dev, features: int) -> int:
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK | S_DRIVER)
    for select in (0, 1):
        bar_write(dev, COMMON_DRIVER_FEATURE_SELECT, 4, select)
        bar_write(dev, COMMON_DRIVER_FEATURE, 4, features >> (32 * select) & 0xFFFFFFFF)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK)
    return bar_read(dev, COMMON_DEVICE_STATUS, 1)


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


# -- queues -------------------------------------------------------------------------------------------


def setup_queue(dev, index, size, desc, driver, device, vector=VIRTIO_MSI_NO_VECTOR):
    bar_write(dev, COMMON_QUEUE_SELECT, 2, index)
    bar_write(dev, COMMON_QUEUE_SIZE, 2, size)
    for off, addr in ((COMMON_QUEUE_DESC, desc), (COMMON_QUEUE_DRIVER, driver), (COMMON_QUEUE_DEVICE, device)):
        bar_write(dev, off, 4, addr & 0xFFFFFFFF)  # as Linux does: two 32-bit halves
        bar_write(dev, off + 4, 4, addr >> 32)
    bar_write(dev, COMMON_QUEUE_MSIX_VECTOR, 2, vector)
    bar_write(dev, COMMON_QUEUE_ENABLE, 2, 1)


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


def start(dev):
    negotiate(dev, 1 << VIRTIO_F_VERSION_1)
    setup_queue(dev, 0, 64, 0x10000, 0x11000, 0x12000, vector=0)
    setup_queue(dev, 1, 64, 0x20000, 0x21000, 0x22000, vector=1)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)


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


# -- MSI-X (PCI 3.0 §6.8.2) ------------------------------------------------------------------------------


def msix_entry(dev, vector, address, data, masked=False):
    base = MSIX_TABLE_OFFSET + 16 * vector
    bar_write(dev, base, 4, address & 0xFFFFFFFF)
    bar_write(dev, base + 4, 4, address >> 32)
    bar_write(dev, base + 8, 4, data)
    bar_write(dev, base + 12, 4, int(masked))


def enable_msix(dev, maskall=False):
    cfg_write(dev, MSIX_CAP + 2, 2, PCI_MSIX_FLAGS_ENABLE | (PCI_MSIX_FLAGS_MASKALL if maskall else 0))


def test_msix_table_starts_masked_and_reads_back(dev):
    for vector in range(3):
        assert dev.read(MSIX_TABLE_OFFSET + 16 * vector, 16) == bytes(12) + b"\x01\0\0\0"
    msix_entry(dev, 1, 0xFEE0_1000, 0x4041)
    assert dev.read(MSIX_TABLE_OFFSET + 16, 16) == struct.pack("<IIII", 0xFEE01000, 0, 0x4041, 0)
    assert dev.read(MSIX_TABLE_OFFSET + 48, 4) == bytes(4)  # past the table
    assert bar_read(dev, MSIX_PBA_OFFSET, 8) == 0


def test_msix_per_queue_vectors(dev, machine):
    start(dev)
    enable_msix(dev)
    msix_entry(dev, 0, 0xFEE00000, 0x31)
    msix_entry(dev, 1, 0xFEE01000, 0x32)
    dev.signal_queue(1)
    dev.signal_queue(0)
    assert machine.msis == [(0xFEE01000, 0x32), (0xFEE00000, 0x31)]
    assert machine.intx == []
    assert bar_read(dev, ISR_OFFSET, 1) == 0  # MSI-X does not use the ISR


def test_msix_queue_without_a_vector_is_silent(dev, machine):
    start(dev)
    enable_msix(dev)
    msix_entry(dev, 0, 0xFEE00000, 0x31)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, 0)  # reset: vectors back to NO_VECTOR ...
    negotiate(dev, 1 << VIRTIO_F_VERSION_1)
    setup_queue(dev, 0, 64, 0x10000, 0x11000, 0x12000)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK)
    dev.signal_queue(0)
    assert machine.msis == []
    assert bar_read(dev, MSIX_PBA_OFFSET, 8) == 0


def test_masked_entry_sets_its_pending_bit_and_fires_on_unmask(dev, machine):
    start(dev)
    enable_msix(dev)
    msix_entry(dev, 1, 0xFEE01000, 0x32, masked=True)
    dev.signal_queue(1)
    assert machine.msis == []
    assert bar_read(dev, MSIX_PBA_OFFSET, 8) == 0b10
    bar_write(dev, MSIX_TABLE_OFFSET + 16 + 12, 4, 0)  # unmask vector 1
    assert machine.msis == [(0xFEE01000, 0x32)]
    assert bar_read(dev, MSIX_PBA_OFFSET, 8) == 0


def test_function_mask_holds_every_vector(dev, machine):
    start(dev)
    enable_msix(dev, maskall=True)
    msix_entry(dev, 0, 0xFEE00000, 0x31)
    msix_entry(dev, 1, 0xFEE01000, 0x32)
    dev.signal_queue(0)
    dev.signal_queue(1)
    assert machine.msis == []
    assert bar_read(dev, MSIX_PBA_OFFSET, 8) == 0b11
    enable_msix(dev, maskall=False)  # clearing Function Mask sends what is pending
    assert machine.msis == [(0xFEE00000, 0x31), (0xFEE01000, 0x32)]
    assert bar_read(dev, MSIX_PBA_OFFSET, 8) == 0


def test_pending_vectors_wait_while_msix_is_disabled(dev, machine):
    start(dev)
    enable_msix(dev, maskall=True)
    msix_entry(dev, 0, 0xFEE00000, 0x31)
    dev.signal_queue(0)
    cfg_write(dev, MSIX_CAP + 2, 2, 0)  # MSI-X off altogether: no message may go out
    msix_entry(dev, 1, 0xFEE01000, 0x32)
    assert machine.msis == []
    assert bar_read(dev, MSIX_PBA_OFFSET, 8) == 0b01
    enable_msix(dev)
    assert machine.msis == [(0xFEE00000, 0x31)]


# -- INTx and the ISR (§4.1.4.5) --------------------------------------------------------------------------


def test_intx_with_isr_read_to_clear(dev, machine):
    start(dev)  # MSI-X left disabled
    dev.signal_queue(0)
    assert machine.intx == [True]
    assert machine.msis == []
    assert bar_read(dev, ISR_OFFSET, 1) == 1  # queue interrupt; reading acknowledges it
    assert machine.intx == [True, False]
    assert bar_read(dev, ISR_OFFSET, 1) == 0
    assert machine.intx == [True, False]  # nothing more to lower


def test_signal_for_a_queue_that_does_not_exist(dev, machine):
    start(dev)
    dev.signal_queue(5)
    assert machine.intx == [] and machine.msis == []
