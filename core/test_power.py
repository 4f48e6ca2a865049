"""Power-off and reset: the ACPI sleep control register (ACPI 6.5 §4.8.3.7),
the reset control register 0xCF9 (Intel ICH/PCH datasheets) and the i8042's
pulse-reset command 0xFE."""
from __future__ import annotations

import pytest

from vmboot.core.events import Outcome, VmEvents
from vmboot.core.power import AcpiSleepControl, I8042Command, ResetControl


class Events:
    def __init__(self):
        self.calls: list[tuple[str, str]] = []

    def poweroff(self, source: str) -> None:
        self.calls.append(("poweroff", source))

    def reset(self, source: str) -> None:
        self.calls.append(("reset", source))

    @property
    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]


@pytest.fixture
def events():
    return Events()


# -- ACPI sleep control (0x600) -------------------------------------------------------


def sleep_value(slp_typ: int, slp_en: bool) -> int:
    return (0x20 if slp_en else 0) | (slp_typ << 2)  # SLP_EN bit 5, SLP_TYPx bits 4:2


def test_slp_en_with_the_s5_type_powers_off(events):
    AcpiSleepControl(events).write(0, bytes([0x34]))  # what our DSDT's _S5 makes the OS write
    assert events.calls == [("poweroff", "ACPI sleep control (S5)")]
    assert sleep_value(5, True) == 0x34


@pytest.mark.parametrize("slp_typ", [0, 1, 2, 3, 4, 6, 7])
def test_other_sleep_types_do_nothing(events, slp_typ):
    AcpiSleepControl(events).write(0, bytes([sleep_value(slp_typ, True)]))
    assert events.calls == []


def test_s5_type_without_slp_en_does_nothing(events):
    AcpiSleepControl(events).write(0, bytes([sleep_value(5, False)]))
    assert events.calls == []


def test_the_fadt_reset_value_resets(events):
    AcpiSleepControl(events).write(0, b"\x01")  # FADT RESET_REG is this port, RESET_VALUE 1
    assert events.calls == [("reset", "ACPI reset register")]


def test_sleep_status_reads_zero(events):
    dev = AcpiSleepControl(events)
    assert dev.read(0, 1) == b"\x00"
    assert dev.read(0, 2) == b"\x00\x00"
    assert events.calls == []


# -- reset control (0xCF9) ------------------------------------------------------------------


def test_0x06_resets(events):
    ResetControl(events).write(0, b"\x06")  # SYS_RST | RST_CPU: EDK2's ResetCold on this port
    assert events.calls == [("reset", "reset control register 0xCF9")]


def test_rst_cpu_alone_resets(events):
    ResetControl(events).write(0, b"\x04")
    assert events.kinds == ["reset"]


def test_sys_rst_alone_only_selects_the_reset_kind(events):
    dev = ResetControl(events)
    dev.write(0, b"\x02")
    assert events.calls == []
    assert dev.read(0, 1) == b"\x02"
    dev.write(0, b"\x06")  # the 0 -> 1 edge of RST_CPU
    assert events.kinds == ["reset"]


def test_rst_cpu_does_not_read_back_so_each_write_is_an_edge(events):
    dev = ResetControl(events)
    dev.write(0, b"\x0e")  # full reset
    assert dev.read(0, 1) == b"\x0a"
    dev.write(0, b"\x06")
    assert events.kinds == ["reset", "reset"]


def test_reset_control_starts_at_zero(events):
    assert ResetControl(events).read(0, 1) == b"\x00"


# -- i8042 (0x64) ----------------------------------------------------------------------------


def test_i8042_pulse_reset_command(events):
    I8042Command(events).write(0, b"\xfe")
    assert events.calls == [("reset", "i8042 reset command")]


@pytest.mark.parametrize("command", [0x20, 0x60, 0xAA, 0xAD, 0xD1, 0xFF])
def test_other_i8042_commands_are_ignored(events, command):
    I8042Command(events).write(0, bytes([command]))
    assert events.calls == []


def test_i8042_status_reads_idle(events):
    # Output buffer empty, input buffer empty: a guest waiting to send a command never spins.
    assert I8042Command(events).read(0, 1) == b"\x00"


# -- with the VM's event object --------------------------------------------------------------


def test_the_first_power_event_decides_the_outcome():
    events = VmEvents()
    AcpiSleepControl(events).write(0, b"\x34")
    ResetControl(events).write(0, b"\x06")
    assert events.stop.outcome is Outcome.POWEROFF
    assert events.stop.message == "guest powered off through the ACPI sleep control (S5)"
