"""Compare a policy with what a device process really did, from strace output.

The lead's core can start each device under ``strace -f -qq -o DIR/NAME.strace
-e trace=all`` (VMBOOT_DEVICE_TRACE=DIR). The sandbox boundary in that output
is the device's successful ``seccomp(SECCOMP_SET_MODE_FILTER, ...)`` (or
``prctl(PR_SET_SECCOMP, ...)``): every syscall a thread of that process starts
after it must be allowed (with arguments some line allows, where strace's
text tells), and every line must be needed: a device file's line by that
device's trace, a common_device line by at least one device's trace.

Pids in the output are host pids; the device runs in its own pid namespace,
so its clone() results are not. The device's thread group is therefore taken
as every pid active after the boundary except the device's ancestors (unshare,
which forked it: its clone() does return the host pid) and processes that had
already exited.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vmboot.policies.rules import ARG_COUNT, CONSTANTS, Policy, Rule

_LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(.*)$")
_CALL = re.compile(r"([a-z_][a-z0-9_]*)\((.*)$")
_RESULT = re.compile(r"\)\s+=\s+(-?\d+|\?|0x[0-9a-f]+)")
_FILTER_CALL = r"^(seccomp\(SECCOMP_SET_MODE_FILTER,|prctl\(PR_SET_SECCOMP, SECCOMP_MODE_FILTER,)"
_FILTER_SET = re.compile(_FILTER_CALL + r".*\)\s+=\s+0\b")
_FILTER_STARTED = re.compile(_FILTER_CALL + r".*<unfinished \.\.\.>$")  # another thread printed meanwhile
_FILTER_RESUMED = re.compile(r"^<\.\.\. (seccomp|prctl) resumed>.*\)\s+=\s+0\b")
_RESUMED = re.compile(r"<\.\.\. ([a-z_][a-z0-9_]*) resumed>(.*)$")
_THREAD_FLAG = "CLONE_THREAD"
_CLONES = ("clone", "clone3", "fork", "vfork")

# Names strace prints for combined values, beyond the kernel constants the policies use.
STRACE_ALIASES = {
    "NULL": 0,
    "SIGCHLD": 17,
}


@dataclass
class Call:
    pid: int
    name: str
    args: list[str]  # as strace printed them (possibly cut short by an <unfinished ...>)


@dataclass
class Trace:
    path: Path
    device_pid: int | None = None  # the pid that installed the filter
    calls: list[Call] = field(default_factory=list)  # every syscall the device started after it
    files: int = 1  # how many processes' trace files were merged into this one

    def used(self) -> Counter:
        return Counter(c.name for c in self.calls)


class TraceError(Exception):
    """A trace that cannot be used; the message says why."""


def split_args(text: str) -> list[str]:
    """strace's argument list (up to the closing parenthesis), split at top-level commas."""
    args, depth, current, quoted, escaped = [], 0, [], False, False
    for ch in text:
        if quoted:
            current.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
            continue
        if ch == '"':
            quoted = True
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    tail = "".join(current).strip()
    if tail and not tail.startswith("<unfinished"):
        args.append(tail.replace(" <unfinished ...>", ""))
    return args


def arg_value(text: str) -> int | None:
    """The number an argument as strace prints it stands for, when it is a number or flags we know."""
    text = re.sub(r"/\*.*?\*/", "", text).strip()
    if not text:
        return None
    total = 0
    for part in text.split("|"):
        part = part.strip()
        if re.fullmatch(r"-?(0x[0-9a-fA-F]+|0[0-7]*|[1-9]\d*)", part):
            total |= int(part, 16 if "0x" in part else 8 if re.fullmatch(r"-?0[0-7]+", part) else 10) & (2**64 - 1)
        elif part in CONSTANTS:
            total |= CONSTANTS[part]
        elif part in STRACE_ALIASES:
            total |= STRACE_ALIASES[part]
        else:
            return None
    return total


