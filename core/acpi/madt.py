"""The MADT ("APIC"): local APICs, the I/O APIC and how ISA IRQs reach it (ACPI 6.5 §5.2.12).

ISA IRQs are identity-mapped to GSIs 0-15 except IRQ0, the PIT, which an I/O
APIC sees on pin 2 (the 8259 cascade owns pin 0): one Interrupt Source
Override says so. COM1's IRQ4 is identity-mapped, edge-triggered and
active-high, the ISA default, so it needs no override.

PCI INTx lines reach GSIs 16-23 through the DSDT's _PRT. Overrides describe
ISA sources only; a GSI that a _PRT entry names directly (Source 0) is a PCI
interrupt, level-triggered and active-low by ACPI's convention, and that is
how OSes program it (Linux: drivers/acpi/pci_irq.c). So the MADT says nothing
about those pins.
"""
from __future__ import annotations

import struct

from vmboot.abi import layout

from .sdt import table

MADT_SIGNATURE = b"APIC"
MADT_REVISION = 5  # ACPI 6.3 onwards: Local APIC flags bit 1 is Online Capable
MADT_FIELDS = struct.Struct("<II")  # Local Interrupt Controller Address, Flags
MADT_PCAT_COMPAT = 1 << 0  # a dual 8259 is present too (the emulate backend has one)

# §5.2.12.2 Processor Local APIC Structure
TYPE_LOCAL_APIC = 0
LOCAL_APIC = struct.Struct("<BBBBI")  # type, length, ACPI processor UID, APIC ID, flags
LOCAL_APIC_ENABLED = 1 << 0
# §5.2.12.3 I/O APIC Structure
TYPE_IO_APIC = 1
IO_APIC = struct.Struct("<BBBBII")  # type, length, I/O APIC ID, reserved, address, GSI base
# §5.2.12.5 Interrupt Source Override Structure
TYPE_INTERRUPT_SOURCE_OVERRIDE = 2
INTERRUPT_SOURCE_OVERRIDE = struct.Struct("<BBBBIH")  # type, length, bus, source, GSI, flags
BUS_ISA = 0
MPS_INTI_CONFORMS = 0  # §5.2.12.5 Table "MPS INTI Flags": polarity and trigger as the bus defines
# §5.2.12.7 Local APIC NMI Structure
TYPE_LOCAL_APIC_NMI = 4
LOCAL_APIC_NMI = struct.Struct("<BBBHB")  # type, length, ACPI processor UID, flags, LINT#
ALL_PROCESSORS = 0xFF

IOAPIC_ID = 0
IOAPIC_GSI_BASE = 0
IOAPIC_PINS = 24
ISA_IRQ_PIT = 0
GSI_PIT = 2
LINT_NMI = 1  # LINT1 carries NMI, as on every PC since the 82489DX
MAX_CPUS = 255  # xAPIC IDs are 8 bits and 0xFF is the broadcast ID


def _local_apic(cpu: int) -> bytes:
    return LOCAL_APIC.pack(TYPE_LOCAL_APIC, LOCAL_APIC.size, cpu, cpu, LOCAL_APIC_ENABLED)


def madt(cpus: int) -> bytes:
    """One Processor Local APIC per vCPU (ACPI processor UID = APIC ID = vCPU index)."""
    if not 1 <= cpus <= MAX_CPUS:
        raise ValueError(f"the MADT describes 1 to {MAX_CPUS} xAPIC processors, not {cpus}")
    structures = [_local_apic(cpu) for cpu in range(cpus)]
    structures.append(IO_APIC.pack(TYPE_IO_APIC, IO_APIC.size, IOAPIC_ID, 0, layout.IOAPIC_START, IOAPIC_GSI_BASE))
    structures.append(INTERRUPT_SOURCE_OVERRIDE.pack(TYPE_INTERRUPT_SOURCE_OVERRIDE, INTERRUPT_SOURCE_OVERRIDE.size,
                                                     BUS_ISA, ISA_IRQ_PIT, GSI_PIT, MPS_INTI_CONFORMS))
    structures.append(LOCAL_APIC_NMI.pack(TYPE_LOCAL_APIC_NMI, LOCAL_APIC_NMI.size, ALL_PROCESSORS,
                                          MPS_INTI_CONFORMS, LINT_NMI))
    body = MADT_FIELDS.pack(layout.LAPIC_START, MADT_PCAT_COMPAT) + b"".join(structures)
    return table(MADT_SIGNATURE, MADT_REVISION, body)
