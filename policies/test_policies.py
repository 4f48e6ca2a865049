"""Every shipped policy against the kernel: firecracker-style checks, and the reference workload.

The checks run in fresh interpreters (policies/probe.py): each allowed line is called with
arguments its conditions allow, and forbidden calls must kill by SIGSYS. The reference
workload (policies/workload.py) runs each device's syscall profile in kill mode, sandboxed
as a device is, and under strace to prove that every listed syscall is needed.
"""
from __future__ import annotations

import shutil

import pytest

from vmboot.policies.compiler import NEVER, POLICY_DIR, device_names, load_policy
from vmboot.policies.probe import run_checks
from vmboot.policies.trace import prove, read_traces
from vmboot.policies.workload import REQUESTS, WorkloadError, run

DEVICES = sorted(device_names())
EXPLICIT = ("openat", "execve", "socket", "ptrace", "clone", "mmap", "mprotect")


@pytest.mark.parametrize("name", DEVICES)
def test_every_allowed_line_passes_and_every_forbidden_call_kills(name):
    checks = run_checks(name)
    failures = [f"{c.call} [{c.where}]: expected {c.expect}, got {c.outcome}" for c in checks if not c.passed]
    assert not failures, "\n".join(failures)

    policy = load_policy(name)
    allowed = [c for c in checks if c.kind == "allowed"]
    assert [c.where.split()[0] for c in allowed] == [r.where for r in policy.rules]  # one check per line
    for check in allowed:
        if check.call.startswith("exit_group"):
            assert check.outcome == "exit 42"
        else:  # -1 as fd, pointer and length: the kernel saw the call and refused its arguments
            assert check.outcome.startswith("returned "), check
    by_call = {c.call.split("(")[0]: c for c in checks if c.kind == "allowed"}
    assert by_call["read"].outcome == "returned -1 EBADF"
    assert by_call["write"].outcome == "returned -1 EBADF"

    denied = [c for c in checks if c.kind == "denied"]
    assert all(c.outcome == "killed by SIGSYS" for c in denied)
    explicit = [c.call.split("(")[0] for c in denied[:len(EXPLICIT)]]
    assert explicit == list(EXPLICIT)
    assert denied[0].call == 'openat(-100, "/etc/passwd", 0)'  # a call that works when let through
    assert denied[1].call == 'execve("/bin/true", NULL, NULL)'
    assert denied[len(EXPLICIT)].call == "x32 getpid()"
    assert {c.call.split("(")[0] for c in denied} >= set(NEVER)
    outside = [c for c in denied if c.where.startswith("outside")]
    assert {c.call.split("(")[0] for c in outside} == {"mmap", "mremap", "clock_gettime"} | (
        {"fallocate"} if name == "virtio_blk" else set())
    for check in denied:  # the kernel's audit record, when printk's rate limit let it through
        if check.audit and not check.call.startswith("x32"):
            assert check.audit == check.call.split("(")[0]


@pytest.mark.parametrize("name", DEVICES)
def test_the_reference_workload_runs_sandboxed_in_kill_mode(name):
    result = run(name, "kill")
    assert result.requests == REQUESTS + 8  # and 4 snapshots and 4 restores
    assert result.events == 2036  # 30 posted writes, 6 eventfd inputs, 2000 burst writes
    # 80 writes and reads checked on disk, flush, discard, write-zeroes
    assert result.disk_requests == (83 if name == "virtio_blk" else 0)


def test_a_missing_syscall_kills_the_workload_and_is_named(tmp_path):
    for path in POLICY_DIR.glob("*.policy"):
        shutil.copy(path, tmp_path)
    common = tmp_path / "common_device.policy"
    common.write_text("".join(line for line in common.read_text().splitlines(keepends=True)
                              if not line.startswith("sendto")))
    with pytest.raises(WorkloadError) as err:
        run("rtc", "kill", policy_dir=tmp_path)
    # the first thing a sandboxed device does is tell the core so (printk may drop the audit record)
    assert str(err.value) in ("rtc killed by SIGSYS: syscall sendto", "rtc killed by SIGSYS")


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    assert shutil.which("strace"), "strace is needed (apt-get install strace)"
    directory = tmp_path_factory.mktemp("traces")
    for name in DEVICES:
        result = run(name, "kill", trace_dir=directory)
        assert result.trace == directory / f"{name}.strace"
    return read_traces(directory, DEVICES)


def test_every_listed_syscall_is_needed_and_every_needed_one_listed(traces):
    policies = {n: load_policy(n) for n in DEVICES}
    proof = prove(policies, traces)
    assert proof.untraced == []
    assert [f"{r.where} {r.syscall} {r.text}" for r in proof.unused] == []
    assert {n: dict(m) for n, m in proof.missing.items()} == {n: {} for n in DEVICES}
    assert proof.refused == {n: {} for n in DEVICES}
    used = {n: set(proof.traced[n].used()) for n in DEVICES}
    assert used["virtio_blk"] - used["rtc"] >= {"preadv2", "pwritev2", "fdatasync", "fallocate"}
    assert "openat" not in set().union(*used.values())


def test_the_traces_catch_a_line_nothing_needs(traces, tmp_path):
    for path in POLICY_DIR.glob("*.policy"):
        shutil.copy(path, tmp_path)
    with open(tmp_path / "serial.policy", "a") as extra:
        extra.write("getppid      # not needed by anything\n")
    policies = {n: load_policy(n, tmp_path) for n in DEVICES}
    proof = prove(policies, traces)
    assert [(r.syscall, r.where) for r in proof.unused] == [("getppid", f"serial.policy:{_lines(tmp_path)}")]


def _lines(directory) -> int:
    return len((directory / "serial.policy").read_text().splitlines())


def test_the_workload_refuses_an_unknown_device():
    with pytest.raises(WorkloadError, match=r"no policy for device 'floppy' \(known: debugcon, pmtimer, rtc, "
                                            r"serial, virtio_blk\)"):
        run("floppy")
