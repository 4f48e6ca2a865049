"""The tables' layout, checksums and fields, read back with independent struct formats."""
import struct

import pytest

from vmboot.abi import layout
from vmboot.abi.errors import VmbootError
from vmboot.abi.memory import GuestMemory
from vmboot.core.acpi import AcpiConfig, MmioWindow, build_acpi_tables, write_acpi_tables
from vmboot.core.acpi.dsdt import PCI_GSI_BASE, PCI_GSI_COUNT, prt_gsi
from vmboot.core.power import AcpiSleepControl

FULL = AcpiConfig(cpus=4, mmio64=MmioWindow(1 << 36, 1 << 36), ecam=True)
HEADER = struct.Struct("<4sIBB6s8sI4sI")
GAS = struct.Struct("<BBBBQ")


class Events:
    def __init__(self):
        self.log = []

    def poweroff(self, source):
        self.log.append("poweroff")

    def reset(self, source):
        self.log.append("reset")


def header(data: bytes):
    return HEADER.unpack_from(data)


def subtables(madt: bytes):
    """(type, bytes) of each MADT interrupt controller structure."""
    offset, out = 44, []
    while offset < len(madt):
        kind, length = madt[offset], madt[offset + 1]
        out.append((kind, madt[offset:offset + length]))
        offset += length
    return out


# -- layout and checksums ---------------------------------------------------------------------------

@pytest.mark.parametrize("config", [AcpiConfig(), FULL], ids=["default", "full"])
def test_every_table_sums_to_zero(config):
    for t in build_acpi_tables(config).tables:
        if t.name == "RSDP":
            assert sum(t.data[:20]) % 256 == 0, "RSDP checksum (first 20 bytes)"
            assert sum(t.data) % 256 == 0, "RSDP extended checksum"
        else:
            assert header(t.data)[1] == len(t.data), f"{t.name} length field"
            assert sum(t.data) % 256 == 0, f"{t.name} checksum"


@pytest.mark.parametrize("config", [AcpiConfig(), FULL], ids=["default", "full"])
def test_tables_sit_apart_between_rsdp_and_smbios(config):
    spans = sorted((t.address, t.address + len(t.data)) for t in build_acpi_tables(config).tables)
    assert spans[0][0] == layout.RSDP == 0xA0000
    assert spans[-1][1] <= 0xF0000
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start


def test_rsdp_points_to_the_xsdt():
    tables = build_acpi_tables(AcpiConfig())
    assert tables.rsdp == 0xA0000
    sig, _, oem, rev, rsdt, length, xsdt, _, _ = struct.unpack("<8sB6sBIIQB3s", tables.get("RSDP").data)
    assert (sig, oem, rev, rsdt, length) == (b"RSD PTR ", b"VMBOOT", 2, 0, 36)
    assert xsdt == tables.get("XSDT").address


def test_xsdt_lists_facp_and_madt_and_no_mcfg_by_default():
    tables = build_acpi_tables(AcpiConfig())
    xsdt = tables.get("XSDT").data
    entries = struct.unpack_from(f"<{(len(xsdt) - 36) // 8}Q", xsdt, 36)
    assert entries == (tables.get("FACP").address, tables.get("APIC").address)
    assert [t.name for t in tables.tables if t.name == "MCFG"] == []


def test_xsdt_lists_mcfg_with_ecam():
    tables = build_acpi_tables(FULL)
    xsdt = tables.get("XSDT").data
    assert struct.unpack_from("<3Q", xsdt, 36)[2] == tables.get("MCFG").address


def test_headers_carry_the_oem_id():
    for t in build_acpi_tables(FULL).tables:
        if t.name != "RSDP":
            sig, _, _, _, oem, oem_table, _, _, _ = header(t.data)
            assert (sig.decode(), oem, oem_table) == (t.name, b"VMBOOT", b"VMBOOT  ")


def test_write_acpi_tables_fills_guest_memory():
    with GuestMemory(2 << 20) as memory:
        rsdp = write_acpi_tables(memory, FULL)
        assert rsdp == 0xA0000
        for t in build_acpi_tables(FULL).tables:
            assert memory.read(t.address, len(t.data)) == t.data


