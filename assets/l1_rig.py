"""The nested-KVM rig: an L1 Linux under the patched QEMU's TCG with AMD SVM, whose /dev/kvm is real.

    with L1(scratch_dir) as l1:
        result = l1.run("vmboot-core --accel kvm ...", timeout=120)

L1 (assets/l1_image.py) sees the host's whole tree read-only at the same paths, so
the repository and its .venv run there as they are, and ``scratch_dir`` read-write
at ``/run/l1`` (``L1.GUEST_SCRATCH``). Requests are shell scripts run by L1's agent
(assets/l1_files/agent) one at a time, in the repository's root; each returns its
exit status and output. L1's console goes to ``scratch_dir/console.log``.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vmboot.abi.errors import VmbootError

from .cache import progress
from .l1_image import AGENT_SCRIPT, INITRD_NAME, KERNEL_NAME, l1_dir
from .qemu_build import blob_args, qemu_path

REPO = Path(__file__).resolve().parents[1]
# -cpu: a model with SVM and nested paging, which QEMU's TCG emulates (it has no VMX).
CPU = "EPYC-Rome,+svm,+npt"
CMDLINE = "console=ttyS0 panic=-1"


@dataclass(frozen=True)
class Result:
    rc: int
    output: str


class L1Error(VmbootError):
    pass


class L1Timeout(L1Error):
    pass


class L1:
    GUEST_SCRATCH = "/run/l1"

    def __init__(self, scratch: Path, cpus: int = 2, memory: str = "3G", boot_timeout: float = 90.0,
                 taskset: str | None = None):
        self.scratch = Path(scratch)
        self.cpus, self.memory, self.boot_timeout, self.taskset = cpus, memory, boot_timeout, taskset
        self.proc: subprocess.Popen | None = None
        self._ids = itertools.count(1)
        self.ready = ""

    @property
    def console(self) -> Path:
        return self.scratch / "console.log"

    def console_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.console.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no console output)"

    def command(self) -> list[str]:
        image = l1_dir()
        fs = "security_model=none,multidevs=remap"
        cmd = [str(qemu_path()), *blob_args(), "-accel", "tcg", "-machine", "q35", "-cpu", CPU,
               "-smp", str(self.cpus), "-m", self.memory, "-nodefaults", "-no-user-config", "-display", "none",
               "-monitor", "none", "-no-reboot", "-serial", f"file:{self.console}",
               "-kernel", str(image / KERNEL_NAME), "-initrd", str(image / INITRD_NAME), "-append", CMDLINE,
               "-fsdev", f"local,id=host,path=/,readonly=on,{fs}",
               "-device", "virtio-9p-pci,fsdev=host,mount_tag=host",
               "-fsdev", f"local,id=scratch,path={self.scratch},{fs}",
               "-device", "virtio-9p-pci,fsdev=scratch,mount_tag=scratch"]
        return (["taskset", "-c", self.taskset] if self.taskset else []) + cmd

    def start(self) -> "L1":
        """Boot L1 and wait for its agent. An L1 that never gets ready is booted once more (its console
        kept as console.failed.log); one that boots without a usable KVM fails at once."""
        try:
            return self._boot()
        except L1Timeout as err:
            os.replace(self.console, self.scratch / "console.failed.log")
            progress(f"{err.args[0].splitlines()[0]}; booting it once more")
            return self._boot()

    def _boot(self) -> "L1":
        shutil.rmtree(self.scratch / "req", ignore_errors=True)  # a poweroff request of an earlier L1, never removed
        (self.scratch / "req").mkdir(parents=True)
        shutil.copyfile(AGENT_SCRIPT, self.scratch / "agent")
        (self.scratch / "env").write_text(f"REPO={REPO}\nPYTHON={sys.executable}\n")
        for stale in ("ready", "console.log"):
            (self.scratch / stale).unlink(missing_ok=True)
        cmd = self.command()
        progress(f"booting L1 (QEMU TCG, -cpu {CPU}, {self.cpus} vCPUs) for real KVM")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.boot_timeout
        ready = self.scratch / "ready"
        while not ready.exists():
            if self.proc.poll() is not None:
                raise L1Error(f"L1's QEMU exited with status {self.proc.returncode} before L1 was ready: "
                              f"{self._qemu_said()}\n{self.console_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise L1Timeout(f"L1 was not ready within {self.boot_timeout:.0f} s; its console:\n"
                                f"{self.console_tail()}")
            time.sleep(0.2)
        self.ready = ready.read_text().strip()
        if not self.ready.startswith("VMBOOT-L1-READY"):
            self.kill()
            raise L1Error(f"L1 has no usable KVM: {self.ready.removeprefix('VMBOOT-L1-FAIL ')}")
        return self

    def _qemu_said(self) -> str:
        if self.proc is None or self.proc.stdout is None or self.proc.poll() is None:
            return ""
        return self.proc.stdout.read().decode(errors="replace").strip()[-2000:]

    def run(self, script: str, timeout: float) -> Result:
        """Run ``script`` with sh in L1, in the repository's root; its exit status and output."""
        if self.proc is None or self.proc.poll() is not None:
            raise L1Error("L1 is not running")
        n = next(self._ids)
        req = self.scratch / "req"
        tmp = req / f"{n}.tmp"
        tmp.write_text(script)
        os.rename(tmp, req / f"{n}.sh")
        rc_path, out_path = req / f"{n}.rc", req / f"{n}.out"
        deadline = time.monotonic() + timeout
        while not rc_path.exists():
            if self.proc.poll() is not None:
                raise L1Error(f"L1 died (QEMU status {self.proc.returncode}) while running a request: "
                              f"{self._qemu_said()}\n{self.console_tail()}")
            if time.monotonic() > deadline:
                output = out_path.read_text(errors="replace") if out_path.exists() else ""
                self.kill()
                raise L1Error(f"a request in L1 did not finish within {timeout:.0f} s; its output:\n"
                              f"{output[-3000:]}\nL1's console:\n{self.console_tail()}")
            time.sleep(0.1)
        return Result(int(rc_path.read_text().strip() or -1), out_path.read_text(errors="replace"))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def close(self) -> None:
        """Power L1 off (sysrq o), or kill it after 30 s."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            n = next(self._ids)
            (self.scratch / "req" / f"{n}.tmp").write_text("echo o > /proc/sysrq-trigger\n")
            os.rename(self.scratch / "req" / f"{n}.tmp", self.scratch / "req" / f"{n}.sh")
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def __enter__(self) -> "L1":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
