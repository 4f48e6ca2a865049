"""vmboot on real KVM against QEMU on KVM, side by side, inside the nested rig.

    .venv/bin/python bench/kvm.py [--runs N] [--reads N] [--parts shell os round-trip requests]

This host's /dev/kvm is KVM-PVM, which cannot run the firmware. This script boots the rig's
L1 (assets/l1_rig.py: Linux under the patched QEMU's TCG with AMD SVM, whose kvm_amd is a
real KVM) and runs each part there, printing what it prints:
  shell       bench/boot.py --accel kvm: process start to the EFI shell's countdown, for
              vmboot --accel kvm (sandboxed devices), vmboot --accel kvm --devices inproc,
              and QEMU 7.2 -accel kvm + OVMF (q35); N runs each, interleaved;
  os          the same to the Debian guest's power-off, from two virtio disks (--os);
  round-trip  bench/kvm_exits.py round-trip: a port read from a guest on KVM, forwarded or not;
  requests    bench/kvm_exits.py requests: per virtio-blk request, the vCPU-thread and core
              wakeups with --virtio-eventfds kernel (ioeventfd + irqfd) and core.
Every figure is under nested virtualization: L1's CPUs are QEMU's TCG, so absolute times are
several times a real host's, and both contenders pay the same. Compare the ratios.
Targets: shell <= 0.4x QEMU-KVM, OS <= 0.8x, sandboxed <= 1.1x inproc, and no wakeup of a
vCPU thread's Python per virtio request with --virtio-eventfds kernel.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("shell", "os", "round-trip", "requests")


def commands(args) -> dict[str, tuple[list[str], float]]:
    """Each part's command in L1 and its time limit in seconds (the nested boots are slow)."""
    py, boot, exits = sys.executable, str(REPO / "bench" / "boot.py"), str(REPO / "bench" / "kvm_exits.py")
    runs = str(args.runs)
    return {
        "shell": ([py, boot, "--accel", "kvm", "--runs", runs], 120 + 90 * args.runs),
        "os": ([py, boot, "--accel", "kvm", "--os", "--runs", runs], 120 + 300 * args.runs),
        "round-trip": ([py, exits, "round-trip", "--reads", str(args.reads)], 300),
        "requests": ([py, exits, "requests"], 900),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs of each contender in the shell and os parts")
    p.add_argument("--reads", type=int, default=20000, help="port reads per round-trip figure")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    args = p.parse_args()
    from vmboot.abi.errors import VmbootError
    from vmboot.assets.l1_rig import L1
    todo = commands(args)
    with tempfile.TemporaryDirectory(prefix="vmboot-bench-l1-") as scratch:
        l1 = L1(Path(scratch))
        try:
            l1.start()
            print(f"L1: {l1.ready}", flush=True)
            for part in args.parts:
                cmd, limit = todo[part]
                print(f"\n[{part}] in L1: {' '.join(Path(c).name if c.startswith('/') else c for c in cmd)} "
                      f"(up to {limit // 60} min)", file=sys.stderr, flush=True)
                started = time.monotonic()
                result = l1.run(" ".join(shlex.quote(c) for c in cmd), timeout=limit)
                print(result.output.rstrip(), flush=True)
                if result.rc != 0:
                    print(f"bench/kvm.py: the {part} part failed in L1 with exit status {result.rc}", file=sys.stderr)
                    return 1
                print(f"[{part}] took {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        except VmbootError as err:
            print(f"bench/kvm.py: {err}", file=sys.stderr)
            return 1
        finally:
            l1.close()
    print("\n(measured inside L1, a TCG guest with nested SVM: compare ratios, not absolute times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
