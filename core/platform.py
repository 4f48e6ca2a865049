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

from . import layout
from .bus import Bus
from .pci.host_bridge import HostBridge
from .pci.root import PciConfigIo, PciRoot
from .vcpu.dispatch import IoDispatcher

IrqFactory = Callable[[int], Callable[[bool], None]]


class Platform:
    def __init__(self, events: PowerEvents, irq: IrqFactory, serial_out: Callable[[bytes], None],
                 debug_out: Callable[[bytes], None] | None = None,
                 wall_clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.lock = threading.RLock()
        self.ports = Bus("port")
        self.mmio = Bus("mmio")
        self.io = IoDispatcher(self.ports, self.mmio, self.lock)

        self.uart = Uart16550(tx=serial_out, irq=irq(layout.IRQ_COM1))
        self.rtc = CmosRtc(now_fn=wall_clock)
        self.pmtimer = PmTimer(now_fn=monotonic)
        self.post = PostCodes()
        self.pci = PciRoot()
        self.pci.attach(0, HostBridge())

        p = self.ports
        p.register(layout.PORT_COM1, layout.PORT_COM1_SIZE, self.uart, "serial")
        p.register(layout.PORT_RTC, layout.PORT_RTC_SIZE, self.rtc, "rtc")
        p.register(layout.PORT_ACPI_PM_TIMER, PM_TIMER_REGISTER_SIZE, self.pmtimer, "pmtimer")
        p.register(layout.PORT_POST, 1, self.post, "post")
        if debug_out is not None:
            p.register(layout.PORT_DEBUGCON, 1, DebugCon(debug_out), "debugcon")
        p.register(layout.PORT_ACPI_SLEEP, 1, AcpiSleepControl(events), "acpi-sleep")
        p.register(layout.PORT_RESET_CONTROL, 1, ResetControl(events), "reset-control")
        p.register(layout.PORT_I8042_COMMAND, 1, I8042Command(events), "i8042")
        p.register(layout.PORT_PCI_CONFIG, layout.PORT_PCI_CONFIG_SIZE, PciConfigIo(self.pci), "pci-config")

    def serial_input(self, data: bytes) -> int:
        """Console keystrokes into the UART; returns how many bytes it took."""
        with self.lock:
            return self.uart.receive(data)
