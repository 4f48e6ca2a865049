"""The core's side of the device zygote (devices/process/zygote.py): ask it for a device, hear when one ends.

``ZygoteClient.spawn`` hands the zygote a device's kind, options and descriptors and
returns a ``ZygoteChild``: the part of ``subprocess.Popen``'s interface that the
supervisor (core/supervisor/supervisor.py) uses, so a forked device and a device started as
its own program (under strace) are supervised alike. The zygote is started on
first use, from the thread that calls ``spawn`` (the supervisor's spawner, which
lives as long as the VM: the zygote's PR_SET_PDEATHSIG follows it), and again if
it has died.
"""
from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading

from vmboot.abi.errors import VmbootError
from vmboot.devices import registry
from vmboot.ipc.channel import Channel, ChannelClosed, channel_pair
from vmboot.ipc.protocol import Msg, ProtocolError

log = logging.getLogger("vmboot.zygote")

SPAWN_TIMEOUT = 30.0  # seconds; a fork takes milliseconds
CLOSE_TIMEOUT = 2.0


class ZygoteChild:
    """A device process the zygote forked (the reaper of its namespaces, whose end is the device's)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"device process {self.pid}", timeout)
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def ended(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
            self._ended.set()


class ZygoteClient:
    def __init__(self):
        self.process: subprocess.Popen | None = None
        self.ctl: Channel | None = None
        self._seq = itertools.count(1)
        self._lock = threading.Lock()  # one SPAWN at a time
        self._replied = threading.Condition()
        self._replies: dict[int, ZygoteChild | str] = {}  # seq -> the child, or why not
        self._children: dict[int, ZygoteChild] = {}

    # -- the zygote process -----------------------------------------------------------------------
    def start(self) -> None:
        """Start the zygote now, rather than at the first spawn (vmboot-core starts it first thing,
        so that its start overlaps the core's own)."""
        with self._lock:
            if self.ctl is None:
                self._start()

    def _start(self) -> None:
        ctl, theirs = channel_pair()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "vmboot.devices.process.zygote", "--ctl-fd", str(theirs.fileno()),
                 *(f"--kind-module={m}" for m in registry.outside_modules())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        except OSError as err:
            ctl.close()
            raise VmbootError(f"cannot start the device zygote: {err.strerror}") from None
        finally:
            theirs.close()
        self.ctl = ctl
        threading.Thread(target=self._listen, args=(ctl, self.process), name="zygote", daemon=True).start()

    def _listen(self, ctl: Channel, process: subprocess.Popen) -> None:
        while True:
            try:
                msg = ctl.recv()
            except ChannelClosed:
                break
            except ProtocolError as err:
                log.warning("the device zygote sent a bad message: %s", err)
                continue
            if msg[0] is Msg.EXITED:
                with self._replied:
                    child = self._children.pop(msg[1], None)
                if child is not None:
                    child.ended(msg[2])
            elif msg[0] in (Msg.REPLY, Msg.ERROR) and msg[1] is not None:
                with self._replied:
                    if msg[0] is Msg.REPLY and type(msg[2]) is int:
                        self._children[msg[2]] = self._replies[msg[1]] = ZygoteChild(msg[2])
                    else:
                        self._replies[msg[1]] = str(msg[2])
                    self._replied.notify_all()
            else:
                log.warning("the device zygote: %s", msg[2] if msg[0] is Msg.ERROR else msg[0].name)
        # The zygote is gone, and with it (PR_SET_PDEATHSIG) every device it forked.
        process.wait()
        with self._replied:
            if self.ctl is ctl:
                self.ctl = None
            orphans, self._children = list(self._children.values()), {}
            self._replied.notify_all()
        for child in orphans:
            child.ended(-signal.SIGKILL)

    # -- devices --------------------------------------------------------------------------------
    def spawn(self, kind: str, options: dict, fds: dict[str, int]) -> ZygoteChild:
        """Fork a device with ``fds`` (by name; "ctl" and "evt" among them)."""
        with self._lock:
            for attempt in (1, 2):  # a zygote that died since the last spawn is started again
                if self.ctl is None:
                    self._start()
                ctl, seq = self.ctl, next(self._seq) & 0xFFFFFFFF
                try:
                    ctl.send_with_fds(list(fds.values()), Msg.SPAWN, seq, kind, options, list(fds))
                    break
                except ChannelClosed:
                    with self._replied:
                        if self.ctl is ctl:
                            self.ctl = None
                    if attempt == 2:
                        raise VmbootError(f"cannot start device {kind}: the device zygote is gone") from None
            with self._replied:
                if not self._replied.wait_for(lambda: seq in self._replies or self.ctl is not ctl, SPAWN_TIMEOUT):
                    raise VmbootError(f"cannot start device {kind}: the device zygote did not answer")
                reply = self._replies.pop(seq, None)
            if reply is None:
                raise VmbootError(f"cannot start device {kind}: the device zygote died")
            if isinstance(reply, str):
                raise VmbootError(f"cannot start device {kind}: {reply}")
            return reply

    def close(self) -> None:
        """Hang up: the zygote exits (its devices are already stopped)."""
        with self._replied:
            ctl, self.ctl = self.ctl, None
        if ctl is not None:
            ctl.sock.shutdown(socket.SHUT_RDWR)  # wakes the listener, and the zygote sees end-of-file
            ctl.close()
        if self.process is not None:
            try:
                self.process.wait(CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
