"""Which MSRs the emulated CPU has, and who implements each.

MSR numbers: Intel SDM Vol. 4, "Model-Specific Registers". Three kinds:
- implemented by Unicorn itself (QEMU's code keeps them in the CPU state, and
  some, like EFER, change how the CPU runs): the hook defers to it;
- implemented here (the APIC base);
- everything else raises #GP(0), as hardware does for an MSR it lacks, and is
  logged once.
"""
from __future__ import annotations

import logging

from .lapic import APIC_BASE_BSP, APIC_BASE_ENABLE, APIC_DEFAULT_BASE

log = logging.getLogger("vmboot.msr")

MSR_IA32_PLATFORM_ID = 0x17
MSR_IA32_APIC_BASE = 0x1B
MSR_IA32_FEATURE_CONTROL = 0x3A
MSR_IA32_UCODE_REV = 0x8B
MSR_IA32_MTRRCAP = 0xFE
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MCG_CAP = 0x179
MSR_IA32_MCG_STATUS = 0x17A
MSR_IA32_MCG_CTL = 0x17B
MSR_IA32_PERF_STATUS = 0x198
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_IA32_MTRR_PHYSBASE0 = 0x200  # base/mask pairs up to 0x20F
MSR_IA32_MTRR_FIX64K_00000 = 0x250
MSR_IA32_MTRR_FIX16K_80000 = 0x258
MSR_IA32_MTRR_FIX16K_A0000 = 0x259
MSR_IA32_MTRR_FIX4K_C0000 = 0x268  # to 0x26F
MSR_IA32_PAT = 0x277
MSR_IA32_MTRR_DEF_TYPE = 0x2FF
MSR_IA32_MC0_CTL = 0x400  # machine-check banks: 4 registers each
MSR_EFER = 0xC0000080
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_FMASK = 0xC0000084
MSR_FS_BASE = 0xC0000100
MSR_GS_BASE = 0xC0000101
MSR_KERNEL_GS_BASE = 0xC0000102
MSR_TSC_AUX = 0xC0000103

MCE_BANKS = 10  # QEMU's MCE_BANKS_DEF
FEATURE_CONTROL_LOCKED = 1  # locked, with VMX and SMX off

# Read-only MSRs of the CPU model we report (a GenuineIntel family 6 CPU), and their values.
CONSTANT_MSRS = {
    MSR_IA32_PLATFORM_ID: 0,  # platform ID 0: what microcode matching reads
    MSR_IA32_FEATURE_CONTROL: FEATURE_CONTROL_LOCKED,
}

UNICORN_MSRS = frozenset(
    [MSR_IA32_UCODE_REV, MSR_IA32_MTRRCAP, MSR_IA32_SYSENTER_CS, MSR_IA32_SYSENTER_ESP,
     MSR_IA32_SYSENTER_EIP, MSR_IA32_MCG_CAP, MSR_IA32_MCG_STATUS, MSR_IA32_MCG_CTL,
     MSR_IA32_PERF_STATUS, MSR_IA32_MISC_ENABLE, MSR_IA32_MTRR_FIX64K_00000,
     MSR_IA32_MTRR_FIX16K_80000, MSR_IA32_MTRR_FIX16K_A0000, MSR_IA32_PAT, MSR_IA32_MTRR_DEF_TYPE,
     MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_CSTAR, MSR_FMASK, MSR_FS_BASE, MSR_GS_BASE,
     MSR_KERNEL_GS_BASE, MSR_TSC_AUX]
    + list(range(MSR_IA32_MTRR_PHYSBASE0, MSR_IA32_MTRR_PHYSBASE0 + 16))
    + list(range(MSR_IA32_MTRR_FIX4K_C0000, MSR_IA32_MTRR_FIX4K_C0000 + 8))
    + list(range(MSR_IA32_MC0_CTL, MSR_IA32_MC0_CTL + 4 * MCE_BANKS))
)

# What the hook tells the patched engine (unicorn/x86.h, UC_X86_MSR_*).
DEFAULT = 0
HANDLED = 1
GP = 2


class MsrPolicy:
    def __init__(self, lapic):
        self.lapic = lapic
        self._reported: set[tuple[str, int]] = set()
        self.counts = {"rdmsr": 0, "wrmsr": 0, "#GP": 0}

    def _gp(self, what: str, msr: int) -> int:
        self.counts["#GP"] += 1
        if (what, msr) not in self._reported:
            self._reported.add((what, msr))
            log.info("%s of unknown MSR %#x: #GP", what, msr)
        return GP

    def rdmsr(self, msr: int) -> tuple[int, int]:
        self.counts["rdmsr"] += 1
        if msr in UNICORN_MSRS:
            return DEFAULT, 0
        if msr == MSR_IA32_APIC_BASE:
            return HANDLED, self.lapic.base_msr
        if msr in CONSTANT_MSRS:
            return HANDLED, CONSTANT_MSRS[msr]
        return self._gp("rdmsr", msr), 0

    def wrmsr(self, msr: int, value: int) -> int:
        self.counts["wrmsr"] += 1
        if msr in UNICORN_MSRS:
            return DEFAULT
        if msr == MSR_IA32_APIC_BASE:
            base = value & ~0xFFF & ((1 << 52) - 1)
            if base != APIC_DEFAULT_BASE:
                log.warning("guest moved the local APIC to %#x; vmboot keeps it at %#x", base, APIC_DEFAULT_BASE)
            with self.lapic.lock:
                self.lapic.base_msr = APIC_DEFAULT_BASE | (value & APIC_BASE_ENABLE) | (
                    self.lapic.base_msr & APIC_BASE_BSP)
            return HANDLED
        return self._gp("wrmsr", msr)
