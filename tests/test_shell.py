"""CloudHv on the emulate backend, to the EFI shell and through it, as a person would."""
from __future__ import annotations

import datetime as dt
import re

import pytest

from .console import Console

pytestmark = pytest.mark.firmware

COUNTDOWN = b"startup.nsh"
PROMPT = b"Shell> "


def boot_to_prompt(console: Console) -> bytes:
    seen = console.expect(COUNTDOWN, timeout=60)
    seen += console.expect(PROMPT, timeout=30)  # after the 5 s countdown
    return seen


def check_shell(console: Console) -> None:
    ver = console.command("ver")
    assert "UEFI Interactive Shell v2.2" in ver
    assert "UEFI v2.70 (EDK II, 0x00010000)" in ver

    pci = console.command("pci")
    assert re.search(r"00\s+00\s+00\s+00 ==> Bridge Device - Host/PCI bridge", pci)
    assert "Vendor 8086 Device 0D57" in pci

    before = dt.datetime.now(dt.timezone.utc)
    time_out = console.command("time")
    after = dt.datetime.now(dt.timezone.utc)
    m = re.search(r"(\d\d):(\d\d):(\d\d) \(LOCAL\)", time_out)
    assert m, time_out
    shown = before.replace(hour=int(m[1]), minute=int(m[2]), second=int(m[3]), microsecond=0)
    assert before - dt.timedelta(seconds=3) <= shown <= after + dt.timedelta(seconds=3), (time_out, before)

    date_out = console.command("date")
    assert re.search(r"\d\d/\d\d/\d{4}", date_out), date_out
    assert date_out.strip() in {d.strftime("%m/%d/%Y") for d in (before, after)}

    console.type("reset -s\r")
    assert console.wait(30) == 0


def test_release_firmware_shell(firmware):
    with Console("--firmware", str(firmware), "--accel", "emulate") as console:
        seen = boot_to_prompt(console)
        assert b"UEFI Interactive Shell v2.2" in seen
        assert b"Press \x1b[1m\x1b[37m\x1b[40mESC\x1b[0m\x1b[37m\x1b[40m in 5 seconds to skip" in seen
        check_shell(console)
        assert console.proc.stderr.read() == b""  # --accel given: nothing to say


def test_debug_firmware_shell_and_its_log(debug_firmware, tmp_path):
    log = tmp_path / "debugcon.log"
    with Console("--firmware", str(debug_firmware), "--accel", "emulate", "--debugcon", f"file={log}") as console:
        boot_to_prompt(console)
        check_shell(console)
    text = log.read_text(errors="replace")
    assert text.startswith("SecCoreStartupWithStack(0x4CC000, 0x820000)\n")
    for line in ("DxeMain: MemoryBaseAddress=", "[Bds]Booting EFI Internal Shell", "Loading driver"):
        assert line in text
    assert "ASSERT" not in text


def test_auto_accel_boots_the_shell_and_says_why(firmware):
    with Console("--firmware", str(firmware)) as console:
        boot_to_prompt(console)
        console.type("reset -s\r")
        assert console.wait(30) == 0
        assert console.proc.stderr.read() == (b"vmboot-core: this host has no VT-x/AMD-V: using the emulate "
                                              b"backend (software CPU)\n")
