"""The compiled KVM ABI and the one place that issues ioctls."""
from __future__ import annotations

import os

from ._abi import ffi, lib

__all__ = ["ffi", "lib", "ioctl", "KvmIoctlError"]

_IOCTL_PREFIXES = ("GET_", "SET_", "CREA", "RUN", "CHEC", "IRQ_", "IOEV", "SIGN", "ENAB")
_NAMES = {getattr(lib, n): n for n in dir(lib) if n.startswith("KVM_") and n[4:8] in _IOCTL_PREFIXES}


class KvmIoctlError(OSError):
    def __init__(self, errno: int, request: int):
        name = _NAMES.get(request, hex(request))
        super().__init__(errno, f"{name}: {os.strerror(errno)}")
        self.request = request


def ioctl(fd: int, request: int, arg=0) -> int:
    """Issue one ioctl. ``arg`` is an int or a cffi pointer. The GIL is released."""
    if isinstance(arg, int):
        arg = ffi.cast("unsigned long", arg)
    ret = lib.ioctl(fd, request, arg)
    if ret < 0:
        raise KvmIoctlError(ffi.errno, request)
    return ret
