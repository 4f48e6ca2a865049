"""A device process: what runs from the fork that makes a device to its exit.

Two ways in, one way through (``run``):
- the core forks each device from its zygote (devices/process/zygote.py), a
  process that has already imported all of this, so a device costs a fork, not
  an interpreter;
- ``python -m vmboot.devices.process KIND --ctl-fd N --evt-fd N ...`` starts one
  device by itself: for strace (``VMBOOT_DEVICE_TRACE``), for the exercise that
  proves its policy (devices/exercise/), and for a fuzzer that drives one device
  process over its channels.

Either way the device gets its two channel sockets and any other descriptors
it needs (guest memory, a disk, eventfds) already open. It builds its device
from the core's HELLO through the registry (devices/registry.py), locks itself
in (devices/process/sandbox.py), tells the core it is sandboxed, and serves
until the core goes or says SHUTDOWN.
"""
from __future__ import annotations

import argparse
# Everything the device will ever run is imported now: after the sandbox there
# is no file system to import from, and opening one is fatal.
import linecache  # noqa: F401  (imported so nothing tries to later)
import logging
import os
import select  # noqa: F401
import sys
import time
from dataclasses import dataclass, field

from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import QueueSetup
from vmboot.devices import registry
from vmboot.devices.served import Output, Served, ServedVirtio
from vmboot.devices.virtio.worker import QueueWorker
from vmboot.ipc.channel import Channel, ChannelClosed
from vmboot.ipc.protocol import PROTOCOL_VERSION, Msg, ProtocolError
from vmboot.ipc.server import DeviceServer, hello, log_to_stderr

from . import sandbox

EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE
SECCOMP_MODES = ("kill", "log", "off")

# Log records would otherwise ask the kernel for the PID (getpid) and more on
# every line; the device's policy does not allow it, and needs none of it.
logging.logProcesses = False
logging.logThreads = False
logging.logMultiprocessing = False


def last_words(who: str):
    """An excepthook for an uncaught exception in ``who``: say so without reading source files, and exit."""
    def hook(kind, value, tb) -> None:
        os.write(2, f"vmboot-core: {who} failed: {kind.__name__}: {value}\n".encode(errors="replace"))
        os._exit(EXIT_SOFTWARE)
    return hook


@dataclass
class Options:
    kind: str
    ctl_fd: int
    evt_fd: int
    root: str  # the directory to turn into the empty root
    fds: dict[str, int] = field(default_factory=dict)  # other descriptors, by name
    seccomp: str = "kill"  # kill, log or off
    fsize: int = 0  # RLIMIT_FSIZE
    policies: str = str(registry.POLICY_DIR)  # the folder of its .policy file


class ProcessHost:
    """A model's Host (devices/registry.py) in a device process: what it raises is an event to the core."""

    wall_clock = staticmethod(time.time)
    monotonic = staticmethod(time.monotonic)

    def __init__(self, post):
        self.post = post
        self.outputs: list[Output] = []

    def irq(self, line: int, level: bool) -> None:
        self.post(Msg.IRQ, line, level)

    def console(self, window: int):
        output = Output(self.post, window)
        self.outputs.append(output)
        return output.write

    def dma(self, gpa: int, length: int) -> None:
        # Posted before the worker signals the call eventfd, so the core learns
        # about the write before the guest hears about the completion.
        self.post(Msg.DMA, [[gpa, length]])


def build(kind: registry.DeviceKind, name: str, params: dict, fds: dict[str, int], post) -> Served:
    """The kind's device, ready to serve: a virtio model gets guest memory and its queue worker."""
    host = ProcessHost(post)
    if kind.virtio is None:
        served = kind.build(params, fds, host)
    else:
        memory = GuestMemory(int(params["memory_size"]), fd=fds["memory"])
        device = kind.build(params, fds, host)
        queues = range(kind.virtio.queues)
        worker = QueueWorker(device, memory, [fds[f"kick{i}"] for i in queues], [fds[f"call{i}"] for i in queues],
                             on_dma_write=host.dma if params.get("report_dma") else None)
        served = ServedVirtio(device, worker, QueueSetup)
    served.name = name
    served.outputs = host.outputs
    return served


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="vmboot-device")
    p.add_argument("kind")
    p.add_argument("--kind-module", action="append", default=[], metavar="MODULE",
                   help="import this module first: it registers a kind from outside devices/")
    p.add_argument("--ctl-fd", type=int, required=True)
    p.add_argument("--evt-fd", type=int, required=True)
    p.add_argument("--fd", action="append", default=[], metavar="NAME=FD")
    p.add_argument("--root", required=True, help="directory to turn into the empty root")
    p.add_argument("--seccomp", choices=SECCOMP_MODES, default="kill")
    p.add_argument("--fsize", type=int, default=0, help="RLIMIT_FSIZE")
    p.add_argument("--policies", default=str(registry.POLICY_DIR), metavar="DIR", help="the folder of KIND.policy")
    args = p.parse_args(argv)
    registry.load(args.kind_module)
    if args.kind not in {k.name for k in registry.kinds()}:
        p.error(f"unknown device kind {args.kind!r}")
    fds = {}
    for item in args.fd:
        name, _, value = item.partition("=")
        if not value.isdigit():
            p.error(f"--fd {item}: expected NAME=FD")
        fds[name] = int(value)
    return Options(args.kind, args.ctl_fd, args.evt_fd, args.root, fds, args.seccomp, args.fsize, args.policies)


def run(options: Options) -> None:
    """From a single-threaded process to a sandboxed device; never returns."""
    sys.excepthook = last_words("device process")
    kind = registry.get(options.kind)
    sandbox.die_with_parent()  # with the zygote, or the core's spawner thread
    try:
        sandbox.new_namespaces()
    except (sandbox.SandboxError, OSError) as err:
        os.write(2, f"vmboot-core: device {kind.name}: cannot create its namespaces: {err}\n".encode())
        os._exit(EXIT_SOFTWARE)
    child = os.fork()
    if child:
        sandbox.set_name(f"reap:{kind.name}")
        sandbox.reap(child)  # never returns
    sandbox.set_name(f"dev:{kind.name}")
    sandbox.die_with_parent()  # with the reaper
    ctl, evt = Channel.from_fd(options.ctl_fd), Channel.from_fd(options.evt_fd)
    made = {}

    def build_device(name: str, params: dict) -> dict:
        made["device"] = build(kind, name, params, options.fds, evt.send)
        made["log_level"] = str(params.get("log_level", "warn"))
        return made["device"].info()

    try:
        name, _ = hello(ctl, build_device)
        log_to_stderr(name, made["log_level"])
        sandbox.enter(options.root, kind.name, options.policies, options.seccomp, options.fsize)
        evt.send(Msg.HELLO, PROTOCOL_VERSION, {"sandboxed": options.seccomp})
        DeviceServer(ctl, evt, made["device"]).serve()
    except (ChannelClosed, TimeoutError):
        pass  # the core went away: nothing left to do
    except (ProtocolError, sandbox.SandboxError, OSError) as err:
        os.write(2, f"vmboot-core: device {kind.name}: {err}\n".encode())
        os._exit(EXIT_SOFTWARE)
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    run(parse_args(sys.argv[1:] if argv is None else argv))
