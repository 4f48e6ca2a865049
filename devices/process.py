"""A device process: what runs from the fork that makes a device to its exit.

Two ways in, one way through (``run``):
- the core forks each device from its zygote (devices/zygote.py), a process
  that has already imported all of this, so a device costs a fork, not an
  interpreter start;
- ``python -m vmboot.devices.process KIND --ctl-fd N --evt-fd N ...`` starts one
  device by itself: for strace (``VMBOOT_DEVICE_TRACE``), and for a fuzzer that
  drives one device process over its channels.

Either way the device gets its two channel sockets and any other descriptors
it needs (guest memory, a disk, eventfds) already open. It builds its device
from the core's HELLO, locks itself in (devices/sandbox.py), tells the core it
is sandboxed, and serves until the core goes or says SHUTDOWN.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field

# Everything the device will ever run is imported now: after the sandbox there
# is no file system to import from, and opening one is fatal.
import linecache  # noqa: F401  (imported so nothing tries to later)
import select  # noqa: F401

from vmboot.devices import sandbox
from vmboot.devices.host import KINDS, build
from vmboot.ipc.channel import Channel, ChannelClosed
from vmboot.ipc.protocol import PROTOCOL_VERSION, Msg, ProtocolError
from vmboot.ipc.server import DeviceServer, hello, log_to_stderr

EXIT_SOFTWARE = 70  # sysexits.h EX_SOFTWARE
SECCOMP_MODES = ("kill", "log", "off")

# Log records would otherwise ask the kernel for the PID (getpid) and more on
# every line; the device's policy does not allow it, and needs none of it.
logging.logProcesses = False
logging.logThreads = False
logging.logMultiprocessing = False

log = logging.getLogger("vmboot.device")


def _last_words(kind, value, tb) -> None:
    """An uncaught exception: say so without reading source files, and exit."""
    os.write(2, f"vmboot-core: device process failed: {kind.__name__}: {value}\n".encode(errors="replace"))
    os._exit(EXIT_SOFTWARE)


@dataclass
class Options:
    kind: str
    ctl_fd: int
    evt_fd: int
    root: str  # the directory to turn into the empty root
    fds: dict[str, int] = field(default_factory=dict)  # other descriptors, by name
    seccomp: str = "kill"  # kill, log or off
    fsize: int = 0  # RLIMIT_FSIZE
    test_hooks: bool = False


def parse_args(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(prog="vmboot-device")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--ctl-fd", type=int, required=True)
    p.add_argument("--evt-fd", type=int, required=True)
    p.add_argument("--fd", action="append", default=[], metavar="NAME=FD")
    p.add_argument("--root", required=True, help="directory to turn into the empty root")
    p.add_argument("--seccomp", choices=SECCOMP_MODES, default="kill")
    p.add_argument("--fsize", type=int, default=0, help="RLIMIT_FSIZE")
    p.add_argument("--test-hooks", action="store_true")
    args = p.parse_args(argv)
    fds = {}
    for item in args.fd:
        name, _, value = item.partition("=")
        if not value.isdigit():
            p.error(f"--fd {item}: expected NAME=FD")
        fds[name] = int(value)
    return Options(args.kind, args.ctl_fd, args.evt_fd, args.root, fds, args.seccomp, args.fsize, args.test_hooks)


def run(options: Options) -> None:
    """From a single-threaded process to a sandboxed device; never returns."""
    sys.excepthook = _last_words
    kind = options.kind
    sandbox.die_with_parent()  # with the zygote, or the core's spawner thread
    try:
        sandbox.new_namespaces()
    except (sandbox.SandboxError, OSError) as err:
        os.write(2, f"vmboot-core: device {kind}: cannot create its namespaces: {err}\n".encode())
        os._exit(EXIT_SOFTWARE)
    child = os.fork()
    if child:
        sandbox.set_name(f"reap:{kind}")
        sandbox.reap(child)  # never returns
    sandbox.set_name(f"dev:{kind}")
    sandbox.die_with_parent()  # with the reaper
    ctl, evt = Channel.from_fd(options.ctl_fd), Channel.from_fd(options.evt_fd)

    def post(*fields) -> None:
        evt.send(*fields)

    hosted = {}

    def build_device(name: str, params: dict) -> dict:
        hosted["device"] = build(kind, params, options.fds, post)
        hosted["log_level"] = str(params.get("log_level", "warn"))
        return hosted["device"].info()

    try:
        name, _ = hello(ctl, build_device)
        log_to_stderr(name, hosted["log_level"])
        sandbox.enter(options.root, kind, options.seccomp, options.fsize)
        evt.send(Msg.HELLO, PROTOCOL_VERSION, {"sandboxed": options.seccomp})
        DeviceServer(ctl, evt, hosted["device"], options.test_hooks).serve()
    except (ChannelClosed, TimeoutError):
        pass  # the core went away: nothing left to do
    except (ProtocolError, sandbox.SandboxError, OSError) as err:
        os.write(2, f"vmboot-core: device {kind}: {err}\n".encode())
        os._exit(EXIT_SOFTWARE)
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    run(parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
