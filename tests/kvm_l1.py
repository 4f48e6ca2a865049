"""Checks that run inside the nested rig's L1, on its real KVM (tests/test_kvm_nested.py sends them).

    python -m vmboot.tests.kvm_l1 shell --firmware FW [--devices D] [--cpus N] [--sandbox] [--kill KIND]
    python -m vmboot.tests.kvm_l1 guest --firmware FW --images DIR --work DIR [--devices D] [--cpus N]
                                        [--virtio-eventfds kernel|core]

Each prints what it saw as one ``VMBOOT-CHECK <json>`` line; the host's tests assert on it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from vmboot.assets.guest import fresh_copy
from vmboot.devices import registry
from vmboot.tests.console import Console, plain
from vmboot.tests.processes import check_sandboxed, device_processes, fd_targets, wait_for_devices

COUNTDOWN, PROMPT = b"startup.nsh", b"Shell> "
STATS_START = "boot phases (wall time):\n"  # the first line of --stats (core/stats.py)


def report(result: dict) -> None:
    print("VMBOOT-CHECK " + json.dumps(result), flush=True)


def shell(args) -> dict:
    result: dict = {}
    started = time.monotonic()
    with Console("--firmware", args.firmware, "--accel", "kvm", "--devices", args.devices,
                 "--cpus", f"boot={args.cpus}") as console:
        core = console.proc.pid
        try:
            if args.kill:
                kinds = {k.name for k in registry.kinds(registry.Attach.PLATFORM)}
                old = wait_for_devices(core, kinds)[args.kill]
                time.sleep(args.kill_after)
                os.kill(old, signal.SIGKILL)
                result["killed"] = {"kind": args.kill, "pid": old, "at": round(time.monotonic() - started, 2)}
            console.expect(COUNTDOWN, timeout=120)
            result["countdown_s"] = round(time.monotonic() - started, 2)
            console.expect(PROMPT, timeout=60)
            if args.kill:
                result["killed"]["now"] = device_processes(core).get(args.kill)
            if args.sandbox:
                devices = wait_for_devices(core, {k.name for k in registry.kinds(registry.Attach.PLATFORM)})
                errors = []
                for kind, pid in devices.items():
                    try:
                        check_sandboxed(core, kind, pid)
                    except AssertionError as err:
                        errors.append(str(err))
                result["sandbox"] = {"devices": sorted(devices), "errors": errors, "core_fds": sorted(
                    t for t in fd_targets(core) if t == "/dev/kvm" or t.startswith("anon_inode:kvm"))}
            for command in args.commands:
                result[command] = console.command(command, timeout=60)
            console.type("reset -s\r")
            result["rc"] = console.wait(60)
        except AssertionError as err:
            result["error"] = str(err)
        finally:
            if console.proc.poll() is None:
                console.proc.kill()
                console.proc.wait()
            result["stderr"] = console.proc.stderr.read().decode(errors="replace")
            result["transcript"] = plain(console.transcript)[-4000:]
    return result


def guest(args) -> dict:
    disks = fresh_copy(Path(args.work), Path(args.images))
    serial = Path(args.work) / "serial.log"
    started = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vmboot.core.cli", "--firmware", args.firmware, "--accel", "kvm",
             "--devices", args.devices, "--cpus", f"boot={args.cpus}", "--virtio-eventfds", args.virtio_eventfds,
             "--disk", f"path={disks.esp}",
             "--disk", f"path={disks.data}", "--serial", f"file={serial}", "--stats"],
            capture_output=True, text=True, timeout=args.timeout, stdin=subprocess.DEVNULL)
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, stderr = None, f"timed out after {args.timeout} s; {err.stderr or ''}"
    hello = subprocess.run(["mtype", "-i", str(disks.data), "::/HELLO.TXT"], capture_output=True)
    stderr, _, stats = stderr.partition(STATS_START)
    return {"rc": rc, "stderr": stderr, "stats": STATS_START + stats if stats else "",
            "elapsed_s": round(time.monotonic() - started, 2),
            "console": serial.read_text(errors="replace") if serial.exists() else "",
            "hello": hello.stdout.decode(errors="replace") if hello.returncode == 0 else None}


def main() -> None:
    p = argparse.ArgumentParser(prog="kvm_l1")
    sub = p.add_subparsers(dest="check", required=True)
    for name in ("shell", "guest"):
        s = sub.add_parser(name)
        s.add_argument("--firmware", required=True)
        s.add_argument("--devices", default="sandboxed")
        s.add_argument("--cpus", type=int, default=1)
    s = sub.choices["shell"]
    s.add_argument("--sandbox", action="store_true")
    s.add_argument("--kill", help="a platform device kind to kill -9 mid-boot")
    s.add_argument("--kill-after", type=float, default=2.0)
    s.add_argument("--commands", nargs="*", default=[])
    g = sub.choices["guest"]
    g.add_argument("--images", required=True)
    g.add_argument("--work", required=True)
    g.add_argument("--timeout", type=float, default=300)
    g.add_argument("--virtio-eventfds", default="kernel")
    args = p.parse_args()
    report(shell(args) if args.check == "shell" else guest(args))


if __name__ == "__main__":
    main()
