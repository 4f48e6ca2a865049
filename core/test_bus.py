"""Routing port and MMIO accesses to device models."""
from __future__ import annotations

import logging

import pytest

from vmboot.abi import layout
from vmboot.core.bus import Bus
from vmboot.core.pci.host_bridge import HostBridge
from vmboot.core.pci.root import PciConfigIo, PciRoot
from vmboot.core.power import ResetControl


class Recorder:
    """A device that answers reads with a pattern and records every access."""

    def __init__(self, fill: int = 0xAB):
        self.fill = fill
        self.accesses: list[tuple] = []

    def read(self, offset: int, size: int) -> bytes:
        self.accesses.append(("read", offset, size))
        return bytes([self.fill]) * size

    def write(self, offset: int, data: bytes) -> None:
        self.accesses.append(("write", offset, data))


class Broken:
    def read(self, offset: int, size: int) -> bytes:
        raise RuntimeError("model bug")

    def write(self, offset: int, data: bytes) -> None:
        raise RuntimeError("model bug")


class WrongLength:
    def __init__(self, data: bytes):
        self.data = data

    def read(self, offset: int, size: int) -> bytes:
        return self.data

    def write(self, offset: int, data: bytes) -> None:
        pass


class Events:
    def __init__(self):
        self.resets: list[str] = []

    def poweroff(self, source: str) -> None:
        raise AssertionError("no power-off expected")

    def reset(self, source: str) -> None:
        self.resets.append(source)


@pytest.fixture
def bus():
    return Bus("port")


def bus_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vmboot.bus"]


# -- routing --------------------------------------------------------------------------------


def test_devices_see_offsets_into_their_own_range(bus):
    dev = Recorder()
    bus.register(0x3F8, 8, dev, "serial")
    assert bus.read(0x3FD, 1) == b"\xab"
    bus.write(0x3F8, b"A")
    bus.write(0x3FF, b"\x01")
    assert dev.accesses == [("read", 5, 1), ("write", 0, b"A"), ("write", 7, b"\x01")]


def test_each_range_reaches_its_own_device(bus):
    a, b = Recorder(0x11), Recorder(0x22)
    bus.register(0x70, 2, a, "rtc")
    bus.register(0x80, 1, b, "post")
    assert bus.read(0x71, 1) == b"\x11"
    assert bus.read(0x80, 1) == b"\x22"
    assert a.accesses == [("read", 1, 1)]
    assert b.accesses == [("read", 0, 1)]


def test_the_smallest_range_holding_the_access_wins():
    bus = Bus("port")
    events = Events()
    pci = PciRoot()
    pci.attach(0, HostBridge())
    bus.register(layout.PORT_PCI_CONFIG, layout.PORT_PCI_CONFIG_SIZE, PciConfigIo(pci), "pci-config")
    bus.register(layout.PORT_RESET_CONTROL, 1, ResetControl(events), "reset-control")

    bus.write(0xCF8, (0x80000000).to_bytes(4, "little"))  # a dword at 0xCF8: CONFIG_ADDRESS
    assert bus.read(0xCF8, 4) == b"\x00\x00\x00\x80"
    assert bus.read(0xCFC, 4) == bytes.fromhex("8680570d")  # 8086:0D57 through CONFIG_DATA
    assert bus.read(0xCF9, 1) == b"\x00"  # a byte at 0xCF9: the reset control register
    assert events.resets == []
    bus.write(0xCF9, b"\x06")
    assert events.resets == ["reset control register 0xCF9"]
    assert bus.read(0xCF8, 4) == b"\x00\x00\x00\x80"  # CONFIG_ADDRESS untouched


def test_the_smallest_range_wins_whatever_the_registration_order(bus):
    narrow, wide = Recorder(0x01), Recorder(0x02)
    bus.register(0x101, 1, narrow, "narrow")
    bus.register(0x100, 16, wide, "wide")
    assert bus.read(0x101, 1) == b"\x01"
    assert bus.read(0x100, 2) == b"\x02\x02"  # the narrow range cannot hold this access
    assert bus.read(0x102, 1) == b"\x02"


def test_an_access_across_the_end_of_a_range_is_unhandled(bus):
    dev = Recorder()
    bus.register(0x600, 1, dev, "acpi-sleep")
    assert bus.read(0x600, 2) == b"\xff\xff"
    bus.write(0x5FF, b"\x00\x34")
    assert dev.accesses == []


def test_mmio_addresses_route_like_ports():
    bus = Bus("mmio")
    dev = Recorder()
    bus.register(layout.LAPIC_START, layout.LAPIC_SIZE, dev, "lapic")
    assert bus.read(0xFEE000B0, 4) == b"\xab" * 4
    assert bus.read(0xFEE01000, 4) == b"\xff" * 4
    assert dev.accesses == [("read", 0xB0, 4)]


# -- unhandled accesses ---------------------------------------------------------------------------


