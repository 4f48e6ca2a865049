"""What a policy says: its rules, the numbers it may name, and what it must never allow.

A :class:`Rule` is one policy line (allow a syscall when every
:class:`Condition` holds); a :class:`Policy` is a device's rules, from its own
file and the files it includes. The numbers a condition may name are
abi/linux.py's public ones (CONSTANTS). NEVER, MUST_HOLD and DANGEROUS are what
the checks (policies/compiler.py) refuse.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import pyseccomp

from vmboot.abi import linux

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
