"""The CMOS real-time clock and NVRAM at ports 0x70-0x71."""
from vmboot.abi import layout
from vmboot.devices.registry import DeviceKind, Restart, Window
from vmboot.devices.served import Served
from vmboot.ipc.fastpath import Mirror

from .cmos import INDEX, CmosRtc


def build(params: dict, fds: dict, host) -> Served:
    rtc = CmosRtc(now_fn=host.wall_clock)

    def index() -> list:
        value, invalidated_by = rtc.index_copy()
        return [bytes((value,)), list(invalidated_by)]
    # The data port is not mirrored: the clock registers, UIP and the flags (read to clear) change
    # on their own, and which register it reads is the guest's last index write.
    return Served({0: rtc}, state=rtc, mirrors=[(Mirror(0, INDEX, 1), index)])


KIND = DeviceKind(
    "rtc", Restart.SNAPSHOT, build, windows=(Window(0, layout.PORT_RTC, layout.PORT_RTC_SIZE, "rtc"),),
)
