"""The emulated I/O APIC against the Intel 82093AA datasheet: IOREGSEL/IOWIN,
the ID, version and arbitration registers, and the 64-bit redirection table
entries with their edge and level semantics (remote IRR until EOI)."""
from __future__ import annotations

import logging

import pytest

from vmboot.core.emulate.ioapic import IOAPIC_EOI, IOREGSEL, IOWIN, IoApic
from vmboot.core.emulate.lapic import APIC_EOI, APIC_SVR, LocalApic

IOAPICID, IOAPICVER, IOAPICARB = 0x00, 0x01, 0x02
MASKED = 1 << 16
LEVEL = 1 << 15
REMOTE_IRR = 1 << 14
ACTIVE_LOW = 1 << 13
DELIVERY_STATUS = 1 << 12
LOWEST_PRIORITY = 1 << 8
NMI = 4 << 8
EXTINT = 7 << 8


class Ioapic:
    def __init__(self):
        self.delivered: list[tuple[int, bool]] = []
        self.dev = IoApic(deliver=lambda vector, level: self.delivered.append((vector, level)))

    def get(self, reg: int) -> int:
        self.dev.write(IOREGSEL, reg.to_bytes(4, "little"))
        return int.from_bytes(self.dev.read(IOWIN, 4), "little")

    def put(self, reg: int, value: int) -> None:
        self.dev.write(IOREGSEL, reg.to_bytes(4, "little"))
        self.dev.write(IOWIN, value.to_bytes(4, "little"))

    def rte(self, pin: int) -> int:
        return self.get(0x10 + 2 * pin) | self.get(0x11 + 2 * pin) << 32

    def route(self, pin: int, low: int, dest: int = 0) -> None:
        """Program a pin the way Linux does: high dword first, then the low dword."""
        self.put(0x11 + 2 * pin, dest << 24)
        self.put(0x10 + 2 * pin, low)


@pytest.fixture
def io():
    return Ioapic()


# -- identification ------------------------------------------------------------------------------


def test_version_register_reports_24_pins(io):
    assert io.get(IOAPICVER) == 0x00170020  # maximum redirection entry 23, version 0x20


def test_id_register_keeps_four_bits(io):
    assert io.get(IOAPICID) == 0
    io.put(IOAPICID, 0xFF000000)
    assert io.get(IOAPICID) == 0x0F000000
    io.put(IOAPICID, 0x02000000)
    assert io.get(IOAPICID) == 0x02000000


def test_arbitration_id_follows_the_apic_id(io):
    io.put(IOAPICID, 0x05000000)
    assert io.get(IOAPICARB) == 0x05000000


def test_ioregsel_reads_back(io):
    io.dev.write(IOREGSEL, b"\x13")
    assert io.dev.read(IOREGSEL, 4) == b"\x13\x00\x00\x00"
    io.dev.write(IOREGSEL, (0x1FF).to_bytes(4, "little"))
    assert io.dev.read(IOREGSEL, 1) == b"\xff"


def test_unknown_registers_read_zero(io):
    assert io.get(0x03) == 0
    assert io.get(0x10 + 2 * 24) == 0  # past the last entry
    assert io.dev.read(0x20, 4) == bytes(4)


# -- redirection table entries ---------------------------------------------------------------------


def test_every_entry_starts_masked(io):
    assert [io.rte(pin) for pin in range(24)] == [MASKED] * 24


def test_entries_read_back_low_and_high(io):
    io.route(9, LEVEL | ACTIVE_LOW | 0x29, dest=0x01)
    assert io.rte(9) == (0x01 << 56) | LEVEL | ACTIVE_LOW | 0x29
    assert io.rte(8) == MASKED


def test_delivery_status_and_remote_irr_are_read_only(io):
    io.route(3, MASKED | DELIVERY_STATUS | REMOTE_IRR | 0x23)
    assert io.rte(3) == MASKED | 0x23


def test_polarity_is_a_plain_setting(io):
    io.route(5, ACTIVE_LOW | 0x25)
    assert io.get(0x10 + 2 * 5) & ACTIVE_LOW
    io.dev.set_irq(5, True)  # the caller passes the asserted state, whatever the polarity
    assert io.delivered == [(0x25, False)]


def test_a_byte_read_of_the_window(io):
    io.route(1, 0x31)
    io.dev.write(IOREGSEL, b"\x12")
    assert io.dev.read(IOWIN, 1) == b"\x31"


# -- edge-triggered pins --------------------------------------------------------------------------------


def test_edge_pin_delivers_on_each_rising_edge(io):
    io.route(4, 0x24)
    io.dev.set_irq(4, True)
    io.dev.set_irq(4, True)  # still high: no new edge
    assert io.delivered == [(0x24, False)]
    io.dev.set_irq(4, False)
    assert io.delivered == [(0x24, False)]
    io.dev.set_irq(4, True)
    assert io.delivered == [(0x24, False), (0x24, False)]
    assert io.dev.delivered[4] == 2


def test_edge_delivery_does_not_set_remote_irr(io):
    io.route(4, 0x24)
    io.dev.set_irq(4, True)
    assert not io.rte(4) & REMOTE_IRR


def test_an_edge_on_a_masked_pin_is_lost(io):
    io.route(4, MASKED | 0x24)
    io.dev.set_irq(4, True)
    io.route(4, 0x24)  # unmasked while the line is still high
    assert io.delivered == []
    io.dev.set_irq(4, False)
    io.dev.set_irq(4, True)
    assert io.delivered == [(0x24, False)]


