"""An independent check: ACPICA's own tools (Debian's acpica-tools) read our tables.

- ``iasl -d`` disassembles every table with no error or warning. (iasl cannot
  load an RSDP from a file, "Loading an RSDP is not supported", so the RSDP is
  checked in test_tables.py and by the firmware in test_firmware.py.)
- The disassembled DSDT, compiled again by iasl, is byte-for-byte our AML: our
  encoder writes what iasl writes.
- ``acpiexec``, ACPICA's interpreter (the one Linux runs), loads FACP, DSDT,
  APIC and MCFG and evaluates our objects.
"""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vmboot.core.acpi import AcpiConfig, MmioWindow, build_acpi_tables

CONFIGS = {
    "default": AcpiConfig(),
    "full": AcpiConfig(cpus=4, mmio64=MmioWindow(1 << 36, 1 << 36), ecam=True),
}
PROBLEM = re.compile(r"error|warning|exception", re.IGNORECASE)
SUMMARY = re.compile(r"\b0 Errors, 0 Warnings\b")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: apt-get install acpica-tools (./dev setup does)")
    return path


def run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{output}"
    return output


def problems(output: str) -> list[str]:
    return [line for line in output.splitlines() if PROBLEM.search(line) and not SUMMARY.search(line)]


def write_tables(config: AcpiConfig, where: Path) -> dict[str, Path]:
    files = {}
    for t in build_acpi_tables(config).tables:
        if t.name != "RSDP":
            files[t.name] = where / f"{t.name.lower()}.dat"
            files[t.name].write_bytes(t.data)
    return files


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_iasl_disassembles_every_table_cleanly(config, tmp_path):
    iasl = tool("iasl")
    files = write_tables(config, tmp_path)
    expected = {"XSDT", "FACP", "DSDT", "APIC"} | ({"MCFG"} if config.ecam else set())
    assert set(files) == expected
    for name, path in files.items():
        output = run([iasl, "-d", path.name], tmp_path)
        assert problems(output) == [], f"iasl -d {name}:\n{output}"
        dsl = path.with_suffix(".dsl").read_text()
        assert problems(dsl) == [], f"{name}.dsl has complaints"
        assert f'"{name}"' in dsl


def test_dsdt_disassembly_names_our_devices(tmp_path):
    files = write_tables(CONFIGS["full"], tmp_path)
    run([tool("iasl"), "-d", "dsdt.dat"], tmp_path)
    dsl = (tmp_path / "dsdt.dsl").read_text()
    for text in ("Device (PCI0)", 'EisaId ("PNP0A08")', 'EisaId ("PNP0A03")', "Name (_PRT, Package (0x7C)",
                 "Device (COM1)", 'EisaId ("PNP0501")', "IRQNoFlags ()", "Device (RTC)", 'EisaId ("PNP0B00")',
                 'Name (_HID, "ACPI0007"', "Device (C003)", 'EisaId ("PNP0C02")', "Name (_S5, Package (0x04)",
                 "0x0CF8,             // Range Minimum", "0xFBFFFFFF,         // Range Maximum",
                 "0x0000001FFFFFFFFF, // Range Maximum"):
        assert text in dsl, text
    assert files


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_iasl_recompiles_the_dsdt_to_the_same_aml(config, tmp_path):
    iasl = tool("iasl")
    files = write_tables(config, tmp_path)
    run([iasl, "-d", "dsdt.dat"], tmp_path)
    # -on: keep name paths as written (iasl would shorten \_SB to _SB at the root).
    output = run([iasl, "-on", "-p", "again", "dsdt.dsl"], tmp_path)
    assert problems(output) == [], output
    ours, theirs = files["DSDT"].read_bytes(), (tmp_path / "again.aml").read_bytes()
    assert theirs[36:] == ours[36:]  # the header differs in the compiler ID only


def test_acpiexec_loads_the_tables_and_evaluates_our_objects(tmp_path):
    files = write_tables(CONFIGS["full"], tmp_path)
    commands = "; ".join([
        "evaluate \\_S5",
        "evaluate \\_SB.PCI0._HID",
        "evaluate \\_SB.PCI0._PRT",
        "evaluate \\_SB.COM1._CRS",
        "evaluate \\_SB.C003._UID",
    ])
    tables = [files[name].name for name in ("FACP", "DSDT", "APIC", "MCFG")]
    output = run([tool("acpiexec"), "-b", commands, *tables], tmp_path)
    assert problems(output) == [], output
    assert "1 ACPI AML tables successfully acquired and loaded" in output
    s5 = output.split("Evaluating \\_S5", 1)[1]
    assert re.search(r"Contains 4 Elements:\s+\[Integer\] = 0000000000000005\s+"
                     r"\[Integer\] = 0+\s+\[Integer\] = 0+\s+\[Integer\] = 0+\s", s5)
    assert "[Integer] = 00000000080AD041" in output  # EisaId ("PNP0A08")
    assert "[Package] Contains 124 Elements" in output  # _PRT: 31 slots x 4 pins
    # COM1._CRS: IO (Decode16, 0x3F8, 0x3F8, 1, 8), IRQNoFlags () {4}, End Tag.
    assert "47 01 F8 03 F8 03 01 08 22 10 00 79 00" in output
    assert "[Integer] = 0000000000000003" in output.split("Evaluating \\_SB.C003._UID", 1)[1]
