"""The CMOS RTC against the MC146818A datasheet, through ports 0x70/0x71.

The wall clock is a fake that the tests move by hand. Registers: the address
map, the BCD/binary and 12/24-hour data modes, registers A-D, the update cycle
(Figure 12), plus the PC's century byte at 0x32.
"""
from __future__ import annotations

import calendar

import pytest

from vmboot.devices.rtc.cmos import (
    CMOS_SIZE, REG_A, REG_B, REG_C, REG_CENTURY, REG_D, REG_DAY_OF_MONTH, REG_DAY_OF_WEEK,
    REG_HOURS, REG_HOURS_ALARM, REG_MINUTES, REG_MINUTES_ALARM, REG_MONTH, REG_SECONDS,
    REG_SECONDS_ALARM, REG_YEAR, CmosRtc, from_bcd, to_bcd,
)
from vmboot.tests.fakes import Clock

INDEX, DATA = 0, 1
SET = 0x80
DM_BINARY = 0x04
HOURS_24 = 0x02
UIP = 0x80
PM = 0x80

# Thursday 29 February 2024, 13:45:30 UTC.
LEAP_DAY = calendar.timegm((2024, 2, 29, 13, 45, 30))


@pytest.fixture
def clock():
    return Clock(LEAP_DAY + 0.25)  # a quarter into the second: far from the update


@pytest.fixture
def rtc(clock):
    return CmosRtc(now_fn=clock)


def get(rtc: CmosRtc, reg: int) -> int:
    rtc.write(INDEX, bytes([reg]))
    return rtc.read(DATA, 1)[0]


def put(rtc: CmosRtc, reg: int, value: int) -> None:
    rtc.write(INDEX, bytes([reg]))
    rtc.write(DATA, bytes([value]))


def calendar_regs(rtc: CmosRtc) -> tuple[int, ...]:
    regs = (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY_OF_WEEK, REG_DAY_OF_MONTH, REG_MONTH,
            REG_YEAR, REG_CENTURY)
    return tuple(get(rtc, r) for r in regs)


def set_time(rtc: CmosRtc, values: dict[int, int]) -> None:
    """Set the clock the way EDK2's PcRtc and Linux do: SET, the registers, then SET off."""
    b = get(rtc, REG_B)
    put(rtc, REG_B, b | SET)
    for reg, value in values.items():
        put(rtc, reg, value)
    put(rtc, REG_B, b)


# -- encodings ---------------------------------------------------------------------------


def test_bcd_helpers_round_trip():
    assert [to_bcd(v) for v in (0, 9, 10, 59, 99)] == [0x00, 0x09, 0x10, 0x59, 0x99]
    assert all(from_bcd(to_bcd(v)) == v for v in range(100))


def test_default_is_bcd_24_hour(rtc):
    assert get(rtc, REG_B) == HOURS_24
    # seconds, minutes, hours, day of week (Sunday = 1), date, month, year, century
    assert calendar_regs(rtc) == (0x30, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20)


def test_binary_mode(rtc):
    put(rtc, REG_B, HOURS_24 | DM_BINARY)
    assert calendar_regs(rtc) == (30, 45, 13, 5, 29, 2, 24, 20)


@pytest.mark.parametrize("hour, bcd, binary", [
    (0, 0x12, 12),  # midnight is 12 AM
    (1, 0x01, 1),
    (11, 0x11, 11),
    (12, PM | 0x12, PM | 12),  # noon is 12 PM
    (13, PM | 0x01, PM | 1),
    (23, PM | 0x11, PM | 11),
])
def test_12_hour_mode_sets_the_pm_bit(clock, rtc, hour, bcd, binary):
    clock.t = calendar.timegm((2024, 2, 29, hour, 0, 0)) + 0.5
    put(rtc, REG_B, 0)
    assert get(rtc, REG_HOURS) == bcd
    put(rtc, REG_B, DM_BINARY)
    assert get(rtc, REG_HOURS) == binary


@pytest.mark.parametrize("day, weekday", [(3, 1), (4, 2), (5, 3), (6, 4), (7, 5), (8, 6), (9, 7)])
def test_day_of_week_counts_from_sunday(clock, rtc, day, weekday):
    clock.t = calendar.timegm((2024, 3, day, 12, 0, 0))
    assert get(rtc, REG_DAY_OF_WEEK) == weekday


# -- the running clock ------------------------------------------------------------------------


def test_the_clock_follows_the_host_second_by_second(clock, rtc):
    clock.t += 0.7
    assert get(rtc, REG_SECONDS) == 0x30
    clock.t += 0.3  # 13:45:31.25
    assert get(rtc, REG_SECONDS) == 0x31
    clock.t += 29  # 13:46:00.25
    assert (get(rtc, REG_SECONDS), get(rtc, REG_MINUTES)) == (0x00, 0x46)


