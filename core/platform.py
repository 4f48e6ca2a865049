"""The platform CloudHv expects: the legacy devices at their ports, PCI bus 0 and the host bridge.

The platform owns the buses and maps every platform device the registry holds
(devices/registry.py) at the ports its kind declares, wires its interrupt
lines and its consoles, and runs it either as a sandboxed device process (a
``Supervisor``) or as a model in this process. The models never learn where
they live.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from vmboot.abi import layout
from vmboot.devices import registry
from vmboot.devices.registry import Attach, DeviceKind
from vmboot.ipc.protocol import Msg, ProtocolError
from vmboot.ipc.proxy import DeviceGone

from .bus import Bus
from .pci.host_bridge import HostBridge
from .pci.root import PciConfigIo, PciRoot
from .power import AcpiSleepControl, I8042Command, PowerEvents, ResetControl
from .supervisor.device import DeviceConfig, Events
from .supervisor.supervisor import Supervisor
from .vcpu.dispatch import IoDispatcher

IrqFactory = Callable[[int], Callable[[bool], None]]
Sink = Callable[[bytes], None]


class InprocHost:
    """A model's Host (devices/registry.py) in the core (--devices inproc): calls go straight through."""

    def __init__(self, irqs: list[Callable[[bool], None]], sinks: dict[int, Sink | None],
                 wall_clock: Callable[[], float], monotonic: Callable[[], float],
                 dma: Callable[[int, int], None] = lambda gpa, length: None):
        self._irqs, self._sinks, self._dma = irqs, sinks, dma
        self.wall_clock, self.monotonic = wall_clock, monotonic

    def irq(self, line: int, level: bool) -> None:
        self._irqs[line](level)

    def console(self, window: int) -> Sink:
        sink = self._sinks.get(window)
        return sink if sink is not None else (lambda data: None)

    def dma(self, gpa: int, length: int) -> None:
        self._dma(gpa, length)


class Platform:
    """``supervisor`` runs the platform devices as sandboxed processes; without it they are models here.
    A kind names the console sinks it writes: "console" (the VM's console, --serial) or "debug"
    (--debugcon); a window that only serves a sink the machine lacks is left unmapped."""

    def __init__(self, events: PowerEvents, irq: IrqFactory, serial_out: Sink, debug_out: Sink | None = None,
                 wall_clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 supervisor: Supervisor | None = None):
        self.lock = threading.RLock()
        self.ports = Bus("port")
        self.mmio = Bus("mmio")
        self.io = IoDispatcher(self.ports, self.mmio, self.lock)
        self.pci = PciRoot()
        self.pci.attach(0, HostBridge())
        self.consoles: dict[str, Sink | None] = {"console": serial_out, "debug": debug_out}
        self.windows: dict[str, dict[int, object]] = {}  # kind -> window number -> what the bus calls
        self._inputs: list[Callable[[bytes], int]] = []
        for kind in registry.kinds(Attach.PLATFORM):
            self._add(kind, irq, wall_clock, monotonic, supervisor)

        p = self.ports
        p.register(layout.PORT_ACPI_SLEEP, 1, AcpiSleepControl(events), "acpi-sleep")
        p.register(layout.PORT_RESET_CONTROL, 1, ResetControl(events), "reset-control")
        p.register(layout.PORT_I8042_COMMAND, 1, I8042Command(events), "i8042")
        p.register(layout.PORT_PCI_CONFIG, layout.PORT_PCI_CONFIG_SIZE, PciConfigIo(self.pci), "pci-config")

    def _add(self, kind: DeviceKind, irq: IrqFactory, wall_clock, monotonic, supervisor) -> None:
        lines = [irq(gsi) for gsi in kind.irqs]
        sinks = {window: self.consoles.get(sink) for window, sink in kind.consoles.items()}
        host = InprocHost(lines, sinks, wall_clock, monotonic)
        if supervisor is None:
            served = kind.build(kind.params(host), {}, host)
            windows = served.windows
            takes_input = served.input
        else:
            device = supervisor.add(DeviceConfig(kind, kind.name, kind.params(host), Events(
                irq=lambda line, level: lines[line](level) if 0 <= line < len(lines) else None,
                output=lambda window, data: host.console(window)(data))))
            windows = {w.number: device.proxy.window(w.number) for w in kind.windows}
            takes_input = lambda data, proxy=device.proxy: proxy.call(Msg.INPUT, data)  # noqa: E731
        if takes_input is not None and "console" in kind.consoles.values():
            self._inputs.append(takes_input)
        self.windows[kind.name] = windows
        for w in kind.windows:
            if w.console is None or self.consoles.get(w.console) is not None:
                self.ports.register(w.base, w.size, windows[w.number], w.label)

    def serial_input(self, data: bytes) -> int:
        """Console keystrokes into the device that drives the console; how many it took."""
        with self.lock:
            for take in self._inputs:
                try:
                    return int(take(data))
                except (DeviceGone, ProtocolError, ValueError, TypeError):
                    break
            return len(data)  # no serial device, or it is gone: the keys go nowhere
