"""Read, check and compile the device processes' seccomp policies.

A policy is a text file in this folder, one per device process, that people
audit. Every statement sits on one line and ends with a comment saying why:

    include common_device                  # what every Python device process needs
    mmap     arg2 & PROT_EXEC == 0         # memory for Python; never executable
    ioctl    arg1 == FIONBIO               # a socket made non-blocking
    fdatasync                              # virtio-blk FLUSH: nothing acknowledged is lost

A condition is ``argN OP VALUE`` (OP one of == != < <= > >=) or the masked
equality ``argN & MASK == VALUE``; conditions joined by ``and`` on one line
must all hold, and several lines for one syscall are alternatives. VALUE is a
number, a constant named after the kernel headers (abi/linux.py), or an
``|`` of those. A comment that starts with a marker (UNTRACEABLE) says when a
line is needed that a trace here cannot show, and the proof lists it apart
instead of calling it unused: ``host:`` on some hosts only (the clock, where
the host's clocksource has no vDSO), ``growth:`` only when the process's heap
grows past what it had when it was sandboxed (Python's arenas).
The checks here refuse what a device must never be allowed
(NEVER, MUST_HOLD) and argument-sensitive syscalls without a condition
(DANGEROUS), naming file:line.

The compiled filter (libseccomp through pyseccomp) covers every thread (TSYNC)
and kills the process on a foreign syscall ABI (x32, i386). Its default action
depends on the mode: "kill" kills the whole process (KILL_PROCESS); "log" lets
the call through and has the kernel log it; "trace" allows everything, a
marker that makes the sandbox boundary visible to strace. A device process
calls, last thing before it serves (everything opened, mapped, connected and
every thread settled in a blocking syscall):

    from vmboot.policies.compiler import install, load_policy
    install(load_policy("rtc"), mode="kill")

The rules themselves, and what the checks refuse, are policies/rules.py;
reading the kernel's record of a kill is policies/verdict.py.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pyseccomp

from .rules import (
    ARG_COUNT, CONSTANTS, DANGEROUS, MASKED, MUST_HOLD, NEVER, OPERATORS, U64, Condition, Policy, PolicyError,
    Requirement, Rule, syscall_number,
)

POLICY_DIR = Path(__file__).resolve().parent
SUFFIX = ".policy"
COMMON = "common_device"
MODES = ("kill", "log", "trace")
_TOKEN = re.compile(r"\s*(==|!=|<=|>=|<|>|&|\||[A-Za-z_][A-Za-z0-9_]*|-?0[xX][0-9a-fA-F]+|-?0[oO][0-7]+|-?\d+)")


def device_names(directory: Path = POLICY_DIR) -> list[str]:
    return sorted(p.stem for p in directory.glob("*" + SUFFIX) if p.stem != COMMON)


# -- parsing ---------------------------------------------------------------------------------------
def _value(tokens: list[str], where: str) -> int:
    """VALUE := TERM ('|' TERM)*, consuming tokens from the front."""
    result = 0
    while True:
        if not tokens:
            raise PolicyError(f"{where}: a value is missing")
        term = tokens.pop(0)
        if term in CONSTANTS:
            result |= CONSTANTS[term]
        elif re.fullmatch(r"-?(0[xX][0-9a-fA-F]+|0[oO][0-7]+|0|[1-9]\d*)", term):
            result |= int(term, 0) & U64
        elif re.fullmatch(r"[A-Za-z_]\w*", term):
            raise PolicyError(f"{where}: unknown constant {term!r} (add it to abi/linux.py)")
        else:
            raise PolicyError(f"{where}: expected a number or a constant, found {term!r}")
        if not tokens or tokens[0] != "|":
            return result
        tokens.pop(0)


def _conditions(text: str, where: str) -> tuple[Condition, ...]:
    tokens, pos = [], 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise PolicyError(f"{where}: cannot read {text[pos:].strip()!r}")
        tokens.append(match.group(1))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    conditions = []
    while tokens:
        head = tokens.pop(0)
        arg = re.fullmatch(r"arg(\d)", head)
        if not arg or int(arg.group(1)) >= ARG_COUNT:
            raise PolicyError(f"{where}: expected arg0..arg5, found {head!r}")
        index = int(arg.group(1))
        if not tokens:
            raise PolicyError(f"{where}: {head} needs an operator")
        op = tokens.pop(0)
        if op == "&":
            mask = _value(tokens, where)
            if not tokens or tokens.pop(0) != "==":
                raise PolicyError(f"{where}: a mask is only compared with ==")
            value = _value(tokens, where)
            if value & ~mask:
                raise PolicyError(f"{where}: {value:#x} has bits outside the mask {mask:#x}: it never matches")
            conditions.append(Condition(index, MASKED, value, mask))
        elif op in OPERATORS:
            conditions.append(Condition(index, op, _value(tokens, where)))
        else:
            raise PolicyError(f"{where}: unknown operator {op!r}")
        if tokens:
            if tokens.pop(0) != "and":
                raise PolicyError(f"{where}: join conditions with 'and'")
            if not tokens:
                raise PolicyError(f"{where}: a condition is missing after 'and'")
    args = [c.arg for c in conditions]
    if len(set(args)) != len(args):
        raise PolicyError(f"{where}: one condition per argument on a line (libseccomp cannot AND two)")
    return tuple(conditions)


@dataclass(frozen=True)
class _Line:
    number: int
    statement: str
    comment: str


def _lines(path: Path) -> list[_Line]:
    out = []
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        statement, _, comment = raw.partition("#")
        if statement.strip():
            out.append(_Line(number, statement.strip(), comment.strip()))
    return out


def parse_file(path: Path) -> tuple[list[str], list[Rule]]:
    """The includes and rules of one file; PolicyError on the first problem."""
    includes, rules = [], []
    for line in _lines(path):
        where = f"{path.name}:{line.number}"
        name, rest = (line.statement.split(None, 1) + [""])[:2]
        if not line.comment:
            raise PolicyError(f"{where}: {name!r} has no comment saying why it is needed")
        if name == "include":
            includes.append(rest.strip())
            continue
        nr = syscall_number(name)
        if nr is None:
            raise PolicyError(f"{where}: unknown syscall {name!r}")
        conditions = _conditions(rest, where)
        rules.append(Rule(name, nr, conditions, " ".join(rest.split()), line.comment, where))
    return includes, rules


# -- checks ----------------------------------------------------------------------------------------
def _guarantees(rule: Rule, need: Requirement) -> bool:
    """Whether every argument set the rule allows has (arg & mask) == value."""
    for c in rule.conditions:
        if c.arg != need.arg:
            continue
        if c.op == MASKED and c.mask & need.mask == need.mask and c.value & need.mask == need.value:
            return True
        if c.op == "==" and c.value & need.mask == need.value:
            return True
        if need.value == 0 and c.op in ("<", "<="):
            highest = c.value - 1 if c.op == "<" else c.value
            if highest < (need.mask & -need.mask):  # below the lowest required-clear bit
                return True
    return False


def check_rules(rules: list[Rule]) -> list[str]:
    """Every problem with an effective rule list, one sentence each."""
    problems = []
    for rule in rules:
        if rule.syscall in NEVER:
            problems.append(f"{rule.where}: {rule.syscall} is never allowed: it {NEVER[rule.syscall]}")
            continue
        need = MUST_HOLD.get(rule.syscall)
        if need and not _guarantees(rule, need):
            problems.append(f"{rule.where}: {rule.syscall} needs the condition {need.text}")
        elif rule.syscall in DANGEROUS and not rule.conditions:
            problems.append(f"{rule.where}: {rule.syscall} needs an argument condition: it "
                            f"{DANGEROUS[rule.syscall]}")
    seen: dict[str, list[Rule]] = {}
    for rule in rules:
        earlier = seen.setdefault(rule.syscall, [])
        plain = next((r for r in earlier + [rule] if not r.conditions), None)
        same = next((r for r in earlier if r.conditions == rule.conditions), None)
        if earlier and plain is rule:
            problems.append(f"{rule.where}: {rule.syscall} is allowed here without conditions, but also listed at "
                            f"{earlier[0].where}")
        elif earlier and plain is not None:
            problems.append(f"{rule.where}: {rule.syscall} is already allowed without conditions at {plain.where}")
        elif same is not None:
            problems.append(f"{rule.where}: {rule.syscall} repeats the conditions of {same.where}")
        earlier.append(rule)
    return problems


def _read(name: str, directory: Path) -> tuple[list[str], list[Rule]]:
    path = directory / (name + SUFFIX)
    if not path.is_file():
        raise PolicyError(f"no policy {name!r} (known: {', '.join(device_names(directory))})")
    return parse_file(path)


def _effective(name: str, directory: Path) -> tuple[list[str], list[Rule]]:
    """The files and rules of a device process's policy, in order; PolicyError on a parse problem."""
    includes, rules = _read(name, directory)
    if name == COMMON:
        if includes:
            raise PolicyError(f"{COMMON}{SUFFIX}: the common policy includes nothing")
        return [COMMON + SUFFIX], rules
    if includes != [COMMON]:
        raise PolicyError(f"{name}{SUFFIX}: include {COMMON} once, and nothing else")
    # A folder with a device's policy and no common part of its own (a kind declared outside
    # devices/, as a test's is) takes the shipped one.
    common_dir = directory if (directory / (COMMON + SUFFIX)).is_file() else POLICY_DIR
    common_files, common_rules = _effective(COMMON, common_dir)
    return common_files + [name + SUFFIX], common_rules + rules


