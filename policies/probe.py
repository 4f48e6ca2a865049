"""Firecracker-style checks of a compiled policy: call what it allows, and what it must kill.

``run_checks(name)`` starts a fresh interpreter (``python -m vmboot.policies.probe NAME``)
that compiles the policy in kill mode and forks one child per check; each child
installs the filter and makes raw syscalls through ctypes:

- allowed: one child calls every policy line with arguments that satisfy its
  conditions (harmless ones: -1 as fd, pointer and size, so the kernel answers
  EBADF, EFAULT or EINVAL after the filter let the call through) and must end
  with exit_group(42);
- denied: one child per call that must die by SIGSYS: openat, execve, socket and
  ptrace with real arguments (they would succeed if let through), a process-making
  clone, executable mmap and mprotect, an x32-ABI syscall, every NEVER syscall,
  and calls that break each argument condition of the policy. The kernel's audit
  record, when the log has it, must name the same syscall.
"""
from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from vmboot.policies.compiler import POLICY_DIR, compile_filter, load_policy
from vmboot.policies.rules import CONSTANTS, MASKED, NEVER, U64, Condition, Policy, PolicyError, Rule, syscall_number
from vmboot.policies.verdict import kill_records

EXIT_ALLOWED = 42  # the allowed-calls child's exit_group status
EXIT_RETURNED = 0  # a denied call that came back
CHILD_TIMEOUT_S = 10
SLOT = struct.Struct("<iiq")  # state, errno, return value
NOT_REACHED, STARTED, RETURNED = 0, 1, 2
X32_SYSCALL_BIT = 0x40000000
AT_FDCWD = -100
O_RDONLY = 0
AF_UNIX, SOCK_STREAM = 1, 1
PTRACE_TRACEME = 0
TERMINAL = {"exit_group", "exit", "rt_sigreturn"}  # checked in a child of their own, by its exit status


class ProbeError(Exception):
    """The checks could not run; the message says why, in one line."""


@dataclass
class Check:
    kind: str  # "allowed" or "denied"
    call: str  # what the child called, readably
    where: str  # the policy line it exercises, or why the call is denied
    expect: str  # "returns", "exit 42" or "SIGSYS"
    outcome: str = "not run"
    audit: str | None = None  # the syscall the kernel's audit record names
    passed: bool = False


@dataclass
class _Case:
    check: Check
    nr: int
    args: tuple[int, ...]
    audit_name: str | None  # what the audit record must say, when there is one


# -- arguments -------------------------------------------------------------------------------------
def _satisfy(c: Condition, base: int) -> int:
    if c.op == MASKED:
        return (base & ~c.mask & U64) | c.value
    return {"==": c.value, "!=": base if base != c.value else 0, "<": max(c.value - 1, 0), "<=": c.value,
            ">": U64, ">=": U64}[c.op]


def _violations(c: Condition, base: int) -> list[int]:
    """Values that break ``c``, nearest first (the nearest may be one another line allows)."""
    if c.op == MASKED:
        low = c.mask & -c.mask
        return [(base & ~c.mask & U64) | (c.value ^ low)]
    if c.op == "==":
        return [c.value ^ 1, c.value ^ 2, c.value ^ U64]
    return [{"!=": c.value, "<": c.value, "<=": min(c.value + 1, U64), ">": c.value, ">=": max(c.value - 1, 0)}[c.op]]


def satisfying_args(rule: Rule) -> tuple[int, ...] | None:
    """-1 everywhere, except what the rule's conditions fix; None when that does not satisfy them."""
    args = [U64] * 6
    for c in rule.conditions:
        args[c.arg] = _satisfy(c, args[c.arg])
    return tuple(args) if rule.allows(tuple(args)) else None


def violating_args(policy: Policy, syscall: str) -> list[tuple[tuple[int, ...], Rule]]:
    """Argument sets that break one condition of a line and that no line of the policy allows."""
    out = []
    for rule in policy.rules_for(syscall):
        base = satisfying_args(rule)
        for c in rule.conditions if base else ():
            for value in _violations(c, base[c.arg]):
                args = list(base)
                args[c.arg] = value
                if not policy.allows(syscall, tuple(args)):
                    if all(tuple(args) != a for a, _ in out):
                        out.append((tuple(args), rule))
                    break
    return out


def show_args(name: str, args: tuple) -> str:
    def one(a) -> str:
        if a is None:
            return "NULL"
        if isinstance(a, bytes):
            return '"' + a.decode() + '"'
        return "-1" if a == U64 else str(a) if a < 10 else hex(a)
    return f"{name}({', '.join(one(a) for a in args)})"


