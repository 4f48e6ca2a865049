"""PCI bus 0 through configuration mechanism #1 (PCI Local Bus Specification 3.0,
§3.2.2.3.2) and the type 0 header (§6.1-§6.2), driven as the guest drives
ports 0xCF8-0xCFF."""
from __future__ import annotations

import pytest

from vmboot.core.pci.config_space import (
    PCI_BASE_ADDRESS_0, PCI_CAPABILITY_LIST, PCI_CLASS_PROG, PCI_COMMAND, PCI_DEVICE_ID, PCI_HEADER_TYPE,
    PCI_INTERRUPT_LINE, PCI_INTERRUPT_PIN, PCI_REVISION_ID, PCI_STATUS, PCI_SUBSYSTEM_ID, PCI_SUBSYSTEM_VENDOR_ID,
    PCI_VENDOR_ID, PciConfigSpace,
)
from vmboot.core.pci.host_bridge import CLOUDHV_DEVICE_ID, PCI_VENDOR_ID_INTEL, HostBridge
from vmboot.core.pci.root import CONFIG_ADDRESS, CONFIG_DATA, PciConfigIo, PciRoot, bdf


def address(bus: int, dev: int, fn: int, reg: int, enable: bool = True) -> int:
    return (0x80000000 if enable else 0) | (bus << 16) | (dev << 11) | (fn << 8) | reg


class Io:
    """Ports 0xCF8-0xCFF as offsets 0-7, with little-endian helpers."""

    def __init__(self, root: PciRoot):
        self.dev = PciConfigIo(root)

    def select(self, value: int) -> None:
        self.dev.write(CONFIG_ADDRESS, value.to_bytes(4, "little"))

    def latched(self) -> int:
        return int.from_bytes(self.dev.read(CONFIG_ADDRESS, 4), "little")

    def read(self, bus: int, dev: int, fn: int, reg: int, size: int) -> int:
        self.select(address(bus, dev, fn, reg & 0xFC))
        return int.from_bytes(self.dev.read(CONFIG_DATA + (reg & 3), size), "little")

    def write(self, bus: int, dev: int, fn: int, reg: int, size: int, value: int) -> None:
        self.select(address(bus, dev, fn, reg & 0xFC))
        self.dev.write(CONFIG_DATA + (reg & 3), value.to_bytes(size, "little"))


@pytest.fixture
def root():
    r = PciRoot()
    r.attach(0, HostBridge())
    return r


@pytest.fixture
def io(root):
    return Io(root)


# -- the host bridge ---------------------------------------------------------------------------------


def test_host_bridge_is_the_cloudhv_device(io):
    assert (PCI_VENDOR_ID_INTEL, CLOUDHV_DEVICE_ID) == (0x8086, 0x0D57)
    assert io.read(0, 0, 0, PCI_VENDOR_ID, 4) == 0x0D578086


def test_host_bridge_class_and_header(io):
    assert io.read(0, 0, 0, PCI_REVISION_ID, 4) == 0x06000000  # class 06 (bridge), 00 (host), prog-if 0, rev 0
    assert io.read(0, 0, 0, PCI_HEADER_TYPE, 1) == 0x00  # type 0, single function
    assert io.read(0, 0, 0, PCI_STATUS, 2) == 0x0000  # no capability list
    assert io.read(0, 0, 0, PCI_CAPABILITY_LIST, 1) == 0x00


def test_host_bridge_has_no_bars(io):
    for bar in range(6):
        reg = PCI_BASE_ADDRESS_0 + 4 * bar
        io.write(0, 0, 0, reg, 4, 0xFFFFFFFF)  # BAR sizing
        assert io.read(0, 0, 0, reg, 4) == 0  # an unimplemented BAR reads 0


# -- CONFIG_ADDRESS -------------------------------------------------------------------------------------


def test_config_address_latches_with_reserved_bits_clear(io):
    io.select(address(0x12, 0x1F, 7, 0xFC))
    assert io.latched() == 0x8012FFFC
    io.select(0xFFFFFFFF)
    assert io.latched() == 0x80FFFFFC  # bits 30:24 and 1:0 read 0


