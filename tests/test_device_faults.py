"""Device processes that die or are attacked: the VM restarts them or stops cleanly, never hangs."""
from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from vmboot.core.supervisor.device import DeviceConfig
from vmboot.core.supervisor.supervisor import Supervisor
from vmboot.devices import registry
from vmboot.ipc.protocol import Msg
from vmboot.tests import fake_device

from .console import Console
from .processes import alive, descendants, device_processes, make_fat_disk, status

pytestmark = pytest.mark.firmware

STDERR_LOCK = threading.Lock()


class StderrLog:
    """vmboot-core's stderr, read on a thread so that the process never blocks on it."""

    def __init__(self, proc: subprocess.Popen):
        self.text = ""
        self._thread = threading.Thread(target=self._read, args=(proc.stderr,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, b""):
            with STDERR_LOCK:
                self.text += line.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with STDERR_LOCK:
                m = re.search(pattern, self.text)
            if m:
                return m.group(0)
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} on stderr; it said:\n{self.text}")


def sandboxed(core: int, kind: str, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = device_processes(core).get(kind)
        if pid and status(pid).get("Seccomp") == "2":
            return pid
        time.sleep(0.05)
    raise AssertionError(f"device {kind} is not running sandboxed")


@contextlib.contextmanager
def device_channel(name: str):
    """A real device process, started by a supervisor as a VM starts it, and the core's end of its
    control channel, taken from its proxy (the test speaks the protocol itself)."""
    supervisor = Supervisor()
    try:
        device = supervisor.add(DeviceConfig(registry.get(name), name))
        assert device.started.wait(30) and device.sandboxed.wait(30)
        with device.proxy.lock:
            yield device, device.proxy.ctl
    finally:
        supervisor.close()


@pytest.mark.parametrize("kind", ["serial", "rtc", "pmtimer", "debugcon"])
def test_kill_9_during_boot_restarts_the_device(firmware, tmp_path, kind):
    with Console("--firmware", str(firmware), "--accel", "emulate") as console:
        err = StderrLog(console.proc)
        core = console.proc.pid
        victim = sandboxed(core, kind)
        console.expect(b"EDK II", timeout=60)  # the shell is loading: mid-boot
        os.kill(victim, signal.SIGKILL)
        line = err.wait_for(rf"device {kind} killed by SIGKILL; restarting it[^\n]*")
        if kind in ("serial", "rtc"):
            assert line.endswith("from its last snapshot")
        console.expect(b"Shell> ", timeout=60)
        assert sandboxed(core, kind) != victim
        assert "UEFI Interactive Shell v2.2" in console.command("ver")
        if kind == "rtc":
            assert re.search(r"\d\d:\d\d:\d\d \(LOCAL\)", console.command("time"))
        everything = descendants(core)
        console.type("reset -s\r")
        assert console.wait(30) == 0
    assert alive(everything) == set()


def test_killing_the_disk_device_stops_the_vm_cleanly(firmware, tmp_path):
    disk = make_fat_disk(tmp_path / "disk.img")
    with Console("--firmware", str(firmware), "--accel", "emulate", "--disk", f"path={disk}") as console:
        core = console.proc.pid
        victim = sandboxed(core, "virtio_blk")
        everything = descendants(core)
        console.expect(b"EDK II", timeout=60)
        os.kill(victim, signal.SIGKILL)
        assert console.wait(30) == 1
        assert console.proc.stderr.read().decode().splitlines()[-1] == (
            "vmboot-core: device disk0 killed by SIGKILL; the VM cannot continue without it")
    assert alive(everything) == set()


MISBEHAVE = [sys.executable, "-m", "vmboot.tests.fake_core"]  # vmboot-core, with the tests' own kind


def mm(console: Console, port: int, value: int | None = None, timeout: float = 30) -> str:
    """The EFI shell's mm: one byte at an I/O port, written (with a value) or read."""
    text = f"mm {port:X} {value:X}" if value is not None else f"mm {port:X}"
    return console.command(text + " -w 1 -IO -n", timeout=timeout)


@pytest.mark.parametrize("command, death", [
    (fake_device.OPENAT, "killed by SIGSYS: syscall openat"),  # a forbidden syscall: the death names it
    (fake_device.HANG, "did not answer for 10 s and was killed"),  # it takes the write, then never answers
])
def test_a_misbehaving_device_is_restarted_from_its_snapshot(firmware, command, death):
    """The guest commands a device (the tests' own kind, tests/fake_device.py) to misbehave; the
    core kills it if it has to, names its death, and restarts it from its snapshot."""
    with Console("--firmware", str(firmware), "--accel", "emulate", command=MISBEHAVE) as console:
        err = StderrLog(console.proc)
        core = console.proc.pid
        console.expect(b"Shell> ", timeout=60)
        victim = sandboxed(core, "misbehave")
        mm(console, fake_device.PORT + 1, 0x5A)  # its state: kept in every snapshot
        assert "0x5A" in mm(console, fake_device.PORT + 1)
        mm(console, fake_device.PORT, command)
        # A hung device: the next read waits CALL_TIMEOUT, the core kills the device, restarts
        # it from its snapshot and asks again, so the read completes 10 s late.
        assert "0x5A" in mm(console, fake_device.PORT + 1, timeout=60)
        err.wait_for(f"device misbehave {death}; restarting it from its last snapshot")
        assert sandboxed(core, "misbehave") != victim
        assert re.search(r"\d\d:\d\d:\d\d \(LOCAL\)", console.command("time"))
        everything = descendants(core)
        console.type("reset -s\r")
        assert console.wait(30) == 0
    assert alive(everything) == set()


@pytest.mark.parametrize("raw, rejection", [
    (bytes.fromhex("deadbeef"), "not a msgpack message"),
    (bytes.fromhex("9402"), "not a msgpack message"),  # the array promises 4 items and holds 1
    (bytes.fromhex("91a178"), "a message must be an array starting with its type"),
    (bytes.fromhex("9163"), "unknown message type 99"),
    (bytes.fromhex("9102"), "READ has 0 fields, expected 4"),
    (bytes.fromhex("950201ffff04"), "READ field 2 is invalid"),
    pytest.param(b"\x93" * 200000, "message over the 131072-byte limit", id="200000-bytes"),
])
def test_garbage_into_a_device_channel_is_rejected(raw, rejection):
    """A real RTC device process, sandboxed, fed garbage on its real control channel: each
    message is refused with an error reply naming the fault, and the device serves on."""
    with device_channel("rtc") as (device, ctl):
        ctl.send_raw(raw)
        reply = ctl.recv(10)
        assert reply[0] is Msg.ERROR and reply[1] is None and reply[2].startswith(rejection), reply
        ctl.send(Msg.WRITE, 0, 0, b"\x0a")
        ctl.send(Msg.READ, 7, 0, 1, 1)
        # status register A, and the index port's copy: the same process serves on
        assert ctl.recv(10) == [Msg.REPLY, 7, b"\x26", [[b"\xff", []]]]
        assert device.process.poll() is None and device.last_death is None
