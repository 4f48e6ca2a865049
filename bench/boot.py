"""Boot time to the EFI shell's countdown: vmboot's emulate backend against QEMU TCG.

    .venv/bin/python bench/boot.py [--runs N] [--devices sandboxed|inproc ...]

Each run is timed from process start to the first appearance of "startup.nsh"
on the serial console (the line "Press ESC in 5 seconds to skip startup.nsh"):
- vmboot: vmboot-core --firmware CLOUDHV.fd --accel emulate (RELEASE build),
  once per --devices mode asked for;
- QEMU:   qemu-system-x86_64 -accel tcg -M q35 -m 512 -bios /usr/share/ovmf/OVMF.fd
  (Debian's qemu-system-x86 and ovmf packages), serial on stdout.
It prints every run, the medians, and the ratio to QEMU (target: <= 1.0).
"""
from __future__ import annotations

import argparse
import os
import select
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

MARKER = b"startup.nsh"
OVMF = Path("/usr/share/ovmf/OVMF.fd")
TIMEOUT = 120.0


def time_to_marker(cmd: list[str]) -> float:
    """Seconds from starting ``cmd`` until MARKER shows on its stdout; the process is then killed."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    seen = b""
    try:
        while MARKER not in seen:
            left = TIMEOUT - (time.monotonic() - start)
            ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
            if not ready:
                raise RuntimeError(f"{cmd[0]}: no {MARKER!r} after {TIMEOUT} s")
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"{cmd[0]} exited before {MARKER!r}")
            seen = (seen + chunk)[-4096:]
        return time.monotonic() - start
    finally:
        proc.kill()
        proc.wait()


def vmboot_cmd(firmware: Path, devices: str) -> list[str]:
    return [sys.executable, "-m", "vmboot.core.cli", "--firmware", str(firmware), "--accel", "emulate",
            "--devices", devices]


def qemu_cmd(tmp: Path) -> list[str]:
    # OVMF keeps its variables in a writable copy of the firmware image.
    image = tmp / "OVMF.fd"
    shutil.copy(OVMF, image)
    return ["qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-m", "512", "-bios", str(image),
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-net", "none", "-no-reboot"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--devices", nargs="+", default=["sandboxed", "inproc"], choices=("sandboxed", "inproc"))
    args = p.parse_args()
    if shutil.which("qemu-system-x86_64") is None or not OVMF.exists():
        print("bench/boot.py needs qemu-system-x86 and ovmf (run ./dev setup)", file=sys.stderr)
        return 1
    from vmboot.assets.firmware import firmware_path
    firmware = firmware_path("release")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"vmboot-bench-{os.getpid()}"
    tmp.mkdir()
    try:
        contenders = {f"vmboot emulate ({mode} devices)": vmboot_cmd(firmware, mode) for mode in args.devices}
        contenders["QEMU 7.2 TCG + OVMF"] = qemu_cmd(tmp)
        results: dict[str, list[float]] = {name: [] for name in contenders}
        for run in range(args.runs):  # interleaved, so drifts in machine load hit everyone alike
            for name, cmd in contenders.items():
                results[name].append(time_to_marker(cmd))
                print(f"run {run + 1}: {name:<34} {results[name][-1]:6.3f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    qemu = statistics.median(results["QEMU 7.2 TCG + OVMF"])
    print(f"\nboot to the shell's countdown line, median of {args.runs} runs")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"  {name:<34} {median:6.3f} s   ratio to QEMU {median / qemu:5.2f}x   "
              f"(min {min(times):.3f}, max {max(times):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