# -- FADT ---------------------------------------------------------------------------------------------

def fadt():
    tables = build_acpi_tables(AcpiConfig())
    return tables, tables.get("FACP").data


def test_fadt_is_revision_6_5_and_hardware_reduced():
    tables, data = fadt()
    assert len(data) == 276
    assert data[8] == 6 and data[131] == 5  # major (header revision), minor
    flags = struct.unpack_from("<I", data, 112)[0]
    assert flags & (1 << 20), "HW_REDUCED_ACPI"
    assert flags & (1 << 10), "RESET_REG_SUP"
    assert flags & (1 << 8), "TMR_VAL_EXT"
    assert struct.unpack_from("<H", data, 46)[0] == 0, "no SCI"


def test_fadt_points_to_the_dsdt_through_x_dsdt_only():
    tables, data = fadt()
    assert struct.unpack_from("<I", data, 40)[0] == 0
    assert struct.unpack_from("<Q", data, 140)[0] == tables.get("DSDT").address
    assert struct.unpack_from("<IQ", data, 36)[0] == 0  # no FACS on HW-reduced


def test_fadt_registers():
    _, data = fadt()
    io_byte_600 = (1, 8, 0, 1, 0x600)  # SystemIO, 8 bits, offset 0, byte access
    assert GAS.unpack_from(data, 116) == io_byte_600, "RESET_REG"
    assert data[128] == 1, "RESET_VALUE"
    assert GAS.unpack_from(data, 244) == io_byte_600, "SLEEP_CONTROL_REG"
    assert GAS.unpack_from(data, 256) == io_byte_600, "SLEEP_STATUS_REG"
    assert GAS.unpack_from(data, 208) == (1, 32, 0, 3, 0x608), "X_PM_TMR_BLK"
    for offset in (148, 160, 172, 184, 196, 220, 232):  # PM1a/b event and control, PM2, GPE0, GPE1
        assert data[offset:offset + 12] == bytes(12)


def test_fadt_rtc_and_boot_flags():
    _, data = fadt()
    assert data[108] == 0x32, "CENTURY"
    boot = struct.unpack_from("<H", data, 109)[0]
    assert not boot & (1 << 5), "CMOS RTC present"
    assert not boot & (1 << 1), "no 8042"


def test_s5_and_reset_reach_the_power_device():
    # ACPI 6.5 §4.8.3.7: the OS writes SLP_TYP (bits 4:2) from \_S5 with SLP_EN (bit 5)
    # to SLEEP_CONTROL_REG, and RESET_VALUE to RESET_REG.
    tables, data = fadt()
    s5 = bytes.fromhex("08 5f 53 35 5f 12 07 04 0a 05 00 00 00")  # Name (_S5, Package () {5, 0, 0, 0})
    assert tables.get("DSDT").data.endswith(s5)
    events = Events()
    device = AcpiSleepControl(events)
    device.write(0, bytes([(5 << 2) | (1 << 5)]))
    device.write(0, bytes([data[128]]))
    assert events.log == ["poweroff", "reset"]


# -- MADT ---------------------------------------------------------------------------------------------

def test_madt_fields():
    data = build_acpi_tables(AcpiConfig(cpus=3)).get("APIC").data
    assert struct.unpack_from("<II", data, 36) == (0xFEE00000, 1)  # LAPIC address, PCAT_COMPAT
    subs = subtables(data)
    lapics = [s for kind, s in subs if kind == 0]
    assert [struct.unpack("<BBBBI", s)[2:] for s in lapics] == [(0, 0, 1), (1, 1, 1), (2, 2, 1)]
    (ioapic,) = [s for kind, s in subs if kind == 1]
    assert struct.unpack("<BBBBII", ioapic) == (1, 12, 0, 0, 0xFEC00000, 0)
    (override,) = [s for kind, s in subs if kind == 2]
    assert struct.unpack("<BBBBIH", override) == (2, 10, 0, 0, 2, 0)  # ISA IRQ0 -> GSI2, conforming
    (nmi,) = [s for kind, s in subs if kind == 4]
    assert struct.unpack("<BBBHB", nmi) == (4, 6, 0xFF, 0, 1)  # all processors, LINT1
    assert sum(len(s) for _, s in subs) == len(data) - 44


