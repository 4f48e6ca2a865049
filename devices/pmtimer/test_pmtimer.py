"""The ACPI PM timer (ACPI 6.5 §4.8.3.3): a 32-bit counter at 3.579545 MHz.

Time comes from a fake monotonic clock; every expected value is the exact
tick count for the elapsed time.
"""
from __future__ import annotations

import pytest

from vmboot.devices.pmtimer.pmtimer import (
    PM_TIMER_FREQUENCY, PM_TIMER_REGISTER_SIZE, PM_TIMER_WIDTH, CounterDescription, PmTimer,
)
from vmboot.tests.fakes import Clock

EPOCH = 4321.0  # the fake monotonic clock's value when the timer is created


@pytest.fixture
def clock():
    return Clock(EPOCH)


@pytest.fixture
def timer(clock):
    return PmTimer(now_fn=clock)


def value(timer: PmTimer) -> int:
    return int.from_bytes(timer.read(0, 4), "little")


def test_constants_match_the_fadt():
    assert PM_TIMER_FREQUENCY == 3_579_545
    assert PM_TIMER_WIDTH == 32  # TMR_VAL_EXT
    assert PM_TIMER_REGISTER_SIZE == 4


def test_counts_from_zero_when_created(timer):
    assert value(timer) == 0


@pytest.mark.parametrize("elapsed, ticks", [
    (1e-6, 3),  # 3.58 ticks
    (0.001, 3579),
    (0.5, 1789772),
    (1.0, 3_579_545),
    (60.0, 214_772_700),
])
def test_counts_at_3_579545_mhz(clock, timer, elapsed, ticks):
    clock.t = EPOCH + elapsed
    assert value(timer) == ticks


def test_rate_over_ten_seconds_is_exact(clock, timer):
    clock.t = EPOCH + 100.0
    before = value(timer)
    clock.t += 10.0
    assert value(timer) - before == 10 * PM_TIMER_FREQUENCY


def test_wraps_at_32_bits(clock, timer):
    tick = 1 / PM_TIMER_FREQUENCY
    clock.t = EPOCH + ((1 << 32) - 0.5) * tick
    assert value(timer) == 0xFFFFFFFF
    clock.t = EPOCH + ((1 << 32) + 5.5) * tick  # about 1199.6 s after the epoch
    assert value(timer) == 5


def test_does_not_change_between_ticks(clock, timer):
    clock.t = EPOCH + 10.2 / PM_TIMER_FREQUENCY
    first = value(timer)
    clock.t = EPOCH + 10.8 / PM_TIMER_FREQUENCY
    assert value(timer) == first == 10


def test_narrow_reads_are_byte_lanes_of_the_same_register(clock, timer):
    clock.t = EPOCH + 0x12345678 / PM_TIMER_FREQUENCY + 1e-7
    assert timer.read(0, 4) == bytes.fromhex("78563412")
    assert [timer.read(i, 1) for i in range(4)] == [b"\x78", b"\x56", b"\x34", b"\x12"]
    assert timer.read(0, 2) == b"\x78\x56"
    assert timer.read(2, 2) == b"\x34\x12"


def test_a_read_past_the_register_is_padded_with_all_ones(clock, timer):
    clock.t = EPOCH + 0x0A0B0C0D / PM_TIMER_FREQUENCY + 1e-7
    assert timer.read(2, 4) == b"\x0b\x0a\xff\xff"


def test_writes_are_ignored(clock, timer):
    clock.t = EPOCH + 1.0
    timer.write(0, b"\0\0\0\0")
    assert value(timer) == PM_TIMER_FREQUENCY


def test_the_counter_description_reproduces_every_read(clock, timer):
    desc = timer.counter()
    assert desc == CounterDescription(PM_TIMER_FREQUENCY, EPOCH, 32)
    for elapsed in (0.0, 0.123456, 7.5, 1199.0, 1200.0, 5000.25):
        clock.t = EPOCH + elapsed
        assert desc.value(clock.t) == value(timer)


def test_the_description_is_frozen(timer):
    with pytest.raises(AttributeError):
        timer.counter().epoch = 0.0
