"""One device process as the supervisor sees it: what it was asked to be, and how it is now.

``DeviceConfig`` is fixed when the device is added: its kind, name,
parameters, descriptors and where its events go. ``DeviceProcess`` is what
changes over the device's lives: the process, its channels, the snapshot the
core keeps, its deaths.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Callable

from vmboot.devices.registry import DeviceKind
from vmboot.ipc.channel import Channel
from vmboot.ipc.proxy import DeviceProxy

from .zygote import ZygoteChild


@dataclass
class Events:
    """Where a device's posted events go in the core."""

    irq: Callable[[int, bool], None] = lambda line, level: None
    output: Callable[[int, bytes], None] = lambda window, data: None
    dma: Callable[[int, int], None] = lambda gpa, length: None


@dataclass(frozen=True)
class DeviceConfig:
    kind: DeviceKind
    name: str  # the core's name for this device ("rtc", "disk0")
    params: dict = field(default_factory=dict)  # sent in the HELLO; the kind's build reads them
    events: Events = field(default_factory=Events)
    fds: dict[str, int] = field(default_factory=dict)  # descriptors handed to the device, by name
    fsize: int = 0  # RLIMIT_FSIZE: how far it may write a file (a disk's size)


@dataclass(frozen=True)
class Hello:
    """What the device said of itself when it started (checked by the supervisor)."""

    fast: list = field(default_factory=list)
    features: int = 0
    queue_max_size: int = 0


class DeviceProcess:
    """A device across its lives: started, maybe restarted, finally stopped."""

    def __init__(self, config: DeviceConfig):
        self.config = config
        self.name = config.name
        self.proxy = DeviceProxy(config.name)
        self.proxy.on_hang = self.kill_hung
        self.process: ZygoteChild | subprocess.Popen | None = None  # the reaper of the device's namespaces
        self.evt: Channel | None = None
        self.hello: Hello | None = None
        self.started = threading.Event()  # set at every handshake, and when it will never come
        self.sandboxed = threading.Event()
        self.snapshot: dict | None = None
        self.deaths: list[float] = []
        self.stopping = False
        self.last_pid: int | None = None  # the device's host PID, kept for naming its death
        self.spawned_at = 0.0
        self.hung = False  # killed by the core for not answering
        self.last_death: str | None = None  # how it ended last, as the log says it

    def kill_hung(self) -> None:
        """The device is alive but has not answered a request in CALL_TIMEOUT: kill it, and let
        its death be handled as any other (restart, or stop the VM)."""
        pid = self.last_pid
        if pid is None or self.stopping:
            return
        self.hung = True
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    @property
    def device_pid(self) -> int | None:
        """The device's PID as the host sees it (the reaper's one child)."""
        if self.process is None:
            return None
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as f:
                children = f.read().split()
        except OSError:
            return None
        return int(children[0]) if children else None