# -- the checks ------------------------------------------------------------------------------------
def _explicit(page: int) -> list[tuple[str, tuple, str]]:
    """Calls that must be killed in every policy, with arguments that would work if let through."""
    prot_rx = CONSTANTS["PROT_READ"] | CONSTANTS["PROT_EXEC"]
    anon = CONSTANTS["MAP_PRIVATE"] | CONSTANTS["MAP_ANONYMOUS"]
    return [
        ("openat", (AT_FDCWD, b"/etc/passwd", O_RDONLY), "never: opens a file"),
        ("execve", (b"/bin/true", None, None), "never: runs a program"),
        ("socket", (AF_UNIX, SOCK_STREAM, 0), "never: makes a socket"),
        ("ptrace", (PTRACE_TRACEME, 0, 0, 0), "never: ptrace"),
        ("clone", (signal.SIGCHLD, 0, 0, 0, 0), "never: clone without CLONE_THREAD makes a process"),
        ("mmap", (0, 4096, prot_rx, anon, U64, 0), "never: executable memory"),
        ("mprotect", (page, 4096, prot_rx), "never: executable memory"),
    ]


def build_cases(policy: Policy, page: int) -> tuple[list[_Case], list[_Case]]:
    allowed, denied = [], []
    for rule in policy.rules:
        args = satisfying_args(rule)
        where = f"{rule.where}" + (f" {rule.text}" if rule.text else "")
        if args is None:
            allowed.append(_Case(Check("allowed", rule.syscall, where, "returns", "cannot build arguments"),
                                 rule.nr, (), None))
            continue
        call, expect = show_args(rule.syscall, args), "returns"
        if rule.syscall in TERMINAL:
            call, expect = f"{rule.syscall}({EXIT_ALLOWED})", f"exit {EXIT_ALLOWED}"
            if rule.syscall == "rt_sigreturn":
                call = "rt_sigreturn() from a SIGVTALRM handler"
        allowed.append(_Case(Check("allowed", call, where, expect), rule.nr, args, None))
    seen = set()
    for name, args, why in _explicit(page):
        denied.append(_Case(Check("denied", show_args(name, args), why, "SIGSYS"), syscall_number(name), args, name))
        seen.add(name)
    x32 = X32_SYSCALL_BIT | syscall_number("getpid")
    denied.append(_Case(Check("denied", "x32 getpid()", "a foreign syscall ABI", "SIGSYS"), x32, (), None))
    for name, why in NEVER.items():
        nr = syscall_number(name)
        if name in seen or nr is None:
            continue
        args = (U64,) * 6
        denied.append(_Case(Check("denied", show_args(name, args), f"never: {why}", "SIGSYS"), nr, args, name))
    for name in policy.syscalls():
        for args, rule in violating_args(policy, name):
            denied.append(_Case(Check("denied", show_args(name, args), f"outside {rule.where} {rule.text}", "SIGSYS"),
                                syscall_number(name), args, name))
    return allowed, denied


# -- running them (inside the probe process) -------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _raw(nr: int, args: tuple) -> tuple[int, int]:
    ctypes.set_errno(0)
    converted = [a if isinstance(a, bytes) or a is None else ctypes.c_long(a - (1 << 64) if a > (1 << 63) else a)
                 for a in args]
    ret = _libc.syscall(ctypes.c_long(nr), *converted)
    return ret, ctypes.get_errno()


def _child(scmp, body: Callable[[], None], setup: Callable[[], None] | None = None) -> int:
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            signal.alarm(CHILD_TIMEOUT_S)  # a call that blocks ends as SIGALRM
            if setup is not None:
                setup()
            scmp.load()
            body()
            code = EXIT_RETURNED
        finally:
            os._exit(code)
    return pid


def _status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"


def _returned(ret: int, err: int) -> str:
    return f"returned {ret}" + (f" {errno.errorcode.get(err, err)}" if ret == -1 else "")


