"""The vmboot-policy command: what it prints and how it exits."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

from vmboot.policies.compiler import POLICY_DIR, filter_size, load_policy
from vmboot.policies.tool import main

TRACE_HEAD = "5 seccomp(SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, {len=7, filter=0x1}) = 0\n"


@pytest.fixture
def policies(tmp_path):
    directory = tmp_path / "policies"
    directory.mkdir()
    (directory / "common_device.policy").write_text(textwrap.dedent("""\
        # the common part
        read                            # eventfds
        futex  arg1 == FUTEX_WAKE_PRIVATE   # locks
        exit_group                      # leave
        """))
    (directory / "blk.policy").write_text("include common_device  # common\nfdatasync  # FLUSH\n")
    return directory


def test_show_prints_the_effective_policy_with_comments_and_filter_size(capsys):
    assert main(["show", "virtio_blk"]) == 0
    out = capsys.readouterr().out.splitlines()
    policy = load_policy("virtio_blk")
    assert out[0] == (f"# virtio_blk: common_device.policy + virtio_blk.policy: {len(policy.rules)} lines, "
                      f"{len(policy.syscalls())} syscalls; compiled filter {filter_size(policy)} BPF instructions "
                      "(default action: kill the process)")
    assert "# -- common_device.policy" in out and "# -- virtio_blk.policy" in out
    assert out.index("# -- common_device.policy") < out.index("# -- virtio_blk.policy")
    rules = [line for line in out[1:] if line and not line.startswith("#")]
    assert len(rules) == len(policy.rules)
    for line, rule in zip(rules, policy.rules):
        assert line.split()[0] == rule.syscall
        assert line.endswith(f"# {rule.comment}")
    assert any(line.startswith("fallocate    arg1 == FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE") for line in rules)


def test_usage_errors_exit_2_with_one_line(capsys):
    assert main(["show", "floppy"]) == 2
    assert capsys.readouterr().err == (
        f"vmboot-policy: no policy 'floppy' in {POLICY_DIR} (known: debugcon, pmtimer, rtc, serial, virtio_blk)\n")
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("vmboot-policy: argument command: invalid choice: 'frobnicate'")
    assert main(["--policies", "/nonexistent", "check"]) == 2


def test_check_passes_on_the_shipped_policies(capsys):
    assert main(["check"]) == 0
    assert capsys.readouterr().out == (
        "5 device policies and common_device.policy: well formed, every line commented, nothing forbidden\n")


def test_check_fails_on_every_problem_with_its_line(policies, capsys):
    (policies / "blk.policy").write_text(textwrap.dedent("""\
        include common_device   # common
        fdatasync
        ioctl                   # anything
        openat                  # files
        """))
    (policies / "net.policy").write_text("include common_device  # common\nmmap  # memory\n")
    assert main(["--policies", str(policies), "check"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "blk.policy:2: 'fdatasync' has no comment saying why it is needed",
        "net.policy:2: mmap needs the condition arg2 & PROT_EXEC == 0 (never executable memory)",
        "2 device policies and common_device.policy: 2 problem(s)",
    ]
    (policies / "blk.policy").write_text("include common_device  # common\nioctl  # x\nopenat  # y\n")
    (policies / "net.policy").unlink()
    assert main(["--policies", str(policies), "check"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "blk.policy:2: ioctl needs an argument condition: it reaches every driver behind an fd",
        "blk.policy:3: openat is never allowed: it opens files: a device gets its fds before the sandbox",
        "1 device policies and common_device.policy: 2 problem(s)",
    ]


def blk_trace(tmp_path):
    """A trace folder in which the blk device read an eventfd, synced its disk and exited."""
    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "blk.strace").write_text(TRACE_HEAD + textwrap.dedent("""\
        5 read(5, "\\1\\0\\0\\0\\0\\0\\0\\0", 8) = 8
        5 futex(0x7f45, FUTEX_WAKE_PRIVATE, 1) = 0
        5 fdatasync(4) = 0
        5 exit_group(0) = ?
        """))
    return traces


def test_check_trace_proves_the_lines_against_strace_output(policies, tmp_path, capsys):
    traces = blk_trace(tmp_path)
    assert main(["--policies", str(policies), "check", "--trace", str(traces)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "blk: blk.strace: 4 syscalls, 4 calls after seccomp",
        "traces: every listed syscall was needed and every syscall used was listed",
    ]
    (traces / "blk.strace").write_text(TRACE_HEAD + textwrap.dedent("""\
        5 read(5, "\\1\\0\\0\\0\\0\\0\\0\\0", 8) = 8
        5 futex(0x7f45, FUTEX_WAIT_PRIVATE, 2, NULL) = 0
        5 close(4) = 0
        5 close(5) = 0
        5 exit_group(0) = ?
        """))
    (policies / "net.policy").write_text("include common_device  # common\n")
    assert main(["--policies", str(policies), "check", "--trace", str(traces)]) == 1
    assert capsys.readouterr().out.splitlines()[1:] == [
        "blk: blk.strace: 4 syscalls, 5 calls after seccomp",
        f"untraced: net (no {traces / 'net.strace'}): its lines are unproven",
        "unused: common_device.policy:3 futex arg1 == FUTEX_WAKE_PRIVATE: no traced device called it so",
        "unused: blk.policy:2 fdatasync: no traced device called it so",
        "missing: blk called close 2 time(s); blk.policy does not allow it",
        "refused: blk called futex(0x7f45, FUTEX_WAIT_PRIVATE, 2, NULL): no line for futex allows these arguments",
        "traces: the policies and the traces disagree",
    ]


def test_check_trace_refuses_a_trace_without_the_filter(policies, tmp_path, capsys):
    (tmp_path / "blk.strace").write_text("5 read(3, \"\", 1) = 0\n")
    assert main(["--policies", str(policies), "check", "--trace", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "vmboot-policy: blk.strace: no successful seccomp(SECCOMP_SET_MODE_FILTER) call: was the device traced "
        "with strace -f through its sandbox?\n")


def test_test_prints_a_table_and_exits_0_when_every_check_passes(capsys):
    assert main(["test", "serial"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("serial: ") and out[0].endswith(" passed")
    total = int(out[0].split()[1])
    assert out[1].split() == ["RESULT", "KIND", "CALL", "EXPECT", "OUTCOME", "AUDIT", "WHY"]
    assert len(out) == total + 2
    assert all(line.split()[0] == "ok" for line in out[2:])
    openat = next(line for line in out if "openat(-100" in line).split()
    assert openat[:4] == ["ok", "denied", "openat(-100,", '"/etc/passwd",']
    assert openat[5:9] == ["SIGSYS", "killed", "by", "SIGSYS"]


def test_test_exits_1_when_a_check_fails(policies, capsys):
    # a line no call can match (unsigned: nothing is below 0) cannot be exercised
    (policies / "blk.policy").write_text("include common_device  # common\ngetpid arg0 < 0  # never matches\n")
    assert main(["--policies", str(policies), "test", "blk"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("blk: ") and out[0].endswith("passed, 1 FAILED")
    failed = [line.split() for line in out[2:] if line.split()[0] == "FAIL"]
    assert failed == [["FAIL", "allowed", "getpid", "returns", "cannot", "build", "arguments", "-",
                       "blk.policy:2", "arg0", "<", "0"]]


def test_the_console_script_module_runs():
    done = subprocess.run([sys.executable, "-m", "vmboot.policies.tool", "check"], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")
    assert shutil.which("strace"), "strace is needed for `vmboot-policy check --trace` (apt-get install strace)"


def test_check_trace_lists_host_dependent_lines_apart(policies, tmp_path, capsys):
    traces = blk_trace(tmp_path)
    with open(policies / "common_device.policy", "a") as f:
        f.write("clock_gettime  arg0 == CLOCK_REALTIME  # host: the time of day, without a vDSO clock\n")
    assert main(["--policies", str(policies), "check", "--trace", str(traces)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "blk: blk.strace: 4 syscalls, 4 calls after seccomp",
        "host: common_device.policy:5 clock_gettime arg0 == CLOCK_REALTIME: not called on this host "
        "(the time of day, without a vDSO clock)",
        "traces: every listed syscall was needed and every syscall used was listed",
    ]
