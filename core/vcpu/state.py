"""Backend-neutral x86 CPU state, as boot protocols describe it.

A boot loader says "enter here, in this mode, with these segments" by building
an :class:`EntryState`. Each CPU backend knows how to load one; the loaders
never touch a backend.

Segment attribute fields follow the Intel SDM, Vol. 3A, §3.4.5 "Segment
Descriptors".
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

# CR0 (SDM Vol. 3A §2.5)
CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_PG = 1 << 31
# CR4
CR4_PAE = 1 << 5
# IA32_EFER (SDM Vol. 3A §2.2.1)
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
# RFLAGS bit 1 is reserved and always set.
RFLAGS_FIXED = 1 << 1

# Segment descriptor types (SDM Vol. 3A, Table 3-1 and Table 3-2).
SEG_TYPE_DATA_RW_ACCESSED = 0x3
SEG_TYPE_CODE_RX_ACCESSED = 0xB
SEG_TYPE_TSS_BUSY = 0xB  # system segment (S=0): 32/64-bit busy TSS
SEG_TYPE_LDT = 0x2


@dataclass(frozen=True, slots=True)
class SegmentRegister:
    selector: int
    base: int
    limit: int
    type: int
    s: int = 1  # 1: code or data, 0: system
    dpl: int = 0
    present: int = 1
    db: int = 0  # default operation size: 1 for 32-bit segments
    l: int = 0  # 64-bit code segment
    g: int = 0  # granularity: limit in 4 KiB units
    unusable: int = 0

    def descriptor(self) -> int:
        """The 8-byte GDT descriptor for this segment (SDM Figure 3-8)."""
        limit = self.limit >> 12 if self.g else self.limit
        if limit > 0xFFFFF:
            raise ValueError(f"segment limit {self.limit:#x} does not fit a descriptor")
        access = self.type | (self.s << 4) | (self.dpl << 5) | (self.present << 7)
        flags = (self.l << 1) | (self.db << 2) | (self.g << 3)
        return (
            (limit & 0xFFFF)
            | (self.base & 0xFFFFFF) << 16
            | access << 40
            | (limit >> 16) << 48
            | flags << 52
            | ((self.base >> 24) & 0xFF) << 56
        )

    @property
    def attributes(self) -> int:
        """The access-rights word in the layout VMX and QEMU use (type..G)."""
        return (
            self.type
            | (self.s << 4)
            | (self.dpl << 5)
            | (self.present << 7)
            | (self.l << 13)
            | (self.db << 14)
            | (self.g << 15)
        )


def flat_code32(selector: int) -> SegmentRegister:
    return SegmentRegister(selector, 0, 0xFFFFFFFF, SEG_TYPE_CODE_RX_ACCESSED, db=1, g=1)


def flat_code64(selector: int) -> SegmentRegister:
    return SegmentRegister(selector, 0, 0xFFFFFFFF, SEG_TYPE_CODE_RX_ACCESSED, l=1, g=1)


def flat_data(selector: int) -> SegmentRegister:
    return SegmentRegister(selector, 0, 0xFFFFFFFF, SEG_TYPE_DATA_RW_ACCESSED, db=1, g=1)


def boot_tss(selector: int) -> SegmentRegister:
    return SegmentRegister(selector, 0, 0x67, SEG_TYPE_TSS_BUSY, s=0)


def real_mode_segment(selector: int, code: bool = False) -> SegmentRegister:
    kind = SEG_TYPE_CODE_RX_ACCESSED if code else SEG_TYPE_DATA_RW_ACCESSED
    return SegmentRegister(selector, selector << 4, 0xFFFF, kind)


UNUSABLE_LDT = SegmentRegister(0, 0, 0, SEG_TYPE_LDT, s=0, present=0, unusable=1)


def gdt_bytes(segments: list[SegmentRegister | None]) -> bytes:
    """Encode a GDT: entry i holds the descriptor of the segment whose selector is i*8."""
    return b"".join(struct.pack("<Q", seg.descriptor() if seg else 0) for seg in segments)


@dataclass(frozen=True, slots=True)
class DescriptorTable:
    base: int
    limit: int


@dataclass
class EntryState:
    """Everything a backend needs to start a vCPU at a boot protocol's entry."""

    rip: int
    cs: SegmentRegister
    ds: SegmentRegister
    ss: SegmentRegister
    es: SegmentRegister
    fs: SegmentRegister
    gs: SegmentRegister
    tr: SegmentRegister = field(default_factory=lambda: boot_tss(0))
    ldt: SegmentRegister = UNUSABLE_LDT
    gdt: DescriptorTable = DescriptorTable(0, 0xFFFF)
    idt: DescriptorTable = DescriptorTable(0, 0xFFFF)
    cr0: int = CR0_ET
    cr3: int = 0
    cr4: int = 0
    efer: int = 0
    rflags: int = RFLAGS_FIXED
    gprs: dict[str, int] = field(default_factory=dict)  # "rbx": value, ...

    @property
    def segments(self) -> dict[str, SegmentRegister]:
        return {
            "cs": self.cs, "ds": self.ds, "es": self.es, "fs": self.fs,
            "gs": self.gs, "ss": self.ss, "tr": self.tr, "ldt": self.ldt,
        }


def real_mode_entry(cs: int, ip: int, sp: int = 0, ds: int | None = None) -> EntryState:
    """The state of a CPU after reset, moved to ``cs:ip`` (used by test programs)."""
    data = real_mode_segment(cs if ds is None else ds)
    return EntryState(
        rip=ip,
        cs=real_mode_segment(cs, code=True),
        ds=data, es=data, fs=data, gs=data, ss=data,
        tr=SegmentRegister(0, 0, 0xFFFF, SEG_TYPE_TSS_BUSY, s=0),
        gdt=DescriptorTable(0, 0xFFFF),
        idt=DescriptorTable(0, 0x3FF),
        gprs={"rsp": sp},
    )
