"""Reading the kernel's record of a seccomp kill (policies/verdict.py).

Checked against what the kernel logs: an AUDIT_SECCOMP record (<linux/audit.h>)
with the pid, sig=SIGSYS for a kill (0 for a logged call), the ABI and the
syscall number; first from a real process killed by a real filter, then from
records written to a file as /dev/kmsg gives them.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from vmboot.policies.verdict import kill_records, seccomp_kill_syscall


def test_seccomp_kill_syscall_names_the_syscall_from_the_audit_record(tmp_path):
    (tmp_path / "common_device.policy").write_text("exit_group  # leave\n")
    (tmp_path / "dev.policy").write_text("include common_device  # the common part\n")
    for attempt in range(4):  # printk rate limiting (10 records per 5 s) may drop a record after other kills
        start = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
            import sys, ctypes
            from pathlib import Path
            from vmboot.policies.compiler import install, load_policy
            install(load_policy("dev", Path(sys.argv[1])), "kill")
            ctypes.CDLL(None).syscall(101, 0, 0, 0, 0)  # ptrace(PTRACE_TRACEME)
            """), str(tmp_path)])
        assert child.wait(30) == -signal.SIGSYS
        name = seccomp_kill_syscall(child.pid, timeout=1.0, since=start)
        if name is not None:
            assert name == "ptrace"
            assert kill_records(since=start)[child.pid] == "ptrace"
            return
        time.sleep(2.5)
    pytest.fail("no seccomp audit record reached /dev/kmsg in 4 tries")


def test_seccomp_kill_syscall_reads_records_and_ignores_others(tmp_path):
    log = tmp_path / "kmsg"
    log.write_text("")
    assert seccomp_kill_syscall(4242, timeout=0, path=str(log)) is None
    assert seccomp_kill_syscall(4242, timeout=0, path=str(tmp_path / "absent")) is None
    # /dev/kmsg gives one record per read(); a plain file gives them all at once: the last match wins
    log.write_text(
        "5,10,1000000,-;audit: type=1326 audit(1.2:3): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=4242 "
        'comm="python" exe="/usr/bin/python3.11" sig=0 arch=c000003e syscall=110 compat=0 ip=0x1 code=0x7ffc0000\n')
    assert seccomp_kill_syscall(4242, timeout=0, path=str(log)) is None  # a LOG record (sig=0) is no kill
    log.write_text(
        "5,11,2000000,-;audit: type=1326 audit(1.2:4): auid=4294967295 uid=0 gid=0 ses=4294967295 pid=4242 "
        'comm="python" exe="/usr/bin/python3.11" sig=31 arch=c000003e syscall=257 compat=0 ip=0x1 code=0x80000000\n')
    assert seccomp_kill_syscall(4242, timeout=0, path=str(log)) == "openat"
    assert seccomp_kill_syscall(4243, timeout=0, path=str(log)) is None
    assert seccomp_kill_syscall(4242, timeout=0, since=3.0, path=str(log)) is None  # older than the process
    assert seccomp_kill_syscall(4242, timeout=0, since=2.0, path=str(log)) == "openat"