def test_the_century_rolls_over(clock, rtc):
    clock.t = calendar.timegm((2099, 12, 31, 23, 59, 59)) + 0.5
    assert calendar_regs(rtc) == (0x59, 0x59, 0x23, 0x05, 0x31, 0x12, 0x99, 0x20)
    clock.t += 1
    assert calendar_regs(rtc) == (0x00, 0x00, 0x00, 0x06, 0x01, 0x01, 0x00, 0x21)


# -- update in progress ------------------------------------------------------------------------------


def test_register_a_defaults_to_the_32khz_time_base_and_1024hz(rtc):
    assert get(rtc, REG_A) == 0x26


@pytest.mark.parametrize("fraction, uip", [(0.0, False), (0.5, False), (0.9975, False),
                                           (0.9980, True), (0.9999, True)])
def test_uip_rises_2228_us_before_the_second_changes(clock, rtc, fraction, uip):
    # 244 us of warning plus the 1984 us update cycle (Figure 12).
    clock.t = LEAP_DAY + fraction
    assert bool(get(rtc, REG_A) & UIP) is uip
    assert get(rtc, REG_A) & ~UIP == 0x26


def test_uip_clear_guarantees_244_us_of_stable_registers(clock, rtc):
    clock.t = LEAP_DAY + 0.9977  # the last moment UIP reads 0
    assert not get(rtc, REG_A) & UIP
    seconds = get(rtc, REG_SECONDS)
    clock.t += 244e-6
    assert get(rtc, REG_SECONDS) == seconds


def test_set_clears_uip(clock, rtc):
    clock.t = LEAP_DAY + 0.999
    put(rtc, REG_B, HOURS_24 | SET)
    assert not get(rtc, REG_A) & UIP
    put(rtc, REG_B, HOURS_24)
    assert get(rtc, REG_A) & UIP


def test_uip_is_read_only(rtc):
    put(rtc, REG_A, 0xFF)
    assert get(rtc, REG_A) == 0x7F


# -- setting the time --------------------------------------------------------------------------


def test_set_freezes_the_clock(clock, rtc):
    put(rtc, REG_B, HOURS_24 | SET)
    clock.t += 5
    assert get(rtc, REG_SECONDS) == 0x30
    assert get(rtc, REG_B) == HOURS_24 | SET


def test_time_written_under_set_runs_from_the_moment_set_clears(clock, rtc):
    put(rtc, REG_B, HOURS_24 | SET)
    for reg, value in {REG_SECONDS: 0x10, REG_MINUTES: 0x09, REG_HOURS: 0x08,
                       REG_DAY_OF_MONTH: 0x15, REG_MONTH: 0x06, REG_YEAR: 0x30}.items():
        put(rtc, reg, value)
        assert get(rtc, reg) == value  # the frozen registers hold what was written
    clock.t += 10  # time passes while SET is held; the clock does not
    put(rtc, REG_B, HOURS_24)
    # Saturday 15 June 2030, 08:09:10
    assert calendar_regs(rtc) == (0x10, 0x09, 0x08, 0x07, 0x15, 0x06, 0x30, 0x20)
    assert rtc.offset == calendar.timegm((2030, 6, 15, 8, 9, 10)) - int(clock.t)
    clock.t += 1
    assert get(rtc, REG_SECONDS) == 0x11


def test_time_is_set_in_binary_mode(clock, rtc):
    put(rtc, REG_B, HOURS_24 | DM_BINARY)
    set_time(rtc, {REG_HOURS: 23, REG_MINUTES: 59, REG_SECONDS: 58})
    assert (get(rtc, REG_HOURS), get(rtc, REG_MINUTES), get(rtc, REG_SECONDS)) == (23, 59, 58)
    put(rtc, REG_B, HOURS_24)
    assert get(rtc, REG_HOURS) == 0x23


@pytest.mark.parametrize("written, hour24", [(0x12, 0x00), (PM | 0x12, 0x12), (PM | 0x07, 0x19), (0x07, 0x07)])
def test_time_is_set_in_12_hour_mode(rtc, written, hour24):
    put(rtc, REG_B, 0)
    set_time(rtc, {REG_HOURS: written})
    assert get(rtc, REG_HOURS) == written
    put(rtc, REG_B, HOURS_24)
    assert get(rtc, REG_HOURS) == hour24


def test_a_write_without_set_moves_the_clock_at_once(clock, rtc):
    put(rtc, REG_MINUTES, 0x00)  # Linux's set_rtc_mmss style
    assert calendar_regs(rtc) == (0x30, 0x00, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20)
    assert rtc.offset == -45 * 60