def test_config_address_is_only_a_dword_register(io):
    io.select(address(0, 0, 0, 0x08))
    io.dev.write(CONFIG_ADDRESS, b"\x00\x00")  # a word write does not reach it
    io.dev.write(CONFIG_ADDRESS + 1, b"\x00")
    assert io.latched() == 0x80000008
    assert io.dev.read(CONFIG_ADDRESS, 1) == b"\xff"
    assert io.dev.read(CONFIG_ADDRESS, 2) == b"\xff\xff"
    assert io.dev.read(CONFIG_ADDRESS + 2, 2) == b"\xff\xff"


def test_without_the_enable_bit_config_data_is_not_decoded(io):
    io.select(address(0, 0, 0, PCI_COMMAND, enable=False))
    assert io.dev.read(CONFIG_DATA, 4) == b"\xff" * 4
    io.dev.write(CONFIG_DATA, b"\x07\x00")
    assert io.read(0, 0, 0, PCI_COMMAND, 2) == 0


# -- CONFIG_DATA byte lanes ------------------------------------------------------------------------------


@pytest.mark.parametrize("lane, size, expected", [
    (0, 1, 0x86), (1, 1, 0x80), (2, 1, 0x57), (3, 1, 0x0D),
    (0, 2, 0x8086), (2, 2, 0x0D57), (1, 2, 0x5780),
    (0, 4, 0x0D578086),
])
def test_config_data_plus_n_reaches_byte_n_of_the_dword(io, lane, size, expected):
    io.select(address(0, 0, 0, 0x00))
    assert int.from_bytes(io.dev.read(CONFIG_DATA + lane, size), "little") == expected


def test_byte_writes_land_in_their_lane(io):
    io.select(address(0, 0, 0, PCI_COMMAND))
    io.dev.write(CONFIG_DATA + 1, b"\xff")  # the command register's high byte
    assert io.read(0, 0, 0, PCI_COMMAND, 2) == 0x0400  # only INTx disable is writable there
    io.dev.write(CONFIG_DATA, b"\x02")
    assert io.read(0, 0, 0, PCI_COMMAND, 2) == 0x0402


def test_the_register_number_drops_its_low_bits(io):
    io.select(address(0, 0, 0, 0x02) | 0x3)
    assert io.latched() == 0x80000000
    assert io.dev.read(CONFIG_DATA, 4) == bytes.fromhex("8680570d")


# -- empty slots and other buses -------------------------------------------------------------------------


@pytest.mark.parametrize("bus, dev, fn", [(0, 1, 0), (0, 31, 0), (0, 0, 1), (0, 0, 7), (1, 0, 0), (255, 31, 7)])
@pytest.mark.parametrize("size", [1, 2, 4])
def test_a_missing_function_reads_all_ones(io, bus, dev, fn, size):
    assert io.read(bus, dev, fn, PCI_VENDOR_ID, size) == (1 << 8 * size) - 1


def test_writes_to_a_missing_function_go_nowhere(io, root):
    io.write(0, 1, 0, PCI_COMMAND, 2, 0x0007)
    io.write(1, 0, 0, PCI_COMMAND, 2, 0x0007)
    assert io.read(0, 0, 0, PCI_COMMAND, 2) == 0  # not aliased onto 00:00.0


# -- write masks ---------------------------------------------------------------------------------


def test_command_register_keeps_only_its_writable_bits(io):
    io.write(0, 0, 0, PCI_COMMAND, 2, 0xFFFF)
    assert io.read(0, 0, 0, PCI_COMMAND, 2) == 0x0407  # I/O, memory, bus master, INTx disable
    io.write(0, 0, 0, PCI_COMMAND, 2, 0x0000)
    assert io.read(0, 0, 0, PCI_COMMAND, 2) == 0x0000


def test_identification_registers_are_read_only(io):
    io.write(0, 0, 0, PCI_VENDOR_ID, 4, 0x12345678)
    io.write(0, 0, 0, PCI_REVISION_ID, 4, 0xFFFFFFFF)
    io.write(0, 0, 0, PCI_HEADER_TYPE, 1, 0x80)
    assert io.read(0, 0, 0, PCI_VENDOR_ID, 4) == 0x0D578086
    assert io.read(0, 0, 0, PCI_REVISION_ID, 4) == 0x06000000
    assert io.read(0, 0, 0, PCI_HEADER_TYPE, 1) == 0x00


