"""Fixtures the virtio-pci transport's tests share: a VirtioPciDevice on tests/virtio_pci_rig.py's fakes."""
from __future__ import annotations

import pytest

from vmboot.abi.pci import PCI_CLASS_STORAGE_SCSI
from vmboot.core.pci.virtio_pci import VirtioPciDevice
from vmboot.tests.virtio_pci_rig import FakeBackend, Machine


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
