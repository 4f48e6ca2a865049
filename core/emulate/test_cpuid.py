"""The CPUID table the emulated CPU reports, built from a fake probe.

The probe answers all ones in every register of every leaf (but the two
maximum-leaf answers), so any feature bit the filter lets through shows up.
Bit positions: Intel SDM Vol. 2A, CPUID, Tables 3-8, 3-10 and 3-11.
"""
from __future__ import annotations

import pytest

from vmboot.core.emulate.cpuid import CpuidEntry, CpuidTable, filter_leaf

ONES = 0xFFFFFFFF
MAX_BASIC = 0xD  # what Unicorn's Haswell model reports
MAX_EXTENDED = 0x80000008
VENDOR = CpuidEntry(MAX_BASIC, 0x756E6547, 0x6C65746E, 0x49656E69)  # "GenuineIntel"

# Feature bits the emulated CPU must never advertise.
LEAF1_ECX_MONITOR = 1 << 3
LEAF1_ECX_VMX = 1 << 5
LEAF1_ECX_FMA = 1 << 12
LEAF1_ECX_X2APIC = 1 << 21
LEAF1_ECX_TSC_DEADLINE = 1 << 24
LEAF1_ECX_XSAVE = 1 << 26
LEAF1_ECX_OSXSAVE = 1 << 27
LEAF1_ECX_AVX = 1 << 28
LEAF1_ECX_HYPERVISOR = 1 << 31
LEAF1_EDX_HTT = 1 << 28
LEAF7_EBX_AVX2 = 1 << 5
LEAF7_EBX_AVX512F = 1 << 16


class Probe:
    """CPUID on a fake engine: all ones, with chosen maximum leaves; records every call."""

    def __init__(self, max_basic: int = MAX_BASIC, max_extended: int = MAX_EXTENDED, answers=None):
        self.max_basic = max_basic
        self.max_extended = max_extended
        self.answers = answers or {}
        self.calls: list[tuple[int, int]] = []

    def __call__(self, leaf: int, subleaf: int) -> CpuidEntry:
        self.calls.append((leaf, subleaf))
        if (leaf, subleaf) in self.answers:
            return self.answers[(leaf, subleaf)]
        if leaf == 0:
            return CpuidEntry(self.max_basic, VENDOR.ebx, VENDOR.ecx, VENDOR.edx)
        if leaf == 0x80000000:
            return CpuidEntry(self.max_extended, 0, 0, 0)
        return CpuidEntry(ONES, ONES, ONES, ONES)


@pytest.fixture
def table():
    return CpuidTable(Probe())


# -- leaf 1 ---------------------------------------------------------------------------------------


def test_leaf1_edx_keeps_exactly_the_supported_features(table):
    # FPU DE PSE TSC MSR PAE MCE CX8 APIC SEP MTRR PGE MCA CMOV PAT PSE36 CLFSH MMX FXSR SSE SSE2
    assert table.lookup(1, 0).edx == 0x078BFBFD


def test_leaf1_ecx_keeps_exactly_the_supported_features(table):
    # SSE3 PCLMULQDQ SSSE3 CX16 SSE4.1 SSE4.2 MOVBE POPCNT AES RDRAND
    assert table.lookup(1, 0).ecx == 0x42D82203


@pytest.mark.parametrize("bit", [LEAF1_ECX_MONITOR, LEAF1_ECX_VMX, LEAF1_ECX_FMA, LEAF1_ECX_X2APIC,
                                 LEAF1_ECX_TSC_DEADLINE, LEAF1_ECX_XSAVE, LEAF1_ECX_OSXSAVE,
                                 LEAF1_ECX_AVX, LEAF1_ECX_HYPERVISOR])
def test_leaf1_never_advertises_what_the_emulator_lacks(table, bit):
    assert not table.lookup(1, 0).ecx & bit


def test_leaf1_does_not_claim_hyperthreading(table):
    assert not table.lookup(1, 0).edx & LEAF1_EDX_HTT


def test_leaf1_ebx_carries_the_apic_id_and_one_logical_processor():
    entry = CpuidTable(Probe(answers={(1, 0): CpuidEntry(0x306C3, 0x07100800, 0, 0)}), apic_id=5).lookup(1, 0)
    assert entry.ebx == 0x05010800  # APIC ID 5, 1 logical processor, CLFLUSH 8 * 8 bytes, brand 0
    assert entry.eax == 0x306C3  # the signature passes through


def test_leaf1_for_apic_id_zero(table):
    assert table.lookup(1, 0).ebx == 0x0001FFFF


# -- other basic leaves ----------------------------------------------------------------------------


@pytest.mark.parametrize("leaf", [0x5, 0xA, 0xD])
def test_monitor_perfmon_and_xsave_leaves_are_empty(table, leaf):
    for subleaf in (0, 1, 2):
        assert table.lookup(leaf, subleaf) == CpuidEntry(0, 0, 0, 0)


