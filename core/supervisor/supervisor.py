"""The supervisor: starting a VM's device processes sandboxed, hearing from them, noticing when they die.

Each device is forked from the VM's device zygote (core/supervisor/zygote.py,
devices/process/zygote.py), or, to trace it, started as ``python -m
vmboot.devices.process KIND ...`` under strace; from there both run the same
code. The forked process creates its own user, mount, PID, IPC and network
namespaces and forks again: the device is PID 1 of the new PID namespace, and
the first process stays behind as a reaper that ends exactly as the device did
(devices/process/sandbox.py). Each dies with its parent (PR_SET_PDEATHSIG), so
nothing outlives the core.

The supervisor waits on every reaper; a death is noticed at once and named
("device rtc killed by SIGSYS: syscall openat"), and handled by the kind's
restart policy (devices/registry.py): a device whose state the core holds (the
RTC's last snapshot) or that has none (the PM timer, the debug ports) is
started again and the guest carries on; one that cannot be (a virtio disk,
mid-request) ends the VM with an error.
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
from typing import Callable

from vmboot.abi.errors import VmbootError
from vmboot.abi.virtio import VIRTQ_MAX_SIZE
from vmboot.devices import registry
from vmboot.devices.registry import Restart
from vmboot.ipc.channel import Channel, ChannelClosed, channel_pair
from vmboot.ipc.fastpath import parse_fast_registers
from vmboot.ipc.protocol import PROTOCOL_VERSION, Msg, ProtocolError
from vmboot.ipc.proxy import CALL_TIMEOUT
from vmboot.policies.verdict import seccomp_kill_syscall

from .device import DeviceConfig, DeviceProcess, Hello
from .zygote import ZygoteClient

log = logging.getLogger("vmboot.supervisor")

HELLO_TIMEOUT = 30.0
EVENT_DRAIN_TIMEOUT = 2.0  # seconds, at close, to read what the stopped devices said last
MAX_RESTARTS = 3
RESTART_WINDOW = 30.0  # seconds: more than MAX_RESTARTS deaths in this long and the device stays dead
TRACE_ENV = "VMBOOT_DEVICE_TRACE"  # a directory: run every device under strace (vmboot-policy check --trace)


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


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


class Supervisor:
    """Every device process of one VM, and the threads that listen to them."""

    def __init__(self, seccomp: str = "kill", log_level: str = "warn", on_fatal: Callable[[str], None] = None,
                 zygote: ZygoteClient | None = None, trace_dir: str | None = None):
        """``zygote``: the one to fork the devices from, which outlives this VM (vmboot-core
        keeps one across guest resets); without one, the devices get a zygote of their own.
        ``trace_dir`` (or $VMBOOT_DEVICE_TRACE): run each device as its own program under strace."""
        self.seccomp = seccomp
        self.log_level = log_level
        self.on_fatal = on_fatal or (lambda message: None)
        self.runtime = tempfile.mkdtemp(prefix="vmboot-")  # mode 0700: the devices' empty roots
        self.devices: list[DeviceProcess] = []
        self._poller_wake_r, self._poller_wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._lock = threading.Lock()
        self._evt_map: dict[int, DeviceProcess] = {}
        self._closing = False
        self._event_thread = threading.Thread(target=self._listen, name="device-events", daemon=True)
        self._event_thread.start()
        # Device processes die with the thread that started them (PR_SET_PDEATHSIG
        # follows the parent thread), so one long-lived thread starts them all.
        self.trace_dir = trace_dir or os.environ.get(TRACE_ENV) or None
        self._own_zygote = zygote is None and not self.trace_dir
        self._zygote = None if self.trace_dir else zygote or ZygoteClient()
        self._spawn_queue: queue.SimpleQueue = queue.SimpleQueue()
        self._spawner = threading.Thread(target=self._spawn_loop, name="device-spawner", daemon=True)
        self._spawner.start()

    # -- starting -------------------------------------------------------------------------------
    def add(self, config: DeviceConfig) -> DeviceProcess:
        """Start a device. The handshake finishes in the background; the first call waits for it."""
        device = DeviceProcess(config)
        self.devices.append(device)
        self._spawn_queue.put(device)
        return device

    def _spawn_loop(self) -> None:
        while True:
            device = self._spawn_queue.get()
            if device is None:
                return
            try:
                launched = self._launch(device)
            except VmbootError as err:
                self._give_up(device, str(err))
                continue
            threading.Thread(target=self._handshake_or_fail, args=(device, *launched),
                             name=f"hello-{device.name}", daemon=True).start()

    def _give_up(self, device: DeviceProcess, why: str) -> None:
        device.proxy.detach(for_good=True)
        device.started.set()  # nobody waits for a hello that will never come
        self.on_fatal(why)

    def _handshake_or_fail(self, device: DeviceProcess, ctl: Channel, evt: Channel) -> None:
        try:
            self._handshake(device, ctl, evt)
        except VmbootError as err:
            self._give_up(device, str(err))

    def _command(self, device: DeviceProcess, ctl_fd: int, evt_fd: int) -> list[str]:
        """A device as its own program, under strace (VMBOOT_DEVICE_TRACE)."""
        config = device.config
        cmd = ["strace", "-f", "-qq", "-o", trace_file(self.trace_dir, config.kind.name)]
        cmd += [sys.executable, "-m", "vmboot.devices.process", config.kind.name,
                "--ctl-fd", str(ctl_fd), "--evt-fd", str(evt_fd), "--root", self.runtime,
                "--seccomp", self.seccomp, "--fsize", str(config.fsize), "--policies", str(config.kind.policy_dir)]
        cmd += [f"--kind-module={module}" for module in registry.outside_modules()]
        cmd += [f"--fd={name}={fd}" for name, fd in config.fds.items()]
        return cmd

    def _launch(self, device: DeviceProcess) -> tuple[Channel, Channel]:
        """Start the process (on the spawner thread); returns the core's ends of its channels."""
        config = device.config
        ctl, ctl_theirs = channel_pair()
        evt, evt_theirs = channel_pair()
        try:
            device.spawned_at = time.monotonic()
            device.hung = False
            if self._zygote is not None:
                device.process = self._zygote.spawn(
                    config.kind.name, {"root": self.runtime, "seccomp": self.seccomp, "fsize": config.fsize,
                                       "policies": str(config.kind.policy_dir)},
                    {"ctl": ctl_theirs.fileno(), "evt": evt_theirs.fileno(), **config.fds})
            else:  # its own program, to run under strace; its own session, as the zygote's
                device.process = subprocess.Popen(
                    self._command(device, ctl_theirs.fileno(), evt_theirs.fileno()),
                    pass_fds=[ctl_theirs.fileno(), evt_theirs.fileno(), *config.fds.values()],
                    stdin=subprocess.DEVNULL, close_fds=True, start_new_session=True)
        except OSError as err:
            raise VmbootError(f"cannot start device {device.name}: {err.strerror}") from None
        finally:
            ctl_theirs.close()
            evt_theirs.close()
        device.sandboxed.clear()
        return ctl, evt

    def _handshake(self, device: DeviceProcess, ctl: Channel, evt: Channel) -> None:
        params = dict(device.config.params, log_level=self.log_level)
        try:
            ctl.send(Msg.HELLO, PROTOCOL_VERSION, device.name, params)
            msg = ctl.recv(HELLO_TIMEOUT)
            if msg[0] is not Msg.HELLO or msg[1] != PROTOCOL_VERSION or len(msg) != 3:
                raise ProtocolError(f"expected HELLO version {PROTOCOL_VERSION}")
            hello = parse_hello(device.config.kind, msg[2])
            counters, mirrors = parse_fast_registers(hello.fast)
        except (ChannelClosed, TimeoutError, ProtocolError) as err:
            self._kill(device)
            raise VmbootError(f"device {device.name} did not start: "
                              f"{err or type(err).__name__}{self._exit_reason(device)}") from None
        device.hello = hello
        device.last_pid = device.device_pid
        if device.snapshot is not None:
            ctl.send(Msg.RESTORE, 0, device.snapshot)
            reply = ctl.recv(HELLO_TIMEOUT)
            if reply[0] is not Msg.REPLY:
                log.warning("device %s did not take its snapshot back", device.name)
        with self._lock:
            if device.evt is not None:
                self._evt_map.pop(device.evt.fileno(), None)
            device.evt = evt
            self._evt_map[evt.fileno()] = device
        os.write(self._poller_wake_w, b"x")
        device.proxy.attach(ctl, counters, mirrors)
        device.started.set()
        threading.Thread(target=self._watch, args=(device, device.process), name=f"watch-{device.name}",
                         daemon=True).start()

    def _exit_reason(self, device: DeviceProcess) -> str:
        proc = device.process
        if proc is None or proc.poll() is None:
            return ""
        return f" ({self._describe_exit(device, proc.returncode)})"

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
                device = current.get(fd)
                if device is None:
                    continue
                try:
                    self._event(device, device.evt.recv())
                except ChannelClosed:
                    with self._lock:
                        self._evt_map.pop(fd, None)
                except ProtocolError as err:
                    log.warning("device %s sent a bad event: %s", device.name, err)

    def _event(self, device: DeviceProcess, msg: list) -> None:
        kind, events = msg[0], device.config.events
        if kind is Msg.IRQ:
            events.irq(msg[1], msg[2])
        elif kind is Msg.OUTPUT:
            events.output(msg[1], msg[2])
        elif kind is Msg.SNAPSHOT:
            if isinstance(msg[1], dict):
                device.snapshot = msg[1]
        elif kind is Msg.DMA:
            for gpa, length in msg[1]:
                events.dma(gpa, length)
        elif kind is Msg.HELLO:
            device.sandboxed.set()
        elif kind is Msg.ERROR:
            log.warning("device %s: %s", device.name, msg[2])

    # -- deaths ------------------------------------------------------------------------------------
    def _watch(self, device: DeviceProcess, process: subprocess.Popen) -> None:
        status = process.wait()
        if device.stopping or self._closing or device.process is not process:
            return
        reason = device.last_death = self._describe_exit(device, status)
        now = time.monotonic()
        device.deaths = [t for t in device.deaths if now - t < RESTART_WINDOW] + [now]
        if device.config.kind.restart is Restart.NEVER:
            device.proxy.detach(for_good=True)
            self.on_fatal(f"device {device.name} {reason}; the VM cannot continue without it")
            return
        if len(device.deaths) > MAX_RESTARTS:
            device.proxy.detach(for_good=True)
            self.on_fatal(f"device {device.name} {reason}, its {len(device.deaths)}th death in "
                          f"{RESTART_WINDOW:.0f} s; giving up")
            return
        device.proxy.detach(for_good=False)
        if device.config.kind.restart is Restart.STATELESS:
            device.snapshot = None
        log.warning("device %s %s; restarting it%s", device.name, reason,
                    " from its last snapshot" if device.snapshot is not None else "")
        self._spawn_queue.put(device)

    def _describe_exit(self, device: DeviceProcess, status: int) -> str:
        if device.hung and status == -signal.SIGKILL:
            return f"did not answer for {CALL_TIMEOUT:.0f} s and was killed"
        if status >= 0:
            return f"exited with status {status}"
        sig = -status
        text = f"killed by {signal_name(sig)}"
        if sig == signal.SIGSYS:
            syscall = seccomp_kill_syscall(device.last_pid, since=device.spawned_at) if device.last_pid else None
            if syscall:
                text += f": syscall {syscall}"
        return text

    # -- stopping ---------------------------------------------------------------------------------
    def _kill(self, device: DeviceProcess) -> None:
        device.stopping = True
        proc = device.process
        if proc is not None and proc.poll() is None:
            proc.kill()  # the reaper: the device's PR_SET_PDEATHSIG takes it along
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                log.warning("device %s did not die", device.name)

    def stats(self) -> dict[str, str]:
        """What went over each device's channel (--stats)."""
        out = {}
        for device in self.devices:
            st = device.proxy.stats
            out[f"device {device.name}"] = (f"{st['calls']} requests, {st['posted']} posted writes in "
                                            f"{st['batches']} messages, {st['fast']} reads answered in the core")
        return out

    def close(self) -> None:
        """Stop every device. A device reads SHUTDOWN after everything sent before it, and its
        events (the serial output of a guest's last words) are read until it hangs up."""
        self._closing = True
        for device in self.devices:
            device.stopping = True
            device.proxy.post(Msg.SHUTDOWN)
        deadline = time.monotonic() + 1.0
        for device in self.devices:
            proc = device.process
            if proc is not None:
                try:
                    proc.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self._kill(device)
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


def parse_hello(kind: registry.DeviceKind, info: object) -> Hello:
    """A device's description of itself, checked against its kind; a ProtocolError says what is wrong."""
    if not isinstance(info, dict):
        raise ProtocolError("HELLO must describe the device in a map")
    fast = info.get("fast", [])
    if kind.virtio is None:
        return Hello(fast)
    features, queues, size, device_type = (info.get(k) for k in
                                           ("features", "num_queues", "queue_max_size", "device_type"))
    if type(features) is not int or not 0 <= features < 1 << 64:
        raise ProtocolError("HELLO: features must be a 64-bit number")
    if queues != kind.virtio.queues or device_type != kind.virtio.device_type:
        raise ProtocolError(f"HELLO: a {kind.name} has {kind.virtio.queues} queues and virtio type "
                            f"{kind.virtio.device_type}, not {queues} and {device_type}")
    if type(size) is not int or not 0 < size <= VIRTQ_MAX_SIZE or size & (size - 1):
        raise ProtocolError(f"HELLO: queue_max_size must be a power of 2 up to {VIRTQ_MAX_SIZE}")
    return Hello(fast, features, size)
