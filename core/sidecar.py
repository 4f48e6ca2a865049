"""Device processes: starting them sandboxed, hearing from them, noticing when they die.

Each device is forked from the VM's device zygote (core/zygote.py,
devices/zygote.py), or, to trace it, started as ``python -m
vmboot.devices.process KIND ...`` under strace; from there both run the same
code. The forked process creates its own user, mount, PID, IPC and network
namespaces and forks again: the device is PID 1 of the new PID namespace, and
the first process stays behind as a reaper that ends exactly as the device did
(devices/sandbox.py). Each dies with its parent (PR_SET_PDEATHSIG), so nothing
outlives the core.

The supervisor waits on every reaper; a death is noticed at once and named
("device rtc killed by SIGSYS: syscall openat"). A device whose state the core
holds (the RTC's last snapshot) or that has none (the PM timer, the debug
ports) is started again and the guest carries on; one that cannot be (a
virtio disk, mid-request) ends the VM with an error.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from vmboot.ipc.channel import Channel, ChannelClosed, channel_pair
from vmboot.ipc.fastpath import parse_fast_registers
from vmboot.ipc.protocol import PROTOCOL_VERSION, Msg, ProtocolError
from vmboot.ipc.proxy import CALL_TIMEOUT, DeviceProxy

from .errors import VmbootError
from .zygote import Zygote, ZygoteChild

log = logging.getLogger("vmboot.sidecar")

HELLO_TIMEOUT = 30.0
EVENT_DRAIN_TIMEOUT = 2.0  # seconds, at close, to read what the stopped devices said last
MAX_RESTARTS = 3
RESTART_WINDOW = 30.0  # seconds: more than MAX_RESTARTS deaths in this long and the device stays dead
TRACE_ENV = "VMBOOT_DEVICE_TRACE"  # a directory: run every device under strace (vmboot-policy check --trace)
TEST_HOOKS_ENV = "VMBOOT_TEST_HOOKS"  # "1": devices accept TEST requests, and TEST_FIFO_ENV is read
TEST_FIFO_ENV = "VMBOOT_TEST_FIFO"  # a FIFO of lines "DEVICE test WHAT" | "DEVICE raw HEX" | "DEVICE big BYTES"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass
class Events:
    """Where a device's posted events go in the core."""

    irq: Callable[[int, bool], None] = lambda line, level: None
    output: Callable[[int, bytes], None] = lambda window, data: None
    dma: Callable[[int, int], None] = lambda gpa, length: None


@dataclass
class Sidecar:
    kind: str
    name: str
    params: dict
    restart: str  # "stateless", "snapshot" or "never"
    events: Events
    fds: dict[str, int] = field(default_factory=dict)  # descriptors handed to the device, by name
    fsize: int = 0
    proxy: DeviceProxy = None
    process: ZygoteChild | subprocess.Popen | None = None  # the reaper of the device's namespaces
    evt: Channel | None = None
    info: dict = field(default_factory=dict)
    snapshot: dict | None = None
    deaths: list[float] = field(default_factory=list)
    sandboxed: threading.Event = field(default_factory=threading.Event)
    stopping: bool = False
    last_pid: int | None = None  # the device's host PID, kept for naming its death
    spawned_at: float = 0.0
    hung: bool = False  # killed by the core for not answering

    def __post_init__(self):
        self.proxy = DeviceProxy(self.name)
        self.proxy.on_hang = self.kill_hung

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
        """The device's PID as the host sees it (the wrapper's one child)."""
        if self.process is None:
            return None
        try:
            with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as f:
                children = f.read().split()
        except OSError:
            return None
        return int(children[0]) if children else None


def trace_file(directory: str, kind: str) -> str:
    """DIR/KIND.strace for the first process of a kind, then DIR/KIND.1.strace, ... (policies/trace.py).
    The file is claimed here, not by strace, so that two devices started together get two."""
    for n in itertools.count():
        path = os.path.join(directory, f"{kind}.strace" if n == 0 else f"{kind}.{n}.strace")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
            return path
        except FileExistsError:
            continue


