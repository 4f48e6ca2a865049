"""Read files from an XFS or ext4 partition by mounting it read-only in a private mount namespace.

A forked child does the work and the host's mounts are never touched:

1. ``unshare(CLONE_NEWNS)``, then ``/`` is made recursively private, so that
   nothing the child mounts propagates back to the host;
2. a partition without a device node of its own (an image file, or a loop
   device without partition nodes) is reached through a read-only,
   auto-clearing loop device on its byte range (loopdev.py);
3. it mounts the file system read-only, nosuid, nodev, noexec, without journal
   replay (ext4 ``noload``, XFS ``norecovery``; XFS also ``nouuid``, so that a
   clone of a mounted file system still mounts);
4. it opens the wanted files without following symbolic links (a link on the
   disk must not lead to the host's files), reads them up to a size limit, and
   sends them back through a pipe;
5. it unmounts and exits. Its namespace, and any mount still in it, dies with it.

The parent waits with a deadline and kills a child that hangs.
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import shutil
import signal
import stat
import tempfile
import time
from dataclasses import dataclass

import msgpack

from vmboot.abi.linux import CLONE_NEWNS, MNT_DETACH, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_PRIVATE, MS_RDONLY, MS_REC

from . import loopdev
from .fsprobe import EXT4, XFS

MOUNT_OPTIONS = {EXT4: "noload", XFS: "norecovery,nouuid"}
MOUNT_TIMEOUT = 30.0  # seconds for one partition: mount, read, unmount
REPLY_MAX = 1 << 30


class MountError(Exception):
    """The partition could not be mounted or read; the message says why, in one line."""


@dataclass(frozen=True)
class FileResult:
    path: str
    data: bytes | None  # None: absent
    error: str | None = None  # present but unreadable: why


def read_files(source: str, offset: int, size: int, fstype: str, wanted: list[tuple[str, int]],
               timeout: float = MOUNT_TIMEOUT) -> list[FileResult]:
    """Mount ``size`` bytes at ``offset`` of ``source`` (a device node when offset is 0 and size its size)
    as ``fstype`` in a private namespace and read the ``wanted`` files: (path, size limit) pairs."""
    if fstype not in MOUNT_OPTIONS:
        raise MountError(f"vmboot does not mount {fstype}")
    mountpoint = tempfile.mkdtemp(prefix="vmboot-mnt-")
    try:
        reply = _run_child(lambda: _child(source, offset, size, fstype, wanted, mountpoint), timeout)
    finally:
        shutil.rmtree(mountpoint, ignore_errors=True)
    if "error" in reply:
        raise MountError(reply["error"])
    return [FileResult(r["path"], r["data"], r["error"]) for r in reply["files"]]


def _run_child(work, timeout: float) -> dict:
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns, never raises into the parent's code
        status = 0
        try:
            os.close(rfd)
            reply = msgpack.packb(work(), use_bin_type=True)
            with os.fdopen(wfd, "wb") as out:
                out.write(len(reply).to_bytes(8, "little") + reply)
        except BaseException:  # noqa: BLE001 - the parent reports a missing reply
            status = 1
        finally:
            os._exit(status)
    os.close(wfd)
    try:
        data = _read_reply(rfd, pid, time.monotonic() + timeout, timeout)
    finally:
        os.close(rfd)
        _reap(pid)
    return msgpack.unpackb(data, raw=False)


def _read_reply(fd: int, pid: int, deadline: float, timeout: float) -> bytes:
    buf = bytearray()
    while True:
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            os.kill(pid, signal.SIGKILL)
            raise MountError(f"mount and read did not finish in {timeout:.0f} s; gave up")
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        buf += chunk
        if len(buf) > REPLY_MAX:
            os.kill(pid, signal.SIGKILL)
            raise MountError("the mount helper sent an oversized reply")
    if len(buf) < 8 or int.from_bytes(buf[:8], "little") != len(buf) - 8:
        raise MountError("the mount helper died without a reply")
    return bytes(buf[8:])


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


# --- in the child ---

def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
    return libc


def _check(result: int, what: str, hint: str = "") -> None:
    if result != 0:
        err = ctypes.get_errno()
        hint = "mounting needs root" if err in (errno.EPERM, errno.EACCES) else hint
        raise MountError(f"{what}: {os.strerror(err)}" + (f" ({hint})" if hint else ""))


def _child(source: str, offset: int, size: int, fstype: str, wanted: list[tuple[str, int]], mountpoint: str) -> dict:
    try:
        return {"files": _mount_and_read(source, offset, size, fstype, wanted, mountpoint)}
    except MountError as err:
        return {"error": str(err)}
    except OSError as err:
        return {"error": f"{err.strerror or err}"}


def _mount_and_read(source, offset, size, fstype, wanted, mountpoint) -> list[dict]:
    libc = _libc()
    _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making / private")
    loop_fd = None
    device = source
    st = os.stat(source)
    whole = stat.S_ISBLK(st.st_mode) and offset == 0 and size == _device_size(source)
    if not whole:
        backing = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        try:
            device, loop_fd = loopdev.attach(backing, offset, size)
        except OSError as err:
            raise MountError(f"cannot attach a loop device: {err.strerror}") from None
        finally:
            os.close(backing)
    try:
        flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
        _check(libc.mount(device.encode(), mountpoint.encode(), fstype.encode(), flags,
                          MOUNT_OPTIONS[fstype].encode()), f"cannot mount {fstype}", "dmesg may say why")
        try:
            return [_read_beneath(mountpoint, path, limit) for path, limit in wanted]
        finally:
            if libc.umount2(mountpoint.encode(), 0) != 0:
                libc.umount2(mountpoint.encode(), MNT_DETACH)
    finally:
        if loop_fd is not None:
            os.close(loop_fd)


def _device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _read_beneath(root: str, path: str, limit: int) -> dict:
    """Open ``path`` under ``root`` one component at a time, refusing symbolic links anywhere."""
    parts = [p for p in path.split("/") if p]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            # O_NONBLOCK: a FIFO on the disk must not hang the open; fstat below then refuses it
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_NONBLOCK if last else os.O_DIRECTORY)
            try:
                nfd = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                return {"path": path, "data": None, "error": None}
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(part, fd):
                    where = "" if last else "/" + "/".join(parts[:i + 1]) + " is "
                    return {"path": path, "data": None, "error": f"{where}a symbolic link (not followed)"}
                if err.errno == errno.ENOTDIR:  # a file where a directory should be: nothing there
                    return {"path": path, "data": None, "error": None}
                return {"path": path, "data": None, "error": f"cannot open: {err.strerror}"}
            os.close(fd)
            fd = nfd
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {"path": path, "data": None, "error": "not a regular file"}
        if st.st_size > limit:
            return {"path": path, "data": None, "error": f"{st.st_size} bytes, more than the {limit}-byte limit"}
        with os.fdopen(os.dup(fd), "rb") as f:
            return {"path": path, "data": f.read(limit + 1)[:limit], "error": None}
    finally:
        os.close(fd)


def _is_link(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False