def test_unhandled_reads_return_all_ones(bus):
    assert bus.read(0x1234, 1) == b"\xff"
    assert bus.read(0x1234, 2) == b"\xff\xff"
    assert bus.read(0x1234, 4) == b"\xff" * 4


def test_unhandled_accesses_are_counted_and_logged_once_per_address(bus, caplog):
    caplog.set_level(logging.INFO, logger="vmboot.bus")
    bus.read(0x92, 1)
    bus.read(0x92, 1)
    bus.write(0x92, b"\x01")
    bus.write(0x61, b"\x00")
    assert bus_records(caplog) == [
        "unhandled port read at 0x92, size 1: answered with all ones",
        "unhandled port write at 0x61, size 1: answered with all ones",
    ]
    assert (bus.unhandled[0x92].reads, bus.unhandled[0x92].writes) == (2, 1)
    assert (bus.unhandled[0x61].reads, bus.unhandled[0x61].writes) == (0, 1)


# -- failing devices ----------------------------------------------------------------------------------


def test_a_device_that_raises_is_contained(bus, caplog):
    caplog.set_level(logging.INFO, logger="vmboot.bus")
    good = Recorder(0x5A)
    bus.register(0x100, 4, Broken(), "broken")
    bus.register(0x200, 4, good, "good")
    assert bus.read(0x100, 2) == b"\xff\xff"
    bus.write(0x101, b"\x00")
    assert bus.read(0x102, 1) == b"\xff"
    assert bus.read(0x200, 1) == b"\x5a"  # the rest of the bus still works
    failures = [m for m in bus_records(caplog) if "failed" in m]
    assert failures == ["device broken failed a read at 0x100, size 2; the access is ignored"]


@pytest.mark.parametrize("answer, expected", [
    (b"\x01", b"\x01\xff\xff\xff"),
    (b"\x01\x02\x03\x04\x05", b"\x01\x02\x03\x04"),
])
def test_a_read_of_the_wrong_length_is_fixed_up_and_reported(bus, caplog, answer, expected):
    caplog.set_level(logging.INFO, logger="vmboot.bus")
    bus.register(0x100, 8, WrongLength(answer), "sloppy")
    assert bus.read(0x100, 4) == expected
    (record,) = bus_records(caplog)
    assert record.startswith(f"device sloppy failed a read returned {len(answer)} bytes")


# -- configuration --------------------------------------------------------------------------------------


def test_a_range_can_be_registered_only_once(bus):
    bus.register(0x70, 2, Recorder(), "rtc")
    with pytest.raises(ValueError, match="port range 0x70\\+0x2 already belongs to rtc"):
        bus.register(0x70, 2, Recorder(), "rtc2")


def test_empty_ranges_are_refused(bus):
    with pytest.raises(ValueError, match="empty range"):
        bus.register(0x70, 0, Recorder(), "nothing")


def test_unregister_frees_the_range(bus):
    m = bus.register(0x70, 2, Recorder(0x00), "rtc")
    assert bus.read(0x70, 1) == b"\x00"  # now cached
    bus.unregister(m)
    assert bus.read(0x70, 1) == b"\xff"
    assert bus.mappings == []


def test_move_relocates_a_range_and_forgets_old_routes():
    bus = Bus("mmio")
    dev = Recorder()
    m = bus.register(0xC0000000, 0x1000, dev, "bar0")
    assert bus.read(0xC0000010, 4) == b"\xab" * 4
    bus.move(m, 0xC0100000)
    assert bus.read(0xC0000010, 4) == b"\xff" * 4
    assert bus.read(0xC0100010, 4) == b"\xab" * 4
    assert dev.accesses == [("read", 0x10, 4), ("read", 0x10, 4)]


def test_a_new_narrower_range_takes_over_a_cached_route(bus):
    wide, narrow = Recorder(0x01), Recorder(0x02)
    bus.register(0xCF8, 8, wide, "wide")
    assert bus.read(0xCF9, 1) == b"\x01"
    bus.register(0xCF9, 1, narrow, "narrow")
    assert bus.read(0xCF9, 1) == b"\x02"


def test_mappings_count_their_accesses(bus):
    m = bus.register(0x3F8, 8, Recorder(), "serial")
    bus.read(0x3FD, 1)
    bus.read(0x3FD, 1)
    bus.write(0x3F8, b"x")
    assert (m.reads, m.writes) == (2, 1)
    assert bus.mappings == [m]


def test_mapping_labels_name_the_range():
    ports, mmio = Bus("port"), Bus("mmio")
    p = ports.register(0x3F8, 8, Recorder(), "serial")
    m = mmio.register(0xFEC00000, 0x1000, Recorder(), "ioapic")
    assert (p.end, p.label("port")) == (0x400, "serial 0x03f8-0x03ff")
    assert (m.end, m.label("mmio")) == (0xFEC01000, "ioapic 0xfec00000-0xfec00fff")
