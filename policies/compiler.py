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

seccomp_kill_syscall(pid) reads the kernel's audit record of a kill, to say
which syscall was refused.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pyseccomp

from vmboot.abi import linux

POLICY_DIR = Path(__file__).resolve().parent
SUFFIX = ".policy"
COMMON = "common_device"
MODES = ("kill", "log", "trace")
ARG_COUNT = 6  # struct seccomp_data.args[6]
# A comment's first word: when the line is needed, that a trace here may not show.
UNTRACEABLE = {"host:": "not called on this host", "growth:": "the heap did not grow in this run"}
U64 = (1 << 64) - 1

# Named constants: every public number of abi/linux.py, checked there against the headers.
CONSTANTS: dict[str, int] = linux.constants()

# Syscalls a device process must never be allowed, whatever the arguments.
NEVER: dict[str, str] = {
    **dict.fromkeys(("execve", "execveat"), "runs another program"),
    **dict.fromkeys(("open", "openat", "openat2", "creat", "open_by_handle_at", "name_to_handle_at"),
                    "opens files: a device gets its fds before the sandbox"),
    **dict.fromkeys(("socket", "socketpair", "connect", "bind", "listen", "accept", "accept4"),
                    "makes new connections: a device talks only on the sockets it was given"),
    **dict.fromkeys(("ptrace", "process_vm_readv", "process_vm_writev"), "reaches into other processes"),
    **dict.fromkeys(("mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
                     "fsmount", "fsconfig", "fspick"), "changes the file system view"),
    **dict.fromkeys(("init_module", "finit_module", "delete_module"), "loads kernel code"),
    **dict.fromkeys(("kexec_load", "kexec_file_load"), "replaces the kernel"),
    "bpf": "loads kernel programs",
    "perf_event_open": "exposes kernel and hardware state",
    "clone3": "hides its flags in memory that seccomp cannot read (CLONE_THREAD unprovable)",
    **dict.fromkeys(("fork", "vfork"), "creates a process"),
    **dict.fromkeys(("unshare", "setns"), "changes namespaces"),
    "userfaultfd": "is a classic kernel exploitation aid",
    **dict.fromkeys(("keyctl", "add_key", "request_key"), "reaches the kernel keyrings"),
    **dict.fromkeys(("io_uring_setup", "io_uring_enter", "io_uring_register"),
                    "performs syscalls that seccomp never sees"),
    "personality": "changes the ABI (READ_IMPLIES_EXEC)",
}


@dataclass(frozen=True)
class Requirement:
    """What every rule of a syscall must guarantee about one argument: (argN & mask) == value."""

    arg: int
    mask: int
    value: int
    text: str


# Syscalls that may be listed only with a condition that guarantees the requirement.
MUST_HOLD: dict[str, Requirement] = {
    "clone": Requirement(0, CONSTANTS["CLONE_THREAD"], CONSTANTS["CLONE_THREAD"],
                         "arg0 & CLONE_THREAD == CLONE_THREAD (threads only, never a process)"),
    "mmap": Requirement(2, CONSTANTS["PROT_EXEC"], 0, "arg2 & PROT_EXEC == 0 (never executable memory)"),
    "mprotect": Requirement(2, CONSTANTS["PROT_EXEC"], 0, "arg2 & PROT_EXEC == 0 (never executable memory)"),
    "pkey_mprotect": Requirement(2, CONSTANTS["PROT_EXEC"], 0, "arg2 & PROT_EXEC == 0 (never executable memory)"),
}

# Syscalls whose harm depends on their arguments: every rule for them needs a condition.
DANGEROUS: dict[str, str] = {
    "clone": "creates processes as well as threads",
    "mmap": "maps executable or shared memory",
    "mprotect": "makes memory executable",
    "pkey_mprotect": "makes memory executable",
    "mremap": "moves mappings",
    "madvise": "can poison or remove pages (MADV_HWPOISON, MADV_REMOVE)",
    "ioctl": "reaches every driver behind an fd",
    "prctl": "changes process attributes (dumpable, seccomp, ...)",
    "fcntl": "reaches other processes and files (F_SETOWN, F_SETLEASE, F_NOTIFY)",
    "kill": "signals other processes",
    "tkill": "signals other threads",
    "tgkill": "signals other processes' threads",
    "rt_sigqueueinfo": "signals other processes",
    "rt_tgsigqueueinfo": "signals other processes' threads",
    "setsockopt": "changes socket options (filters, buffers)",
    "fallocate": "can collapse or insert ranges, moving data",
    "futex": "reaches requeue and PI operations, a classic kernel attack surface",
}

OPERATORS = {
    "==": pyseccomp.EQ, "!=": pyseccomp.NE, "<": pyseccomp.LT, "<=": pyseccomp.LE,
    ">": pyseccomp.GT, ">=": pyseccomp.GE,
}
MASKED = "&=="

