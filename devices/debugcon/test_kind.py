"""The debugcon kind as a device process builds it (devices/debugcon/kind.py): its windows, events and state."""
from __future__ import annotations

from vmboot.devices import registry
from vmboot.devices.process.main import build
from vmboot.ipc.protocol import Msg


def make(params: dict, posted):
    return build(registry.get("debugcon"), "debugcon", params, {}, posted)


def test_debugcon_output_is_batched_on_window_zero(posted):
    debugcon = make({}, posted)
    assert sorted(debugcon.windows) == [0, 1]
    assert debugcon.info() == {"fast": []}
    debugcon.windows[0].write(0, b"Boot")
    assert posted == []
    debugcon.windows[0].write(0, b"\n")
    assert posted == [(Msg.OUTPUT, 0, b"Boot\n")]
    debugcon.windows[1].write(0, b"\x42")  # a POST code: no event
    assert debugcon.windows[1].read(0, 1) == b"\x42"
    assert posted == [(Msg.OUTPUT, 0, b"Boot\n")]
