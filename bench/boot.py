"""Boot time to the EFI shell's countdown: vmboot against QEMU, on the emulate backend against TCG or on KVM.

    .venv/bin/python bench/boot.py [--runs N] [--devices sandboxed|inproc ...] [--os] [--accel emulate|kvm]

Each run is timed from process start to the first appearance of "startup.nsh"
on the serial console (the line "Press ESC in 5 seconds to skip startup.nsh"):
- vmboot: vmboot-core --firmware CLOUDHV.fd --accel emulate (RELEASE build),
  once per --devices mode asked for;
- QEMU:   qemu-system-x86_64 -accel tcg -M q35 -m 512 -bios /usr/share/ovmf/OVMF.fd
  (Debian's qemu-system-x86 and ovmf packages), serial on stdout.
With --accel kvm, vmboot runs --accel kvm and QEMU -accel kvm (bench/kvm.py runs
this inside the nested rig's L1, whose /dev/kvm is real).
It prints every run, the medians, and the ratio to QEMU (target: <= 1.0).

With --os, each run boots a real OS instead, to its end: the firmware boots the
guest images' UKI (a Debian kernel and its initramfs, `vmboot-assets guest`)
from the first of two virtio disks, the initramfs reads and writes the second
and powers off; the run is timed from process start to the process's exit,
which must be status 0 with the guest's report on the console. QEMU gets the
same two images (fresh copies each run) as virtio disks.
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
QEMU_NAMES = {"emulate": "QEMU 7.2 TCG + OVMF", "kvm": "QEMU 7.2 KVM + OVMF"}
QEMU_ACCEL = {"emulate": "tcg", "kvm": "kvm"}
TIMEOUT = 120.0
OS_TIMEOUT = 300.0
OS_REPORT = b"VMBOOT-WROTE"  # the guest's last report line, before it powers off


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


def time_to_exit(cmd: list[str], disks_for_run) -> float:
    """Seconds from starting ``cmd + disk arguments`` until it exits; it must exit 0 after the guest's report."""
    disk_args = disks_for_run()
    start = time.monotonic()
    proc = subprocess.run(cmd + disk_args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=OS_TIMEOUT)
    elapsed = time.monotonic() - start
    if proc.returncode != 0 or OS_REPORT not in proc.stdout:
        raise RuntimeError(f"{cmd[0]}: exit status {proc.returncode}, guest report "
                           f"{'seen' if OS_REPORT in proc.stdout else 'missing'}:\n"
                           + proc.stdout[-2000:].decode(errors="replace"))
    return elapsed


def vmboot_cmd(firmware: Path, devices: str, accel: str = "emulate") -> list[str]:
    return [sys.executable, "-m", "vmboot.core.cli", "--firmware", str(firmware), "--accel", accel,
            "--devices", devices]


def qemu_cmd(tmp: Path, accel: str) -> list[str]:
    # OVMF keeps its variables in a writable copy of the firmware image.
    image = tmp / "OVMF.fd"
    shutil.copy(OVMF, image)
    return ["qemu-system-x86_64", "-accel", QEMU_ACCEL[accel], "-M", "q35", "-m", "512", "-bios", str(image),
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-net", "none", "-no-reboot"]


def os_contenders(firmware: Path, modes: list[str], tmp: Path, accel: str) -> dict[str, tuple[list[str], object]]:
    """Each contender's command, and a function giving a run its disk arguments on fresh copies."""
    from vmboot.assets.guest import fresh_copy, guest_dir
    images = guest_dir()

    def vmboot_disks() -> list[str]:
        disks = fresh_copy(tmp / "disks", images)
        return ["--disk", f"path={disks.esp}", "--disk", f"path={disks.data}"]

    def qemu_disks() -> list[str]:
        disks = fresh_copy(tmp / "disks", images)
        return [arg for image in (disks.esp, disks.data)
                for arg in ("-drive", f"file={image},if=virtio,format=raw")]

    contenders = {f"vmboot {accel} ({mode} devices)": (vmboot_cmd(firmware, mode, accel) + ["--serial", "tty"],
                                                        vmboot_disks) for mode in modes}
    contenders[QEMU_NAMES[accel]] = (qemu_cmd(tmp, accel), qemu_disks)
    return contenders


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--devices", nargs="+", default=["sandboxed", "inproc"], choices=("sandboxed", "inproc"))
    p.add_argument("--os", action="store_true", help="boot the guest images' Linux to its power-off instead")
    p.add_argument("--accel", choices=("emulate", "kvm"), default="emulate",
                   help="emulate: vmboot's software CPU against QEMU TCG; kvm: both on /dev/kvm")
    args = p.parse_args()
    qemu_name = QEMU_NAMES[args.accel]
    if shutil.which("qemu-system-x86_64") is None or not OVMF.exists():
        print("bench/boot.py needs qemu-system-x86 and ovmf (run ./dev setup)", file=sys.stderr)
        return 1
    from vmboot.assets.firmware import firmware_path
    firmware = firmware_path("release")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"vmboot-bench-{os.getpid()}"
    tmp.mkdir()
    try:
        if args.os:
            contenders = os_contenders(firmware, args.devices, tmp, args.accel)
        else:
            contenders = {f"vmboot {args.accel} ({mode} devices)": (vmboot_cmd(firmware, mode, args.accel), None)
                          for mode in args.devices}
            contenders[qemu_name] = (qemu_cmd(tmp, args.accel), None)
        results: dict[str, list[float]] = {name: [] for name in contenders}
        for run in range(args.runs):  # interleaved, so drifts in machine load hit everyone alike
            for name, (cmd, disks) in contenders.items():
                results[name].append(time_to_exit(cmd, disks) if args.os else time_to_marker(cmd))
                print(f"run {run + 1}: {name:<34} {results[name][-1]:6.3f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    qemu = statistics.median(results[qemu_name])
    what = "Linux from a virtio disk to its power-off" if args.os else "the shell's countdown line"
    print(f"\nboot to {what}, median of {args.runs} runs")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"  {name:<34} {median:6.3f} s   ratio to QEMU {median / qemu:5.2f}x   "
              f"(min {min(times):.3f}, max {max(times):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
