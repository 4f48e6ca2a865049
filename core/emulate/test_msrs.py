"""Which MSRs the emulated CPU has and who answers each (Intel SDM Vol. 4):
Unicorn's built-in handling, the local APIC's base register, constants, and
#GP(0) for the rest, logged once."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

import vmboot.assets

from vmboot.core.emulate.lapic import LocalApic
from vmboot.core.emulate.msrs import DEFAULT, GP, HANDLED, MsrPolicy

IA32_APIC_BASE = 0x1B
APIC_ENABLE = 1 << 11
APIC_BSP = 1 << 8

# MSRs that a CPUID feature bit the emulated CPU advertises makes architectural,
# which Unicorn keeps in its CPU state (SDM Vol. 4, Table 2-2).
ARCHITECTURAL = {
    "SEP": [0x174, 0x175, 0x176],  # IA32_SYSENTER_CS/ESP/EIP
    "MTRR": [0xFE, 0x2FF, 0x250, 0x258, 0x259, *range(0x268, 0x270), *range(0x200, 0x210)],
    "PAT": [0x277],
    "MCE/MCA": [0x179, 0x17A, 0x17B, *range(0x400, 0x400 + 4 * 10)],  # MCG_* and 10 banks
    "LM/SYSCALL/NX": [0xC0000080, 0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084],
    "LM segment bases": [0xC0000100, 0xC0000101, 0xC0000102],
    "RDTSCP": [0xC0000103],  # IA32_TSC_AUX
    "microcode and misc": [0x8B, 0x198, 0x1A0],  # BIOS_SIGN_ID, PERF_STATUS, MISC_ENABLE
}
ALL_ARCHITECTURAL = [msr for msrs in ARCHITECTURAL.values() for msr in msrs]

# MSRs of features the emulated CPU does not advertise.
ABSENT = {
    0x6E0: "IA32_TSC_DEADLINE",  # CPUID.01H:ECX.TSC_Deadline is clear
    0x802: "x2APIC ID",  # CPUID.01H:ECX.x2APIC is clear
    0x80B: "x2APIC EOI",
    0x48: "IA32_SPEC_CTRL",
    0x10A: "IA32_ARCH_CAPABILITIES",
    0xC1: "IA32_PMC0",  # leaf 0AH is empty
    0x428: "IA32_MC10_CTL",  # one past the last machine-check bank
    0xC0010015: "AMD HWCR",
}


class NoTimers:
    def schedule(self, deadline, fn):
        raise AssertionError("no timer expected")


def make_lapic(apic_id: int = 0) -> LocalApic:
    return LocalApic(lambda: 0.0, NoTimers(), raise_intr=lambda: None, apic_id=apic_id)


@pytest.fixture
def lapic():
    return make_lapic()


@pytest.fixture
def policy(lapic):
    return MsrPolicy(lapic)


def msr_records(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "vmboot.msr"]


# -- deferred to Unicorn -----------------------------------------------------------------------


@pytest.mark.parametrize("msr", ALL_ARCHITECTURAL, ids=hex)
def test_architectural_msrs_defer_to_unicorn(policy, msr):
    assert policy.rdmsr(msr) == (DEFAULT, 0)
    assert policy.wrmsr(msr, 0x1234) == DEFAULT
    assert policy.counts == {"rdmsr": 1, "wrmsr": 1, "#GP": 0}


# -- the APIC base ---------------------------------------------------------------------------------


def test_apic_base_reads_enabled_at_the_default_address(policy):
    # Unicorn's own RDMSR answers 0 here, which the firmware asserts on (EN must be set).
    assert policy.rdmsr(IA32_APIC_BASE) == (HANDLED, 0xFEE00900)


def test_apic_base_of_an_application_processor_has_no_bsp_bit():
    assert MsrPolicy(make_lapic(apic_id=1)).rdmsr(IA32_APIC_BASE) == (HANDLED, 0xFEE00800)


def test_clearing_the_enable_bit_disables_the_apic(policy, lapic):
    lapic.svr |= 0x100
    assert lapic.enabled
    assert policy.wrmsr(IA32_APIC_BASE, 0xFEE00000) == HANDLED
    assert lapic.base_msr == 0xFEE00100  # BSP is read-only
    assert not lapic.enabled
    assert policy.wrmsr(IA32_APIC_BASE, 0xFEE00800) == HANDLED
    assert policy.rdmsr(IA32_APIC_BASE) == (HANDLED, 0xFEE00900)
    assert lapic.enabled


def test_the_bsp_bit_cannot_be_written():
    lapic = make_lapic(apic_id=1)
    MsrPolicy(lapic).wrmsr(IA32_APIC_BASE, 0xFEE00900)
    assert lapic.base_msr == 0xFEE00800


def test_moving_the_apic_is_refused_with_a_warning(policy, lapic, caplog):
    caplog.set_level(logging.INFO, logger="vmboot.msr")
    assert policy.wrmsr(IA32_APIC_BASE, 0xFED00800) == HANDLED
    assert lapic.base_msr == 0xFEE00900
    assert msr_records(caplog) == ["guest moved the local APIC to 0xfed00000; vmboot keeps it at 0xfee00000"]


def test_rewriting_the_default_base_is_silent(policy, caplog):
    caplog.set_level(logging.INFO, logger="vmboot.msr")
    policy.wrmsr(IA32_APIC_BASE, 0xFEE00900)
    assert msr_records(caplog) == []


# -- constants --------------------------------------------------------------------------------------


def test_platform_id_reads_zero(policy):
    assert policy.rdmsr(0x17) == (HANDLED, 0)


def test_feature_control_reads_locked_with_vmx_off(policy):
    assert policy.rdmsr(0x3A) == (HANDLED, 1)  # lock bit set; VMX inside/outside SMX clear


@pytest.mark.parametrize("msr", [0x17, 0x3A])
def test_writes_to_read_only_constants_fault(policy, msr):
    assert policy.wrmsr(msr, 0) == GP


# -- everything else ----------------------------------------------------------------------------------


@pytest.mark.parametrize("msr", sorted(ABSENT), ids=hex)
def test_msrs_of_absent_features_raise_gp(policy, msr):
    assert policy.rdmsr(msr) == (GP, 0)
    assert policy.wrmsr(msr, 1) == GP
    assert policy.counts == {"rdmsr": 1, "wrmsr": 1, "#GP": 2}


def test_unknown_msrs_are_logged_once_per_access_kind(policy, caplog):
    caplog.set_level(logging.INFO, logger="vmboot.msr")
    for _ in range(3):
        policy.rdmsr(0x6E0)
    policy.wrmsr(0x6E0, 5)
    policy.wrmsr(0x6E0, 6)
    policy.rdmsr(0x48)
    assert msr_records(caplog) == [
        "rdmsr of unknown MSR 0x6e0: #GP",
        "wrmsr of unknown MSR 0x6e0: #GP",
        "rdmsr of unknown MSR 0x48: #GP",
    ]
    assert policy.counts == {"rdmsr": 4, "wrmsr": 2, "#GP": 6}


def test_the_hook_codes_match_unicorns_patch():
    patch = (Path(vmboot.assets.__file__).parent / "unicorn" / "0001-vmboot-machine-mode.patch").read_text()
    codes = {name: int(value) for name, value in re.findall(r"#define UC_X86_MSR_(\w+) (\d+)", patch)}
    assert codes == {"DEFAULT": DEFAULT, "HANDLED": HANDLED, "GP": GP}