def policy_problems(name: str, directory: Path = POLICY_DIR) -> list[str]:
    """Every problem with a policy (its common part included), one sentence each naming file:line."""
    try:
        _, rules = _effective(name, directory)
    except PolicyError as err:
        return [str(err)]
    return check_rules(rules)


def load_policy(name: str, directory: Path = POLICY_DIR) -> Policy:
    """The effective policy of a device process (common_device + its own file), fully checked."""
    files, rules = _effective(name, directory)
    problems = check_rules(rules)
    if problems:
        raise PolicyError(problems[0])
    return Policy(name, files, rules)


# -- compiling -------------------------------------------------------------------------------------
def compile_filter(policy: Policy, mode: str = "kill") -> pyseccomp.SyscallFilter:
    """The libseccomp filter: kill (default KILL_PROCESS), log (LOG) or trace (ALLOW, a marker for strace)."""
    if mode not in MODES:
        raise PolicyError(f"unknown seccomp mode {mode!r} (use {', '.join(MODES)})")
    default = {"kill": pyseccomp.KILL_PROCESS, "log": pyseccomp.LOG, "trace": pyseccomp.ALLOW}[mode]
    scmp = pyseccomp.SyscallFilter(default)
    scmp.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    scmp.set_attr(pyseccomp.Attr.CTL_TSYNC, 1)
    scmp.set_attr(pyseccomp.Attr.CTL_NNP, 1)
    if mode != "trace":  # an ALLOW rule under an ALLOW default is refused by libseccomp
        for rule in policy.rules:
            try:
                scmp.add_rule_exactly(pyseccomp.ALLOW, rule.nr, *(c.scmp() for c in rule.conditions))
            except OSError as err:
                raise PolicyError(f"{rule.where}: libseccomp refuses the rule ({err.strerror})") from None
    return scmp


def filter_size(policy: Policy, mode: str = "kill") -> int:
    """Instructions in the compiled BPF program (8 bytes each)."""
    fd = os.memfd_create("vmboot-bpf", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            compile_filter(policy, mode).export_bpf(out)
        return os.fstat(fd).st_size // 8
    finally:
        os.close(fd)


def install(policy: Policy, mode: str = "kill") -> None:
    """Load the filter into this process, every thread included. Call it last: nothing is opened after."""
    scmp = compile_filter(policy, mode)
    try:
        scmp.load()
    except OSError as err:
        raise PolicyError(f"cannot install the {policy.name} seccomp filter: {err.strerror}") from None
