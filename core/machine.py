"""One run of a virtual machine, from an empty memfd to a stop.

A reset builds a new Machine; nothing survives from one run to the next except
the console.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from vmboot.abi import layout
from vmboot.abi.errors import VmbootError
from vmboot.abi.memory import GuestMemory

from .acpi import AcpiConfig, write_acpi_tables
from .boot.bzimage import boot_kernel
from .boot.pvh import boot_pvh
from .config import VmConfig
from .console import SerialConsole
from .events import Stop, VmEvents
from .platform import Platform
from .stats import BootClock, ConsoleMilestones, report
from .supervisor.supervisor import Supervisor
from .supervisor.zygote import ZygoteClient
from .virtio_host import VirtioDevices

log = logging.getLogger("vmboot")


def make_backend(accel: str, memory: GuestMemory, cpus: int):
    if accel == "kvm":
        from .kvm.backend import KvmBackend
        return KvmBackend(memory, cpus)
    if accel == "emulate":
        from .emulate.backend import EmulateBackend
        return EmulateBackend(memory, cpus)
    raise ValueError(accel)


class DebugOutput:
    """Where port 0x402 writes go (``--debugcon file=PATH``)."""

    def __init__(self, path: Path):
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise VmbootError(f"--debugcon file={path}: {err.strerror}") from None

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def close(self) -> None:
        os.close(self.fd)


class Machine:
    def __init__(self, config: VmConfig, accel: str, console: SerialConsole, clock: BootClock,
                 zygote: ZygoteClient | None = None):
        self.config = config
        self.console = console
        self.clock = clock
        self.events = VmEvents()
        self.memory = None
        self.backend = None
        self.debug_out = None
        self.virtio = None
        self.supervisor = None
        if config.firmware and config.memory < layout.MIN_FIRMWARE_MEMORY:
            raise VmbootError(
                f"--memory size={config.memory >> 20}M is too small: the firmware needs at least "
                f"{layout.MIN_FIRMWARE_MEMORY >> 20}M"
            )
        try:
            self.memory = GuestMemory(config.memory)
            self.backend = make_backend(accel, self.memory, config.cpus)
            if config.debugcon.mode == "file":
                self.debug_out = DebugOutput(config.debugcon.path)
            if config.devices == "sandboxed":
                self.supervisor = Supervisor(config.seccomp, config.log_level, on_fatal=self.events.error,
                                             zygote=zygote)
            self.platform = Platform(
                self.events, self.backend.irq_line, serial_out=console.write,
                debug_out=self.debug_out.write if self.debug_out else None, supervisor=self.supervisor,
            )
            self.virtio = VirtioDevices(self.memory, self.platform, self.backend, self.supervisor,
                                        kernel_eventfds=config.virtio_eventfds == "kernel")
            for index, disk in enumerate(config.disks):
                self.virtio.add_disk(disk, index)
            rsdp = write_acpi_tables(self.memory, AcpiConfig(cpus=config.cpus))
            if config.firmware:
                self.entry = boot_pvh(self.memory, config.firmware, rsdp=rsdp)
            else:
                self.entry = boot_kernel(self.memory, config.kernel, config.initramfs, config.cmdline or "", rsdp)
        except BaseException:
            self.close()
            raise
        self.clock.mark("vm ready")

    def run(self) -> Stop:
        """Run until the guest powers off or resets, the user quits, or something fails."""
        console, events = self.console, self.events
        milestones = ConsoleMilestones(self.clock)
        console.watch(milestones.feed)
        console.attach(self.platform.serial_input)
        self.virtio.start()
        self.backend.start(self.entry, self.platform.io, events)
        while not events.stopped.wait(0.25):
            pass
        self.backend.kick_all()
        self.backend.join()
        self.clock.mark("vm stopped")
        return events.stop

    def stats_report(self) -> str:
        devices = self.supervisor.stats() if self.supervisor is not None else {}
        return report(self.clock, self.platform.ports, self.platform.mmio,
                      {**self.backend.stats(), **self.virtio.stats(), **devices})

    def close(self) -> None:
        if self.supervisor is not None:
            self.supervisor.close()
            self.supervisor = None
        if self.virtio is not None:
            self.virtio.close()
            self.virtio = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None
        if self.debug_out is not None:
            self.debug_out.close()
            self.debug_out = None
        if self.memory is not None:
            self.memory.close()
            self.memory = None
