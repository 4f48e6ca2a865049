"""Which syscall a seccomp filter killed a process for, from the kernel's log.

When a filter kills (SIGSYS), the kernel logs an audit record of type
AUDIT_SECCOMP naming the pid, the syscall ABI and the syscall number; the
supervisor reads it to say, in one line, why a device process died.
"""
from __future__ import annotations

import os
import re
import time

from vmboot.abi.linux import AUDIT_SECCOMP, SIGSYS

from .rules import syscall_name

KMSG = "/dev/kmsg"
_AUDIT = re.compile(rf"type={AUDIT_SECCOMP} .*?\bpid=(\d+)\b.*?\bsig={SIGSYS}\b.*?\barch=([0-9a-f]+)\b.*?\bsyscall=(\d+)\b")


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
    """pid -> the syscall named by its most recent seccomp kill (SIGSYS) audit record in the kernel log."""
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
