"""A device kind of the tests' own, added as any new kind is: one registration and one policy.

``misbehave`` sits at two ports no firmware uses. Offset 1 is a byte of state
(kept in its snapshots); a write to offset 0 is a command that makes the
device do what a compromised device might: OPENAT calls a syscall its policy
forbids (the kernel kills it with SIGSYS), HANG stops answering for good. The
guest sends the commands (the EFI shell's ``mm PORT VALUE -io``), so the whole
path runs as in production: a port exit, the proxy, the device process, its
death, its restart from its snapshot.

Importing this module registers the kind; vmboot-core run as
``python -m vmboot.tests.fake_core ARGS`` has it on its platform.
"""
from __future__ import annotations

import os
import select
from pathlib import Path

from vmboot.devices.registry import DeviceKind, Restart, Window
from vmboot.devices.served import Served

PORT = 0x7A0
OPENAT, HANG = 1, 2


class Misbehave:
    def __init__(self):
        self.value = 0

    def read(self, offset: int, size: int) -> bytes:
        return bytes(self.value if offset + i == 1 else 0 for i in range(size))

    def write(self, offset: int, data: bytes) -> None:
        for i, byte in enumerate(data):
            if offset + i == 1:
                self.value = byte
            elif offset + i == 0 and byte == OPENAT:
                os.close(os.open("/etc/passwd", os.O_RDONLY))  # no policy allows openat: SIGSYS
            elif offset + i == 0 and byte == HANG:
                select.poll().poll()  # waits on nothing, for ever

    def snapshot(self) -> dict:
        return {"value": self.value}

    def restore(self, state: dict) -> None:
        self.value = int(state["value"]) & 0xFF


def build(params: dict, fds: dict, host) -> Served:
    model = Misbehave()
    return Served({0: model}, state=model)


KIND = DeviceKind(
    "misbehave", Restart.SNAPSHOT, build, windows=(Window(0, PORT, 2, "misbehave"),),
    policy_dir=Path(__file__).resolve().parent / "policies",
)
