"""Opening disk images for virtio-blk: one clear error per problem, and a lock.

A writable disk is locked exclusively with flock(2), a read-only one shared,
so two VMs can never write the same image, and nobody writes an image a VM is
reading. The lock belongs to the open file description, so it travels with
the file descriptor to the device and lasts as long as it does.
"""
from __future__ import annotations

import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from vmboot.abi.errors import VmbootError


@dataclass
class DiskSpec:
    path: Path
    readonly: bool = False
    id: str | None = None


def open_disk(spec: DiskSpec) -> int:
    flags = (os.O_RDONLY if spec.readonly else os.O_RDWR) | os.O_CLOEXEC
    try:
        fd = os.open(spec.path, flags)
    except FileNotFoundError:
        raise VmbootError(f"--disk {spec.path}: no such file") from None
    except OSError as err:
        raise VmbootError(f"--disk {spec.path}: {err.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise VmbootError(f"--disk {spec.path}: not a regular file or a block device")
        size = os.lseek(fd, 0, os.SEEK_END)
        if size < 512 or size % 512:
            raise VmbootError(f"--disk {spec.path}: size {size} is not a positive multiple of 512 bytes")
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if spec.readonly else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise VmbootError(f"--disk {spec.path}: in use by another VM (it is locked)") from None
    except BaseException:
        os.close(fd)
        raise
    return fd
