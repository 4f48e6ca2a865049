"""The FADT ("FACP"), revision 6, for a hardware-reduced ACPI platform (ACPI 6.5 §5.2.9).

HW-reduced ACPI (§4.1) has no PM1 event/control blocks, no GPE blocks and no
SCI; power-off goes through the sleep control register instead. Our registers,
where cloud-hypervisor's FADT puts them (vmm/src/acpi.rs, create_facp_table;
core/power.py, devices/pmtimer/):

- SLEEP_CONTROL_REG and SLEEP_STATUS_REG: I/O port 0x600, 8 bits (§4.8.3.7);
- RESET_REG: the same port, RESET_VALUE 1;
- X_PM_TMR_BLK: I/O port 0x608, 32 bits, with TMR_VAL_EXT. The spec lets
  OSPM ignore the PM timer on HW-reduced platforms; Linux x86 still reads
  X_PM_TMR_BLK for its acpi_pm clocksource;
- CENTURY: CMOS index 0x32, the RTC's century byte.

The FADT points to the DSDT only through X_DSDT: the 32-bit DSDT field must be
zero when X_DSDT is set, and the CloudHv firmware reads X_DSDT.
"""
from __future__ import annotations

import struct

from vmboot.abi import layout

from ..power import ACPI_RESET_VALUE
from .sdt import NO_REGISTER, GenericAddress, table

FADT_SIGNATURE = b"FACP"
FADT_MAJOR_VERSION = 6  # the header's Revision
FADT_MINOR_VERSION = 5  # ACPI 6.5

# §5.2.9 Table 5.9, the FADT after its header (offset 36), field by field.
FADT_BODY = struct.Struct(
    "<"
    "I"  # 36 FIRMWARE_CTRL
    "I"  # 40 DSDT
    "B"  # 44 Reserved (INT_MODEL in ACPI 1.0)
    "B"  # 45 Preferred_PM_Profile
    "H"  # 46 SCI_INT
    "I"  # 48 SMI_CMD
    "BBBB"  # 52 ACPI_ENABLE, ACPI_DISABLE, S4BIOS_REQ, PSTATE_CNT
    "8I"  # 56 PM1a_EVT_BLK, PM1b_EVT_BLK, PM1a_CNT_BLK, PM1b_CNT_BLK, PM2_CNT_BLK, PM_TMR_BLK,
    #        GPE0_BLK, GPE1_BLK
    "8B"  # 88 PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN, GPE0_BLK_LEN, GPE1_BLK_LEN,
    #        GPE1_BASE, CST_CNT
    "4H"  # 96 P_LVL2_LAT, P_LVL3_LAT, FLUSH_SIZE, FLUSH_STRIDE
    "5B"  # 104 DUTY_OFFSET, DUTY_WIDTH, DAY_ALRM, MON_ALRM, CENTURY
    "H"  # 109 IAPC_BOOT_ARCH
    "B"  # 111 Reserved
    "I"  # 112 Flags
    "12s"  # 116 RESET_REG
    "B"  # 128 RESET_VALUE
    "H"  # 129 ARM_BOOT_ARCH
    "B"  # 131 FADT Minor Version
    "Q"  # 132 X_FIRMWARE_CTRL
    "Q"  # 140 X_DSDT
)
X_REGISTERS = (  # 148.. the extended register blocks, 12 bytes each, in order
    "X_PM1a_EVT_BLK", "X_PM1b_EVT_BLK", "X_PM1a_CNT_BLK", "X_PM1b_CNT_BLK", "X_PM2_CNT_BLK",
    "X_PM_TMR_BLK", "X_GPE0_BLK", "X_GPE1_BLK", "SLEEP_CONTROL_REG", "SLEEP_STATUS_REG",
)
HYPERVISOR_VENDOR_IDENTITY = struct.Struct("<Q")  # 268, after the ten registers

# §5.2.9, Table 5.10: Fixed ACPI Description Table Fixed Feature Flags.
FLAG_WBINVD = 1 << 0
FLAG_PWR_BUTTON = 1 << 4  # 1: no fixed-feature power button
FLAG_SLP_BUTTON = 1 << 5  # 1: no fixed-feature sleep button
FLAG_TMR_VAL_EXT = 1 << 8  # the PM timer is 32 bits wide
FLAG_RESET_REG_SUP = 1 << 10
FLAG_HW_REDUCED_ACPI = 1 << 20

# §5.2.9.3, Table 5.11: IA-PC Boot Architecture Flags.
IAPC_LEGACY_DEVICES = 1 << 0  # ISA devices the OS cannot enumerate: COM1 and the RTC, in the DSDT
IAPC_8042 = 1 << 1  # not set: port 0x64 only takes the reset command
IAPC_VGA_NOT_PRESENT = 1 << 2
IAPC_CMOS_RTC_NOT_PRESENT = 1 << 5  # not set: the MC146818 at 0x70 is there

PM_PROFILE_UNSPECIFIED = 0
RTC_CENTURY_INDEX = layout.CMOS_CENTURY

RESET_VALUE = ACPI_RESET_VALUE  # 1
SLEEP_REGISTER = GenericAddress.io_port(layout.PORT_ACPI_SLEEP, 8)
RESET_REGISTER = GenericAddress.io_port(layout.PORT_ACPI_SLEEP, 8)
PM_TIMER_REGISTER = GenericAddress.io_port(layout.PORT_ACPI_PM_TIMER, 32)

FLAGS = (FLAG_WBINVD | FLAG_PWR_BUTTON | FLAG_SLP_BUTTON | FLAG_TMR_VAL_EXT | FLAG_RESET_REG_SUP
         | FLAG_HW_REDUCED_ACPI)
IAPC_BOOT_ARCH = IAPC_LEGACY_DEVICES | IAPC_VGA_NOT_PRESENT


def fadt(dsdt_address: int) -> bytes:
    head = FADT_BODY.pack(
        0, 0,  # FIRMWARE_CTRL: no FACS on HW-reduced; DSDT: zero since X_DSDT is set
        0, PM_PROFILE_UNSPECIFIED, 0, 0,  # no SCI, no SMI command port
        0, 0, 0, 0,
        *[0] * 8,  # no fixed-hardware register blocks
        *[0] * 8,
        *[0] * 4,
        0, 0, 0, 0, RTC_CENTURY_INDEX,
        IAPC_BOOT_ARCH, 0, FLAGS,
        RESET_REGISTER.pack(), RESET_VALUE, 0, FADT_MINOR_VERSION,
        0, dsdt_address,
    )
    registers = {"X_PM_TMR_BLK": PM_TIMER_REGISTER, "SLEEP_CONTROL_REG": SLEEP_REGISTER,
                 "SLEEP_STATUS_REG": SLEEP_REGISTER}
    x_blocks = b"".join(registers.get(name, NO_REGISTER).pack() for name in X_REGISTERS)
    body = head + x_blocks + HYPERVISOR_VENDOR_IDENTITY.pack(0)
    return table(FADT_SIGNATURE, FADT_MAJOR_VERSION, body)
