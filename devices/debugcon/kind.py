"""The firmware's debug console (0x402, mapped only with --debugcon) and the POST code port (0x80)."""
from vmboot.abi import layout
from vmboot.devices.registry import DeviceKind, Restart, Window
from vmboot.devices.served import Served

from .debugcon import DebugCon, PostCodes


def build(params: dict, fds: dict, host) -> Served:
    return Served({0: DebugCon(host.console(0)), 1: PostCodes()})


KIND = DeviceKind(
    "debugcon", Restart.STATELESS, build,
    windows=(Window(0, layout.PORT_DEBUGCON, 1, "debugcon", console="debug"), Window(1, layout.PORT_POST, 1, "post")),
    consoles={0: "debug"},
)
