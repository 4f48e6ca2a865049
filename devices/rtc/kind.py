"""The CMOS real-time clock and NVRAM at ports 0x70-0x71."""
from vmboot.abi import layout
from vmboot.devices.registry import DeviceKind, Restart, Window
from vmboot.devices.served import Served
from vmboot.ipc.fastpath import Mirror, byte_copy

from .cmos import INDEX, CmosRtc


def build(params: dict, fds: dict, host) -> Served:
    rtc = CmosRtc(now_fn=host.wall_clock)
    # The data port is not mirrored: the clock registers, UIP and the flags (read to clear) change
    # on their own, and which register it reads is the guest's last index write.
    return Served({0: rtc}, state=rtc, mirrors=[(Mirror(0, INDEX, 1), lambda: byte_copy(*rtc.index_copy()))])


KIND = DeviceKind(
    "rtc", Restart.SNAPSHOT, build, windows=(Window(0, layout.PORT_RTC, layout.PORT_RTC_SIZE, "rtc"),),
)
