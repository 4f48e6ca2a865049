"""The device zygote on its own: devices forked to order, their ends reported, bad requests refused."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from vmboot.core.supervisor.zygote import ZygoteClient
from vmboot.devices import registry
from vmboot.ipc.channel import channel_pair
from vmboot.ipc.protocol import MAX_FDS, PROTOCOL_VERSION, Msg

from .processes import comm, descendants, status

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def zygote(misbehave):
    z = ZygoteClient()  # its zygote imports the tests' kind too: the registry has it
    yield z
    z.close()


@pytest.fixture
def root():
    with tempfile.TemporaryDirectory(prefix="vmboot-test-") as directory:
        yield directory


def options(root: str, **overrides) -> dict:
    return {"root": root, "seccomp": "kill", "fsize": 0, "policies": str(registry.get("rtc").policy_dir), **overrides}


def start_rtc(zygote: ZygoteClient, root: str, kind: str = "rtc"):
    """A device (the RTC) from the zygote, through its handshake; returns (child, ctl channel)."""
    ctl, ctl_theirs = channel_pair()
    evt, evt_theirs = channel_pair()
    policies = str(registry.get(kind).policy_dir)
    try:
        child = zygote.spawn(kind, options(root, policies=policies), {"ctl": ctl_theirs.fileno(),
                                                                      "evt": evt_theirs.fileno()})
    finally:
        ctl_theirs.close()
        evt_theirs.close()
    ctl.send(Msg.HELLO, PROTOCOL_VERSION, kind, {"log_level": "warn"})
    assert ctl.recv(10)[0] is Msg.HELLO
    assert evt.recv(10) == [Msg.HELLO, PROTOCOL_VERSION, {"sandboxed": "kill"}]
    return child, ctl, evt


def device_of(child) -> int:
    """The device: the one child of the reaper the zygote forked.

    The kernel documents /proc/PID/task/TID/children as exact only for stopped
    children, so an empty read is retried a little; a reaper that has ended
    says how its device did."""
    deadline = time.monotonic() + 2
    while True:
        try:
            children = open(f"/proc/{child.pid}/task/{child.pid}/children").read().split()
        except FileNotFoundError:
            children = []
        if children or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert len(children) == 1, f"the reaper has {children} as children; it ended with {child.poll()}"
    return int(children[0])


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_forked_device_serves_sandboxed_and_exits_0_after_shutdown(zygote, root):
    child, ctl, _ = start_rtc(zygote, root)
    assert comm(child.pid) == "reap:rtc"
    device = device_of(child)
    assert comm(device) == "dev:rtc"
    assert status(device)["Seccomp"] == "2" and status(device)["NoNewPrivs"] == "1"
    assert os.getppid() != child.pid and zygote.process.pid == int(status(child.pid)["PPid"])

    ctl.send(Msg.WRITE, 0, 0, b"\x0a")  # CMOS index 0x0A: status register A
    ctl.send(Msg.READ, 7, 0, 1, 1)
    # divider 010, rate 0110: the power-on value; with the copy of its index port (a mirror)
    assert ctl.recv(10) == [Msg.REPLY, 7, b"\x26", [[b"\xff", []]]]
    ctl.send(Msg.SHUTDOWN)
    assert child.wait(10) == 0
    assert child.poll() == 0


@pytest.mark.parametrize("how, returncode", [
    ("kill the device", -signal.SIGKILL),
    ("kill the reaper", -signal.SIGKILL),
    ("a forbidden syscall", -signal.SIGSYS),
])
def test_the_end_of_a_device_is_reported_as_its_signal(zygote, root, how, returncode):
    from vmboot.tests.fake_device import OPENAT
    child, ctl, _ = start_rtc(zygote, root, "misbehave")
    device = device_of(child)
    if how == "kill the device":
        os.kill(device, signal.SIGKILL)
    elif how == "kill the reaper":
        child.kill()
    else:
        ctl.send(Msg.WRITE, 0, 0, bytes([OPENAT]))  # the guest's command: it calls openat
    assert child.wait(10) == returncode
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{device}") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{device}"), "the device outlived its reaper"


@pytest.fixture
def bare_zygote():
    """The zygote process with no client: the test speaks its protocol itself."""
    ctl, theirs = channel_pair()
    proc = subprocess.Popen([sys.executable, "-m", "vmboot.devices.process.zygote", "--ctl-fd", str(theirs.fileno())],
                            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    theirs.close()
    yield proc, ctl
    ctl.close()
    assert proc.wait(10) == 0  # end-of-file on its channel: it exits, and says nothing
    assert proc.stderr.read() == b""


@pytest.mark.parametrize("kind, opts, names, error", [
    ("nosuch", {}, ["ctl", "evt"], "unknown device kind 'nosuch'"),
    ("rtc", {}, ["ctl", "other"], "a device needs its ctl and evt channels"),
    ("rtc", {}, ["ctl", "ctl"], "2 descriptors for the names ['ctl', 'ctl']"),
    ("rtc", {}, ["ctl"], "2 descriptors for the names ['ctl']"),
    ("rtc", {"seccomp": "none"}, ["ctl", "evt"], "bad options"),
    ("rtc", {"fsize": -1}, ["ctl", "evt"], "bad options"),
    ("rtc", {"extra": 1}, ["ctl", "evt"], "bad options"),
])
def test_a_bad_spawn_is_refused_and_leaks_no_descriptor(bare_zygote, root, kind, opts, names, error):
    proc, ctl = bare_zygote
    ctl.send(Msg.RESET, 1)  # refused, but once answered the zygote has its descriptors open
    assert ctl.recv(10) == [Msg.ERROR, 1, "the zygote does not take RESET"]
    before = fd_count(proc.pid)
    r, w = os.pipe()
    try:
        ctl.send_with_fds([r, w], Msg.SPAWN, 2, kind, options(root, **opts), names)
        reply = ctl.recv(10)
    finally:
        os.close(r)
        os.close(w)
    assert reply[:2] == [Msg.ERROR, 2] and reply[2].startswith(error), reply
    assert fd_count(proc.pid) == before


@pytest.mark.parametrize("raw, error", [
    (b"\xc1", "not a msgpack message"),
    (b"\x91\x63", "unknown message type 99"),
])
def test_garbage_into_the_zygote_is_refused_and_it_carries_on(bare_zygote, root, raw, error):
    proc, ctl = bare_zygote
    ctl.send_raw(raw)
    reply = ctl.recv(10)
    assert reply[:2] == [Msg.ERROR, None] and reply[2].startswith(error)
    assert proc.poll() is None


def test_too_many_descriptors_are_refused_and_closed(bare_zygote, root):
    proc, ctl = bare_zygote
    pipes = [os.pipe() for _ in range(MAX_FDS)]  # 64 descriptors, twice the limit
    before = fd_count(proc.pid)
    try:
        ctl.send_with_fds([fd for pair in pipes for fd in pair], Msg.SPAWN, 1, "rtc", options(root), ["ctl", "evt"])
        assert ctl.recv(10) == [Msg.ERROR, None, f"more than {MAX_FDS} descriptors with one message"]
    finally:
        for pair in pipes:
            os.close(pair[0])
            os.close(pair[1])
    assert fd_count(proc.pid) == before


def test_when_the_zygote_dies_its_devices_die_and_the_next_spawn_starts_another(zygote, root):
    child, _, _ = start_rtc(zygote, root)
    device = device_of(child)
    first = zygote.process.pid
    os.kill(first, signal.SIGKILL)
    assert child.wait(10) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while (os.path.exists(f"/proc/{device}") or os.path.exists(f"/proc/{child.pid}")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not os.path.exists(f"/proc/{device}") and not os.path.exists(f"/proc/{child.pid}")
    again, ctl, _ = start_rtc(zygote, root)
    assert zygote.process.pid != first and again.poll() is None


def test_closing_ends_the_zygote(root):
    zygote = ZygoteClient()
    child, ctl, _ = start_rtc(zygote, root)
    process = zygote.process
    ctl.send(Msg.SHUTDOWN)
    assert child.wait(10) == 0
    zygote.close()
    assert process.returncode == 0
    assert descendants(os.getpid()) & {process.pid, child.pid} == set()


def test_a_zygote_dies_with_its_client_and_takes_its_devices(root):
    # PR_SET_PDEATHSIG: a client process starts a zygote and a device, and is killed.
    code = ("import sys, time\n"
            "from tests.test_zygote import start_rtc\n"
            "from vmboot.core.supervisor.zygote import ZygoteClient\n"
            f"z = ZygoteClient(); c, ctl, evt = start_rtc(z, {root!r})\n"  # held: a closed channel ends it
            "print(z.process.pid, c.pid, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, cwd=REPO)
    pids = {int(p) for p in proc.stdout.readline().split()}
    everything = descendants(proc.pid)
    assert pids <= everything and len(everything) == 3  # zygote, reaper, device
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in everything) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(os.path.exists(f"/proc/{p}") for p in everything)
