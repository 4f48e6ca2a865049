"""Lay the ACPI tables out in guest memory, from the RSDP at 0xA0000 up to 0xF0000.

    RSDP -> XSDT -> FACP -> DSDT
                 -> APIC
                 -> MCFG (only with AcpiConfig(ecam=True))

The range sits between low RAM and the BIOS area; the PVH memory map does not
offer it to the firmware as RAM, and the firmware copies every table it finds
into ACPI memory of its own (OvmfPkg/AcpiPlatformDxe/CloudHvAcpi.c).
"""
from __future__ import annotations

from dataclasses import dataclass

from vmboot.abi import layout
from vmboot.abi.errors import VmbootError
from vmboot.abi.memory import GuestMemory

from .config import AcpiConfig
from .dsdt import dsdt
from .fadt import fadt
from .madt import madt
from .mcfg import mcfg
from .root import RSDP, rsdp, xsdt

TABLE_ALIGNMENT = 16
ACPI_AREA_END = layout.SMBIOS  # tables must end below the SMBIOS entry point


@dataclass(frozen=True)
class AcpiTable:
    name: str  # the signature ("FACP", "DSDT", ...), or "RSDP"
    address: int
    data: bytes


@dataclass(frozen=True)
class AcpiTables:
    rsdp: int  # the address for start_info.rsdp_paddr
    tables: tuple[AcpiTable, ...]

    def get(self, name: str) -> AcpiTable:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)


class _Placer:
    def __init__(self, start: int, end: int):
        self.cursor, self.end = start, end
        self.placed: list[AcpiTable] = []

    def place(self, name: str, data: bytes) -> int:
        address = -(-self.cursor // TABLE_ALIGNMENT) * TABLE_ALIGNMENT
        if address + len(data) > self.end:
            raise VmbootError(f"the ACPI tables do not fit below {self.end:#x} ({name} would end at "
                              f"{address + len(data):#x})")
        self.placed.append(AcpiTable(name, address, data))
        self.cursor = address + len(data)
        return address


def build_acpi_tables(config: AcpiConfig, base: int = layout.RSDP) -> AcpiTables:
    """Every table, with the guest-physical address it goes to; the RSDP is at ``base``."""
    placer = _Placer(base + RSDP.size, ACPI_AREA_END)
    dsdt_address = placer.place("DSDT", dsdt(config))
    entries = [placer.place("FACP", fadt(dsdt_address)), placer.place("APIC", madt(config.cpus))]
    if config.ecam_window is not None:
        entries.append(placer.place("MCFG", mcfg(config.ecam_window.base)))
    xsdt_address = placer.place("XSDT", xsdt(entries))
    root = AcpiTable("RSDP", base, rsdp(xsdt_address))
    return AcpiTables(base, (root, *placer.placed))


def write_acpi_tables(memory: GuestMemory, config: AcpiConfig) -> int:
    """Write the tables into guest memory and return the RSDP's address (for PVH's rsdp_paddr)."""
    tables = build_acpi_tables(config)
    for t in tables.tables:
        memory.write(t.address, t.data)
    return tables.rsdp