def read_trace(path: Path) -> Trace:
    trace = Trace(path)
    exited: set[int] = set()
    parents: dict[int, int] = {}  # host pid -> the pid whose fork/clone returned it
    forking: set[int] = set()  # pids in a process-making clone whose result comes on a <... resumed> line

    def forked(pid: int, text: str) -> None:
        result = _RESULT.search(text)
        if result and result.group(1).isdigit():
            parents[int(result.group(1))] = pid
        elif not result:
            forking.add(pid)

    lines = path.read_text(errors="replace").splitlines()
    boundary, filtering = None, set()
    for index, line in enumerate(lines):
        match = _LINE.match(line)
        if not match:
            continue
        pid, rest = int(match.group(1)), match.group(2)
        if _FILTER_SET.match(rest) or (pid in filtering and _FILTER_RESUMED.match(rest)):
            boundary, trace.device_pid = index, pid
            break
        if _FILTER_STARTED.match(rest):
            filtering.add(pid)
        resumed = _RESUMED.match(rest)
        if resumed and resumed.group(1) in _CLONES and pid in forking:
            forking.discard(pid)
            forked(pid, resumed.group(2))
        call = _CALL.match(rest)
        if not call:
            continue
        if call.group(1) == "exit_group":
            exited.add(pid)
        if call.group(1) in _CLONES and _THREAD_FLAG not in rest:
            forked(pid, rest)
    if boundary is None:
        raise TraceError(f"{path.name}: no successful seccomp(SECCOMP_SET_MODE_FILTER) call: "
                         "was the device traced with strace -f through its sandbox?")
    ancestors, pid = set(), trace.device_pid
    while pid in parents:
        pid = parents[pid]
        ancestors.add(pid)
    excluded = ancestors | (exited - {trace.device_pid})
    for line in lines[boundary + 1:]:
        match = _LINE.match(line)
        if not match or int(match.group(1)) in excluded:
            continue
        call = _CALL.match(match.group(2))
        if call:
            trace.calls.append(Call(int(match.group(1)), call.group(1), split_args(call.group(2))))
    return trace


def _values(call: Call) -> tuple[int | None, ...]:
    values = tuple(arg_value(a) for a in call.args[:ARG_COUNT])
    return values + (None,) * (ARG_COUNT - len(values))


def _matches(rule: Rule, values: tuple[int | None, ...]) -> bool | None:
    """Whether the rule allows a traced call; None when strace's text does not tell."""
    if any(values[c.arg] is None for c in rule.conditions):
        return None
    return rule.allows(tuple(v or 0 for v in values))


@dataclass
class Proof:
    """What the traces say about a set of policies."""

    traced: dict[str, Trace] = field(default_factory=dict)  # device -> its trace
    untraced: list[str] = field(default_factory=list)  # devices without a trace
    unused: list[Rule] = field(default_factory=list)  # lines no trace needed
    untraceable: list[Rule] = field(default_factory=list)  # marked lines (UNTRACEABLE) no trace needed, not held against
    missing: dict[str, Counter] = field(default_factory=dict)  # device -> syscalls called but not listed
    refused: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # device -> syscall -> example calls

    @property
    def clean(self) -> bool:
        return not (self.untraced or self.unused or any(self.missing.values()) or any(self.refused.values()))


def prove(policies: dict[str, Policy], traces: dict[str, Trace]) -> Proof:
    """Check every device's trace against its policy, and every policy line against the traces.

    A device's own lines must be needed by its trace; a common line by at least one
    device's trace (a shared line is needed when any device needs it).
    """
    proof = Proof({n: t for n, t in traces.items() if n in policies}, sorted(set(policies) - set(traces)))
    needed: set[int] = set()  # id() of the rules some traced call matched
    for name, trace in proof.traced.items():
        policy = policies[name]
        missing, refused = Counter(), {}
        for call in trace.calls:
            rules = policy.rules_for(call.name)
            if not rules:
                missing[call.name] += 1
                continue
            values = _values(call)
            verdicts = [(_matches(r, values), r) for r in rules]
            needed.update(id(r) for verdict, r in verdicts if verdict is not False)
            if all(verdict is False for verdict, _ in verdicts):
                examples = refused.setdefault(call.name, [])
                text = f"{call.name}({', '.join(call.args)})"
                if text not in examples and len(examples) < 3:
                    examples.append(text)
        proof.missing[name], proof.refused[name] = missing, refused
    seen = set()
    for name, policy in policies.items():
        if name not in proof.traced:
            continue
        for rule in policy.rules:
            if rule.where in seen:
                continue
            seen.add(rule.where)
            same_line = [r for n in proof.traced for r in policies[n].rules if r.where == rule.where]
            if not any(id(r) in needed for r in same_line):
                (proof.untraceable if rule.untraceable else proof.unused).append(rule)
    return proof


def trace_files(directory: Path, name: str) -> list[Path]:
    """DIR/NAME.strace, then DIR/NAME.N.strace: one per process of that kind (two disks, a restart)."""
    first = directory / f"{name}.strace"
    more = sorted(directory.glob(f"{name}.*.strace"), key=lambda p: int(p.suffixes[-2][1:])
                  if p.suffixes[-2][1:].isdigit() else -1)
    return ([first] if first.is_file() else []) + [p for p in more if p.suffixes[-2][1:].isdigit()]


def read_traces(directory: Path, names: list[str]) -> dict[str, Trace]:
    """Every device's trace; the files of one kind of device make one trace."""
    traces = {}
    for name in names:
        files = trace_files(directory, name)
        if not files:
            continue
        trace = read_trace(files[0])
        for path in files[1:]:
            trace.calls += read_trace(path).calls
        trace.files = len(files)
        traces[name] = trace
    return traces
