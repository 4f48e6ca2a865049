"""The CMOS real-time clock and NVRAM at ports 0x70-0x71."""
from vmboot.abi import layout
from vmboot.devices.registry import DeviceKind, Restart, Window
from vmboot.devices.served import Served

from .cmos import CmosRtc


def build(params: dict, fds: dict, host) -> Served:
    rtc = CmosRtc(now_fn=host.wall_clock)
    return Served({0: rtc}, state=rtc)


KIND = DeviceKind(
    "rtc", Restart.SNAPSHOT, build, windows=(Window(0, layout.PORT_RTC, layout.PORT_RTC_SIZE, "rtc"),),
)
