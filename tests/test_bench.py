"""The benchmarks run and print their figures (small sizes: this checks that they work, not how fast)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from vmboot.bench.kvm_exits import ROUND_TRIPS

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr == ""
    return proc.stdout


@pytest.mark.parametrize("runner", ["sandboxed", "inproc"])
def test_disk_bench_reads_through_the_device_and_the_host(runner, tmp_path):
    out = bench("disk.py", "--size-mib", "8", "--seconds", "0.3", "--runner", runner, "--dir", str(tmp_path))
    assert f"runner {runner}" in out
    for row in ("sequential 1 MiB  cold", "random 4 KiB      cold", "sequential 1 MiB  warm", "random 4 KiB      warm"):
        assert re.search(rf"^{row} +\d+ +\d+ +\d+ +\d+ +(dd|fio|python) +\d+%$", out, re.M), out
    assert re.search(r"^target: vmboot >= 50% of the host for sequential 1 MiB reads: (met|NOT met) \(lowest \d+%\)$",
                     out, re.M), out
    assert list(tmp_path.iterdir()) == []  # the test file is gone


@pytest.mark.firmware
def test_exits_bench_reports_round_trips_boot_ratio_and_memory(firmware):
    out = bench("exits.py", "--reads", "200", "--runs", "1")
    for row in ("naive: pyzmq PAIR + msgpack, RTC read", "vmboot: SEQPACKET channel, RTC read (sandboxed)",
                "vmboot hot path: PM timer counter (sandboxed)", "vmboot hot path: 16550 LSR mirror (sandboxed)",
                "a console byte: LSR poll + THR write (sandboxed)"):
        assert re.search(rf"^  {re.escape(row)} +[\d.]+ us +[\d.]+ us$", out, re.M), out
    assert re.search(r"^  --devices sandboxed +[\d.]+ s +[\d.]+x$", out, re.M), out
    assert re.search(r"^  vmboot-core +[\d.]+ MiB", out, re.M), out
    assert re.search(r"^  9 helper and device processes +[\d.]+ MiB$", out, re.M), out  # zygote + 4 x (reaper, device)


@pytest.mark.firmware
def test_boot_bench_times_the_shell_and_a_linux_boot_against_qemu(firmware):
    out = bench("boot.py", "--runs", "1", "--devices", "sandboxed")
    assert re.search(r"^boot to the shell's countdown line, median of 1 runs$", out, re.M), out
    for name in ("vmboot emulate \\(sandboxed devices\\)", "QEMU 7.2 TCG \\+ OVMF"):
        assert re.search(rf"^  {name} +[\d.]+ s   ratio to QEMU +[\d.]+x", out, re.M), out
    out = bench("boot.py", "--os", "--runs", "1", "--devices", "inproc")
    assert re.search(r"^boot to Linux from a virtio disk to its power-off, median of 1 runs$", out, re.M), out
    for name in ("vmboot emulate \\(inproc devices\\)", "QEMU 7.2 TCG \\+ OVMF"):
        assert re.search(rf"^  {name} +[\d.]+ s   ratio to QEMU +[\d.]+x", out, re.M), out


@pytest.mark.firmware
@pytest.mark.nested
def test_kvm_bench_runs_in_l1_against_qemu_on_kvm(firmware):
    """bench/kvm.py boots its own L1; its shell and round-trip parts, small (the suite's other
    nested tests check the virtio counts that its requests part prints)."""
    proc = subprocess.run([sys.executable, str(BENCH / "kvm.py"), "--runs", "1", "--reads", "2000",
                           "--parts", "shell", "round-trip"], capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"^L1: VMBOOT-L1-READY svm=2 nested=1 npt=Y$", out, re.M), out
    assert re.search(r"^boot to the shell's countdown line, median of 1 runs$", out, re.M), out
    for name in ("vmboot kvm \\(sandboxed devices\\)", "vmboot kvm \\(inproc devices\\)", "QEMU 7.2 KVM \\+ OVMF"):
        assert re.search(rf"^  {name} +[\d.]+ s   ratio to QEMU +[\d.]+x", out, re.M), out
    assert re.search(r"^port read from a real-mode program on KVM, mean of 2000 reads$", out, re.M), out
    rows = re.findall(r"^  (.+?) +([\d.]+) us$", out, re.M)
    assert [name for name, _ in rows] == [name for name, _, _ in ROUND_TRIPS], out
    assert all(float(us) > 0 for _, us in rows)
