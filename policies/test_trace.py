"""Reading strace output and proving policies against it (synthetic traces: exact expectations)."""
from __future__ import annotations

import textwrap
from collections import Counter
from pathlib import Path

import pytest

from vmboot.policies.compiler import load_policy
from vmboot.policies.rules import U64
from vmboot.policies.trace import TraceError, arg_value, prove, read_trace, read_traces, split_args

# unshare (100) forks the device (101, host pid); the device starts a thread (tid 4 inside its pid namespace,
# 104 on the host), and runs ldconfig (102) before it sandboxes itself.
TRACE = """\
100   execve("/usr/bin/unshare", ["unshare", "--user"], 0x7ffe /* 35 vars */) = 0
100   clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f5f) = 101
101   execve("/work/.venv/bin/python", ["python", "-m", "device"], 0x7ffc /* 35 vars */) = 0
101   clone3({flags=CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD, stack=0x7f45} => {parent_tid=[4]}, 88) = 4
104   set_robust_list(0x7f4547c799a0, 24) = 0
101   clone(child_stack=NULL, flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD, child_tidptr=0x7f45) = 2
102   execve("/sbin/ldconfig", ["/sbin/ldconfig", "-p"], 0x7f45 /* 2 vars */) = 0
102   exit_group(0)                     = ?
100   wait4(-1,  <unfinished ...>
101   openat(AT_FDCWD, "/proc/sys/kernel/cap_last_cap", O_RDONLY|O_CLOEXEC) = 17
101   seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, NULL) = -1 EFAULT (Bad address)
101   seccomp(SECCOMP_GET_ACTION_AVAIL, 0, [SECCOMP_RET_LOG]) = 0
101   seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC_ESRCH, {len=7, filter=0x3c}) = 0
104   <... epoll_wait resumed>[{events=EPOLLIN, data={u32=1016650288, u64=1016650288}}], 256, -1) = 1
104   getpid( <unfinished ...>
101   poll([{fd=8, events=POLLIN}, {fd=13, events=POLLIN}], 2, 1000 <unfinished ...>
104   <... getpid resumed>)             = 1
104   futex(0x7f45, FUTEX_WAKE_PRIVATE, 1) = 0
101   <... poll resumed>)               = 1 ([{fd=8, revents=POLLIN}])
101   write(2, "a, \\"quoted\\" (text)", 19) = 19
101   mmap(NULL, 262144, PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f7ae4000000
101   ioctl(3, TCGETS, 0x7ffc92593ec0)  = -1 ENOTTY (Inappropriate ioctl for device)
101   mprotect(0x7f7ae4000000, 4096, PROT_READ|PROT_EXEC) = 0
101   exit_group(0 <unfinished ...>
100   <... wait4 resumed>[{WIFEXITED(s) && WEXITSTATUS(s) == 0}], 0, NULL) = 101
100   --- SIGCHLD {si_signo=SIGCHLD, si_code=CLD_EXITED, si_pid=101, si_uid=0, si_status=0} ---
100   dup(1)                            = 3
100   exit_group(0)                     = ?
"""

COMMON = """\
poll                             # waiting
getpid                           # a pid check
write                            # eventfds
futex  arg1 == FUTEX_WAKE_PRIVATE   # wake
futex  arg1 == FUTEX_WAIT_PRIVATE   # wait
mmap   arg2 & PROT_EXEC == 0     # memory
mprotect arg2 & PROT_EXEC == 0   # memory
read                             # eventfds
exit_group                       # leave
"""


@pytest.fixture
def policies(tmp_path) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "common_device.policy").write_text(COMMON)
    (directory / "dev.policy").write_text("include common_device  # common\n")
    (directory / "disk.policy").write_text("include common_device  # common\nfdatasync  # flush\n")
    return directory


