"""The pmtimer kind as a device process builds it (devices/pmtimer/kind.py): its windows, events and state."""
from __future__ import annotations

from vmboot.devices import registry
from vmboot.devices.process.main import build
from vmboot.ipc.fastpath import parse_fast_registers


def make(params: dict, posted):
    return build(registry.get("pmtimer"), "pmtimer", params, {}, posted)


def test_pmtimer_declares_its_counter_with_the_core_s_epoch(posted):
    pmtimer = make({"epoch": 12.5}, posted)
    assert pmtimer.info() == {"fast": [
        {"kind": "counter", "window": 0, "offset": 0, "size": 4, "frequency": 3_579_545, "epoch": 12.5, "width": 32},
    ]}
    assert pmtimer.mirrors == [] and pmtimer.outputs == []
    counters, _ = parse_fast_registers(pmtimer.info()["fast"])
    # The core's answer and the device's agree at the same instant.
    now = 20.25
    assert counters[0].read(0, 4, now) == (int(7.75 * 3_579_545) & 0xFFFFFFFF).to_bytes(4, "little")
