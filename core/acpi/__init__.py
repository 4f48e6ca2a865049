"""ACPI tables for the guest: RSDP, XSDT, FADT, MADT, DSDT (and MCFG), and the AML encoder behind the DSDT.

    rsdp = write_acpi_tables(memory, AcpiConfig(cpus=1))
    boot_pvh(memory, firmware, rsdp=rsdp)
"""
from .builder import AcpiTable, AcpiTables, build_acpi_tables, write_acpi_tables
from .config import AcpiConfig, MmioWindow

__all__ = ["AcpiConfig", "AcpiTable", "AcpiTables", "MmioWindow", "build_acpi_tables", "write_acpi_tables"]
