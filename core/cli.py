"""vmboot-core: run one virtual machine."""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from vmboot.abi.errors import VmbootError

from .config import EXIT_ERROR, EXIT_POWEROFF, EXIT_QUIT, EXIT_RESET, parse_args
from .console import CrLfHandler, SerialConsole
from .events import Outcome, Stop
from .kvm.system import host_has_hw_virt, kvm_flavour
from .stats import BootClock
from .supervisor.supervisor import TRACE_ENV
from .supervisor.zygote import ZygoteClient

PROG = "vmboot-core"
log = logging.getLogger("vmboot")

_LEVELS = {"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO, "debug": logging.DEBUG}


def setup_logging(level: str) -> None:
    handler = CrLfHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    root = logging.getLogger("vmboot")
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])
    root.propagate = False


def choose_accel(requested: str) -> str:
    hw = host_has_hw_virt()
    if requested == "auto":
        if hw:
            return "kvm"
        log.warning("this host has no VT-x/AMD-V: using the emulate backend (software CPU)")
        return "emulate"
    if requested == "kvm" and not hw:
        if kvm_flavour() == "pvm" and os.path.exists("/dev/kvm"):
            log.info("this host's KVM is KVM-PVM (no VT-x/AMD-V): it runs simple guests only")
            return "kvm"
        raise VmbootError("--accel kvm needs VT-x or AMD-V and this host has neither; use --accel emulate")
    return requested


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except VmbootError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.exit_status
    setup_logging(config.log_level)

    console = zygote = None
    try:
        accel = choose_accel(config.accel)
        zygote = start_zygote(config)
        console = SerialConsole(config.serial.mode, config.serial.path)
        stop = run_until_done(config, accel, console, started, zygote)
    except VmbootError as err:
        stop = Stop(Outcome.ERROR, str(err))
    finally:
        if console is not None:
            console.close()  # the terminal leaves raw mode before the last line is printed
        if zygote is not None:
            zygote.close()
    return report_end(stop)


def start_zygote(config) -> ZygoteClient | None:
    """The device zygote, started before the machine's modules are imported so that its start
    (an interpreter and its imports) runs beside the core's; one for the VM's whole life."""
    if config.devices != "sandboxed" or os.environ.get(TRACE_ENV):
        return None
    zygote = ZygoteClient()
    zygote.start()
    return zygote


def run_until_done(config, accel: str, console: SerialConsole, started: float, zygote: ZygoteClient | None) -> Stop:
    """Run the VM, restarting it when the guest resets, until it ends for another reason."""
    from .machine import Machine  # the heaviest import, after the zygote's start (see start_zygote)

    quit_requested = threading.Event()
    current: list[Machine] = []

    def request_quit(*_) -> None:
        quit_requested.set()  # remembered across restarts
        if current:
            current[0].events.request(Outcome.QUIT, "stopped by the user")

    console.on_quit = request_quit
    signal.signal(signal.SIGTERM, request_quit)
    signal.signal(signal.SIGINT, request_quit)
    while True:
        machine = Machine(config, accel, console, BootClock(started), zygote)
        current[:] = [machine]
        if quit_requested.is_set():
            machine.events.request(Outcome.QUIT, "stopped by the user")
        try:
            stop = machine.run()
            if config.stats:
                print(machine.stats_report(), file=sys.stderr)
        finally:
            current.clear()
            machine.close()
        if stop.outcome is Outcome.RESET and not config.no_reboot and not quit_requested.is_set():
            log.info("%s: restarting the VM", stop.message)
            started = time.monotonic()
            continue
        if quit_requested.is_set():
            return Stop(Outcome.QUIT, "stopped by the user")
        return stop


def report_end(stop: Stop) -> int:
    if stop.outcome is Outcome.POWEROFF:
        log.info("%s", stop.message)
        return EXIT_POWEROFF
    if stop.outcome is Outcome.RESET:
        print(f"{PROG}: {stop.message} (--no-reboot)", file=sys.stderr)
        return EXIT_RESET
    if stop.outcome is Outcome.QUIT:
        log.info("%s", stop.message)
        return EXIT_QUIT
    print(f"{PROG}: {stop.message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
