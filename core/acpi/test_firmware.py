"""The CloudHv firmware accepts our tables: it installs them and the EFI shell sees them.

The firmware walks start_info.rsdp_paddr -> XSDT, installs every table it finds
(and the DSDT through the FADT's X_DSDT), then publishes its own RSDP and XSDT
in the EFI configuration table (OvmfPkg/AcpiPlatformDxe/CloudHvAcpi.c). It
asserts and hangs when the XSDT has no FACP. The shell's ``dmem`` prints the
address of that "ACPI 2.0 Table"; the test walks the firmware's tables from
there in guest memory and finds ours. (This CloudHv build's shell has no
``acpiview`` command.)

The test runs on the emulate backend, which boots the firmware on any host.
"""
from __future__ import annotations

import re
import struct
import time

import pytest

from vmboot.abi.memory import GuestMemory
from vmboot.assets.firmware import firmware_path
from vmboot.core.acpi import AcpiConfig, build_acpi_tables, write_acpi_tables
from vmboot.core.boot.pvh import boot_pvh
from vmboot.core.events import Outcome, VmEvents
from vmboot.core.platform import Platform

pytestmark = pytest.mark.firmware

MEMORY = 128 << 20
SHELL_TIMEOUT = 30.0
ACPI20_TABLE = re.compile(rb"ACPI 2\.0 Table\s+([0-9A-F]{16})")
ANSI = re.compile(rb"\x1b\[[0-9;]*[A-Za-z]")


@pytest.fixture(scope="module")
def firmware():
    path = firmware_path("release", build=False)
    if not path.exists():
        pytest.fail(f"{path} is missing: build it with `vmboot-assets firmware` (./dev setup does)")
    return path


class FirmwareVm:
    """CloudHv on the emulate backend with our ACPI tables, driven through COM1."""

    def __init__(self, firmware, config: AcpiConfig):
        from vmboot.core.emulate.backend import EmulateBackend
        self.memory = GuestMemory(MEMORY)
        self.events = VmEvents()
        self.serial = bytearray()
        self.backend = EmulateBackend(self.memory)
        self.platform = Platform(self.events, self.backend.irq_line, serial_out=self.serial.extend)
        rsdp = write_acpi_tables(self.memory, config)
        self.backend.start(boot_pvh(self.memory, firmware, rsdp=rsdp), self.platform.io, self.events)

    def console(self) -> bytes:
        return ANSI.sub(b"", bytes(self.serial))

    def wait_for(self, pattern: re.Pattern | bytes, timeout: float, since: int = 0):
        pattern = re.compile(re.escape(pattern)) if isinstance(pattern, bytes) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.events.stopped.is_set():
            found = pattern.search(self.console(), since)
            if found:
                return found
            time.sleep(0.05)
        tail = self.console()[-600:].decode(errors="replace")
        stop = self.events.stop.message if self.events.stopped.is_set() else "still running"
        pytest.fail(f"no {pattern.pattern!r} on the console after {timeout} s ({stop}); console ends:\n{tail}")

    def type(self, text: bytes) -> None:
        self.platform.serial_input(text)

    def close(self) -> None:
        if not self.events.stopped.is_set():
            self.events.request(Outcome.ERROR, "test finished")
        self.backend.kick_all()
        self.backend.join()
        self.backend.close()
        self.memory.close()


def installed_tables(memory: GuestMemory, rsdp: int) -> dict[str, bytes]:
    """The firmware's RSDP -> XSDT -> tables, and the DSDT its FADT points to."""
    sig, _, _, revision, _, _, xsdt = struct.unpack("<8sB6sBIIQ", memory.read(rsdp, 32))
    assert (sig, revision) == (b"RSD PTR ", 2)
    assert sum(memory.read(rsdp, 36)) % 256 == 0

    def table(address: int) -> bytes:
        length = struct.unpack("<I", memory.read(address + 4, 4))[0]
        data = memory.read(address, length)
        assert sum(data) % 256 == 0, f"checksum of the installed {data[:4]!r}"
        return data

    root = table(xsdt)
    assert root[:4] == b"XSDT"
    tables = {}
    for (address,) in struct.iter_unpack("<Q", root[36:]):
        data = table(address)
        tables[data[:4].decode()] = data
    tables["DSDT"] = table(struct.unpack_from("<Q", tables["FACP"], 140)[0])
    return tables


def test_firmware_installs_our_tables(firmware):
    config = AcpiConfig(cpus=1)
    ours = {t.name: t.data for t in build_acpi_tables(config).tables}
    vm = FirmwareVm(firmware, config)
    try:
        vm.wait_for(b"Shell>", SHELL_TIMEOUT)
        start = len(vm.console())
        vm.type(b"dmem\r")
        rsdp = int(vm.wait_for(ACPI20_TABLE, 10.0, since=start).group(1), 16)
        tables = installed_tables(vm.memory, rsdp)
    finally:
        vm.close()
    assert {"FACP", "APIC", "DSDT"} <= set(tables)
    assert "MCFG" not in tables
    # The MADT and the DSDT are installed as they are; the firmware rewrites
    # only the FADT's FACS and DSDT pointers.
    assert tables["APIC"] == ours["APIC"]
    assert tables["DSDT"][36:] == ours["DSDT"][36:]
    assert tables["DSDT"][10:16] == b"VMBOOT"
    facp = tables["FACP"]
    assert facp[10:16] == b"VMBOOT"
    assert facp[44:140] == ours["FACP"][44:140]  # flags, registers, RESET_VALUE, minor version
    assert facp[148:] == ours["FACP"][148:]  # the extended registers, sleep registers
