"""Device processes that die or are attacked: the VM restarts them or stops cleanly, never hangs."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time

import pytest

from .console import Console
from .sidecars import alive, descendants, device_processes, make_fat_disk, status

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


@pytest.fixture
def hooks(tmp_path, monkeypatch):
    fifo = tmp_path / "hooks"
    os.mkfifo(fifo)
    monkeypatch.setenv("VMBOOT_TEST_HOOKS", "1")
    monkeypatch.setenv("VMBOOT_TEST_FIFO", str(fifo))
    return fifo


def send_hook(fifo, line: str) -> None:
    with open(fifo, "w") as f:
        f.write(line + "\n")


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


@pytest.mark.parametrize("hook, death", [
    ("openat", "killed by SIGSYS: syscall openat"),  # a forbidden syscall: the death names it
    ("hang", "did not answer for 10 s and was killed"),  # it answers the hook, then never again
])
def test_a_misbehaving_device_is_restarted_from_its_snapshot(firmware, hooks, hook, death):
    with Console("--firmware", str(firmware), "--accel", "emulate") as console:
        err = StderrLog(console.proc)
        core = console.proc.pid
        console.expect(b"Shell> ", timeout=60)
        victim = sandboxed(core, "rtc")
        send_hook(hooks, f"rtc test {hook}")
        time.sleep(0.5)  # the hook is served before the shell's next RTC read
        # A hung device: the shell's RTC read waits CALL_TIMEOUT, the core kills the device,
        # restarts it from its snapshot and asks again, so the command completes 10 s late.
        assert re.search(r"\d\d:\d\d:\d\d \(LOCAL\)", console.command("time", timeout=60))
        err.wait_for(f"device rtc {death}; restarting it from its last snapshot")
        assert sandboxed(core, "rtc") != victim
        everything = descendants(core)
        console.type("reset -s\r")
        assert console.wait(30) == 0
    assert alive(everything) == set()


@pytest.mark.parametrize("hook, rejection", [
    ("raw deadbeef", "not a msgpack message"),
    ("raw 9402", "not a msgpack message"),  # the array promises 4 items and holds 1
    ("raw 91a178", "a message must be an array starting with its type"),
    ("raw 9163", "unknown message type 99"),
    ("raw 9102", "READ has 0 fields, expected 4"),
    ("raw 950201ffff04", "READ field 2 is invalid"),
    ("big 200000", "message over the 131072-byte limit"),
])
def test_garbage_into_a_device_channel_is_rejected(firmware, hooks, hook, rejection):
    with Console("--firmware", str(firmware), "--accel", "emulate") as console:
        err = StderrLog(console.proc)
        core = console.proc.pid
        console.expect(b"Shell> ", timeout=60)
        pid = sandboxed(core, "rtc")
        send_hook(hooks, f"rtc {hook}")
        err.wait_for(f"device rtc: rtc: rejected a message: {rejection}")
        err.wait_for("test hook: device rtc answered ERROR")
        assert device_processes(core)["rtc"] == pid  # still the same process
        assert re.search(r"\d\d:\d\d:\d\d \(LOCAL\)", console.command("time"))
        console.type("reset -s\r")
        assert console.wait(30) == 0