def test_a_dword_write_to_command_leaves_status_alone(io):
    io.write(0, 0, 0, PCI_COMMAND, 4, 0xFFFF0006)
    assert io.read(0, 0, 0, PCI_COMMAND, 4) == 0x00000006


def test_interrupt_line_is_writable_and_pin_is_not(io):
    io.write(0, 0, 0, PCI_INTERRUPT_LINE, 2, 0xFFAB)
    assert io.read(0, 0, 0, PCI_INTERRUPT_LINE, 1) == 0xAB
    assert io.read(0, 0, 0, PCI_INTERRUPT_PIN, 1) == 0x00


# -- the config space model -----------------------------------------------------------------------


def test_config_space_header_fields():
    cs = PciConfigSpace(0x1AF4, 0x1042, 0x010000, revision=1, subsystem_vendor_id=0x1AF4, subsystem_id=0x40)
    assert cs.get32(PCI_VENDOR_ID) == 0x10421AF4
    assert cs.get16(PCI_DEVICE_ID) == 0x1042
    assert cs.read(PCI_REVISION_ID, 4) == bytes([0x01, 0x00, 0x00, 0x01])  # rev, prog-if, subclass, class
    assert cs.data[PCI_CLASS_PROG] == 0x00
    assert cs.get16(PCI_SUBSYSTEM_VENDOR_ID) == 0x1AF4
    assert cs.get16(PCI_SUBSYSTEM_ID) == 0x0040


def test_config_space_write_masks_work_per_bit():
    cs = PciConfigSpace(0x1AF4, 0x1041, 0x020000)
    cs.set_wmask32(PCI_BASE_ADDRESS_0, 0xFFFFF000)  # a 4 KiB memory BAR
    cs.set32(PCI_BASE_ADDRESS_0, 0x00000004)  # 64-bit, non-prefetchable
    cs.write(PCI_BASE_ADDRESS_0, b"\xff\xff\xff\xff")
    assert cs.get32(PCI_BASE_ADDRESS_0) == 0xFFFFF004
    cs.write(PCI_BASE_ADDRESS_0 + 2, b"\x00\xc1")
    assert cs.get32(PCI_BASE_ADDRESS_0) == 0xC100F004


def test_config_space_accesses_past_256_bytes():
    cs = PciConfigSpace(0x8086, 0x0D57, 0x060000)
    cs.wmask[0xFF] = 0xFF
    assert cs.read(0xFE, 4) == b"\xff" * 4
    cs.write(0xFE, b"\x01\x02\x03\x04")
    assert cs.data[0xFF] == 0  # refused whole, not partly written
    assert cs.read(0xFC, 4) == b"\x00" * 4


# -- bus 0 ---------------------------------------------------------------------------------------


def test_bdf_encoding():
    assert bdf(0, 0, 0) == 0
    assert bdf(0, 3, 0) == 0x18
    assert bdf(1, 2, 3) == 0x113
    assert bdf(255, 31, 7) == 0xFFFF


def test_attach_refuses_a_taken_slot(root):
    with pytest.raises(ValueError, match="PCI slot 00:00.0 is taken"):
        root.attach(0, HostBridge())


def test_functions_of_one_device_are_separate(root, io):
    fn1 = HostBridge()
    fn1.config.set16(PCI_DEVICE_ID, 0x1234)
    root.attach(5, fn1, func=1)
    assert io.read(0, 5, 1, PCI_VENDOR_ID, 4) == 0x12348086
    assert io.read(0, 5, 0, PCI_VENDOR_ID, 4) == 0xFFFFFFFF


def test_free_slot_skips_taken_slots(root):
    assert root.free_slot() == 1
    root.attach(1, HostBridge())
    root.attach(2, HostBridge())
    assert root.free_slot() == 3
    for dev in range(3, 32):
        root.attach(dev, HostBridge())
    with pytest.raises(ValueError, match="no free PCI slot on bus 0"):
        root.free_slot()
