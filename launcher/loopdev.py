"""Attach a byte range of a file or block device to a read-only, auto-clearing loop device.

<linux/loop.h>: LOOP_CTL_GET_FREE on /dev/loop-control finds a free device;
LOOP_CONFIGURE (Linux 5.8) binds the backing fd with an offset and size limit
in one call, falling back to LOOP_SET_FD + LOOP_SET_STATUS64 on older kernels.
LO_FLAGS_AUTOCLEAR detaches the device when its last user goes: after the
mount on it is gone and our fd is closed, the kernel clears it by itself.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os

from vmboot.abi.linux import (
    LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY, LO_KEY_SIZE, LO_NAME_SIZE, LOOP_CLR_FD, LOOP_CONFIGURE, LOOP_CTL_GET_FREE,
    LOOP_SET_FD, LOOP_SET_STATUS64,
)

ATTEMPTS = 8  # another process may take the device LOOP_CTL_GET_FREE gave us


class LoopInfo64(ctypes.Structure):
    _fields_ = [
        ("lo_device", ctypes.c_uint64),
        ("lo_inode", ctypes.c_uint64),
        ("lo_rdevice", ctypes.c_uint64),
        ("lo_offset", ctypes.c_uint64),
        ("lo_sizelimit", ctypes.c_uint64),
        ("lo_number", ctypes.c_uint32),
        ("lo_encrypt_type", ctypes.c_uint32),
        ("lo_encrypt_key_size", ctypes.c_uint32),
        ("lo_flags", ctypes.c_uint32),
        ("lo_file_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_crypt_name", ctypes.c_uint8 * LO_NAME_SIZE),
        ("lo_encrypt_key", ctypes.c_uint8 * LO_KEY_SIZE),
        ("lo_init", ctypes.c_uint64 * 2),
    ]


class LoopConfig(ctypes.Structure):
    _fields_ = [
        ("fd", ctypes.c_uint32),
        ("block_size", ctypes.c_uint32),
        ("info", LoopInfo64),
        ("__reserved", ctypes.c_uint64 * 8),
    ]


def attach(backing_fd: int, offset: int, size: int, control: str = "/dev/loop-control") -> tuple[str, int]:
    """Bind ``size`` bytes at ``offset`` of ``backing_fd``; return the loop device's path and an open fd on it.

    The device clears itself once that fd is closed and nothing else holds it.
    """
    info = LoopInfo64(lo_offset=offset, lo_sizelimit=size, lo_flags=LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR)
    ctl = os.open(control, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(ATTEMPTS):
            number = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
            path = f"/dev/loop{number}"
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _configure(fd, backing_fd, info)
            except OSError as err:
                os.close(fd)
                if err.errno == errno.EBUSY:
                    continue
                raise
            return path, fd
    finally:
        os.close(ctl)
    raise OSError(errno.EBUSY, "every free loop device was taken by another process")


def _configure(fd: int, backing_fd: int, info: LoopInfo64) -> None:
    try:
        fcntl.ioctl(fd, LOOP_CONFIGURE, LoopConfig(fd=backing_fd, info=info))
        return
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    fcntl.ioctl(fd, LOOP_SET_FD, backing_fd)  # kernels before 5.8
    try:
        fcntl.ioctl(fd, LOOP_SET_STATUS64, info)
    except OSError:
        fcntl.ioctl(fd, LOOP_CLR_FD, 0)
        raise
