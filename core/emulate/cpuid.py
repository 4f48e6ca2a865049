"""The CPUID the emulated CPU reports: only what Unicorn executes and vmboot provides.

Unicorn's default x86-64 model is a Haswell, which advertises AVX, AVX2, FMA,
x2APIC, the TSC-deadline timer and more. Unicorn 2.1.4 (QEMU 5.0's TCG)
executes none of those, and vmboot's emulated APIC is an xAPIC without the
TSC-deadline mode. So the table starts from what the engine reports and keeps,
leaf by leaf, only the feature bits named below: the intersection of QEMU 5.0's
TCG feature masks (target/i386/cpu.c, TCG_*_FEATURES) and this machine.

Bit names and positions: Intel SDM Vol. 2A, CPUID, Tables 3-10, 3-11 and 3-8.
"""
from __future__ import annotations

from dataclasses import dataclass

# CPUID.01H:EDX
FPU, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC = 0, 2, 3, 4, 5, 6, 7, 8, 9
SEP, MTRR, PGE, MCA, CMOV, PAT, PSE36, CLFSH = 11, 12, 13, 14, 15, 16, 17, 19
MMX, FXSR, SSE, SSE2 = 23, 24, 25, 26
# CPUID.01H:ECX
SSE3, PCLMULQDQ, SSSE3, CX16, SSE4_1, SSE4_2 = 0, 1, 9, 13, 19, 20
MOVBE, POPCNT, AES, RDRAND = 22, 23, 25, 30
# CPUID.07H.0:EBX
FSGSBASE, BMI1, SMEP, BMI2, ERMS, ADX, SMAP, CLFLUSHOPT, CLWB = 0, 3, 7, 8, 9, 19, 20, 23, 24
# CPUID.80000001H:EDX and ECX
SYSCALL, NX, PDPE1GB, RDTSCP, LM = 11, 20, 26, 27, 29
LAHF_LM, ABM = 0, 5
# CPUID.06H:EAX
ARAT = 2


def bits(*positions: int) -> int:
    mask = 0
    for p in positions:
        mask |= 1 << p
    return mask


ALLOWED = {
    (0x1, "edx"): bits(FPU, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC, SEP, MTRR, PGE, MCA, CMOV, PAT,
                       PSE36, CLFSH, MMX, FXSR, SSE, SSE2),
    (0x1, "ecx"): bits(SSE3, PCLMULQDQ, SSSE3, CX16, SSE4_1, SSE4_2, MOVBE, POPCNT, AES, RDRAND),
    (0x6, "eax"): bits(ARAT),  # the APIC timer runs on through HLT
    (0x7, "ebx"): bits(FSGSBASE, BMI1, SMEP, BMI2, ERMS, ADX, SMAP, CLFLUSHOPT, CLWB),
    (0x80000001, "edx"): bits(SYSCALL, NX, PDPE1GB, RDTSCP, LM),
    (0x80000001, "ecx"): bits(LAHF_LM, ABM),
}
# Whole leaves that describe things this machine lacks: MONITOR/MWAIT (5),
# thermal/power (6, all but ARAT), performance monitoring (0xA), XSAVE (0xD).
ZEROED_LEAVES = {0x5, 0xA, 0xD}
FILTERED_REGISTERS = {
    0x6: ("ebx", "ecx", "edx"),
    0x7: ("ecx", "edx"),
}

LEAVES_WITH_SUBLEAVES = {0x4: 8, 0x7: 1, 0xB: 2}


@dataclass(frozen=True)
class CpuidEntry:
    eax: int
    ebx: int
    ecx: int
    edx: int


def filter_leaf(leaf: int, subleaf: int, raw: CpuidEntry, apic_id: int = 0) -> CpuidEntry:
    regs = {"eax": raw.eax, "ebx": raw.ebx, "ecx": raw.ecx, "edx": raw.edx}
    if leaf in ZEROED_LEAVES:
        return CpuidEntry(0, 0, 0, 0)
    for reg in FILTERED_REGISTERS.get(leaf, ()):
        regs[reg] = 0
    for (l, reg), mask in ALLOWED.items():
        if l == leaf and (leaf != 0x7 or subleaf == 0):
            regs[reg] &= mask
    if leaf == 0x7 and subleaf != 0:
        regs = dict.fromkeys(regs, 0)
    if leaf == 0x1:
        # EBX: APIC ID in 31:24, one logical processor in 23:16, CLFLUSH size kept.
        regs["ebx"] = (regs["ebx"] & 0xFFFF) | (1 << 16) | (apic_id << 24)
    if leaf == 0xB:
        regs["edx"] = apic_id
    return CpuidEntry(**regs)


class CpuidTable:
    """CPUID answers by (leaf, subleaf), built from the engine's own answers."""

    def __init__(self, probe, apic_id: int = 0):
        """``probe(leaf, subleaf) -> CpuidEntry`` runs CPUID on the engine's model."""
        self.apic_id = apic_id
        self.entries: dict[tuple[int, int], CpuidEntry] = {}
        for base in (0x0, 0x80000000):
            top = probe(base, 0).eax
            for leaf in range(base, min(top, base + 0x20) + 1):
                for sub in range(LEAVES_WITH_SUBLEAVES.get(leaf, 1)):
                    self.entries[(leaf, sub)] = filter_leaf(leaf, sub, probe(leaf, sub), apic_id)
        self.max_basic = self.entries[(0, 0)].eax
        self.max_extended = self.entries[(0x80000000, 0)].eax

    def lookup(self, leaf: int, subleaf: int) -> CpuidEntry:
        entry = self.entries.get((leaf, subleaf))
        if entry is not None:
            return entry
        if leaf in LEAVES_WITH_SUBLEAVES and (leaf, 0) in self.entries:
            return self._invalid_subleaf(leaf, subleaf)
        entry = self.entries.get((leaf, 0))
        if entry is not None:
            return entry
        # Out-of-range leaves return the highest basic leaf, as Intel CPUs do.
        return self.entries.get((self.max_basic, 0), CpuidEntry(0, 0, 0, 0))

    def _invalid_subleaf(self, leaf: int, subleaf: int) -> CpuidEntry:
        """A sub-leaf past the last one: no cache (leaf 4), no features (leaf 7), or
        the invalid level type 0 that ends a walk of leaf 0BH, which still echoes
        the sub-leaf in ECX[7:0] and reports the x2APIC ID in EDX."""
        if leaf == 0xB:
            return CpuidEntry(0, 0, subleaf & 0xFF, self.apic_id)
        return CpuidEntry(0, 0, 0, 0)