def test_leaf6_reports_only_the_always_running_apic_timer(table):
    assert table.lookup(6, 0) == CpuidEntry(1 << 2, 0, 0, 0)


def test_leaf7_keeps_exactly_the_supported_features(table):
    entry = table.lookup(7, 0)
    # FSGSBASE BMI1 SMEP BMI2 ERMS ADX SMAP CLFLUSHOPT CLWB
    assert entry.ebx == 0x01980389
    assert not entry.ebx & (LEAF7_EBX_AVX2 | LEAF7_EBX_AVX512F)
    assert (entry.ecx, entry.edx) == (0, 0)


def test_leaf_0b_reports_the_apic_id():
    table = CpuidTable(Probe(), apic_id=3)
    assert table.lookup(0xB, 0).edx == 3
    assert table.lookup(0xB, 1).edx == 3


def test_vendor_leaf_passes_through(table):
    assert table.lookup(0, 0) == VENDOR
    assert (table.max_basic, table.max_extended) == (MAX_BASIC, MAX_EXTENDED)


def test_leaves_without_filters_pass_through(table):
    assert table.lookup(2, 0) == CpuidEntry(ONES, ONES, ONES, ONES)  # cache descriptors


# -- sub-leaves -------------------------------------------------------------------------------------


def test_subleaf_leaves_are_probed_sub_leaf_by_sub_leaf():
    probe = Probe()
    CpuidTable(probe)
    assert [s for leaf, s in probe.calls if leaf == 4] == list(range(8))
    assert [s for leaf, s in probe.calls if leaf == 0xB] == [0, 1]
    assert [s for leaf, s in probe.calls if leaf == 7] == [0]
    assert [s for leaf, s in probe.calls if leaf == 1] == [0]


def test_leaves_without_sub_leaves_ignore_ecx(table):
    assert table.lookup(1, 7) == table.lookup(1, 0)
    assert table.lookup(0x80000001, 3) == table.lookup(0x80000001, 0)


def test_leaf4_sub_leaves_come_from_the_probe():
    answers = {(4, n): CpuidEntry(0x121 + n, n, n, n) for n in range(4)}
    answers.update({(4, n): CpuidEntry(0, 0, 0, 0) for n in range(4, 8)})  # type 0: no more caches
    table = CpuidTable(Probe(answers=answers))
    assert [table.lookup(4, n).eax for n in range(5)] == [0x121, 0x122, 0x123, 0x124, 0]


def test_leaf4_past_the_probed_sub_leaves_reports_no_cache(table):
    assert table.lookup(4, 8) == CpuidEntry(0, 0, 0, 0)


def test_leaf7_sub_leaf_1_reports_no_features(table):
    assert table.lookup(7, 1) == CpuidEntry(0, 0, 0, 0)
    assert filter_leaf(7, 1, CpuidEntry(ONES, ONES, ONES, ONES)) == CpuidEntry(0, 0, 0, 0)


@pytest.mark.parametrize("subleaf", [2, 3, 0xFF])
def test_leaf_0b_past_the_last_level_is_invalid(subleaf):
    # SDM, CPUID leaf 0BH: an invalid level has type 0 in ECX[15:8], ECX[7:0] echoes
    # the sub-leaf, EAX and EBX are 0, and EDX still holds the x2APIC ID. Software
    # walks the sub-leaves until it finds that type.
    table = CpuidTable(Probe(), apic_id=1)
    assert table.lookup(0xB, subleaf) == CpuidEntry(0, 0, subleaf, 1)


# -- extended leaves ---------------------------------------------------------------------------------


def test_extended_features_keep_exactly_the_supported_bits(table):
    entry = table.lookup(0x80000001, 0)
    assert entry.edx == 0x2C100800  # SYSCALL NX PDPE1GB RDTSCP LM
    assert entry.ecx == 0x00000021  # LAHF_LM ABM


def test_brand_string_leaves_pass_through(table):
    for leaf in (0x80000002, 0x80000003, 0x80000004):
        assert table.lookup(leaf, 0) == CpuidEntry(ONES, ONES, ONES, ONES)


def test_leaves_past_the_maximum_return_the_highest_basic_leaf():
    table = CpuidTable(Probe(max_basic=7))
    assert table.lookup(0x8, 0) == table.lookup(7, 0)
    assert table.lookup(0x40000000, 0) == table.lookup(7, 0)
    assert table.lookup(0x80000009, 0) == table.lookup(7, 0)


def test_probing_stops_at_32_leaves_per_range():
    probe = Probe(max_basic=0x100, max_extended=0x800000FF)
    CpuidTable(probe)
    leaves = {leaf for leaf, _ in probe.calls}
    assert max(leaf for leaf in leaves if leaf < 0x80000000) == 0x20
    assert max(leaves) == 0x80000020
