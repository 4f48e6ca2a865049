"""A KVM vCPU: the only code that reads or writes ``kvm_run``."""
from __future__ import annotations

import errno
import mmap
import os
import signal
import threading

from ..vcpu.base import Vcpu
from ..vcpu.exits import CpuError, Exit, Hlt, Interrupted, IoIn, IoOut, MmioRead, MmioWrite, Shutdown, SystemEvent
from ..vcpu.state import EntryState, SegmentRegister
from .abi import KvmIoctlError, ffi, ioctl, lib
from .vm import KvmVm

# The signal that knocks a vCPU thread out of KVM_RUN. Its handler does nothing;
# delivering it makes KVM_RUN return EINTR (with immediate_exit for the race).
KICK_SIGNAL = signal.SIGUSR1

_SYSTEM_EVENTS = {
    lib.KVM_SYSTEM_EVENT_SHUTDOWN: "poweroff",
    lib.KVM_SYSTEM_EVENT_RESET: "reset",
    lib.KVM_SYSTEM_EVENT_CRASH: "crash",
}

_INTERNAL_ERRORS = {
    lib.KVM_INTERNAL_ERROR_EMULATION: "KVM could not emulate an instruction",
    lib.KVM_INTERNAL_ERROR_SIMUL_EX: "an exception occurred while delivering an exception",
    lib.KVM_INTERNAL_ERROR_DELIVERY_EV: "an event could not be delivered",
    lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "the hardware exited for an unexpected reason",
}

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
SREGS = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


def install_kick_handler() -> None:
    """Give the kick signal a no-op handler (must run in the main thread)."""
    signal.signal(KICK_SIGNAL, lambda *_: None)


class KvmVcpu(Vcpu):
    def __init__(self, vm: KvmVm, index: int):
        self.vm = vm
        self.index = index
        self.fd = ioctl(vm.fd, lib.KVM_CREATE_VCPU, index)
        os.set_inheritable(self.fd, False)
        self._map = mmap.mmap(self.fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._run = ffi.cast("struct kvm_run *", ffi.from_buffer(self._map))
        self._thread: int | None = None
        self._read_target: tuple[int, int] | None = None  # (offset in the map, length) of a pending read

    def close(self) -> None:
        if self.fd >= 0:
            self._run = None
            self._map.close()
            os.close(self.fd)
            self.fd = -1

    # -- state -------------------------------------------------------------------
    def set_cpuid(self, entries: list[dict]) -> None:
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": entries})
        ioctl(self.fd, lib.KVM_SET_CPUID2, cpuid)

    def load(self, entry: EntryState) -> None:
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self.fd, lib.KVM_GET_SREGS, sregs)
        for name, seg in entry.segments.items():
            _store_segment(getattr(sregs, name), seg)
        sregs.gdt.base, sregs.gdt.limit = entry.gdt.base, entry.gdt.limit
        sregs.idt.base, sregs.idt.limit = entry.idt.base, entry.idt.limit
        sregs.cr0, sregs.cr3, sregs.cr4, sregs.efer = entry.cr0, entry.cr3, entry.cr4, entry.efer
        ioctl(self.fd, lib.KVM_SET_SREGS, sregs)

        regs = ffi.new("struct kvm_regs *")
        regs.rip = entry.rip
        regs.rflags = entry.rflags
        for name, value in entry.gprs.items():
            setattr(regs, name, value)
        ioctl(self.fd, lib.KVM_SET_REGS, regs)

    def registers(self) -> dict[str, int]:
        regs = ffi.new("struct kvm_regs *")
        ioctl(self.fd, lib.KVM_GET_REGS, regs)
        sregs = ffi.new("struct kvm_sregs *")
        ioctl(self.fd, lib.KVM_GET_SREGS, sregs)
        out = {name: getattr(regs, name) for name in GPRS}
        for name in ("cr0", "cr2", "cr3", "cr4", "efer"):
            out[name] = getattr(sregs, name)
        for name in SREGS:
            out[name] = getattr(sregs, name).selector
        out["cs_base"] = sregs.cs.base
        return out

    # -- running --------------------------------------------------------------------
    def run(self) -> Exit:
        run = self._run
        if self._thread is None:
            self._thread = threading.get_ident()
        if lib.ioctl(self.fd, lib.KVM_RUN, ffi.cast("unsigned long", 0)) < 0:
            err = ffi.errno
            if err in (errno.EINTR, errno.EAGAIN):
                run.immediate_exit = 0
                return Interrupted()
            raise KvmIoctlError(err, lib.KVM_RUN)

        reason = run.exit_reason
        if reason == lib.KVM_EXIT_IO:
            io = run.io
            length = io.size * io.count
            if io.direction == lib.KVM_EXIT_IO_OUT:
                return IoOut(io.port, io.size, self._map[io.data_offset : io.data_offset + length])
            self._read_target = (io.data_offset, length)
            return IoIn(io.port, io.size, io.count)
        if reason == lib.KVM_EXIT_MMIO:
            mmio = run.mmio
            if mmio.is_write:
                return MmioWrite(mmio.phys_addr, bytes(mmio.data[0 : mmio.len]))
            self._read_target = (ffi.offsetof("struct kvm_run", "mmio") + 8, mmio.len)
            return MmioRead(mmio.phys_addr, mmio.len)
        if reason == lib.KVM_EXIT_HLT:
            return Hlt()
        if reason == lib.KVM_EXIT_INTR:
            return Interrupted()
        if reason == lib.KVM_EXIT_SHUTDOWN:
            return Shutdown(self.registers()["rip"])
        if reason == lib.KVM_EXIT_SYSTEM_EVENT:
            return SystemEvent(_SYSTEM_EVENTS.get(run.system_event.type, f"event {run.system_event.type}"))
        if reason == lib.KVM_EXIT_INTERNAL_ERROR:
            what = _INTERNAL_ERRORS.get(run.internal.suberror, f"internal error {run.internal.suberror}")
            return CpuError(what, self.registers()["rip"])
        if reason == lib.KVM_EXIT_FAIL_ENTRY:
            return CpuError(
                f"VM entry failed (hardware reason {run.fail_entry.hardware_entry_failure_reason:#x})",
                self.registers()["rip"],
            )
        if reason == lib.KVM_EXIT_EXCEPTION:
            return CpuError(f"unhandled exception {run.ex.exception} (error code {run.ex.error_code:#x})",
                            self.registers()["rip"])
        return CpuError(f"unexpected KVM exit reason {reason}", self.registers()["rip"])

    def complete_read(self, data: bytes) -> None:
        offset, length = self._read_target
        self._map[offset : offset + length] = data[:length].ljust(length, b"\xff")
        self._read_target = None

    def kick(self) -> None:
        run = self._run
        if run is None:
            return
        run.immediate_exit = 1
        if self._thread is not None and self._thread != threading.get_ident():
            try:
                signal.pthread_kill(self._thread, KICK_SIGNAL)
            except ProcessLookupError:
                pass


def _store_segment(dst, seg: SegmentRegister) -> None:
    dst.base, dst.limit, dst.selector, dst.type = seg.base, seg.limit, seg.selector, seg.type
    dst.present, dst.dpl, dst.db, dst.s = seg.present, seg.dpl, seg.db, seg.s
    dst.l, dst.g, dst.avl, dst.unusable = seg.l, seg.g, 0, seg.unusable
