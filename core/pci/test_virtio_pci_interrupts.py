"""The modern virtio-pci transport's interrupts as a guest driver sees them: MSI-X and INTx.

MSI-X's table, pending bits and masking (PCI Local Bus Specification 3.0
§6.8.2), the per-queue vectors (VIRTIO 1.2 §4.1.5.1.2) and INTx with the ISR
status register (§4.1.4.5). The device behind it is a fake that records what
the transport asks of it (tests/virtio_pci_rig.py)."""
from __future__ import annotations

import struct

from vmboot.abi.virtio import COMMON_DEVICE_STATUS, VIRTIO_F_VERSION_1
from vmboot.core.pci.virtio_pci import ISR_OFFSET, MSIX_PBA_OFFSET, MSIX_TABLE_OFFSET
from vmboot.tests.virtio_pci_rig import (
    MSIX_CAP, PCI_MSIX_FLAGS_ENABLE, PCI_MSIX_FLAGS_MASKALL, S_ACK, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK, bar_read,
    bar_write, cfg_write, negotiate, setup_queue, start,
)

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
    assert dev.interrupts == 2  # sent from the core's Python, as --stats counts them


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


# -- kernel routes (KVM's irqfd) ---------------------------------------------------------------------------


class Routes:
    """Records what the transport routes, as the interrupt relay would pass it to KVM."""

    def __init__(self):
        self.log = []

    def route(self, fd, address, data):
        self.log.append(("route", fd, address, data))

    def unroute(self, fd):
        self.log.append(("unroute", fd))


def test_a_live_queue_with_an_unmasked_vector_is_routed_and_unrouted_while_masked(backend, machine):
    from vmboot.abi.pci import PCI_CLASS_STORAGE_SCSI
    from vmboot.core.pci.virtio_pci import VirtioPciDevice
    routes = Routes()
    dev = VirtioPciDevice(backend, "disk0", PCI_CLASS_STORAGE_SCSI, msi=machine, intx=machine.intx.append,
                          on_bar_moved=lambda d, addr: None, routes=routes)
    enable_msix(dev)
    msix_entry(dev, 0, 0xFEE00000, 0x31)
    msix_entry(dev, 1, 0xFEE01000, 0x32, masked=True)
    assert routes.log == []  # no queue is live before DRIVER_OK
    start(dev)
    call0, call1 = backend.call_fds
    assert routes.log == [("route", call0, 0xFEE00000, 0x31)]  # queue 1's vector is masked
    msix_entry(dev, 1, 0xFEE01000, 0x32)
    assert routes.log[-1] == ("route", call1, 0xFEE01000, 0x32)
    del routes.log[:]
    enable_msix(dev, maskall=True)  # Function Mask: nothing may reach the CPU past the pending bits
    assert sorted(routes.log) == [("unroute", call0), ("unroute", call1)]
    enable_msix(dev)
    bar_write(dev, COMMON_DEVICE_STATUS, 1, 0)  # reset: the queues are gone
    assert routes.log[-2:] == [("unroute", call0), ("unroute", call1)]
