"""The platform CloudHv expects: legacy ports, PCI bus 0 and the host bridge.

The platform owns the buses and every device model on them. It knows where
each device lives; the devices themselves do not.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

from vmboot.devices.debugcon.debugcon import DebugCon, PostCodes
from vmboot.devices.pmtimer.pmtimer import PM_TIMER_REGISTER_SIZE, PmTimer
from vmboot.devices.power.power import AcpiSleepControl, I8042Command, PowerEvents, ResetControl
from vmboot.devices.rtc.cmos import CmosRtc
from vmboot.devices.serial.uart16550 import Uart16550

from vmboot.ipc.protocol import Msg, ProtocolError
from vmboot.ipc.proxy import DeviceGone

from . import layout
from .bus import Bus
from .pci.host_bridge import HostBridge
from .pci.root import PciConfigIo, PciRoot
from .sidecar import Events, Sidecar, Sidecars
from .vcpu.dispatch import IoDispatcher

IrqFactory = Callable[[int], Callable[[bool], None]]


class Platform:
    """``sidecars`` (core/sidecar.py) runs the RTC, PM timer, serial port and debug
    ports as sandboxed processes; without it they are models in this process."""

    def __init__(self, events: PowerEvents, irq: IrqFactory, serial_out: Callable[[bytes], None],
                 debug_out: Callable[[bytes], None] | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 sidecars: Sidecars | None = None):
        self.lock = threading.RLock()
        self.ports = Bus("port")
        self.mmio = Bus("mmio")
        self.io = IoDispatcher(self.ports, self.mmio, self.lock)
        self.pci = PciRoot()
        self.pci.attach(0, HostBridge())
        com1_irq = irq(layout.IRQ_COM1)

        if sidecars is None:
            self.uart = Uart16550(tx=serial_out, irq=com1_irq)
            self.rtc = CmosRtc(now_fn=wall_clock)
            self.pmtimer = PmTimer(now_fn=monotonic)
            self.post = PostCodes()
            debugcon = DebugCon(debug_out) if debug_out is not None else None
            self._serial_input = self.uart.receive
        else:
            serial = sidecars.add(Sidecar("serial", "serial", {}, "snapshot", Events(
                irq=lambda line, level: com1_irq(level), output=lambda window, data: serial_out(data))))
            rtc = sidecars.add(Sidecar("rtc", "rtc", {}, "snapshot", Events()))
            pmtimer = sidecars.add(Sidecar("pmtimer", "pmtimer", {"epoch": monotonic()}, "stateless", Events()))
            debug = sidecars.add(Sidecar("debugcon", "debugcon", {}, "stateless", Events(
                output=lambda window, data: debug_out(data) if debug_out else None)))
            self.uart, self.rtc, self.pmtimer = serial.proxy.window(0), rtc.proxy.window(0), pmtimer.proxy.window(0)
            self.post = debug.proxy.window(1)
            debugcon = debug.proxy.window(0) if debug_out is not None else None
            self._serial_input = lambda data: serial.proxy.call(Msg.INPUT, data)

        p = self.ports
        p.register(layout.PORT_COM1, layout.PORT_COM1_SIZE, self.uart, "serial")
        p.register(layout.PORT_RTC, layout.PORT_RTC_SIZE, self.rtc, "rtc")
        p.register(layout.PORT_ACPI_PM_TIMER, PM_TIMER_REGISTER_SIZE, self.pmtimer, "pmtimer")
        p.register(layout.PORT_POST, 1, self.post, "post")
        if debugcon is not None:
            p.register(layout.PORT_DEBUGCON, 1, debugcon, "debugcon")
        p.register(layout.PORT_ACPI_SLEEP, 1, AcpiSleepControl(events), "acpi-sleep")
        p.register(layout.PORT_RESET_CONTROL, 1, ResetControl(events), "reset-control")
        p.register(layout.PORT_I8042_COMMAND, 1, I8042Command(events), "i8042")
        p.register(layout.PORT_PCI_CONFIG, layout.PORT_PCI_CONFIG_SIZE, PciConfigIo(self.pci), "pci-config")

    def serial_input(self, data: bytes) -> int:
        """Console keystrokes into the UART; returns how many bytes it took."""
        with self.lock:
            try:
                return int(self._serial_input(data))
            except (DeviceGone, ProtocolError, ValueError, TypeError):
                return len(data)  # the serial device is gone: the keys go nowhere
