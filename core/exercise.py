"""The exercise: each device kind's real process, sandboxed, doing real work, to prove its policy.

    python -m vmboot.core.exercise [--trace DIR] [--seccomp kill|log] [KIND ...]
    vmboot-policy prove [KIND ...]        the same under strace, then the proof of policies/trace.py

A device is started exactly as a VM starts it: by the supervisor
(core/supervisor/), from the registry's kind, in its namespaces and under its
seccomp policy. Then it is driven as hard as the core may legitimately drive
it: every offset of every register window read and written, the largest
writes the protocol carries, a burst of posted writes, a snapshot and its
restore, console input, a reset; and a kind's own work where it declares one
(a virtio disk's requests through a real virtqueue: devices/virtio_blk/exercise.py).
Any death fails the exercise, named as the VM would name it.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vmboot.abi.memory import GuestMemory
from vmboot.devices import registry
from vmboot.devices.registry import DeviceKind, ExerciseFailed, Restart, Window
from vmboot.devices.served import CONFIG_WINDOW
from vmboot.ipc.protocol import MAX_DATA_BYTES, Msg

from .pci.virtio_pci import REGION_SIZE
from .platform import InprocHost
from .supervisor.device import DeviceConfig, DeviceProcess, Events
from .supervisor.supervisor import HELLO_TIMEOUT, Supervisor
from .virtio_host import ProcessBackend, process_backend

MEMORY_SIZE = 16 << 20
DISK_SIZE = 8 << 20
SERIAL = "vmboot-exercise"
PATTERN = bytes(range(256)) * (MAX_DATA_BYTES // 256)  # every byte value, 0 first
BURST = 2000  # posted writes back to back, as the firmware's console output comes
STOP_TIMEOUT = 20.0  # seconds for a device to exit after SHUTDOWN (strace writes its file meanwhile)


@dataclass
class Result:
    kind: str
    calls: int = 0  # requests that waited for an answer
    posted: int = 0
    irqs: int = 0  # interrupt line changes the device sent
    output: int = 0  # console bytes it sent
    work: int = 0  # what the kind's own exercise did (a disk's requests)
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.calls} calls, {self.posted} posted writes, {self.irqs} interrupts, {self.output} console "
                f"bytes, {self.work} requests of its own, in {self.seconds:.2f} s")


@dataclass
class Bench:
    """What a kind's own exercise gets (a virtio kind: guest memory, its transport's backend and its disk)."""

    device: DeviceProcess
    memory: GuestMemory | None
    backend: ProcessBackend | None  # its eventfds, features and activate, as the virtio transport uses them
    disk_fd: int | None
    serial: str = SERIAL


def run(name: str, seccomp: str = "kill", trace_dir: Path | None = None, policy_dir: Path | None = None) -> Result:
    """Exercise one kind's device process to the end; ExerciseFailed if it dies or misbehaves."""
    try:
        kind = registry.get(name)
    except registry.UnknownKind as err:
        raise ExerciseFailed(str(err)) from None
    snapshots = kind.restart is Restart.SNAPSHOT
    # Any death ends the exercise, named; and the policy may come from elsewhere (a test's copy).
    kind = dataclasses.replace(kind, restart=Restart.NEVER, policy_dir=policy_dir or kind.policy_dir)
    if not kind.policy.exists():
        raise ExerciseFailed(f"no policy for device kind {name!r}: {kind.policy} is missing")
    if trace_dir is not None and shutil.which("strace") is None:
        raise ExerciseFailed("strace is not installed (apt-get install strace)")
    result, started = Result(name), time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="vmboot-exercise-"))
    supervisor = Supervisor(seccomp, "warn", trace_dir=str(trace_dir) if trace_dir else None)
    memory = backend = disk = device = None
    try:
        events = Events(irq=lambda line, level: _count(result, "irqs", 1),
                        output=lambda window, data: _count(result, "output", len(data)), dma=lambda gpa, length: None)
        if kind.virtio is not None:
            memory = GuestMemory(MEMORY_SIZE)
            disk = _disk(scratch / "disk.img")
            params = {"name": name, "readonly": False, "serial": SERIAL}
            backend = process_backend(supervisor, memory, kind, name, params, {"disk": disk}, DISK_SIZE)
            device = backend.device
            bench = Bench(device, memory, backend, disk)
        else:
            host = InprocHost([], {}, time.time, time.monotonic)
            device = supervisor.add(DeviceConfig(kind, name, kind.params(host), events))
            bench = Bench(device, None, None, None)
        _wait_sandboxed(device)
        _registers(kind, device, snapshots)
        if kind.exercise is not None:
            result.work = importlib.import_module(kind.exercise).exercise(bench)
        _check_alive(device)
        result.calls, result.posted = device.proxy.stats["calls"], device.proxy.stats["posted"]
        _stop(device)
    except ExerciseFailed:
        raise
    except Exception as err:
        raise ExerciseFailed(f"{name}: {type(err).__name__}: {err}{_death(device)}") from None
    finally:
        supervisor.close()
        for thing in (backend, memory):
            if thing is not None:
                thing.close()
        if disk is not None:
            os.close(disk)
        shutil.rmtree(scratch, ignore_errors=True)
    result.seconds = time.monotonic() - started
    return result


