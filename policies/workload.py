"""A reference device workload: what a sandboxed vmboot device process does, to derive and prove the policies.

The device side behaves as a vmboot device process (devices/process.py): started
inside new namespaces by ``unshare`` with its descriptors already open (two
SOCK_SEQPACKET channel sockets, as ipc/channel.py makes them, guest RAM as a
memfd, a disk, eventfds), it answers the core's hello, sandboxes itself in the
agreed order (pivot into an empty tmpfs root, drop capabilities, rlimits,
no_new_privs, seccomp) and only then serves, from one select.poll loop:
msgpack requests read with recvmsg into a buffer of the largest message size,
replies and posted events, eventfd input, and for virtio_blk kicks that it
serves inline with preadv/pwritev/fdatasync/fallocate between guest RAM and
the disk, and a call eventfd. The device logic is a stand-in; the syscalls are
the real ones.

The core side (``run``) plays the core: it sets everything up, starts the
device (under strace when asked), drives a fixed script of requests and checks
every answer and the exit status. The script makes the rarer paths happen for
sure, so that a trace proves the lines they need: big states both ways (the
allocators grow and shrink) and bursts of posted writes.

    python -m vmboot.policies.workload virtio_blk [--seccomp kill|log|trace] [--trace DIR]

The sandbox sequence here is private to this workload; devices/sandbox.py owns the real one.
"""
from __future__ import annotations

import argparse
import ctypes
import errno
import mmap
import os
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack

from vmboot.core.linux import (
    _LINUX_CAPABILITY_VERSION_3, FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, MNT_DETACH,
    MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC, MS_REMOUNT, PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_PDEATHSIG, SYS_pivot_root,
)
from vmboot.policies.compiler import (
    MODES, POLICY_DIR, PolicyError, device_names, install, load_policy, seccomp_kill_syscall,
)

UNSHARE = ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "--ipc", "--net", "--kill-child"]
RAM_SIZE = 4 << 20
DISK_SIZE = 2 << 20
SECTOR = 512
REQUESTS = 300  # control-channel round trips per run
MAX_DATA = 1 << 16  # the protocol's largest WRITE payload
MAX_MESSAGE = 1 << 20  # the protocol's largest message: receive buffers are this big
TIMEOUT_S = 20.0

# A data-path request in guest RAM (a stand-in for a virtqueue chain): op, status, disk offset, length, gpa.
REQUEST = struct.Struct("<IIQQQ")
REQUEST_GPA = 0x1000
DATA_GPA = 0x10000
OP_READ, OP_WRITE, OP_FLUSH, OP_DISCARD, OP_WRITE_ZEROES = range(5)
STATUS_NONE, STATUS_OK, STATUS_IOERR = 0, 1, 2

_libc = ctypes.CDLL(None, use_errno=True)


