"""Registers the core answers itself (ipc/fastpath.py): what a Counter reads, when a Copy ends.

Checked against the module's own definition. A counter reads
``(now - epoch) * frequency mod 2**width``, little-endian, and a read must lie
wholly inside the register. The values below are worked by hand for the ACPI PM
timer (3.579545 MHz, 24 bits, ACPI 6.5 section 4.8.3.3), the counter the module
names. A mirror's copy ends when a write touches one of the offsets the device
listed. (The declarations and copies a device sends, and how malformed ones are
refused: test_fastpath_parse.py.)
"""
from __future__ import annotations

import dataclasses
import time

import pytest

from vmboot.ipc import fastpath
from vmboot.ipc.fastpath import MAX_COUNTER_FREQUENCY, MAX_FAST_REGISTERS, Copy, Counter
from vmboot.tests.fastpath_rig import EPOCH, LSR, PM, PM_FREQUENCY


def test_limits():
    assert MAX_COUNTER_FREQUENCY == 10**10
    assert MAX_FAST_REGISTERS == 16


# -- Counter.read --------------------------------------------------------------------------------


@pytest.mark.parametrize("elapsed, value", [
    (0.0, 0),
    (1.0, 0x369E99),  # 3579545 ticks
    (2.0, 0x6D3D32),  # 7159090
    (4.0, 0xDA7A64),  # 14318180: still under 2**24
    (5.0, 0x1118FD),  # 17897725 - 2**24: wrapped once
    (0.5, 0x1B4F4C),  # 1789772.5 ticks: the fraction is dropped
])
def test_pm_timer_value(elapsed, value):
    assert PM.read(8, 4, now=EPOCH + elapsed) == value.to_bytes(4, "little")


def test_value_is_little_endian_bytes():
    assert PM.read(8, 4, now=EPOCH + 1.0) == b"\x99\x9e\x36\x00"


def test_before_the_epoch_counts_modulo_the_width():
    # int() truncates toward zero: -1000 ticks, then mod 2**16.
    c = Counter(0, 0, 2, 1000, 50.0, 16)
    assert c.read(0, 2, now=49.0) == (65536 - 1000).to_bytes(2, "little") == b"\x18\xfc"


@pytest.mark.parametrize("width, size, elapsed, value", [
    (8, 1, 300.0, 300 - 256),
    (12, 2, 5000.0, 5000 - 4096),
    (32, 4, float(1 << 32) + 7.0, 7),
    (64, 8, 1.0, 1),
    (1, 1, 3.0, 1),  # one bit toggles every tick
    (1, 1, 4.0, 0),
])
def test_width_masks_the_value(width, size, elapsed, value):
    c = Counter(2, 0x40, size, 1, 0.0, width)
    assert c.read(0x40, size, now=elapsed) == value.to_bytes(size, "little")


def test_high_bits_above_the_width_read_zero():
    c = Counter(0, 0, 4, 1, 0.0, 20)
    assert c.read(0, 4, now=float((1 << 20) - 1)) == b"\xff\xff\x0f\x00"


@pytest.mark.parametrize("offset, size, expected", [
    (8, 1, b"\x99"),
    (9, 1, b"\x9e"),
    (10, 1, b"\x36"),
    (11, 1, b"\x00"),
    (8, 2, b"\x99\x9e"),
    (9, 2, b"\x9e\x36"),
    (10, 2, b"\x36\x00"),
    (9, 3, b"\x9e\x36\x00"),
])
def test_partial_reads_inside_the_register(offset, size, expected):
    assert PM.read(offset, size, now=EPOCH + 1.0) == expected


@pytest.mark.parametrize("offset, size", [
    (7, 1),  # before
    (12, 1),  # after
    (7, 2),  # straddles the start
    (11, 2),  # straddles the end
    (8, 8),  # wider than the register
    (4, 8),  # covers it and more
    (0, 4),
])
def test_reads_not_wholly_inside_are_not_answered(offset, size):
    assert PM.read(offset, size, now=EPOCH + 1.0) is None


def test_read_uses_the_monotonic_clock(monkeypatch):
    monkeypatch.setattr(fastpath.time, "monotonic", lambda: EPOCH + 2.0)
    assert PM.read(8, 4) == (2 * PM_FREQUENCY).to_bytes(4, "little")


def test_read_on_the_real_clock():
    # A one-tick-per-second counter whose epoch is 1000 s ago reads 1000, or 1001 across a second.
    c = Counter(0, 0, 4, 1, time.monotonic() - 1000.0, 32)
    assert int.from_bytes(c.read(0, 4), "little") in (1000, 1001)


def test_counter_describe():
    assert PM.describe() == {"kind": "counter", "window": 0, "offset": 8, "size": 4,
                             "frequency": PM_FREQUENCY, "epoch": EPOCH, "width": 24}


def test_mirror_describe():
    assert LSR.describe() == {"kind": "mirror", "window": 1, "offset": 5, "size": 1}


@pytest.mark.parametrize("thing, field", [(PM, "epoch"), (LSR, "offset"), (Copy(b"\x60", frozenset()), "data")])
def test_declarations_are_frozen(thing, field):
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(thing, field, 0)


# -- Copy.ended_by -------------------------------------------------------------------------------

# A 16550's LSR copy ends with a write to FCR (2) or MCR (4), or THR (0), as a device might list.
LSR_COPY = Copy(b"\x60", frozenset({0, 2, 4}))


@pytest.mark.parametrize("offset, size, ended", [
    (0, 1, True),
    (2, 1, True),
    (4, 1, True),
    (1, 1, False),  # IER
    (3, 1, False),  # LCR
    (5, 1, False),  # LSR itself is read-only
    (7, 1, False),
    (1, 2, True),  # covers 1 and 2
    (3, 2, True),  # covers 3 and 4
    (5, 4, False),
    (0, 8, True),
    (2, 0, False),  # an empty write touches nothing
    (-1, 1, False),
])
def test_copy_ended_by(offset, size, ended):
    assert LSR_COPY.ended_by(offset, size) is ended


def test_copy_with_nothing_to_end_it():
    copy = Copy(b"\x01\x02", frozenset())
    assert not any(copy.ended_by(o, s) for o in range(16) for s in (1, 2, 4, 8))
