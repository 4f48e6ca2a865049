"""Every shipped policy against the kernel: firecracker-style checks.

The checks run in fresh interpreters (policies/probe.py): each allowed line is called with
arguments its conditions allow, and forbidden calls must kill by SIGSYS. (That every line is
needed is proven on the real device processes: tests/test_policy_proof.py.)
"""
from __future__ import annotations

import pytest

from vmboot.policies.compiler import device_names, load_policy
from vmboot.policies.probe import run_checks
from vmboot.policies.rules import NEVER

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
