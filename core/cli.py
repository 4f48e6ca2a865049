"""vmboot-core: run one virtual machine."""
from __future__ import annotations

import logging
import os
import signal
import sys
import time

from .config import EXIT_ERROR, EXIT_POWEROFF, EXIT_QUIT, EXIT_RESET, parse_args
from .console import CrLfHandler, SerialConsole
from .errors import VmbootError
from .events import Outcome
from .kvm.system import host_has_hw_virt, kvm_flavour
from .machine import Machine
from .stats import BootClock

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

    console = None
    try:
        accel = choose_accel(config.accel)
        console = SerialConsole(config.serial.mode, config.serial.path)
        while True:
            clock = BootClock(started)
            machine = Machine(config, accel, console, clock)
            quit_vm = lambda *_: machine.events.request(Outcome.QUIT, "stopped by the user")  # noqa: E731
            console.on_quit = quit_vm
            signal.signal(signal.SIGTERM, quit_vm)
            signal.signal(signal.SIGINT, quit_vm)
            try:
                stop = machine.run()
                if config.stats:
                    print(machine.stats_report(), file=sys.stderr)
            finally:
                machine.close()
            if stop.outcome is Outcome.RESET and not config.no_reboot:
                log.info("%s: restarting the VM", stop.message)
                started = time.monotonic()
                continue
            break
    except VmbootError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return err.exit_status
    finally:
        if console is not None:
            console.close()

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
