"""The ACPI PM timer at port 0x608: a counter the core answers itself (ipc/fastpath.py)."""
from vmboot.abi import layout
from vmboot.devices.registry import DeviceKind, Restart, Window
from vmboot.devices.served import Served
from vmboot.ipc.fastpath import Counter

from .pmtimer import PM_TIMER_REGISTER_SIZE, PmTimer


def build(params: dict, fds: dict, host) -> Served:
    timer = PmTimer(now_fn=host.monotonic, epoch=float(params["epoch"]))
    c = timer.counter()
    return Served({0: timer}, fast=[Counter(0, 0, PM_TIMER_REGISTER_SIZE, c.frequency, c.epoch, c.width).describe()])


KIND = DeviceKind(
    "pmtimer", Restart.STATELESS, build,
    windows=(Window(0, layout.PORT_ACPI_PM_TIMER, PM_TIMER_REGISTER_SIZE, "pmtimer"),),
    params=lambda host: {"epoch": host.monotonic()},  # a restarted timer counts on from the same epoch
)