def _count(result: Result, what: str, n: int) -> None:
    setattr(result, what, getattr(result, what) + n)


def _disk(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    os.pwrite(fd, os.urandom(DISK_SIZE), 0)
    return fd


def _death(device: DeviceProcess | None) -> str:
    return f" ({device.last_death})" if device is not None and device.last_death else ""


def _check_alive(device: DeviceProcess) -> None:
    if device.last_death:
        raise ExerciseFailed(f"{device.name} {device.last_death}")


def _wait_sandboxed(device: DeviceProcess) -> None:
    deadline = time.monotonic() + HELLO_TIMEOUT
    while not device.sandboxed.wait(0.05):
        _check_alive(device)
        if time.monotonic() > deadline:
            raise ExerciseFailed(f"{device.name} did not enter its sandbox in {HELLO_TIMEOUT:.0f} s")


def _registers(kind: DeviceKind, device: DeviceProcess, snapshots: bool) -> None:
    """Every register as the guest may touch it, the largest writes, a burst, the state both ways."""
    proxy = device.proxy
    windows = list(kind.windows)
    if kind.virtio is not None:  # its configuration space, as the transport forwards the guest's accesses
        windows.append(Window(CONFIG_WINDOW, 0, REGION_SIZE, "virtio configuration"))
    for w in windows:
        window = proxy.window(w.number)
        for offset in range(w.size):
            for size in (1, 2, 4):
                if offset + size <= w.size:
                    window.read(offset, size)
            window.write(offset, bytes([offset * 37 & 0xFF]))
        window.write(0, PATTERN)  # the largest WRITE: every byte a register write
        for i in range(BURST):
            window.write(0, bytes([0x41 + i % 26]))
        window.read(0, 1)  # after every write before it
    if snapshots:
        state = proxy.call(Msg.SNAPSHOT)
        if not isinstance(state, dict):
            raise ExerciseFailed(f"{kind.name}: its snapshot is not a map")
        proxy.call(Msg.RESTORE, state)
    if "console" in kind.consoles.values():
        taken = proxy.call(Msg.INPUT, PATTERN)
        if type(taken) is not int or not 0 < taken <= MAX_DATA_BYTES:
            raise ExerciseFailed(f"{kind.name}: took {taken!r} bytes of console input")
    proxy.call(Msg.RESET)


def _stop(device: DeviceProcess) -> None:
    """SHUTDOWN, and the device must exit 0 by itself (under strace, once its trace is written)."""
    device.stopping = True
    device.proxy.post(Msg.SHUTDOWN)
    try:
        status = device.process.wait(STOP_TIMEOUT)
    except Exception:
        raise ExerciseFailed(f"{device.name} did not exit after SHUTDOWN") from None
    if status != 0:
        raise ExerciseFailed(f"{device.name} exited with status {status}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmboot.core.exercise", description=__doc__.split("\n")[0])
    parser.add_argument("kinds", nargs="*", metavar="KIND", help="default: every registered kind")
    parser.add_argument("--seccomp", choices=("kill", "log"), default="kill")
    parser.add_argument("--trace", type=Path, metavar="DIR", help="run each device under strace: DIR/KIND.strace")
    args = parser.parse_args(argv)
    try:
        if args.trace:
            args.trace.mkdir(parents=True, exist_ok=True)
        for name in args.kinds or [k.name for k in registry.kinds()]:
            r = run(name, args.seccomp, args.trace)
            print(f"{r.kind}: {r} (seccomp {args.seccomp})")
    except (ExerciseFailed, OSError) as err:
        print(f"exercise: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