def write_trace(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / f"{name}.strace"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_device_is_the_process_that_installed_the_filter_and_its_threads(tmp_path):
    trace = read_trace(write_trace(tmp_path, "dev", TRACE))
    assert trace.device_pid == 101
    # unshare (an ancestor: its clone returned 101) and ldconfig (exited before) are left out;
    # <... resumed> lines are the second half of calls already counted (or started before the filter)
    assert [(c.pid, c.name) for c in trace.calls] == [
        (104, "getpid"), (101, "poll"), (104, "futex"), (101, "write"), (101, "mmap"), (101, "ioctl"),
        (101, "mprotect"), (101, "exit_group")]
    assert trace.used() == Counter(getpid=1, poll=1, futex=1, write=1, mmap=1, ioctl=1, mprotect=1, exit_group=1)
    mmap_call = trace.calls[4]
    assert mmap_call.args == ["NULL", "262144", "PROT_READ|PROT_WRITE", "MAP_PRIVATE|MAP_ANONYMOUS", "-1", "0"]
    assert [arg_value(a) for a in mmap_call.args] == [0, 262144, 3, 0x22, U64, 0]
    assert trace.calls[3].args == ["2", '"a, \\"quoted\\" (text)"', "19"]
    assert trace.calls[1].args == ["[{fd=8, events=POLLIN}, {fd=13, events=POLLIN}]", "2", "1000"]


def test_a_fork_whose_result_comes_on_a_resumed_line_still_makes_an_ancestor(tmp_path):
    flags = "flags=CLONE_CHILD_CLEARTID|CLONE_CHILD_SETTID|SIGCHLD"
    split = TRACE.replace(
        f"100   clone(child_stack=NULL, {flags}, child_tidptr=0x7f5f) = 101\n",
        f"100   clone(child_stack=NULL, {flags} <unfinished ...>\n"
        "101   set_robust_list(0x7f5f53eb3a20, 24) = 0\n"
        "100   <... clone resumed>, child_tidptr=0x7f5f) = 101\n")
    assert split != TRACE
    trace = read_trace(write_trace(tmp_path, "dev", split))
    assert {c.pid for c in trace.calls} == {101, 104}


def test_the_pid_prefix_of_strace_without_o_is_understood(tmp_path):
    text = "\n".join(f"[pid {line.split()[0]}] {line.split(None, 1)[1]}" for line in TRACE.splitlines())
    assert [c.name for c in read_trace(write_trace(tmp_path, "dev", text)).calls][:3] == ["getpid", "poll", "futex"]


def test_prctl_set_seccomp_is_a_boundary_too(tmp_path):
    trace = read_trace(write_trace(tmp_path, "dev", """\
        7 prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) = 0
        7 prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, {len=9, filter=0x1}) = 0
        7 read(3, "", 8) = 0
        """))
    assert (trace.device_pid, [c.name for c in trace.calls]) == (7, ["read"])


def test_a_seccomp_call_interrupted_by_another_thread_is_a_boundary_when_it_resumes(tmp_path):
    trace = read_trace(write_trace(tmp_path, "dev", """\
        7 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=9, filter=0x1} <unfinished ...>
        8 getpid() = 1
        7 <... seccomp resumed>) = 0
        8 read(3, "", 8) = 0
        """))
    assert (trace.device_pid, [(c.pid, c.name) for c in trace.calls]) == (7, [(8, "read")])


def test_a_trace_without_a_filter_is_refused(tmp_path):
    failed = TRACE.replace("= 0\n104   <... epoll_wait", "= -1 EINVAL\n104   <... epoll_wait")
    path = write_trace(tmp_path, "dev", failed)
    with pytest.raises(TraceError, match=r"dev.strace: no successful seccomp\(SECCOMP_SET_MODE_FILTER\) call"):
        read_trace(path)


@pytest.mark.parametrize("text, value", [
    ("0", 0), ("0x7f", 0x7f), ("-1", U64), ("0644", 0o644), ("NULL", 0), ("FUTEX_WAKE_PRIVATE", 129),
    ("PROT_READ|PROT_WRITE", 3), ("MAP_SHARED|MAP_FIXED", 0x11), ("1 /* a comment */", 1),
    ("TCGETS", None), ('"text"', None), ("[{fd=3}]", None), ("0x7ffc /* 35 vars */", 0x7ffc),
])
def test_argument_values(text, value):
    assert arg_value(text) == value


def test_split_args_stops_at_the_end_of_the_call():
    assert split_args('3, "x)", 1) = 1') == ["3", '"x)"', "1"]
    assert split_args("0x7f45, FUTEX_WAIT_PRIVATE, 2, NULL <unfinished ...>") == [
        "0x7f45", "FUTEX_WAIT_PRIVATE", "2", "NULL"]
    assert split_args(") = 0") == []


def test_prove_reports_unused_lines_missing_syscalls_and_refused_arguments(tmp_path, policies):
    write_trace(tmp_path, "dev", TRACE)
    names = ["dev", "disk"]
    loaded = {n: load_policy(n, policies) for n in names}
    proof = prove(loaded, read_traces(tmp_path, names))
    assert list(proof.traced) == ["dev"]
    assert proof.untraced == ["disk"]
    assert [(r.where, r.syscall) for r in proof.unused] == [  # the only mprotect call was refused
        ("common_device.policy:5", "futex"), ("common_device.policy:7", "mprotect"), ("common_device.policy:8", "read")]
    assert proof.missing == {"dev": Counter(ioctl=1)}
    assert proof.refused == {"dev": {"mprotect": ["mprotect(0x7f7ae4000000, 4096, PROT_READ|PROT_EXEC)"]}}
    assert not proof.clean


def test_a_common_line_is_needed_when_any_device_needs_it(tmp_path, policies):
    write_trace(tmp_path, "dev", TRACE.replace("101   ioctl(3, TCGETS, 0x7ffc92593ec0)  = -1 ENOTTY "
                                               "(Inappropriate ioctl for device)\n", "")
                .replace("PROT_READ|PROT_EXEC) = 0", "PROT_READ) = 0"))
    write_trace(tmp_path, "disk", """\
        9 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=7, filter=0x1}) = 0
        9 read(5, "\\1\\0\\0\\0\\0\\0\\0\\0", 8) = 8
        9 futex(0x7f45, FUTEX_WAIT_PRIVATE, 2, NULL) = 0
        9 fdatasync(4) = 0
        """)
    names = ["dev", "disk"]
    proof = prove({n: load_policy(n, policies) for n in names}, read_traces(tmp_path, names))
    assert (proof.untraced, proof.unused, proof.missing, proof.refused) == (
        [], [], {"dev": Counter(), "disk": Counter()}, {"dev": {}, "disk": {}})
    assert proof.clean
    # a device's own line must be needed by that device
    (tmp_path / "disk.strace").write_text((tmp_path / "disk.strace").read_text().replace("fdatasync(4)", "fsync(4)"))
    proof = prove({n: load_policy(n, policies) for n in names}, read_traces(tmp_path, names))
    assert [r.where for r in proof.unused] == ["disk.policy:2"]
    assert proof.missing["disk"] == Counter(fsync=1)


@pytest.mark.parametrize("marker", ["host:", "growth:"])
def test_a_marked_line_is_listed_apart_not_held_against_the_policy(tmp_path, policies, marker):
    # The vDSO reads the clock here without a syscall; a host whose clocksource it cannot
    # read makes the syscall (host:). An arena comes only when the heap grows (growth:).
    # A trace here cannot prove such a line, and must not refute it.
    write_trace(tmp_path, "disk", """\
        9 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=7, filter=0x1}) = 0
        9 fdatasync(4) = 0
        """)
    (policies / "disk.policy").write_text(
        "include common_device  # common\n"
        "fdatasync  # flush\n"
        f"clock_gettime  arg0 == CLOCK_MONOTONIC  # {marker} the clock, where the vDSO cannot read it\n"
        "clock_getres  # the clock's resolution\n")
    proof = prove({"disk": load_policy("disk", policies)}, read_traces(tmp_path, ["disk"]))
    assert [(r.where, r.untraceable) for r in proof.untraceable] == [("disk.policy:3", marker)]
    assert "disk.policy:3" not in [r.where for r in proof.unused]
    assert "disk.policy:4" in [r.where for r in proof.unused]  # "host:" is what exempts a line
