"""What the ACPI tables describe that is not fixed by the platform layout."""
from __future__ import annotations

from dataclasses import dataclass

from vmboot.abi import layout
from vmboot.abi.errors import VmbootError

from .madt import MAX_CPUS
from .mcfg import ecam_size

PCI_BUS = 0  # the host bridge decodes bus 0 only


@dataclass(frozen=True)
class MmioWindow:
    """A range of guest-physical addresses, [base, base + size)."""
    base: int
    size: int

    @property
    def last(self) -> int:
        return self.base + self.size - 1


@dataclass(frozen=True)
class AcpiConfig:
    """
    cpus:   vCPUs; each gets a Processor Local APIC (APIC ID = index) and an ACPI0007 device.
    mmio64: the PCI host bridge's 64-bit MMIO window, above 4 GiB; None for none.
    ecam:   offer PCIe ECAM for bus 0 at layout.PCI_MMCONFIG_START (an MCFG, and the range
            reserved by a PNP0C02 device and left out of the MMIO32 window). Off by default:
            the firmware uses port 0xCF8.
    """
    cpus: int = 1
    mmio64: MmioWindow | None = None
    ecam: bool = False

    def __post_init__(self):
        if not 1 <= self.cpus <= MAX_CPUS:
            raise VmbootError(f"ACPI tables describe 1 to {MAX_CPUS} vCPUs, not {self.cpus}")
        w = self.mmio64
        if w is not None and (w.size <= 0 or w.base < layout.RAM_64BIT_START or w.last >= 1 << 64):
            raise VmbootError(f"the 64-bit PCI MMIO window {w.base:#x}+{w.size:#x} must be non-empty, "
                              f"above 4 GiB and below 2**64")

    @property
    def ecam_window(self) -> MmioWindow | None:
        if not self.ecam:
            return None
        return MmioWindow(layout.PCI_MMCONFIG_START, ecam_size(PCI_BUS, PCI_BUS))
