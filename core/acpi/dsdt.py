"""The DSDT: the devices an OS cannot find by itself, in AML (ACPI 6.5 §5.2.11.1).

    \\_SB.PCI0   PCI host bridge: bus 0, its windows, and _PRT. A PCI Express bridge (PNP0A08,
                compatible with PNP0A03) only when ECAM is offered; otherwise a conventional
                one (PNP0A03), for which _OSC is optional (PCI Firmware 3.3 §4.5), so the OS
                takes its absence in its stride
    \\_SB.COM1   16550 UART at 0x3F8, IRQ 4 (PNP0501)
    \\_SB.RTC_   MC146818 RTC/CMOS at 0x70-0x71 (PNP0B00), so Linux's rtc-cmos binds
    \\_SB.Cnnn   one processor device (ACPI0007) per vCPU, _UID = the MADT's processor UID
    \\_SB.ECAM   the ECAM range, reserved as a motherboard resource (PNP0C02), if offered
    \\_S5        Package {5, 0, 0, 0}: SLP_TYP 5, which core/power.py turns into power-off
"""
from __future__ import annotations

from vmboot.abi import layout

from ..power import SLP_TYP_S5
from .aml import Aml, device, eisa_id, name, package, scope
from .config import PCI_BUS, AcpiConfig, MmioWindow
from .resources import (
    dword_memory, io, irq_no_flags, memory32_fixed, qword_memory, resource_template, word_bus_number, word_io,
)
from .sdt import table

DSDT_SIGNATURE = b"DSDT"
DSDT_REVISION = 2  # 2 and up: AML integers are 64 bits wide

PNP_PCIE_HOST_BRIDGE = "PNP0A08"
PNP_PCI_HOST_BRIDGE = "PNP0A03"
PNP_16550_UART = "PNP0501"
PNP_AT_RTC = "PNP0B00"
PNP_MOTHERBOARD_RESOURCES = "PNP0C02"
ACPI_PROCESSOR_DEVICE = "ACPI0007"

# The host bridge's I/O space: it consumes the configuration ports and
# forwards the rest below and above them.
PCI_CONFIG_PORTS_LAST = layout.PORT_PCI_CONFIG + layout.PORT_PCI_CONFIG_SIZE - 1
PCI_IO_WINDOW_LOW = (0x0000, layout.PORT_PCI_CONFIG - 1)
PCI_IO_WINDOW_HIGH = (PCI_CONFIG_PORTS_LAST + 1, 0xFFFF)
PCI_MMIO32_WINDOW = MmioWindow(layout.PCI_MMIO32_START, layout.PCI_MMIO32_END - layout.PCI_MMIO32_START)
IO_ALIGN = 1

# _PRT (ACPI 6.5 §6.2, "PCI Routing Table"): INTA-INTD of slots 1-31 swizzled over GSIs 16-23.
PCI_FIRST_SLOT = 1
PCI_SLOTS = 32
PCI_INTX_PINS = 4  # INTA..INTD, _PRT pin 0..3
PCI_GSI_BASE = 16
PCI_GSI_COUNT = 8
PRT_ANY_FUNCTION = 0xFFFF  # _ADR's function field: every function of the slot
PRT_SOURCE_GSI = 0  # Source 0: Source Index is a global system interrupt

S5_SLP_TYP = SLP_TYP_S5  # what the power device treats as power-off


def prt_gsi(slot: int, pin: int) -> int:
    """The GSI that INTx ``pin`` (0 = INTA) of ``slot`` is wired to."""
    return PCI_GSI_BASE + (slot + pin) % PCI_GSI_COUNT


def _windows_around(window: MmioWindow, hole: MmioWindow | None) -> list[MmioWindow]:
    if hole is None or hole.last < window.base or hole.base > window.last:
        return [window]
    parts = []
    if hole.base > window.base:
        parts.append(MmioWindow(window.base, hole.base - window.base))
    if hole.last < window.last:
        parts.append(MmioWindow(hole.last + 1, window.last - hole.last))
    return parts


def pci_host_bridge(config: AcpiConfig) -> Aml:
    crs = [
        word_bus_number(PCI_BUS, PCI_BUS),
        io(layout.PORT_PCI_CONFIG, layout.PORT_PCI_CONFIG, IO_ALIGN, layout.PORT_PCI_CONFIG_SIZE),
        word_io(*PCI_IO_WINDOW_LOW),
        word_io(*PCI_IO_WINDOW_HIGH),
    ]
    crs += [dword_memory(w.base, w.last) for w in _windows_around(PCI_MMIO32_WINDOW, config.ecam_window)]
    if config.mmio64 is not None:
        crs.append(qword_memory(config.mmio64.base, config.mmio64.last))
    prt = [package((slot << 16) | PRT_ANY_FUNCTION, pin, PRT_SOURCE_GSI, prt_gsi(slot, pin))
           for slot in range(PCI_FIRST_SLOT, PCI_SLOTS) for pin in range(PCI_INTX_PINS)]
    ids = ([name("_HID", eisa_id(PNP_PCIE_HOST_BRIDGE)), name("_CID", eisa_id(PNP_PCI_HOST_BRIDGE))]
           if config.ecam_window is not None else [name("_HID", eisa_id(PNP_PCI_HOST_BRIDGE))])
    return device(
        "PCI0",
        *ids,
        name("_SEG", 0),
        name("_UID", 0),
        name("_BBN", PCI_BUS),
        name("_CRS", resource_template(*crs)),
        name("_PRT", package(*prt)),
    )


def com1() -> Aml:
    return device(
        "COM1",
        name("_HID", eisa_id(PNP_16550_UART)),
        name("_UID", 0),
        name("_CRS", resource_template(io(layout.PORT_COM1, layout.PORT_COM1, IO_ALIGN, layout.PORT_COM1_SIZE),
                                       irq_no_flags(layout.IRQ_COM1))),
    )


def rtc() -> Aml:
    return device(
        "RTC",
        name("_HID", eisa_id(PNP_AT_RTC)),
        name("_CRS", resource_template(io(layout.PORT_RTC, layout.PORT_RTC, IO_ALIGN, layout.PORT_RTC_SIZE))),
    )


def processor(cpu: int) -> Aml:
    return device(f"C{cpu:03X}", name("_HID", ACPI_PROCESSOR_DEVICE), name("_UID", cpu))


def ecam_reservation(window: MmioWindow) -> Aml:
    return device(
        "ECAM",
        name("_HID", eisa_id(PNP_MOTHERBOARD_RESOURCES)),
        name("_UID", 0),
        name("_CRS", resource_template(memory32_fixed(window.base, window.size))),
    )


def dsdt(config: AcpiConfig) -> bytes:
    devices = [pci_host_bridge(config), com1(), rtc(), *(processor(cpu) for cpu in range(config.cpus))]
    if config.ecam_window is not None:
        devices.append(ecam_reservation(config.ecam_window))
    aml = scope("\\_SB", *devices) + name("_S5", package(S5_SLP_TYP, 0, 0, 0))
    return table(DSDT_SIGNATURE, DSDT_REVISION, aml)