_TOKEN = re.compile(r"\s*(==|!=|<=|>=|<|>|&|\||[A-Za-z_][A-Za-z0-9_]*|-?0[xX][0-9a-fA-F]+|-?0[oO][0-7]+|-?\d+)")
_NAME = re.compile(r"[a-z_][a-z0-9_]*\Z")


class PolicyError(Exception):
    """A policy that cannot be used; the message names file:line."""


@dataclass(frozen=True)
class Condition:
    arg: int
    op: str  # one of OPERATORS, or MASKED
    value: int
    mask: int = U64

    def holds(self, args: tuple[int, ...]) -> bool:
        actual = args[self.arg] & U64
        if self.op == MASKED:
            return actual & self.mask == self.value
        return {"==": actual == self.value, "!=": actual != self.value, "<": actual < self.value,
                "<=": actual <= self.value, ">": actual > self.value, ">=": actual >= self.value}[self.op]

    def scmp(self) -> pyseccomp.Arg:
        if self.op == MASKED:
            return pyseccomp.Arg(self.arg, pyseccomp.MASKED_EQ, self.mask, self.value)
        return pyseccomp.Arg(self.arg, OPERATORS[self.op], self.value)


@dataclass(frozen=True)
class Rule:
    """One policy line: allow ``syscall`` when every condition holds."""

    syscall: str
    nr: int
    conditions: tuple[Condition, ...]
    text: str  # the conditions as written
    comment: str
    where: str  # "rtc.policy:12"

    def allows(self, args: tuple[int, ...]) -> bool:
        return all(c.holds(args) for c in self.conditions)

    @property
    def untraceable(self) -> str | None:
        """The marker that starts the comment (UNTRACEABLE), if any."""
        return next((m for m in UNTRACEABLE if self.comment.startswith(m)), None)


@dataclass
class Policy:
    name: str
    files: list[str]
    rules: list[Rule]

    def syscalls(self) -> list[str]:
        return sorted({r.syscall for r in self.rules})

    def rules_for(self, syscall: str) -> list[Rule]:
        return [r for r in self.rules if r.syscall == syscall]

    def allows(self, syscall: str, args: tuple[int, ...] = (0,) * ARG_COUNT) -> bool:
        return any(r.allows(args) for r in self.rules_for(syscall))


def syscall_number(name: str) -> int | None:
    """The native (x86_64) number of a syscall, or None when the kernel has no such syscall."""
    if not _NAME.match(name):
        return None
    nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    return nr if nr >= 0 else None  # libseccomp gives negative pseudo-numbers to foreign syscalls


def syscall_name(nr: int, arch: int = pyseccomp.Arch.NATIVE) -> str | None:
    try:
        return pyseccomp.resolve_syscall(arch, nr).decode()
    except ValueError:
        return None


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


# -- reading the kernel's verdict ------------------------------------------------------------------
KMSG = "/dev/kmsg"
AUDIT_SECCOMP = 1326  # AUDIT_SECCOMP in <linux/audit.h>
_AUDIT = re.compile(r"type=1326 .*?\bpid=(\d+)\b.*?\bsig=31\b.*?\barch=([0-9a-f]+)\b.*?\bsyscall=(\d+)\b")


def _kmsg_records(path: str) -> list[str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return []
    records = []
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:  # no more records
                return records
            except BrokenPipeError:  # records overwritten while reading: go on with the next
                continue
            if not record:  # end of a plain file
                return records
            records += record.decode("utf-8", "replace").splitlines()
    finally:
        os.close(fd)


def seccomp_kill_syscall(pid: int, timeout: float = 0.5, since: float | None = None,
                         path: str = KMSG) -> str | None:
    """The syscall named by the most recent seccomp audit record of ``pid`` (a host pid), or None.

    The kernel writes "audit: type=1326 ... pid=<pid> ... syscall=<nr>" to its log when a
    filter kills (unless auditd takes the records, or printk rate limiting drops them);
    kauditd writes it a moment after the death, hence the short wait. ``since`` (a
    time.monotonic() value, e.g. when the process started) skips older records, which
    may belong to an earlier process with the same pid.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = kill_records(since, path).get(pid)
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.02)


def kill_records(since: float | None = None, path: str = KMSG) -> dict[int, str]:
    """pid -> the syscall named by its most recent seccomp kill (sig=31) audit record in the kernel log."""
    found = {}
    for record in _kmsg_records(path):
        match = _AUDIT.search(record)
        if not match:
            continue
        header = record.split(";", 1)[0].split(",")  # "level,seq,usec,flags"
        if since is not None and len(header) > 2 and header[2].isdigit() and int(header[2]) < since * 1e6 - 5e5:
            continue
        nr, arch = int(match.group(3)), int(match.group(2), 16)
        found[int(match.group(1))] = syscall_name(nr, arch) or f"syscall {nr}"
    return found
