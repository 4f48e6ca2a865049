"""The rtc kind as a device process builds it (devices/rtc/kind.py): its windows, events and state."""
from __future__ import annotations

from vmboot.devices import registry
from vmboot.devices.process.main import build
from vmboot.ipc.protocol import Msg


def make(params: dict, posted):
    return build(registry.get("rtc"), "rtc", params, {}, posted)


def test_rtc_keeps_state_and_no_fast_registers(posted):
    rtc = make({}, posted)
    assert rtc.info() == {"fast": []}
    assert rtc.state is rtc.windows[0]
    assert isinstance(rtc.handle(Msg.SNAPSHOT, [1]), dict)
