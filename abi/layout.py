"""The guest physical layout the CloudHv firmware expects (cloud-hypervisor's).

Every address here is one the firmware or a boot protocol depends on. Most are
cloud-hypervisor's (arch/src/x86_64/layout.rs).
"""
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Boot data written by the loaders.
BOOT_GDT = 0x500
BOOT_IDT = 0x520
PVH_START_INFO = 0x6000
PVH_MODLIST = 0x6040
PVH_MEMMAP = 0x7000
CMDLINE = 0x20000
CMDLINE_MAX = 0x10000
RSDP = 0xA0000
SMBIOS = 0xF0000

# RAM.
EBDA_START = 0xA0000  # low RAM is [0, EBDA_START)
HIGH_RAM_START = 0x100000  # 1 MiB
MEM_32BIT_RESERVED_START = 0xC0000000  # the 32-bit device hole ...
MEM_32BIT_RESERVED_END = 1 << 32  # ... runs to 4 GiB
RAM_64BIT_START = 1 << 32

# Devices in the 32-bit hole.
PCI_MMIO32_START = 0xC0000000
PCI_MMIO32_END = 0xFC000000
PCI_MMCONFIG_START = 0xE8000000
IOAPIC_START = 0xFEC00000
IOAPIC_SIZE = 0x1000
LAPIC_START = 0xFEE00000
LAPIC_SIZE = 0x1000

# PCI I/O window the firmware allocates BARs from.
PCI_IO_START = 0xC000
PCI_IO_END = 0x10000

# The firmware works in 0x800000..0x1500000 and needs room for its heap.
MIN_FIRMWARE_MEMORY = 64 * MiB

# KVM on Intel needs three pages for the real-mode TSS and one for the
# identity map, somewhere the guest never uses: just below the BIOS area at 4 GiB.
KVM_IDENTITY_MAP = 0xFEFFC000
KVM_TSS = 0xFEFFD000

# I/O ports: cloud-hypervisor's (vmm/src/device_manager.rs, add_legacy_devices and
# add_acpi_devices; 0xCF8 from vmm/src/pci_segment.rs), plus the reset control register
# 0xCF9 (Intel ICH/PCH datasheets).
PORT_POST = 0x80
PORT_I8042_COMMAND = 0x64
PORT_RTC = 0x70  # index 0x70, data 0x71
PORT_RTC_SIZE = 2
CMOS_CENTURY = 0x32  # the RTC's century byte, which the FADT's CENTURY field names (PC/ACPI convention)
PORT_COM1 = 0x3F8
PORT_COM1_SIZE = 8
IRQ_COM1 = 4
PORT_DEBUGCON = 0x402
PORT_ACPI_SLEEP = 0x600  # sleep control/status and the ACPI reset register
PORT_ACPI_PM_TIMER = 0x608
PORT_PCI_CONFIG = 0xCF8  # CONFIG_ADDRESS 0xCF8, CONFIG_DATA 0xCFC-0xCFF
PORT_PCI_CONFIG_SIZE = 8
PORT_RESET_CONTROL = 0xCF9