class Sidecars:
    """Every device process of one VM, and the threads that listen to them."""

    def __init__(self, seccomp: str = "kill", log_level: str = "warn", on_fatal: Callable[[str], None] = None,
                 zygote: Zygote | None = None):
        """``zygote``: the one to fork the devices from, which outlives this VM (vmboot-core
        keeps one across guest resets); without one, the devices get a zygote of their own."""
        self.seccomp = seccomp
        self.log_level = log_level
        self.on_fatal = on_fatal or (lambda message: None)
        self.runtime = tempfile.mkdtemp(prefix="vmboot-")  # mode 0700: the devices' empty roots
        self.sidecars: list[Sidecar] = []
        self._poller_wake_r, self._poller_wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._evt_map: dict[int, Sidecar] = {}
        self._closing = False
        self._event_thread = threading.Thread(target=self._listen, name="device-events", daemon=True)
        self._event_thread.start()
        # Device processes die with the thread that started them (PR_SET_PDEATHSIG
        # follows the parent thread), so one long-lived thread starts them all.
        self._own_zygote = zygote is None and not os.environ.get(TRACE_ENV)
        self._zygote = None if os.environ.get(TRACE_ENV) else zygote or Zygote()
        self._spawn_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._spawner = threading.Thread(target=self._spawn_loop, name="device-spawner", daemon=True)
        self._spawner.start()
        if os.environ.get(TEST_HOOKS_ENV) == "1" and os.environ.get(TEST_FIFO_ENV):
            threading.Thread(target=self._test_commands, args=(os.environ[TEST_FIFO_ENV],),
                             name="test-hooks", daemon=True).start()


    # -- starting -------------------------------------------------------------------------------
    def add(self, sidecar: Sidecar) -> Sidecar:
        """Start a device. The handshake finishes in the background; the first call waits for it."""
        self.sidecars.append(sidecar)
        self._spawn_queue.put(sidecar)
        return sidecar

    def _spawn_loop(self) -> None:
        while True:
            sidecar = self._spawn_queue.get()
            if sidecar is None:
                return
            try:
                launched = self._launch(sidecar)
            except VmbootError as err:
                sidecar.proxy.detach(for_good=True)
                self.on_fatal(str(err))
                continue
            threading.Thread(target=self._handshake_or_fail, args=(sidecar, *launched),
                             name=f"hello-{sidecar.name}", daemon=True).start()

    def _handshake_or_fail(self, sidecar: Sidecar, ctl: Channel, evt: Channel) -> None:
        try:
            self._handshake(sidecar, ctl, evt)
        except VmbootError as err:
            sidecar.proxy.detach(for_good=True)
            self.on_fatal(str(err))

    def _command(self, sidecar: Sidecar, ctl_fd: int, evt_fd: int) -> list[str]:
        """A device as its own program, under strace (VMBOOT_DEVICE_TRACE)."""
        cmd = ["strace", "-f", "-qq", "-o", trace_file(os.environ[TRACE_ENV], sidecar.kind)]
        cmd += [sys.executable, "-m", "vmboot.devices.process", sidecar.kind,
                "--ctl-fd", str(ctl_fd), "--evt-fd", str(evt_fd), "--root", self.runtime,
                "--seccomp", self.seccomp, "--fsize", str(sidecar.fsize)]
        cmd += [f"--fd={name}={fd}" for name, fd in sidecar.fds.items()]
        if os.environ.get(TEST_HOOKS_ENV) == "1":
            cmd.append("--test-hooks")
        return cmd

    def _launch(self, sidecar: Sidecar) -> tuple[Channel, Channel]:
        """Start the process (on the spawner thread); returns the core's ends of its channels."""
        ctl, ctl_theirs = channel_pair()
        evt, evt_theirs = channel_pair()
        passed = [ctl_theirs.fileno(), evt_theirs.fileno(), *sidecar.fds.values()]
        try:
            sidecar.spawned_at = time.monotonic()
            sidecar.hung = False
            if self._zygote is not None:
                sidecar.process = self._zygote.spawn(sidecar.kind, {
                    "root": self.runtime, "seccomp": self.seccomp, "fsize": sidecar.fsize,
                    "test_hooks": os.environ.get(TEST_HOOKS_ENV) == "1",
                }, {"ctl": ctl_theirs.fileno(), "evt": evt_theirs.fileno(), **sidecar.fds})
            else:  # its own program, to run under strace; its own session, as the zygote's
                sidecar.process = subprocess.Popen(
                    self._command(sidecar, ctl_theirs.fileno(), evt_theirs.fileno()),
                    pass_fds=passed, stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        except OSError as err:
            raise VmbootError(f"cannot start device {sidecar.name}: {err.strerror}") from None
        finally:
            ctl_theirs.close()
            evt_theirs.close()
        sidecar.sandboxed.clear()
        return ctl, evt

    def _handshake(self, sidecar: Sidecar, ctl: Channel, evt: Channel) -> None:
        params = dict(sidecar.params, log_level=self.log_level)
        try:
            ctl.send(Msg.HELLO, PROTOCOL_VERSION, sidecar.name, params)
            msg = ctl.recv(HELLO_TIMEOUT)
            if msg[0] is not Msg.HELLO or msg[1] != PROTOCOL_VERSION or len(msg) != 3:
                raise ProtocolError(f"expected HELLO version {PROTOCOL_VERSION}")
            info = msg[2]
            if not isinstance(info, dict):
                raise ProtocolError("HELLO must describe the device in a map")
            counters, mirrors = parse_fast_registers(info.get("fast", []))
        except (ChannelClosed, TimeoutError, ProtocolError) as err:
            self._kill(sidecar)
            raise VmbootError(f"device {sidecar.name} did not start: "
                              f"{err or type(err).__name__}{self._exit_reason(sidecar)}") from None
        sidecar.info = info
        sidecar.last_pid = sidecar.device_pid
        if sidecar.snapshot is not None:
            ctl.send(Msg.RESTORE, 0, sidecar.snapshot)
            reply = ctl.recv(HELLO_TIMEOUT)
            if reply[0] is not Msg.REPLY:
                log.warning("device %s did not take its snapshot back", sidecar.name)
        with self._lock:
            if sidecar.evt is not None:
                self._evt_map.pop(sidecar.evt.fileno(), None)
            sidecar.evt = evt
            self._evt_map[evt.fileno()] = sidecar
        os.write(self._poller_wake_w, b"x")
        sidecar.proxy.attach(ctl, counters, mirrors)
        threading.Thread(target=self._watch, args=(sidecar, sidecar.process), name=f"watch-{sidecar.name}",
                         daemon=True).start()

    def _exit_reason(self, sidecar: Sidecar) -> str:
        proc = sidecar.process
        if proc is None or proc.poll() is None:
            return ""
        return f" ({self._describe_exit(sidecar, proc.returncode)})"

    # -- events from the devices ----------------------------------------------------------------
    def _listen(self) -> None:
        poller = select.poll()
        poller.register(self._poller_wake_r, select.POLLIN)
        registered: set[int] = set()
        while True:
            with self._lock:
                current = dict(self._evt_map)
            if self._closing and not current:
                return  # every device has hung up, and what it said before is delivered
            for fd in current.keys() - registered:
                poller.register(fd, select.POLLIN)
            for fd in registered - current.keys():
                poller.unregister(fd)
            registered = set(current)
            for fd, mask in poller.poll():
                if fd == self._poller_wake_r:
                    os.read(fd, 4096)
                    continue
                sidecar = current.get(fd)
                if sidecar is None:
                    continue
                try:
                    self._event(sidecar, sidecar.evt.recv())
                except ChannelClosed:
                    with self._lock:
                        self._evt_map.pop(fd, None)
                except ProtocolError as err:
                    log.warning("device %s sent a bad event: %s", sidecar.name, err)

    def _event(self, sidecar: Sidecar, msg: list) -> None:
        kind = msg[0]
        if kind is Msg.IRQ:
            sidecar.events.irq(msg[1], msg[2])
        elif kind is Msg.OUTPUT:
            sidecar.events.output(msg[1], msg[2])
        elif kind is Msg.SNAPSHOT:
            if isinstance(msg[1], dict):
                sidecar.snapshot = msg[1]
        elif kind is Msg.DMA:
            for gpa, length in msg[1]:
                sidecar.events.dma(gpa, length)
        elif kind is Msg.HELLO:
            sidecar.sandboxed.set()
        elif kind is Msg.ERROR:
            log.warning("device %s: %s", sidecar.name, msg[2])

    # -- deaths ------------------------------------------------------------------------------------
    def _watch(self, sidecar: Sidecar, process: subprocess.Popen) -> None:
        status = process.wait()
        if sidecar.stopping or self._closing or sidecar.process is not process:
            return
        reason = self._describe_exit(sidecar, status)
        now = time.monotonic()
        sidecar.deaths = [t for t in sidecar.deaths if now - t < RESTART_WINDOW] + [now]
        if sidecar.restart == "never":
            sidecar.proxy.detach(for_good=True)
            self.on_fatal(f"device {sidecar.name} {reason}; the VM cannot continue without it")
            return
        if len(sidecar.deaths) > MAX_RESTARTS:
            sidecar.proxy.detach(for_good=True)
            self.on_fatal(f"device {sidecar.name} {reason}, its {len(sidecar.deaths)}th death in "
                          f"{RESTART_WINDOW:.0f} s; giving up")
            return
        sidecar.proxy.detach(for_good=False)
        log.warning("device %s %s; restarting it%s", sidecar.name, reason,
                    " from its last snapshot" if sidecar.snapshot is not None else "")
        self._spawn_queue.put(sidecar)

    def _describe_exit(self, sidecar: Sidecar, status: int) -> str:
        if sidecar.hung and status == -signal.SIGKILL:
            return f"did not answer for {CALL_TIMEOUT:.0f} s and was killed"
        if status >= 0:
            return f"exited with status {status}"
        sig = -status
        text = f"killed by {signal_name(sig)}"
        if sig == signal.SIGSYS:
            from vmboot.policies.compiler import seccomp_kill_syscall
            syscall = seccomp_kill_syscall(sidecar.last_pid, since=sidecar.spawned_at) if sidecar.last_pid else None
            if syscall:
                text += f": syscall {syscall}"
        return text

    # -- test hooks ---------------------------------------------------------------------------------
    def _test_commands(self, fifo: str) -> None:
        """Tests make a device misbehave through a FIFO; never enabled in normal runs."""
        with open(fifo) as commands:
            for line in commands:
                try:
                    name, verb, arg = line.split()
                    proxy = next(s.proxy for s in self.sidecars if s.name == name)
                    if verb == "test":
                        proxy.call(Msg.TEST, arg)
                    else:
                        payload = bytes.fromhex(arg) if verb == "raw" else b"\x93" * int(arg)
                        with proxy.lock:
                            proxy._channel().send_raw(payload)
                            reply = proxy._channel().recv(5)
                        log.warning("test hook: device %s answered %s", name, reply[0].name)
                except Exception as err:  # a test hook must never take the VM down by itself
                    log.warning("test hook %r: %s", line.strip(), err)

    # -- stopping ---------------------------------------------------------------------------------
    def _kill(self, sidecar: Sidecar) -> None:
        sidecar.stopping = True
        proc = sidecar.process
        if proc is not None and proc.poll() is None:
            proc.kill()  # the reaper: the device's PR_SET_PDEATHSIG takes it along
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                log.warning("device %s did not die", sidecar.name)

    def close(self) -> None:
        """Stop every device. A device reads SHUTDOWN after everything sent before it, and its
        events (the serial output of a guest's last words) are read until it hangs up."""
        self._closing = True
        for sidecar in self.sidecars:
            sidecar.stopping = True
            sidecar.proxy.post(Msg.SHUTDOWN)
        deadline = time.monotonic() + 1.0
        for sidecar in self.sidecars:
            proc = sidecar.process
            if proc is not None:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._kill(sidecar)
        self._spawn_queue.put(None)
        if self._own_zygote:
            self._zygote.close()
        os.write(self._poller_wake_w, b"x")
        self._event_thread.join(EVENT_DRAIN_TIMEOUT)
        if self._event_thread.is_alive():  # it keeps its wake pipe until the process ends
            log.warning("a device left its event channel open; its last events are lost")
        else:
            for fd in (self._poller_wake_r, self._poller_wake_w):
                os.close(fd)
        shutil.rmtree(self.runtime, ignore_errors=True)
