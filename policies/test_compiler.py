"""The policy format (policies/rules.py), its checks and the compiled filter (policies/compiler.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmboot.policies.compiler import COMMON, compile_filter, device_names, filter_size, load_policy, policy_problems
from vmboot.policies.rules import (
    CONSTANTS, DANGEROUS, MASKED, MUST_HOLD, NEVER, U64, Condition, PolicyError, syscall_number,
)

DEVICES = device_names()  # devices/test_registry.py checks that they are the kinds' policies
PROT_RX = CONSTANTS["PROT_READ"] | CONSTANTS["PROT_EXEC"]
ANON = CONSTANTS["MAP_PRIVATE"] | CONSTANTS["MAP_ANONYMOUS"]


def write_policies(tmp_path: Path, common: str, **devices: str) -> Path:
    (tmp_path / "common_device.policy").write_text(textwrap.dedent(common))
    for name, text in devices.items():
        (tmp_path / f"{name}.policy").write_text("include common_device  # the common part\n" + textwrap.dedent(text))
    return tmp_path


def problem(tmp_path: Path, line: str, name: str = "dev") -> str:
    """The single problem a device policy with one extra line has."""
    write_policies(tmp_path, "exit_group  # leave\n", **{name: line + "\n"})
    problems = policy_problems(name, tmp_path)
    assert len(problems) == 1, problems
    with pytest.raises(PolicyError) as err:
        load_policy(name, tmp_path)
    assert str(err.value) == problems[0]
    return problems[0]


# -- the constants are the kernel's (abi/test_linux.py checks them against the headers) ------------
def test_syscall_numbers_are_the_x86_64_ones():
    assert syscall_number("read") == 0
    assert syscall_number("openat") == 257
    assert syscall_number("preadv2") == 327
    assert syscall_number("socketcall") is None  # an i386 syscall: libseccomp's negative pseudo-number
    assert syscall_number("no_such_call") is None
    assert syscall_number("Read") is None


def test_the_never_list_holds_what_the_design_forbids():
    for name in ("execve", "execveat", "open", "openat", "openat2", "creat", "socket", "socketpair", "connect",
                 "bind", "listen", "accept", "ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2",
                 "pivot_root", "chroot", "init_module", "finit_module", "kexec_load", "kexec_file_load", "bpf",
                 "perf_event_open", "unshare", "setns", "userfaultfd", "keyctl", "add_key", "io_uring_setup",
                 "io_uring_enter", "io_uring_register", "personality", "clone3"):
        assert name in NEVER, name
    assert all(syscall_number(name) is not None for name in NEVER)
    assert set(MUST_HOLD) <= set(DANGEROUS)
    for name in ("clone", "mmap", "mprotect", "ioctl", "prctl", "fcntl", "madvise", "kill", "tgkill"):
        assert name in DANGEROUS


# -- parsing ---------------------------------------------------------------------------------------
def test_a_policy_is_parsed_into_rules_with_their_comments_and_places(tmp_path):
    write_policies(tmp_path, """\
        # a comment line, then a blank one

        read                          # eventfds
        mmap  arg2 & PROT_EXEC == 0 and arg3 == MAP_PRIVATE|MAP_ANONYMOUS  # memory
        """, dev="ioctl arg1 == 0x5421   # FIONBIO by number\nfutex arg1 <= 129  # locks\n")
    policy = load_policy("dev", tmp_path)
    assert policy.files == ["common_device.policy", "dev.policy"]
    assert [(r.syscall, r.where, r.comment) for r in policy.rules] == [
        ("read", "common_device.policy:3", "eventfds"),
        ("mmap", "common_device.policy:4", "memory"),
        ("ioctl", "dev.policy:2", "FIONBIO by number"),
        ("futex", "dev.policy:3", "locks"),
    ]
    assert policy.rules[1].conditions == (Condition(2, MASKED, 0, mask=4), Condition(3, "==", 0x22))
    assert policy.rules[2].conditions == (Condition(1, "==", 0x5421),)
    assert policy.rules[1].text == "arg2 & PROT_EXEC == 0 and arg3 == MAP_PRIVATE|MAP_ANONYMOUS"
    assert policy.syscalls() == ["futex", "ioctl", "mmap", "read"]


def test_conditions_compare_unsigned_64_bit_values_as_seccomp_does(tmp_path):
    write_policies(tmp_path, "exit_group # x\n", dev="""\
        mmap  arg2 & PROT_EXEC == 0 and arg3 & MAP_ANONYMOUS == MAP_ANONYMOUS   # anonymous, not executable
        futex arg1 < 2       # wait or wake
        futex arg1 >= 0x80 and arg2 != 7  # private
        kill  arg1 == -1     # a negative number is its 64-bit two's complement
        """)
    policy = load_policy("dev", tmp_path)
    rw = CONSTANTS["PROT_READ"] | CONSTANTS["PROT_WRITE"]
    assert policy.allows("mmap", (0, 4096, rw, ANON, U64, 0))
    assert not policy.allows("mmap", (0, 4096, PROT_RX, ANON, U64, 0))
    assert not policy.allows("mmap", (0, 4096, rw, CONSTANTS["MAP_SHARED"], 3, 0))
    assert policy.allows("futex", (0, 1, 0, 0, 0, 0))
    assert not policy.allows("futex", (0, 2, 0, 0, 0, 0))
    assert policy.allows("futex", (0, 0x81, 0, 0, 0, 0))
    assert not policy.allows("futex", (0, 0x81, 7, 0, 0, 0))
    assert not policy.allows("futex", (0, -1 & U64, 7, 0, 0, 0))
    assert policy.allows("kill", (0, U64, 0, 0, 0, 0))
    assert not policy.allows("getpid")


@pytest.mark.parametrize("line, message", [
    ("read", "dev.policy:2: 'read' has no comment saying why it is needed"),
    ("read   #   ", "dev.policy:2: 'read' has no comment saying why it is needed"),
    ("reed  # typo", "dev.policy:2: unknown syscall 'reed'"),
    ("socketcall  # i386 only", "dev.policy:2: unknown syscall 'socketcall'"),
    ("ioctl arg1 == FIONBOI  # typo", "dev.policy:2: unknown constant 'FIONBOI' (add it to abi/linux.py)"),
    ("ioctl arg6 == 1  # no such argument", "dev.policy:2: expected arg0..arg5, found 'arg6'"),
    ("ioctl arg1 == 0755  # C octal", "dev.policy:2: expected a number or a constant, found '0755'"),
    ("ioctl\targ1 == 0o755 and arg2 > 3 and  # dangling and, after a tab",
     "dev.policy:2: a condition is missing after 'and'"),
    ("ioctl arg1 =~ 1  # bad operator", "dev.policy:2: cannot read '=~ 1'"),
    ("ioctl arg1 => 1  # bad operator", "dev.policy:2: cannot read '=> 1'"),
    ("ioctl arg1 | 1  # not an operator", "dev.policy:2: unknown operator '|'"),
    ("ioctl arg1  # no operator", "dev.policy:2: arg1 needs an operator"),
    ("ioctl arg1 ==  # no value", "dev.policy:2: a value is missing"),
    ("ioctl arg1 & 3 != 1  # masks compare equal", "dev.policy:2: a mask is only compared with =="),
    ("ioctl arg1 & 3 == 4  # bits outside the mask",
     "dev.policy:2: 0x4 has bits outside the mask 0x3: it never matches"),
    ("ioctl arg1 == 1 arg2 == 2  # no and", "dev.policy:2: join conditions with 'and'"),
    ("ioctl arg1 == 1 and  # dangling and", "dev.policy:2: a condition is missing after 'and'"),
    ("ioctl arg1 > 1 and arg1 < 9  # libseccomp cannot",
     "dev.policy:2: one condition per argument on a line (libseccomp cannot AND two)"),
])
def test_syntax_errors_name_the_file_and_line(tmp_path, line, message):
    assert problem(tmp_path, line) == message


def test_includes_are_checked(tmp_path):
    write_policies(tmp_path, "exit_group # leave\n")
    (tmp_path / "dev.policy").write_text("read  # no include\n")
    assert policy_problems("dev", tmp_path) == ["dev.policy: include common_device once, and nothing else"]
    (tmp_path / "dev.policy").write_text("include other  # wrong\n")
    assert policy_problems("dev", tmp_path) == ["dev.policy: include common_device once, and nothing else"]
    (tmp_path / "common_device.policy").write_text("include common_device  # a loop\n")
    assert policy_problems(COMMON, tmp_path) == ["common_device.policy: the common policy includes nothing"]
    with pytest.raises(PolicyError, match=r"no policy 'nothing' \(known: dev\)"):
        load_policy("nothing", tmp_path)


# -- the checks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("line, message", [
    ("openat  # files",
     "dev.policy:2: openat is never allowed: it opens files: a device gets its fds before the sandbox"),
    ("execve  # programs", "dev.policy:2: execve is never allowed: it runs another program"),
    ("socket  # sockets", "dev.policy:2: socket is never allowed: it makes new connections: a device talks only on "
                          "the sockets it was given"),
    ("ptrace  # debugging", "dev.policy:2: ptrace is never allowed: it reaches into other processes"),
    ("clone3  # threads", "dev.policy:2: clone3 is never allowed: it hides its flags in memory that seccomp cannot "
                          "read (CLONE_THREAD unprovable)"),
    ("io_uring_setup  # fast io", "dev.policy:2: io_uring_setup is never allowed: it performs syscalls that seccomp "
                                  "never sees"),
    ("mmap  # memory", "dev.policy:2: mmap needs the condition arg2 & PROT_EXEC == 0 (never executable memory)"),
    ("mmap arg3 & MAP_ANONYMOUS == MAP_ANONYMOUS  # memory",
     "dev.policy:2: mmap needs the condition arg2 & PROT_EXEC == 0 (never executable memory)"),
    ("mprotect arg2 & PROT_EXEC == PROT_EXEC  # jit",
     "dev.policy:2: mprotect needs the condition arg2 & PROT_EXEC == 0 (never executable memory)"),
    ("mprotect arg2 <= 7  # rwx", "dev.policy:2: mprotect needs the condition arg2 & PROT_EXEC == 0 "
                                  "(never executable memory)"),
    ("clone  # threads", "dev.policy:2: clone needs the condition arg0 & CLONE_THREAD == CLONE_THREAD "
                         "(threads only, never a process)"),
    ("clone arg0 & CLONE_VM == CLONE_VM  # threads", "dev.policy:2: clone needs the condition arg0 & CLONE_THREAD "
                                                     "== CLONE_THREAD (threads only, never a process)"),
    ("ioctl  # everything", "dev.policy:2: ioctl needs an argument condition: it reaches every driver behind an fd"),
    ("prctl  # anything", "dev.policy:2: prctl needs an argument condition: it changes process attributes "
                          "(dumpable, seccomp, ...)"),
    ("kill  # signals", "dev.policy:2: kill needs an argument condition: it signals other processes"),
])
def test_forbidden_and_unconditioned_dangerous_syscalls_are_refused(tmp_path, line, message):
    assert problem(tmp_path, line) == message


@pytest.mark.parametrize("line", [
    "mmap arg2 & PROT_EXEC == 0  # memory",
    "mmap arg2 & PROT_READ|PROT_WRITE|PROT_EXEC == PROT_READ  # read-only memory",
    "mmap arg2 == PROT_READ|PROT_WRITE  # memory",
    "mprotect arg2 < PROT_EXEC  # no exec bit below it",
    "mprotect arg2 <= 3  # read and write at most",
    "clone arg0 & CLONE_THREAD == CLONE_THREAD  # threads",
    "clone arg0 & CLONE_THREAD|CLONE_VM == CLONE_THREAD|CLONE_VM  # threads",
    "ioctl arg1 == FIONBIO  # non-blocking",
])
def test_conditions_that_guarantee_the_requirement_are_accepted(tmp_path, line):
    write_policies(tmp_path, "exit_group # leave\n", dev=line + "\n")
    assert policy_problems("dev", tmp_path) == []


@pytest.mark.parametrize("lines, message", [
    ("read  # again", "dev.policy:2: read is already allowed without conditions at common_device.policy:1"),
    ("futex arg1 == FUTEX_WAIT  # the same", "dev.policy:2: futex repeats the conditions of common_device.policy:2"),
    ("getpid  # once\ngetpid  # twice", "dev.policy:3: getpid is already allowed without conditions at dev.policy:2"),
    ("getpid arg0 == 0  # odd\ngetpid  # plain",
     "dev.policy:3: getpid is allowed here without conditions, but also listed at dev.policy:2"),
])
def test_a_syscall_allowed_without_conditions_is_listed_once(tmp_path, lines, message):
    write_policies(tmp_path, "read  # eventfds\nfutex arg1 == 0  # locks\n", dev=lines + "\n")
    assert policy_problems("dev", tmp_path) == [message]


def test_several_lines_with_conditions_are_alternatives(tmp_path):
    write_policies(tmp_path, "futex arg1 == 0  # wait\n", dev="futex arg1 == 1  # wake\n")
    policy = load_policy("dev", tmp_path)
    assert [policy.allows("futex", (0, op, 0, 0, 0, 0)) for op in range(3)] == [True, True, False]


def test_every_shipped_policy_passes_every_check():
    assert "virtio_blk" in DEVICES and len(DEVICES) >= 5
    for name in [COMMON, *DEVICES]:
        assert policy_problems(name) == [], name


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_no_shipped_policy_allows_what_the_design_forbids(name):
    policy = load_policy(name)
    assert not set(policy.syscalls()) & set(NEVER)
    assert not policy.allows("mmap", (0, 4096, PROT_RX, ANON, U64, 0))
    assert not policy.allows("mprotect", (0x10000, 4096, PROT_RX, 0, 0, 0))
    assert not policy.allows("clone", (signal.SIGCHLD, 0, 0, 0, 0, 0))
    for syscall in ("open", "openat", "execve", "socket", "connect", "ptrace", "fork", "vfork", "kill", "ioctl"):
        assert not policy.allows(syscall), syscall
    every = policy.syscalls()
    assert {"read", "write", "poll", "recvmsg", "sendto", "exit_group"} <= set(every)
    device_only = {"preadv2", "pwritev2", "fdatasync", "fallocate"}
    assert (device_only <= set(every)) == (name == "virtio_blk")
    assert not device_only & set(every) or name == "virtio_blk"


def test_virtio_blk_may_punch_holes_and_zero_ranges_but_not_allocate_or_collapse():
    policy = load_policy("virtio_blk")
    keep, punch, zero = (CONSTANTS[k] for k in ("FALLOC_FL_KEEP_SIZE", "FALLOC_FL_PUNCH_HOLE", "FALLOC_FL_ZERO_RANGE"))
    assert policy.allows("fallocate", (5, punch | keep, 0, 4096, 0, 0))
    assert policy.allows("fallocate", (5, zero | keep, 0, 4096, 0, 0))
    assert not policy.allows("fallocate", (5, 0, 0, 4096, 0, 0))
    assert not policy.allows("fallocate", (5, 0x08, 0, 4096, 0, 0))  # FALLOC_FL_COLLAPSE_RANGE
    assert not policy.allows("fallocate", (5, zero, 0, 4096, 0, 0))  # would grow the disk


# -- compiling and installing ----------------------------------------------------------------------
def test_the_compiled_filter_size_is_counted_in_bpf_instructions():
    rtc, blk = load_policy("rtc"), load_policy("virtio_blk")
    assert 20 < filter_size(rtc) < filter_size(blk) < 200
    assert filter_size(rtc, "trace") < 10  # arch check and allow: a marker for strace
    with pytest.raises(PolicyError, match="unknown seccomp mode 'warn' \\(use kill, log, trace\\)"):
        compile_filter(rtc, "warn")


def run_child(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """A fresh interpreter that installs a policy of tmp_path, then runs code."""
    script = "from pathlib import Path\nfrom vmboot.policies.compiler import install, load_policy\n" + \
        textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=30)


def test_kill_mode_kills_the_whole_process_from_any_thread(tmp_path):
    write_policies(tmp_path, "exit_group # leave\nfutex arg1 == FUTEX_WAIT_PRIVATE # join\n"
                             "futex arg1 == FUTEX_WAIT_BITSET_PRIVATE # join\nfutex arg1 == FUTEX_WAKE_PRIVATE # join\n"
                             "write # print\nmmap arg2 & PROT_EXEC == 0 # memory\nmunmap # memory\nbrk # memory\n",
                   dev="")
    done = run_child("""
        import os, sys, threading
        go = threading.Event()
        def worker():
            go.wait()
            os.getppid()  # not allowed: kills the process, not only this thread (TSYNC, KILL_PROCESS)
        thread = threading.Thread(target=worker)
        thread.start()
        install(load_policy("dev", Path(sys.argv[1])), "kill")
        go.set()
        thread.join()  # with KILL_THREAD, or without TSYNC, this returns
        print("survived")
        """, tmp_path)
    assert (done.returncode, done.stdout) == (-signal.SIGSYS, ""), done.stderr


def test_log_mode_lets_unlisted_syscalls_through(tmp_path):
    write_policies(tmp_path, "exit_group # leave\n", dev="")
    done = run_child("""
        import os, sys
        ppid = os.getppid()
        install(load_policy("dev", Path(sys.argv[1])), "log")
        print(os.getppid() == ppid, os.getpid() > 0)
        """, tmp_path)
    assert (done.returncode, done.stdout) == (0, "True True\n"), done.stderr


def test_an_x32_syscall_is_killed_even_in_log_mode(tmp_path):
    write_policies(tmp_path, "exit_group # leave\ngetpid # x\n", dev="")
    done = run_child("""
        import ctypes, sys
        install(load_policy("dev", Path(sys.argv[1])), "log")
        ctypes.CDLL(None).syscall(0x40000000 | 39)  # x32 getpid
        """, tmp_path)
    assert done.returncode == -signal.SIGSYS


def test_trace_mode_installs_a_filter_that_allows_everything(tmp_path):
    write_policies(tmp_path, "exit_group # leave\n", dev="")
    done = run_child("""
        import os, sys
        install(load_policy("dev", Path(sys.argv[1])), "trace")
        with open("/proc/self/status") as status:  # openat: never in a policy, allowed by the marker
            print([line.split()[1] for line in status if line.startswith("Seccomp:")])
        """, tmp_path)
    assert (done.returncode, done.stdout) == (0, "['2']\n"), done.stderr  # SECCOMP_MODE_FILTER
