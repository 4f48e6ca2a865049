"""The CPUID a KVM vCPU sees: what KVM supports, with per-vCPU topology filled in.

Leaf numbers and fields: Intel SDM Vol. 2A, CPUID.
"""
from __future__ import annotations

CPUID_FEATURES = 0x1
CPUID_EXT_TOPOLOGY = 0xB
CPUID_EXT_TOPOLOGY_V2 = 0x1F
FEAT_ECX_HYPERVISOR = 1 << 31
EBX_APIC_ID_SHIFT = 24
EBX_LOGICAL_COUNT_SHIFT = 16
EDX_HTT = 1 << 28


def vcpu_cpuid(supported: list[dict], index: int, count: int) -> list[dict]:
    entries = []
    for entry in supported:
        e = dict(entry)
        if e["function"] == CPUID_FEATURES:
            e["ebx"] = (e["ebx"] & 0x0000FFFF) | (index << EBX_APIC_ID_SHIFT) | (count << EBX_LOGICAL_COUNT_SHIFT)
            e["ecx"] |= FEAT_ECX_HYPERVISOR
            if count > 1:
                e["edx"] |= EDX_HTT
        elif e["function"] in (CPUID_EXT_TOPOLOGY, CPUID_EXT_TOPOLOGY_V2):
            e["edx"] = index  # x2APIC ID
        entries.append(e)
    return entries
