"""How a device process locks itself in, after opening everything it needs.

In this order, each step narrowing what the next may do:

1. namespaces: at start-up, while it is still single-threaded, the process
   unshares user, mount, PID, IPC and network namespaces and forks: the child
   is the device, PID 1 of its own PID namespace; the parent stays behind only
   to report exactly how the child ended (``reap``). After opening what it
   needs, the device makes its mount tree private and pivots into an empty,
   read-only tmpfs, so no host file is reachable any more;
2. capabilities: drops the bounding set, the ambient set, and every effective,
   permitted and inheritable capability;
3. rlimits: no new files, no core dumps, no locked memory, files it writes
   cannot grow (only a disk device writes, within the disk's size);
4. no_new_privs, and not dumpable;
5. seccomp: the kind's policy (policies/<kind>.policy), default action
   kill-process, on every thread (TSYNC).
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
from pathlib import Path

from vmboot.abi.linux import (
    _LINUX_CAPABILITY_VERSION_3, CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, MNT_DETACH,
    MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAPBSET_DROP, PR_SET_DUMPABLE, PR_SET_NAME, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, SYS_capset, SYS_pivot_root,
)
from vmboot.policies.compiler import install, load_policy

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(Exception):
    pass


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")


def die_with_parent() -> None:
    """SIGKILL this process when its parent (the namespace wrapper) goes."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")


def set_name(name: str) -> None:
    """The name ps and /proc/PID/comm show: 'dev:rtc' for a device, 'reap:rtc' for its reaper."""
    _check(_libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0), "PR_SET_NAME")


def new_namespaces() -> None:
    """Unshare user, mount, PID, IPC and network namespaces; be root in the new user one.

    Must run while the process has a single thread. The new PID namespace takes
    effect for the next child: the caller forks.
    """
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWPID),
           "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


def reap(child: int) -> None:
    """The parent's whole life after the fork: wait for the device, then end the same way.

    The core waits on this process, so its exit status must be the device's:
    the same exit code, or death by the same signal (SIGKILL and SIGSYS included).
    """
    os.closerange(3, 1 << 16)  # it keeps nothing of the device's: no channel, memory or disk
    limit_resources(8, 0)
    no_new_privileges()
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        os.kill(os.getpid(), sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def empty_root(directory: str) -> None:
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    _check(_libc.mount(b"tmpfs", directory.encode(), b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC,
                       b"size=4k,nr_inodes=4,mode=0555"), "mounting an empty root")
    os.chdir(directory)
    _check(_libc.syscall(SYS_pivot_root, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detaching the old root")
    os.chdir("/")


def drop_capabilities(last_cap: int) -> None:
    for cap in range(last_cap + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"dropping capability {cap} from the bounding set")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clearing ambient capabilities")
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two __user_cap_data_struct, all zero
    _check(_libc.syscall(SYS_capset, header, data), "capset")


def limit_resources(nofile: int, fsize: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    for limit in (resource.RLIMIT_CORE, resource.RLIMIT_MEMLOCK, resource.RLIMIT_MSGQUEUE, resource.RLIMIT_NPROC):
        resource.setrlimit(limit, (0, 0))


def no_new_privileges() -> None:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "PR_SET_DUMPABLE")


def enter(root: str, policy: str, policy_dir: str, seccomp: str, fsize: int = 0) -> None:
    """Everything above, in order, with ``policy_dir/policy.policy``. ``seccomp``: "kill", "log" or "off"."""
    compiled = load_policy(policy, Path(policy_dir)) if seccomp != "off" else None  # while files exist
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    nofile = max(os.listdir("/proc/self/fd"), key=int, default="0")
    empty_root(root)
    drop_capabilities(last_cap)
    limit_resources(int(nofile) + 1, fsize)
    no_new_privileges()
    if compiled is not None:
        install(compiled, mode=seccomp)