def test_the_century_byte_moves_the_clock_by_centuries(clock, rtc):
    set_time(rtc, {REG_CENTURY: 0x21})
    assert (get(rtc, REG_YEAR), get(rtc, REG_CENTURY)) == (0x24, 0x21)
    assert get(rtc, REG_DAY_OF_WEEK) == 0x03  # 29 February 2124 is a Tuesday


def test_a_nonsensical_date_leaves_the_clock_alone(clock, rtc):
    set_time(rtc, {REG_MONTH: 0x13})
    assert rtc.offset == 0
    assert calendar_regs(rtc) == (0x30, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20)


# -- status registers ---------------------------------------------------------------------------


def test_register_d_always_reports_valid_ram_and_time(rtc):
    assert get(rtc, REG_D) == 0x80
    put(rtc, REG_D, 0x00)
    assert get(rtc, REG_D) == 0x80


def test_register_c_clears_when_read(clock):
    rtc = CmosRtc(now_fn=clock)
    state = rtc.snapshot()
    ram = bytearray(state["ram"])
    ram[REG_C] = 0xF0  # IRQF, PF, AF, UF, as a restored machine may hold them
    rtc.restore({**state, "ram": bytes(ram)})
    assert get(rtc, REG_C) == 0xF0
    assert get(rtc, REG_C) == 0x00


def test_register_c_is_read_only(rtc):
    put(rtc, REG_C, 0xFF)
    assert get(rtc, REG_C) == 0x00


def test_register_b_keeps_its_interrupt_enables(rtc):
    put(rtc, REG_B, 0x7F)
    assert get(rtc, REG_B) == 0x7F


# -- NVRAM and the index register ------------------------------------------------------------------


def test_alarm_registers_are_plain_storage(clock, rtc):
    for reg, value in ((REG_SECONDS_ALARM, 0x15), (REG_MINUTES_ALARM, 0xC0), (REG_HOURS_ALARM, 0x07)):
        put(rtc, reg, value)
    assert [get(rtc, r) for r in (REG_SECONDS_ALARM, REG_MINUTES_ALARM, REG_HOURS_ALARM)] == [0x15, 0xC0, 0x07]
    assert rtc.offset == 0


def test_nvram_bytes_keep_their_values(rtc):
    nvram = [r for r in range(0x0E, CMOS_SIZE) if r != REG_CENTURY]
    for reg in nvram:
        put(rtc, reg, reg ^ 0xA5)
    assert [get(rtc, reg) for reg in nvram] == [reg ^ 0xA5 for reg in nvram]


def test_index_bit_7_is_the_nmi_mask_not_an_address(rtc):
    put(rtc, 0x40, 0x99)
    rtc.write(INDEX, bytes([0x80 | 0x40]))
    assert rtc.read(DATA, 1) == b"\x99"


def test_the_index_register_reads_all_ones(rtc):
    rtc.write(INDEX, b"\x10")
    assert rtc.read(INDEX, 1) == b"\xff"


def test_initial_nvram_is_loaded_but_status_registers_are_reset(clock):
    image = bytes(range(200))
    rtc = CmosRtc(now_fn=clock, nvram=image)
    assert get(rtc, 0x0E) == 0x0E
    assert get(rtc, 0x7F) == 0x7F
    assert (get(rtc, REG_A), get(rtc, REG_B), get(rtc, REG_C), get(rtc, REG_D)) == (0x26, HOURS_24, 0x00, 0x80)


# -- snapshots ------------------------------------------------------------------------------------


def test_snapshot_carries_nvram_index_and_time(clock, rtc):
    put(rtc, 0x20, 0x42)
    set_time(rtc, {REG_YEAR: 0x31})
    rtc.write(INDEX, bytes([REG_YEAR]))
    state = rtc.snapshot()
    other = CmosRtc(now_fn=clock)
    other.restore(state)
    assert other.read(DATA, 1) == b"\x31"  # the index survived
    assert calendar_regs(other) == calendar_regs(rtc)
    assert get(other, 0x20) == 0x42


def test_snapshot_while_set_is_held_keeps_the_frozen_registers(clock, rtc):
    put(rtc, REG_B, HOURS_24 | SET)
    put(rtc, REG_SECONDS, 0x05)
    put(rtc, REG_MINUTES, 0x04)
    other = CmosRtc(now_fn=clock)
    other.restore(rtc.snapshot())
    put(other, REG_HOURS, 0x03)
    put(other, REG_B, HOURS_24)
    assert (get(other, REG_HOURS), get(other, REG_MINUTES), get(other, REG_SECONDS)) == (0x03, 0x04, 0x05)


def test_restore_of_a_running_clock_releases_set(clock, rtc):
    running = rtc.snapshot()
    put(rtc, REG_B, HOURS_24 | SET)
    rtc.restore(running)
    clock.t += 3
    assert get(rtc, REG_SECONDS) == 0x33
