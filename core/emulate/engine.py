"""A Unicorn x86 engine in vmboot's machine mode, reached through ctypes.

The hot callbacks (IN/OUT, MMIO, MSRs, interrupt acknowledge, halt) are
registered on the C library directly: the Python binding wraps every hook in
two more Python frames, which costs microseconds on paths the firmware takes
tens of thousands of times. The machine-mode API comes from vmboot's patch
(assets/unicorn/); without it this module refuses to run.
"""
from __future__ import annotations

import ctypes
from ctypes import CFUNCTYPE, POINTER, c_int, c_uint, c_uint32, c_uint64, c_void_p
from typing import Callable

from vmboot.abi.errors import VmbootError

try:
    import unicorn
    from unicorn import x86_const as X86
    from unicorn.unicorn_py3 import unicorn as _binding
except ImportError:  # pragma: no cover - the setup installs it
    unicorn = None

# Callback types from unicorn/unicorn.h and vmboot's additions to unicorn/x86.h.
IN_CB = CFUNCTYPE(c_uint32, c_void_p, c_uint32, c_int, c_void_p)
OUT_CB = CFUNCTYPE(None, c_void_p, c_uint32, c_int, c_uint32, c_void_p)
CPUID_CB = CFUNCTYPE(c_int, c_void_p, c_void_p)
RDMSR_CB = CFUNCTYPE(c_int, c_void_p, c_uint32, POINTER(c_uint64), c_void_p)
WRMSR_CB = CFUNCTYPE(c_int, c_void_p, c_uint32, c_uint64, c_void_p)
MMIO_READ_CB = CFUNCTYPE(c_uint64, c_void_p, c_uint64, c_uint, c_void_p)
MMIO_WRITE_CB = CFUNCTYPE(None, c_void_p, c_uint64, c_uint, c_uint64, c_void_p)
INTACK_CB = CFUNCTYPE(c_int, c_void_p, c_void_p)
HALT_CB = CFUNCTYPE(None, c_void_p, c_void_p)

UC_HOOK_INSN = 1 << 1
UC_PROT_ALL = 7
UC_ERR_OK = 0
UC_ERR_EXCEPTION = 21

PATCH_SYMBOL = "uc_x86_machine_mode"


def unicorn_library():
    if unicorn is None:
        raise VmbootError("the unicorn module is not installed (run the setup in the README)")
    lib = _binding.uclib
    if not hasattr(lib, PATCH_SYMBOL):
        raise VmbootError(
            f"the installed unicorn {unicorn.__version__} lacks vmboot's patches ({PATCH_SYMBOL}); "
            "install the wheel from `vmboot-assets unicorn` (the README's setup does)")
    lib.uc_x86_machine_mode.argtypes = [c_void_p, INTACK_CB, HALT_CB, c_void_p]
    lib.uc_x86_machine_mode.restype = c_int
    lib.uc_x86_raise_irq.argtypes = [c_void_p]
    lib.uc_x86_raise_irq.restype = None
    lib.uc_x86_invalidate_phys.argtypes = [c_void_p, c_uint64, c_uint64]
    lib.uc_x86_invalidate_phys.restype = None
    return lib


class EngineError(Exception):
    pass


