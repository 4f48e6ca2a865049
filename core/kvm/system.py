"""/dev/kvm: opening it, checking what it offers, and what the host CPU is."""
from __future__ import annotations

import errno
import os
from pathlib import Path

from vmboot.abi.errors import VmbootError

from .abi import KvmIoctlError, ffi, ioctl, lib

KVM_PATH = "/dev/kvm"

REQUIRED_CAPS = {
    "KVM_CAP_USER_MEMORY": lib.KVM_CAP_USER_MEMORY,
    "KVM_CAP_IRQCHIP": lib.KVM_CAP_IRQCHIP,
    "KVM_CAP_PIT2": lib.KVM_CAP_PIT2,
    "KVM_CAP_EXT_CPUID": lib.KVM_CAP_EXT_CPUID,
    "KVM_CAP_IMMEDIATE_EXIT": lib.KVM_CAP_IMMEDIATE_EXIT,
    "KVM_CAP_IOEVENTFD": lib.KVM_CAP_IOEVENTFD,
    "KVM_CAP_IRQFD": lib.KVM_CAP_IRQFD,
    "KVM_CAP_IRQ_ROUTING": lib.KVM_CAP_IRQ_ROUTING,
}


def host_has_hw_virt(cpuinfo: str | None = None) -> bool:
    """True when the host CPU advertises VT-x (vmx) or AMD-V (svm)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            if "vmx" in flags or "svm" in flags:
                return True
    return False


def kvm_flavour() -> str:
    """'pvm' for KVM-PVM (a software backend without VT-x/AMD-V), else 'hardware'."""
    return "pvm" if Path("/sys/module/kvm_pvm").exists() else "hardware"


class Kvm:
    """An open /dev/kvm."""

    def __init__(self, path: str = KVM_PATH):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VmbootError(
                f"{path} does not exist: this host has no KVM (load kvm_intel or kvm_amd, or use --accel emulate)"
            ) from None
        except PermissionError:
            raise VmbootError(
                f"{path}: permission denied (run as a member of its group, or use --accel emulate)"
            ) from None
        except OSError as err:
            raise VmbootError(f"cannot open {path}: {err.strerror}") from None
        try:
            version = ioctl(self.fd, lib.KVM_GET_API_VERSION)
            if version != lib.KVM_API_VERSION:
                raise VmbootError(f"{path} speaks KVM API {version}, vmboot needs {lib.KVM_API_VERSION}")
            missing = [name for name, cap in REQUIRED_CAPS.items() if not self.check_extension(cap)]
            if missing:
                raise VmbootError(f"{path} lacks {', '.join(missing)}")
            self.vcpu_mmap_size = ioctl(self.fd, lib.KVM_GET_VCPU_MMAP_SIZE)
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, lib.KVM_CHECK_EXTENSION, cap)

    def supported_cpuid(self) -> list[dict]:
        """KVM_GET_SUPPORTED_CPUID, as a list of plain dicts."""
        nent = 64
        while True:
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": nent, "entries": nent})
            try:
                ioctl(self.fd, lib.KVM_GET_SUPPORTED_CPUID, cpuid)
            except KvmIoctlError as err:
                if err.errno == errno.E2BIG and nent < 4096:
                    nent *= 2
                    continue
                raise
            return [
                {k: getattr(e, k) for k in ("function", "index", "flags", "eax", "ebx", "ecx", "edx")}
                for e in cpuid.entries[0 : cpuid.nent]
            ]