def run_allowed(scmp, cases: list[_Case], shared: mmap.mmap) -> None:
    runnable = [c for c in cases if c.check.outcome == "not run"]
    ordered = [c for c in runnable if c.check.call.split("(")[0] not in TERMINAL]
    final = next((c for c in runnable if c.check.call.split("(")[0] == "exit_group"), None)

    def body() -> None:
        for i, case in enumerate(ordered):
            SLOT.pack_into(shared, i * SLOT.size, STARTED, 0, 0)
            ret, err = _raw(case.nr, case.args)
            SLOT.pack_into(shared, i * SLOT.size, RETURNED, err, ret)
        if final is not None:
            _raw(final.nr, (EXIT_ALLOWED,))

    _, status = os.waitpid(_child(scmp, body), 0)
    ended = _status(status)
    for i, case in enumerate(ordered):
        state, err, ret = SLOT.unpack_from(shared, i * SLOT.size)
        case.check.outcome = _returned(ret, err) if state == RETURNED else ended if state == STARTED else "not reached"
        case.check.passed = state == RETURNED
    if final is not None:
        final.check.outcome = ended
        final.check.passed = ended == f"exit {EXIT_ALLOWED}"
    for case in runnable:
        name = case.check.call.split("(")[0]
        if name == "exit":  # ends the only thread of a child of its own
            pid = _child(scmp, lambda: _raw(case.nr, (EXIT_ALLOWED,)))
        elif name == "rt_sigreturn":  # needs a real signal frame: return from a handler
            pid = _child(scmp, _wait_for_signal, _arm_signal)
        else:
            continue
        _, status = os.waitpid(pid, 0)
        case.check.outcome = _status(status)
        case.check.expect = f"exit {EXIT_ALLOWED}"
        case.check.passed = case.check.outcome == case.check.expect


_signalled = []


def _arm_signal() -> None:
    """SIGVTALRM after 1 ms of CPU time, to a Python handler: the kernel returns from it by rt_sigreturn."""
    signal.signal(signal.SIGVTALRM, lambda *_: _signalled.append(1))
    signal.setitimer(signal.ITIMER_VIRTUAL, 0.001)


def _wait_for_signal() -> None:
    while not _signalled:  # no syscall here: the handler runs between bytecodes
        pass
    os._exit(EXIT_ALLOWED)


def run_denied(scmp, cases: list[_Case], shared: mmap.mmap, since: float) -> None:
    pids = {}
    for case in cases:
        def body(case=case) -> None:
            ret, err = _raw(case.nr, case.args)
            SLOT.pack_into(shared, 0, RETURNED, err, ret)

        SLOT.pack_into(shared, 0, NOT_REACHED, 0, 0)
        pid = _child(scmp, body)
        _, status = os.waitpid(pid, 0)
        pids[pid] = case
        state, err, ret = SLOT.unpack_from(shared, 0)
        case.check.outcome = _status(status) if state != RETURNED else _returned(ret, err)
        case.check.passed = case.check.outcome == "killed by SIGSYS"
    records = kill_records(since)
    for pid, case in pids.items():
        case.check.audit = records.get(pid)
        if case.check.audit and case.audit_name and case.check.audit != case.audit_name:
            case.check.passed = False
            case.check.outcome += f", but the audit record names {case.check.audit}"


def probe(name: str, directory: Path = POLICY_DIR) -> list[Check]:
    since = time.monotonic()
    policy = load_policy(name, directory)
    scmp = compile_filter(policy, "kill")
    shared = mmap.mmap(-1, 1 << 16)  # MAP_SHARED: the children write what happened here
    page = mmap.mmap(-1, 4096, mmap.MAP_PRIVATE)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    allowed, denied = build_cases(policy, address)
    if len(allowed) * SLOT.size > len(shared):
        raise ProbeError(f"{name}: too many lines to probe")
    run_allowed(scmp, allowed, shared)
    run_denied(scmp, denied, shared, since)
    return [c.check for c in allowed + denied]


# -- the caller's side -----------------------------------------------------------------------------
def run_checks(name: str, directory: Path = POLICY_DIR, timeout: float = 120) -> list[Check]:
    """Run the checks of one policy in a fresh interpreter; ProbeError if they could not run."""
    try:
        done = subprocess.run([sys.executable, "-m", "vmboot.policies.probe", name, str(directory)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"{name}: the checks took more than {timeout:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise ProbeError(f"{name}: the checks did not run: {last}")
    return [Check(**item) for item in json.loads(done.stdout)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m vmboot.policies.probe NAME [POLICY_DIR]", file=sys.stderr)
        return 2
    try:
        checks = probe(args[0], Path(args[1]) if len(args) == 2 else POLICY_DIR)
    except (PolicyError, ProbeError) as err:
        print(f"probe: {err}", file=sys.stderr)
        return 1
    print(json.dumps([asdict(c) for c in checks]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
