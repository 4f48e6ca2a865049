"""Byte ranges of a disk or an image file, read with pread: a whole disk, or one partition of it."""
from __future__ import annotations

import fcntl
import os
import stat
import struct

# <linux/fs.h>
BLKSSZGET = 0x1268  # logical block size, an int

DEFAULT_SECTOR_SIZE = 512


class RegionError(Exception):
    """A read outside the region, or an I/O error; the message names the region."""


class Region:
    """``size`` bytes of an open file, from ``offset``. Sub-regions share the file descriptor."""

    def __init__(self, name: str, fd: int, offset: int, size: int):
        self.name = name
        self.fd = fd
        self.offset = offset
        self.size = size

    def read(self, offset: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``offset``, or RegionError."""
        if offset < 0 or size < 0 or offset + size > self.size:
            raise RegionError(f"{self.name}: read of {size} bytes at {offset:#x} runs past its end ({self.size:#x})")
        try:
            data = os.pread(self.fd, size, self.offset + offset)
        except OSError as err:
            raise RegionError(f"{self.name}: read error at byte {self.offset + offset:#x}: {err.strerror}") from None
        if len(data) != size:
            raise RegionError(f"{self.name}: short read at byte {self.offset + offset:#x}")
        return data

    def sub(self, name: str, offset: int, size: int) -> Region:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise RegionError(f"{name}: {size} bytes at {offset:#x} lie outside {self.name}")
        return Region(name, self.fd, self.offset + offset, size)


class OpenDisk:
    """A block device or an image file, opened read-only; use as a context manager."""

    def __init__(self, path: str):
        self.path = path
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise RegionError(f"{path}: cannot open: {err.strerror}") from None
        try:
            st = os.fstat(self.fd)
            self.is_block = stat.S_ISBLK(st.st_mode)
            if not (self.is_block or stat.S_ISREG(st.st_mode)):
                raise RegionError(f"{path}: not a block device or a regular file")
            size = os.lseek(self.fd, 0, os.SEEK_END)
            self.sector_size = self._sector_size() if self.is_block else DEFAULT_SECTOR_SIZE
        except OSError as err:
            os.close(self.fd)
            raise RegionError(f"{path}: {err.strerror}") from None
        except RegionError:
            os.close(self.fd)
            raise
        self.region = Region(path, self.fd, 0, size)

    def _sector_size(self) -> int:
        buf = fcntl.ioctl(self.fd, BLKSSZGET, struct.pack("i", 0))
        return struct.unpack("i", buf)[0]

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> OpenDisk:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