# -- MCFG and the DSDT's PCI description ---------------------------------------------------------

def test_mcfg():
    data = build_acpi_tables(FULL).get("MCFG").data
    assert len(data) == 60
    assert data[36:44] == bytes(8)
    assert struct.unpack_from("<QHBBI", data, 44) == (0xE8000000, 0, 0, 0, 0)


def test_prt_swizzles_every_slot_over_gsis_16_to_23():
    assert prt_gsi(1, 0) == 17 and prt_gsi(7, 1) == 16 and prt_gsi(31, 3) == 18
    for slot in range(1, 32):
        gsis = [prt_gsi(slot, pin) for pin in range(4)]
        assert len(set(gsis)) == 4
        assert all(PCI_GSI_BASE <= g < PCI_GSI_BASE + PCI_GSI_COUNT for g in gsis)


def dword_window(minimum: int, maximum: int) -> bytes:
    # DWordMemory producer window, MinFixed/MaxFixed, non-cacheable, read-write.
    return bytes([0x87, 0x17, 0x00, 0x00, 0x0C, 0x01]) + struct.pack("<5I", 0, minimum, maximum, 0,
                                                                       maximum - minimum + 1)


def test_mmio32_window_without_ecam():
    dsdt = build_acpi_tables(AcpiConfig()).get("DSDT").data
    assert dword_window(0xC0000000, 0xFBFFFFFF) in dsdt
    assert b"\x8a\x2b\x00" not in dsdt  # no 64-bit window unless configured
    assert b"ECAM" not in dsdt


def test_mmio32_window_leaves_out_the_ecam_range():
    dsdt = build_acpi_tables(FULL).get("DSDT").data
    assert dword_window(0xC0000000, 0xE7FFFFFF) in dsdt
    assert dword_window(0xE8100000, 0xFBFFFFFF) in dsdt
    assert dword_window(0xC0000000, 0xFBFFFFFF) not in dsdt
    assert bytes.fromhex("86 09 00 01 000000e8 00001000") in dsdt  # Memory32Fixed reservation


# _HID and _CID of \\_SB.PCI0: AML NameOp, the name, then EisaId's DWordConst.
PCI0_HID_PCIE = bytes.fromhex("08 5f484944 0c 41d00a08")  # Name (_HID, EisaId ("PNP0A08"))
PCI0_HID_PCI = bytes.fromhex("08 5f484944 0c 41d00a03")  # Name (_HID, EisaId ("PNP0A03"))
PCI0_CID_PCI = bytes.fromhex("08 5f434944 0c 41d00a03")  # Name (_CID, EisaId ("PNP0A03"))


def test_host_bridge_is_conventional_pci_without_ecam():
    dsdt = build_acpi_tables(AcpiConfig()).get("DSDT").data
    assert PCI0_HID_PCI in dsdt
    assert PCI0_HID_PCIE not in dsdt and PCI0_CID_PCI not in dsdt


def test_host_bridge_is_pci_express_with_ecam():
    dsdt = build_acpi_tables(FULL).get("DSDT").data
    assert PCI0_HID_PCIE in dsdt and PCI0_CID_PCI in dsdt
    assert PCI0_HID_PCI not in dsdt


def test_processor_devices_follow_cpus():
    dsdt = build_acpi_tables(AcpiConfig(cpus=2)).get("DSDT").data
    assert dsdt.count(b"ACPI0007\0") == 2
    assert b"C001" in dsdt and b"C002" not in dsdt


# -- configuration ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"cpus": 0},
    {"cpus": 256},
    {"mmio64": MmioWindow(0xC0000000, 0x1000)},
    {"mmio64": MmioWindow(1 << 36, 0)},
])
def test_invalid_configs_are_one_line_errors(kwargs):
    with pytest.raises(VmbootError) as err:
        AcpiConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_largest_config_fits():
    tables = build_acpi_tables(AcpiConfig(cpus=255, mmio64=MmioWindow(1 << 40, 1 << 40), ecam=True))
    assert max(t.address + len(t.data) for t in tables.tables) <= 0xF0000