class WorkloadError(Exception):
    """The workload failed; the message says how, in one line."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


# ==== the device side ===========================================================================
class Registers:
    """Stand-in device logic: byte registers; for rtc and pmtimer the first 8 bytes are a clock."""

    def __init__(self, device: str):
        self.device = device
        self.regs = bytearray(256)

    def read(self, offset: int, size: int) -> bytes:
        if self.device == "pmtimer" and offset < 8:
            return (int(time.monotonic() * 3579545) & 0xFFFFFFFF).to_bytes(4, "little")[:size]
        if self.device == "rtc" and offset < 8:
            now = time.gmtime(time.time())
            return bytes([now.tm_sec, now.tm_min, now.tm_hour, now.tm_mday][offset % 4:][:size]).ljust(size, b"\0")
        return bytes(self.regs[offset % 256:][:size]).ljust(size, b"\0")

    def write(self, offset: int, data: bytes) -> None:
        chunk = data[:256 - offset % 256]
        self.regs[offset % 256:offset % 256 + len(chunk)] = chunk


class Disk:
    """The virtio_blk data path, served from the poll loop as devices/host.py does: kick, request in RAM, call."""

    def __init__(self, ram: mmap.mmap, disk_fd: int, call_fd: int):
        self.ram = memoryview(ram)
        self.disk_fd, self.call_fd = disk_fd, call_fd
        self.served = 0
        self.fallocate = _libc.fallocate
        self.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]

    def kick(self, kick_fd: int) -> None:
        try:
            os.eventfd_read(kick_fd)
        except BlockingIOError:
            return
        op, _, offset, length, gpa = REQUEST.unpack_from(self.ram, REQUEST_GPA)
        status = STATUS_OK if self.serve(op, offset, length, gpa) else STATUS_IOERR
        struct.pack_into("<I", self.ram, REQUEST_GPA + 4, status)
        self.served += 1
        os.eventfd_write(self.call_fd, 1)

    def serve(self, op: int, offset: int, length: int, gpa: int) -> bool:
        if offset + length > DISK_SIZE or gpa + length > len(self.ram):
            return False
        half = length // 2  # two iovecs, as a chain of two descriptors would give
        views = [self.ram[gpa:gpa + half], self.ram[gpa + half:gpa + length]]
        try:
            if op == OP_READ:
                return os.preadv(self.disk_fd, views, offset) == length
            if op == OP_WRITE:
                return os.pwritev(self.disk_fd, views, offset) == length
            if op == OP_FLUSH:
                os.fdatasync(self.disk_fd)
                return True
            if op == OP_DISCARD:
                return self.fallocate(self.disk_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0
            if op == OP_WRITE_ZEROES:
                if self.fallocate(self.disk_fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length) == 0:
                    return True
                if ctypes.get_errno() not in (errno.EOPNOTSUPP, errno.EINVAL):
                    return False
                return self.fallocate(self.disk_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0
        except OSError:
            return False
        return False


def _pivot_to_empty_root() -> None:
    """Leave the host's file system: an empty, read-only tmpfs becomes /."""
    _check(_libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    _check(_libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=16k,mode=0500"),
           "mount tmpfs")
    os.mkdir("/tmp/old")
    _check(_libc.syscall(SYS_pivot_root, b"/tmp", b"/tmp/old"), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/old", MNT_DETACH), "detach the old root")
    os.rmdir("/old")
    _check(_libc.mount(None, b"/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None),
           "remount / read-only")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities(last_cap: int) -> None:
    for cap in range(last_cap + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    _check(_libc.capset(ctypes.byref(header), data), "capset")


def _set_rlimits(device: str, open_fds: int) -> None:
    limits = {resource.RLIMIT_NOFILE: open_fds, resource.RLIMIT_NPROC: 0, resource.RLIMIT_CORE: 0,
              resource.RLIMIT_MEMLOCK: 0}
    if device != "virtio_blk":
        limits[resource.RLIMIT_FSIZE] = 0
    for which, value in limits.items():
        resource.setrlimit(which, (value, value))


def sandbox(device: str, mode: str, policy) -> None:
    """namespaces (unshare did them) -> root -> capabilities -> rlimits -> no_new_privs -> seccomp."""
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    open_fds = max(int(fd) for fd in os.listdir("/proc/self/fd")) + 1
    _pivot_to_empty_root()
    _drop_capabilities(last_cap)
    _set_rlimits(device, open_fds)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    install(policy, mode)


def _receive(sock: socket.socket) -> list | None:
    """One message, as the lead's Channel reads it (recvmsg into a buffer of the largest size); None at EOF."""
    data, _, _, _ = sock.recvmsg(MAX_MESSAGE + 1)
    return msgpack.unpackb(data) if data else None


def serve(device: str, mode: str, fds: dict[str, int], policy_dir: Path) -> None:
    """The device process: hello, sandbox, then the poll loop until SHUTDOWN or the core hangs up."""
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "PR_SET_PDEATHSIG")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the core stops devices; no handler, no sigreturn
    policy = load_policy(device, policy_dir)  # the policy files vanish with the pivot
    ctl, evt = socket.socket(fileno=fds["ctl"]), socket.socket(fileno=fds["evt"])
    if _receive(ctl) != ["hello", device]:
        raise WorkloadError("bad hello")
    model, disk = Registers(device), None
    if device == "virtio_blk":
        ram = mmap.mmap(fds["ram"], RAM_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        disk = Disk(ram, fds["disk"], fds["call"])
    ctl.send(msgpack.packb(["hello", device]))
    sandbox(device, mode, policy)
    evt.send(msgpack.packb(["sandboxed"]))

    poller = select.poll()
    for name in ("ctl", "input", "kick"):
        if name in fds:
            poller.register(fds[name], select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd == fds.get("kick"):
                disk.kick(fd)
            elif fd == fds["input"]:
                evt.send(msgpack.packb(["input", os.eventfd_read(fd)]))
            elif fd == fds["ctl"]:
                msg = _receive(ctl)
                if msg is None or msg[0] == "shutdown":  # the core went, or said so
                    os._exit(0)  # no interpreter teardown: nothing left to say
                if msg[0] == "read":
                    ctl.send(msgpack.packb(["reply", msg[1], model.read(msg[2], msg[3])]))
                elif msg[0] == "write":
                    model.write(msg[1], msg[2])
                    evt.send(msgpack.packb(["output", len(msg[2])]))
                elif msg[0] == "snapshot":  # a state far bigger than the registers: the allocators grow
                    ctl.send(msgpack.packb(["reply", msg[1], [i * 3 for i in range(msg[2])]]))
                elif msg[0] == "restore":
                    ctl.send(msgpack.packb(["reply", msg[1], len(msg[2])]))
                elif msg[0] == "status":
                    ctl.send(msgpack.packb(["reply", msg[1], disk.served if disk else 0]))
                else:  # rejected with an error reply and a log line, as ipc/server.py does
                    sys.stderr.write(f"workload {device}: rejected a message: {msg[0]!r}\n")
                    sys.stderr.flush()
                    ctl.send(msgpack.packb(["error", msg[1], "unknown request"]))


# ==== the core side =============================================================================
@dataclass
class Result:
    device: str
    mode: str
    requests: int = 0
    events: int = 0
    disk_requests: int = 0
    seconds: float = 0.0
    trace: Path | None = None


class Core:
    """The core's half: channels, fds, the device process and the request script."""

    def __init__(self, device: str, mode: str, trace_dir: Path | None, policy_dir: Path):
        self.device, self.mode, self.trace_dir, self.policy_dir = device, mode, trace_dir, policy_dir
        self.rundir = Path(tempfile.mkdtemp(prefix="vmboot-workload-"))
        self.ctl, ctl_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.evt, evt_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.theirs = [ctl_theirs, evt_theirs]  # closed here once the device has them
        self.fds = {"ctl": ctl_theirs.fileno(), "evt": evt_theirs.fileno(), "input": os.eventfd(0, os.EFD_NONBLOCK)}
        if device == "virtio_blk":
            self.fds["kick"] = os.eventfd(0, os.EFD_NONBLOCK)
            self.fds["call"] = os.eventfd(0, os.EFD_NONBLOCK)
            self.fds["ram"] = os.memfd_create("vmboot-ram")
            os.ftruncate(self.fds["ram"], RAM_SIZE)
            self.ram = mmap.mmap(self.fds["ram"], RAM_SIZE)
            self.fds["disk"] = os.open(self.rundir / "disk.img", os.O_RDWR | os.O_CREAT, 0o600)
            os.pwrite(self.fds["disk"], os.urandom(DISK_SIZE), 0)
        self.proc: subprocess.Popen | None = None
        self.pids: list[int] = []
        self.started = time.monotonic()
        self.seq = 0

    def command(self) -> list[str]:
        fds = ",".join(f"{k}={v}" for k, v in self.fds.items())
        cmd = UNSHARE + [sys.executable, "-m", "vmboot.policies.workload", self.device, "--serve",
                         "--seccomp", self.mode, "--fds", fds, "--policy-dir", str(self.policy_dir)]
        if self.trace_dir is not None:
            out = self.trace_dir / f"{self.device}.strace"
            cmd = ["strace", "-f", "-qq", "-o", str(out), "-e", "trace=all"] + cmd
        return cmd

    # -- messages ------------------------------------------------------------------------------
    def _wait(self, fd: int, what: str) -> None:
        """Wait until fd is readable, in slices, so that a dead device is reported at once."""
        deadline = time.monotonic() + TIMEOUT_S
        while not select.select([fd], [], [], 0.1)[0]:
            death = self._death()
            if death or time.monotonic() > deadline:
                raise WorkloadError(death or f"{self.device}: {what} in {TIMEOUT_S:.0f} s")

    def _recv(self, sock: socket.socket) -> list:
        self._wait(sock.fileno(), "no answer")
        data = sock.recv(MAX_MESSAGE + 1)
        if not data:
            self.proc.wait(TIMEOUT_S)
            raise WorkloadError(self._death() or f"{self.device}: closed its channel")
        return msgpack.unpackb(data)

    def request(self, *msg) -> object:
        self.seq += 1
        self.ctl.send(msgpack.packb([msg[0], self.seq, *msg[1:]]))
        reply = self._recv(self.ctl)
        if reply[:2] != ["reply", self.seq]:
            raise WorkloadError(f"{self.device}: unexpected reply {reply!r}")
        return reply[2]

    def post(self, *msg) -> None:
        self.ctl.send(msgpack.packb(list(msg)))

    def event(self) -> list:
        return self._recv(self.evt)

    # -- the run -------------------------------------------------------------------------------
    def start(self) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.command(), pass_fds=list(self.fds.values()), stdin=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # the device's log lines
        for sock in self.theirs:
            sock.close()
        self.ctl.send(msgpack.packb(["hello", self.device]))
        if self._recv(self.ctl) != ["hello", self.device]:
            raise WorkloadError(f"{self.device}: bad handshake")
        self.pids = _descendants(self.proc.pid)
        if self.event() != ["sandboxed"]:
            raise WorkloadError(f"{self.device}: did not say it is sandboxed")

    def script(self, result: Result) -> None:
        for i in range(REQUESTS):
            size = (1, 2, 4)[i % 3]
            value = self.request("read", i % 64, size)
            if len(value) != size:
                raise WorkloadError(f"{self.device}: read of {size} bytes gave {len(value)}")
            result.requests += 1
            if i % 10 == 0:  # posted writes of every size up to the protocol's limit
                data = bytes([i & 0xFF]) * min(MAX_DATA, 1 << (i // 10 % 17))
                self.post("write", 16, data)
                if self.event() != ["output", len(data)]:
                    raise WorkloadError(f"{self.device}: posted write of {len(data)} bytes not seen")
                written = self.request("read", 16, 1)
                if written != data[:1]:
                    raise WorkloadError(f"{self.device}: a read overtook a posted write ({written!r})")
                result.events += 1
            if i % 50 == 0:  # a raw eventfd in the device's poll loop
                os.eventfd_write(self.fds["input"], 3)
                if self.event() != ["input", 3]:
                    raise WorkloadError(f"{self.device}: eventfd input not seen")
                result.events += 1
        self.seq += 1
        self.ctl.send(msgpack.packb(["frobnicate", self.seq]))
        if self._recv(self.ctl) != ["error", self.seq, "unknown request"]:
            raise WorkloadError(f"{self.device}: a bad request was not rejected")
        self.memory_script(result)
        self.burst_script(result)
        if self.device == "virtio_blk":
            self.disk_script(result)

    def memory_script(self, result: Result) -> None:
        """Large states both ways: the allocators (Python's arenas, glibc malloc) grow and shrink."""
        for count in (1000, 30_000, 10, 30_000):
            state = self.request("snapshot", count)
            if len(state) != count or state[-1] != (count - 1) * 3:
                raise WorkloadError(f"{self.device}: snapshot of {count} values came back wrong")
            result.requests += 1
        for size in (1 << 10, 150 << 10, 1 << 12, 150 << 10):
            if self.request("restore", os.urandom(size)) != size:
                raise WorkloadError(f"{self.device}: restore of {size} bytes came back wrong")
            result.requests += 1

    def burst_script(self, result: Result) -> None:
        """Posted writes back to back, as the firmware's console output comes (read in batches, as the
        socket buffers hold a few hundred messages)."""
        for batch in range(0, 2000, 100):
            for i in range(batch, batch + 100):
                self.post("write", 32, bytes([i & 0xFF]) * (40 + i % 200))
            for i in range(batch, batch + 100):
                if self.event()[0] != "output":
                    raise WorkloadError(f"{self.device}: burst write {i} not seen")
        result.events += 2000

    def disk(self, op: int, offset: int, length: int) -> int:
        self.ram[REQUEST_GPA:REQUEST_GPA + REQUEST.size] = REQUEST.pack(op, STATUS_NONE, offset, length, DATA_GPA)
        os.eventfd_write(self.fds["kick"], 1)
        self._wait(self.fds["call"], f"disk request {op} not completed")
        os.eventfd_read(self.fds["call"])
        return struct.unpack_from("<I", self.ram, REQUEST_GPA + 4)[0]

    def disk_script(self, result: Result) -> None:
        disk_fd = self.fds["disk"]
        for i in range(40):
            offset, length = (i * 7 % 64) * 4096, (1 + i % 16) * SECTOR * 8
            payload = os.urandom(length)
            self.ram[DATA_GPA:DATA_GPA + length] = payload
            if self.disk(OP_WRITE, offset, length) != STATUS_OK or os.pread(disk_fd, length, offset) != payload:
                raise WorkloadError(f"virtio_blk: write of {length} bytes at {offset} not on disk")
            self.ram[DATA_GPA:DATA_GPA + length] = bytes(length)
            if self.disk(OP_READ, offset, length) != STATUS_OK or self.ram[DATA_GPA:DATA_GPA + length] != payload:
                raise WorkloadError(f"virtio_blk: read of {length} bytes at {offset} differs from the disk")
            result.disk_requests += 2
        for op in (OP_FLUSH, OP_DISCARD, OP_WRITE_ZEROES):
            if self.disk(op, 65536, 65536) != STATUS_OK:
                raise WorkloadError(f"virtio_blk: request {op} failed")
            result.disk_requests += 1
        if os.pread(disk_fd, 65536, 65536) != bytes(65536):
            raise WorkloadError("virtio_blk: discarded range does not read as zeroes")
        if self.disk(OP_READ, DISK_SIZE, SECTOR) != STATUS_IOERR:
            raise WorkloadError("virtio_blk: a read past the end did not fail")
        served = self.request("status")
        if served != result.disk_requests + 1:
            raise WorkloadError(f"virtio_blk: device served {served} requests, expected {result.disk_requests + 1}")

    def stop(self) -> None:
        self.post("shutdown")
        try:
            code = self.proc.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise WorkloadError(f"{self.device}: did not exit after shutdown") from None
        if code != 0:
            raise WorkloadError(self._death() or f"{self.device}: exit status {code}")

    def _death(self) -> str | None:
        """'rtc killed by SIGSYS: syscall openat', when the device died."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        if code >= 0 and code < 128:
            return f"{self.device} exited with status {code}"
        sig = signal.Signals(-code if code < 0 else code - 128)
        what = next(filter(None, (seccomp_kill_syscall(pid, since=self.started) for pid in self.pids)), None) \
            if sig == signal.SIGSYS else None
        return f"{self.device} killed by {sig.name}" + (f": syscall {what}" if what else "")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for pid in reversed(self.pids):  # the device first: killing strace would leave unshare behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait()
        for sock in [self.ctl, self.evt] + self.theirs:
            sock.close()
        for name, fd in self.fds.items():
            if name not in ("ctl", "evt"):
                os.close(fd)
        if self.device == "virtio_blk":
            self.ram.close()
        shutil.rmtree(self.rundir, ignore_errors=True)


def _descendants(pid: int) -> list[int]:
    """pid's process tree (the device python runs under unshare, maybe under strace): host pids."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def run(device: str, mode: str = "kill", trace_dir: Path | None = None, policy_dir: Path = POLICY_DIR) -> Result:
    """Run the reference workload of one device to the end; WorkloadError if anything goes wrong."""
    if device not in device_names(policy_dir):
        raise WorkloadError(f"no policy for device {device!r} (known: {', '.join(device_names(policy_dir))})")
    if trace_dir is not None and shutil.which("strace") is None:
        raise WorkloadError("strace is not installed (apt-get install strace)")
    result = Result(device, mode, trace=trace_dir / f"{device}.strace" if trace_dir else None)
    core = Core(device, mode, trace_dir, policy_dir)
    start = time.monotonic()
    try:
        core.start()
        core.script(result)
        core.stop()
    finally:
        core.close()
    result.seconds = time.monotonic() - start
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmboot.policies.workload", description=__doc__.split("\n")[0])
    parser.add_argument("device")
    parser.add_argument("--seccomp", choices=MODES, default="kill")
    parser.add_argument("--trace", type=Path, metavar="DIR", help="run the device under strace, output in DIR")
    parser.add_argument("--policy-dir", type=Path, default=POLICY_DIR, help="the folder of .policy files")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fds", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.serve:
            fds = {k: int(v) for k, v in (item.split("=") for item in args.fds.split(","))}
            serve(args.device, args.seccomp, fds, args.policy_dir)
            return 0
        if args.trace:
            args.trace.mkdir(parents=True, exist_ok=True)
        result = run(args.device, args.seccomp, args.trace, args.policy_dir)
    except (WorkloadError, PolicyError, OSError) as err:
        print(f"workload: {err}", file=sys.stderr)
        return 1
    print(f"{result.device}: {result.requests} requests, {result.events} events, {result.disk_requests} disk "
          f"requests in {result.seconds:.2f} s (seccomp {result.mode})"
          + (f"; trace in {result.trace}" if result.trace else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
