"""COM1: a 16550 UART at 0x3F8, IRQ 4, the firmware's and the OS's console."""
from vmboot.abi import layout
from vmboot.devices.registry import DeviceKind, Restart, Window
from vmboot.devices.served import Served
from vmboot.ipc.fastpath import Mirror, byte_copy

from .uart16550 import LSR, Uart16550


def build(params: dict, fds: dict, host) -> Served:
    uart = Uart16550(tx=host.console(0), irq=lambda level: host.irq(0, level))

    def register(reg: int):
        return lambda: byte_copy(*uart.register_copy(reg))
    # LSR, polled before every console byte; IER, which Linux's console reads for every message
    # (to mask and restore it); MCR and MSR, which its driver reads to watch the modem lines.
    mirrors = [(Mirror(0, LSR, 1), lambda: byte_copy(*uart.line_status_copy()))]
    mirrors += [(Mirror(0, reg, 1), register(reg)) for reg in Uart16550.PURE_READS]
    return Served({0: uart}, state=uart, mirrors=mirrors, input=uart.receive)


KIND = DeviceKind(
    "serial", Restart.SNAPSHOT, build,
    windows=(Window(0, layout.PORT_COM1, layout.PORT_COM1_SIZE, "serial"),),
    irqs=(layout.IRQ_COM1,), consoles={0: "console"},
)