def test_lowest_priority_is_delivered(io):
    io.route(6, LOWEST_PRIORITY | 0x26)
    io.dev.set_irq(6, True)
    assert io.delivered == [(0x26, False)]


@pytest.mark.parametrize("mode", [NMI, EXTINT, 2 << 8, 5 << 8])
def test_other_delivery_modes_deliver_no_vector(io, mode):
    io.route(7, mode | 0x27)
    io.dev.set_irq(7, True)
    assert io.delivered == []


@pytest.mark.parametrize("pin", [-1, 24, 100])
def test_pins_out_of_range_are_ignored(io, pin):
    io.dev.set_irq(pin, True)
    assert io.delivered == []


# -- level-triggered pins ------------------------------------------------------------------------------


def test_level_pin_sets_remote_irr_and_waits_for_eoi(io):
    io.route(10, LEVEL | 0x3A)
    io.dev.set_irq(10, True)
    assert io.delivered == [(0x3A, True)]
    assert io.rte(10) & REMOTE_IRR
    io.dev.set_irq(10, True)  # re-asserted: no second delivery while remote IRR is set
    assert io.delivered == [(0x3A, True)]


def test_eoi_with_the_line_still_high_delivers_again(io):
    io.route(10, LEVEL | 0x3A)
    io.dev.set_irq(10, True)
    io.dev.eoi(0x3A)
    assert io.delivered == [(0x3A, True), (0x3A, True)]
    assert io.rte(10) & REMOTE_IRR


def test_eoi_after_the_line_dropped_just_clears_remote_irr(io):
    io.route(10, LEVEL | 0x3A)
    io.dev.set_irq(10, True)
    io.dev.set_irq(10, False)
    assert io.rte(10) & REMOTE_IRR  # held until EOI
    io.dev.eoi(0x3A)
    assert not io.rte(10) & REMOTE_IRR
    assert io.delivered == [(0x3A, True)]


def test_eoi_through_the_eoi_register(io):
    io.route(11, LEVEL | 0x3B)
    io.dev.set_irq(11, True)
    io.dev.set_irq(11, False)
    io.dev.write(IOAPIC_EOI, (0x3B).to_bytes(4, "little"))
    assert not io.rte(11) & REMOTE_IRR


def test_eoi_of_another_vector_leaves_remote_irr(io):
    io.route(10, LEVEL | 0x3A)
    io.dev.set_irq(10, True)
    io.dev.eoi(0x3B)
    assert io.rte(10) & REMOTE_IRR
    assert len(io.delivered) == 1


def test_eoi_clears_every_pin_sharing_the_vector(io):
    io.route(16, LEVEL | 0x50)
    io.route(17, LEVEL | 0x50)
    io.dev.set_irq(16, True)
    io.dev.set_irq(17, True)
    io.dev.set_irq(16, False)
    io.dev.set_irq(17, False)
    io.dev.eoi(0x50)
    assert not io.rte(16) & REMOTE_IRR and not io.rte(17) & REMOTE_IRR


def test_unmasking_an_asserted_level_pin_delivers(io):
    io.route(12, MASKED | LEVEL | 0x3C)
    io.dev.set_irq(12, True)
    assert io.delivered == []
    io.route(12, LEVEL | 0x3C)
    assert io.delivered == [(0x3C, True)]


def test_unmasking_a_deasserted_level_pin_delivers_nothing(io):
    io.route(12, MASKED | LEVEL | 0x3C)
    io.dev.set_irq(12, True)
    io.dev.set_irq(12, False)
    io.route(12, LEVEL | 0x3C)
    assert io.delivered == []


def test_unsupported_delivery_mode_is_logged(io, caplog):
    caplog.set_level(logging.DEBUG, logger="vmboot.ioapic")
    io.route(2, EXTINT)
    io.dev.set_irq(2, True)
    assert [r.getMessage() for r in caplog.records] == ["GSI 2: delivery mode 7 not supported"]


# -- wired to a local APIC, as the emulate backend does ----------------------------------------------


class NoTimers:
    def schedule(self, deadline, fn):
        raise AssertionError("no timer expected")


def test_level_interrupt_round_trip_through_the_local_apic():
    ioapic = IoApic(deliver=lambda vector, level: lapic.accept(vector, level))
    lapic = LocalApic(lambda: 0.0, NoTimers(), raise_intr=lambda: None, eoi_level=ioapic.eoi)
    lapic.write(APIC_SVR, (0x1FF).to_bytes(4, "little"))
    ioapic.write(IOREGSEL, b"\x22")  # pin 9, low dword
    ioapic.write(IOWIN, (LEVEL | 0x39).to_bytes(4, "little"))

    ioapic.set_irq(9, True)  # e.g. the ACPI SCI
    assert lapic.intack() == 0x39
    assert ioapic.rte[9] & REMOTE_IRR
    lapic.write(APIC_EOI, bytes(4))  # the handler did not quiet the device: the line is still high
    assert lapic.intack() == 0x39
    ioapic.set_irq(9, False)
    lapic.write(APIC_EOI, bytes(4))
    assert not ioapic.rte[9] & REMOTE_IRR
    assert lapic.intack() == -1
    assert ioapic.delivered[9] == 2