class MachineEngine:
    """One x86 CPU. Opened in UC_MODE_32 (descriptor-loading segment writes);
    the patch lets that mode reach the 64-bit registers too."""

    def __init__(self):
        self.lib = unicorn_library()
        self.uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
        self.handle = self.uc._uch
        self._keep: list = []  # ctypes callbacks must live as long as the engine
        self.error: BaseException | None = None

    def _guard(self, fn, default):
        """Run a Python callback from C: an exception stops emulation instead of vanishing."""
        lib, handle = self.lib, self.handle

        def guarded(*args):
            try:
                return fn(*args)
            except BaseException as err:
                if self.error is None:
                    self.error = err
                lib.uc_emu_stop(handle)
                return default
        return guarded

    def _hook_insn(self, insn: int, cb) -> None:
        h = _binding.uc_hook_h()
        self._keep.append(cb)
        err = self.lib.uc_hook_add(self.handle, ctypes.byref(h), UC_HOOK_INSN, ctypes.cast(cb, c_void_p), None,
                                   c_uint64(1), c_uint64(0), c_int(insn))
        if err != UC_ERR_OK:
            raise EngineError(f"uc_hook_add(insn {insn}) failed: {unicorn.UcError(err)}")

    # -- hooks ---------------------------------------------------------------------
    def hook_port_in(self, fn: Callable[[int, int], int]) -> None:
        self._hook_insn(X86.UC_X86_INS_IN, IN_CB(self._guard(lambda uc, port, size, ud: fn(port, size), 0)))

    def hook_port_out(self, fn: Callable[[int, int, int], None]) -> None:
        self._hook_insn(X86.UC_X86_INS_OUT,
                        OUT_CB(self._guard(lambda uc, port, size, value, ud: fn(port, size, value), None)))

    def hook_msr(self, rdmsr: Callable[[int], tuple[int, int]], wrmsr: Callable[[int, int], int]) -> None:
        def on_rdmsr(uc, msr, value_ptr, ud):
            action, value = rdmsr(msr)
            value_ptr[0] = value
            return action
        self._hook_insn(X86.UC_X86_INS_RDMSR, RDMSR_CB(self._guard(on_rdmsr, 2)))
        self._hook_insn(X86.UC_X86_INS_WRMSR,
                        WRMSR_CB(self._guard(lambda uc, msr, value, ud: wrmsr(msr, value), 2)))

    def hook_cpuid(self, fn: Callable[[int, int], tuple[int, int, int, int]]) -> None:
        uc = self.uc

        def on_cpuid(_uc, ud):
            eax, ebx, ecx, edx = fn(uc.reg_read(X86.UC_X86_REG_EAX), uc.reg_read(X86.UC_X86_REG_ECX))
            uc.reg_write(X86.UC_X86_REG_RAX, eax)
            uc.reg_write(X86.UC_X86_REG_RBX, ebx)
            uc.reg_write(X86.UC_X86_REG_RCX, ecx)
            uc.reg_write(X86.UC_X86_REG_RDX, edx)
            return 1  # skip Unicorn's own CPUID
        self._hook_insn(X86.UC_X86_INS_CPUID, CPUID_CB(self._guard(on_cpuid, 0)))

    def machine_mode(self, intack: Callable[[], int], halt: Callable[[], None]) -> None:
        a = INTACK_CB(self._guard(lambda uc, ud: intack(), -1))
        h = HALT_CB(self._guard(lambda uc, ud: halt(), None))
        self._keep += [a, h]
        err = self.lib.uc_x86_machine_mode(self.handle, a, h, None)
        if err != UC_ERR_OK:
            raise EngineError(f"uc_x86_machine_mode failed: {unicorn.UcError(err)}")

    def raise_irq(self) -> None:
        self.lib.uc_x86_raise_irq(self.handle)

    # -- memory ---------------------------------------------------------------------
    def map_ram(self, gpa: int, size: int, host_address: int) -> None:
        self.uc.mem_map_ptr(gpa, size, UC_PROT_ALL, host_address)

    def map_mmio(self, gpa: int, size: int, read: Callable[[int, int], int],
                 write: Callable[[int, int, int], None]) -> None:
        r = MMIO_READ_CB(self._guard(lambda uc, off, sz, ud: read(off, sz), 0))
        w = MMIO_WRITE_CB(self._guard(lambda uc, off, sz, value, ud: write(off, sz, value), None))
        self._keep += [r, w]
        err = self.lib.uc_mmio_map(self.handle, c_uint64(gpa), c_uint64(size), ctypes.cast(r, c_void_p), None,
                                   ctypes.cast(w, c_void_p), None)
        if err != UC_ERR_OK:
            raise EngineError(f"uc_mmio_map({gpa:#x}, {size:#x}) failed: {unicorn.UcError(err)}")

    def invalidate_code(self, start: int, end: int) -> None:
        """Drop translated code for guest-physical [start, end) after a device wrote it.

        Call from the vCPU thread (a hook) or while the CPU is stopped.
        """
        self.lib.uc_x86_invalidate_phys(self.handle, start, end - start)

    # -- running ----------------------------------------------------------------------
    def run(self, rip: int) -> int:
        """Run from ``rip`` until stopped; returns Unicorn's status code (UC_ERR_*)."""
        return self.lib.uc_emu_start(self.handle, c_uint64(rip), c_uint64((1 << 64) - 1), c_uint64(0), c_uint64(0))

    def stop(self) -> None:
        self.lib.uc_emu_stop(self.handle)

    def reg(self, name: str) -> int:
        return self.uc.reg_read(getattr(X86, f"UC_X86_REG_{name.upper()}"))

    def set_reg(self, name: str, value) -> None:
        self.uc.reg_write(getattr(X86, f"UC_X86_REG_{name.upper()}"), value)

    def close(self) -> None:
        self.uc = None  # the binding closes the engine when the object goes
