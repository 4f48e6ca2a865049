"""The rtc kind as a device process builds it (devices/rtc/kind.py): its windows, events and state."""
from __future__ import annotations

from vmboot.devices import registry
from vmboot.devices.process.main import build
from vmboot.ipc.fastpath import Copy, Mirror, parse_copies, parse_fast_registers
from vmboot.ipc.protocol import Msg


def make(params: dict, posted):
    return build(registry.get("rtc"), "rtc", params, {}, posted)


def test_rtc_keeps_state_and_mirrors_only_its_index_port(posted):
    rtc = make({}, posted)
    counters, mirrors = parse_fast_registers(rtc.info()["fast"])
    assert counters == [] and mirrors == [Mirror(0, 0, 1)]  # port 0x70; never the data port
    assert rtc.state is rtc.windows[0]
    assert isinstance(rtc.handle(Msg.SNAPSHOT, [1]), dict)


def test_the_index_copy_is_what_a_read_of_the_index_port_returns_whatever_was_written(posted):
    rtc = make({}, posted)
    mirror, copy = rtc.mirrors[0]
    cmos = rtc.windows[0]
    for index in (0x00, 0x0A, 0x8D, 0x7F):  # bit 7: NMI disable, as the firmware writes it
        cmos.write(0, bytes((index,)))
        assert copy() == [b"\xff", []]  # no write ends it
        assert cmos.read(0, 1) == b"\xff"
        assert parse_copies([mirror], [copy()]) == [Copy(b"\xff", frozenset())]
    cmos.write(0, b"\x0a")
    assert cmos.read(1, 1) == b"\x26"  # the data port still reads the register the index names
