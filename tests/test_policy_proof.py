"""Every kind's policy proven on its real device process (core/exercise.py), and vmboot-policy's runtime commands.

The exercise starts each registered kind as a VM does (the supervisor, the
zygote, the namespaces, the seccomp filter in kill mode), drives it through
every register and its own work, and stops it; under strace, the trace proves
each policy line needed and no call outside it (policies/trace.py).
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vmboot.core import exercise
from vmboot.core.policy_cli import main as policy_main
from vmboot.devices import registry
from vmboot.devices.registry import ExerciseFailed
from vmboot.ipc.protocol import MAX_DATA_BYTES
from vmboot.policies.compiler import POLICY_DIR, load_policy
from vmboot.policies.trace import prove, read_traces

KINDS = [k.name for k in registry.kinds()]
REPO = Path(__file__).resolve().parent.parent


def _posted(name: str) -> int:
    """Posted writes of the register pass: one per offset, the largest WRITE, the burst, in each window."""
    kind = registry.get(name)
    sizes = [w.size for w in kind.windows] + ([exercise.REGION_SIZE] if kind.virtio else [])
    return sum(size + 1 + exercise.BURST for size in sizes)


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_s_real_process_does_its_work_sandboxed_in_kill_mode(name):
    result = exercise.run(name, "kill")
    assert result.kind == name
    assert result.posted == _posted(name)
    assert result.posted == {"debugcon": 4004, "pmtimer": 2005, "rtc": 2003, "serial": 2009,
                             "virtio_blk": 6097}[name]
    # debugcon's console takes every byte written to it: the offset pass, the largest WRITE, the burst.
    # The UART sends its offset pass's THR byte, then enters loopback (MCR 0x94) until the largest
    # WRITE's pattern clears it (MCR 4), so the burst goes out too.
    assert result.output == {"debugcon": 1 + MAX_DATA_BYTES + exercise.BURST, "serial": 1 + exercise.BURST}.get(name, 0)
    # 80 writes and reads checked on the disk, FLUSH, DISCARD, WRITE_ZEROES, GET_ID, a read past the end
    assert result.work == (85 if name == "virtio_blk" else 0)


def _policies_copy(tmp_path: Path) -> Path:
    for path in POLICY_DIR.glob("*.policy"):
        shutil.copy(path, tmp_path)
    return tmp_path


def test_a_missing_syscall_kills_the_device_and_is_named(tmp_path):
    common = _policies_copy(tmp_path) / "common_device.policy"
    common.write_text("".join(line for line in common.read_text().splitlines(keepends=True)
                              if not line.startswith("sendto")))
    with pytest.raises(ExerciseFailed) as err:
        exercise.run("rtc", "kill", policy_dir=tmp_path)
    # the first thing a sandboxed device does is tell the core so (printk may drop the audit record)
    assert str(err.value) in ("rtc killed by SIGSYS: syscall sendto", "rtc killed by SIGSYS")


def test_an_unknown_kind_is_refused_with_the_known_ones():
    with pytest.raises(ExerciseFailed, match=r"^unknown device kind 'floppy' \(known: debugcon, pmtimer, rtc, serial, "
                                             r"virtio_blk\)$"):
        exercise.run("floppy")


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    assert shutil.which("strace"), "strace is needed (apt-get install strace)"
    directory = tmp_path_factory.mktemp("traces")
    for name in KINDS:
        exercise.run(name, "kill", trace_dir=directory)
    return read_traces(directory, KINDS)


def test_every_listed_syscall_is_needed_and_every_needed_one_listed(traces):
    proof = prove({n: load_policy(n) for n in KINDS}, traces)
    assert sorted(proof.traced) == KINDS and proof.untraced == []
    assert [f"{r.where} {r.syscall} {r.text}" for r in proof.unused] == []
    assert {n: dict(m) for n, m in proof.missing.items()} == {n: {} for n in KINDS}
    assert proof.refused == {n: {} for n in KINDS}
    used = {n: set(proof.traced[n].used()) for n in KINDS}
    assert used["virtio_blk"] - used["rtc"] >= {"preadv2", "pwritev2", "fdatasync", "fallocate"}
    assert "openat" not in set().union(*used.values())


def test_the_traces_catch_a_line_nothing_needs(traces, tmp_path):
    with open(_policies_copy(tmp_path) / "serial.policy", "a") as extra:
        extra.write("getppid      # not needed by anything\n")
    proof = prove({n: load_policy(n, tmp_path) for n in KINDS}, traces)
    lines = len((tmp_path / "serial.policy").read_text().splitlines())
    assert [(r.syscall, r.where) for r in proof.unused] == [("getppid", f"serial.policy:{lines}")]


def test_vmboot_policy_prove_exercises_and_proves(capsys):
    assert policy_main(["prove", "rtc", "pmtimer"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rtc: exercised: ") and "\npmtimer: exercised: " in out
    assert "2003 posted writes" in out and "2005 posted writes" in out


def test_vmboot_policy_prove_fails_on_a_line_nothing_needs(tmp_path, capsys):
    with open(_policies_copy(tmp_path) / "rtc.policy", "a") as extra:
        extra.write("getppid      # not needed by anything\n")
    assert policy_main(["--policies", str(tmp_path), "prove", "rtc"]) == 1
    assert "getppid" in capsys.readouterr().out


def test_vmboot_policy_kinds_lists_the_registry():
    out = subprocess.run([sys.executable, "-m", "vmboot.core.policy_cli", "kinds"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert [line.split()[0] for line in out] == KINDS
    rtc = next(line for line in out if line.startswith("rtc "))
    assert rtc.split()[1:4] == ["restart", "snapshot", "platform"] and "0x70+2" in rtc
    assert rtc.endswith(str(POLICY_DIR / "rtc.policy"))


def test_a_fake_kind_is_listed_shown_and_proven(misbehave, capsys):
    """One registration and one policy: the tests' kind appears everywhere a shipped kind does."""
    assert policy_main(["kinds"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1].split()[:4] == ["misbehave", "restart", "snapshot", "platform"]
    assert "0x7a0+2" in listed[-1]
    policies = str(misbehave.policy_dir)
    assert policy_main(["--policies", policies, "show", "misbehave"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("# misbehave: common_device.policy + misbehave.policy: ")
    assert policy_main(["--policies", policies, "prove", "misbehave"]) == 0
    proven = capsys.readouterr().out
    # 3 reads of the offset pass, 1 after the burst, SNAPSHOT, RESTORE, RESET
    assert proven.startswith("misbehave: exercised: 7 calls, 2003 posted writes")
    assert proven.endswith("traces: every listed syscall was needed and every syscall used was listed\n")
