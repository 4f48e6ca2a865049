"""Translate a guest virtual address with the guest's own page tables (diagnostics only).

Intel SDM Vol. 3A §4.5 (4-level paging) and §4.3 (32-bit paging). Only what is
needed to read the code at a faulting RIP; no permission checks.
"""
from __future__ import annotations

from vmboot.abi.memory import GuestMemory, GuestMemoryError

from .state import CR0_PG, CR4_PAE, EFER_LMA

PTE_PRESENT = 1 << 0
PTE_PS = 1 << 7
ADDR_MASK = 0x000F_FFFF_FFFF_F000


def translate(memory: GuestMemory, regs: dict[str, int], vaddr: int) -> int | None:
    cr0, cr3, cr4, efer = regs.get("cr0", 0), regs.get("cr3", 0), regs.get("cr4", 0), regs.get("efer", 0)
    if not cr0 & CR0_PG:
        return vaddr & 0xFFFF_FFFF
    try:
        if efer & EFER_LMA:
            table = cr3 & ADDR_MASK
            for level, shift in enumerate((39, 30, 21, 12)):
                entry = int.from_bytes(memory.read(table + ((vaddr >> shift) & 0x1FF) * 8, 8), "little")
                if not entry & PTE_PRESENT:
                    return None
                if level in (1, 2) and entry & PTE_PS:
                    size = 1 << shift
                    return (entry & ADDR_MASK & ~(size - 1)) | (vaddr & (size - 1))
                table = entry & ADDR_MASK
            return table | (vaddr & 0xFFF)
        if cr4 & CR4_PAE:
            return None  # PAE paging is not needed for diagnostics
        pde = memory.read_u32((cr3 & 0xFFFFF000) + ((vaddr >> 22) & 0x3FF) * 4)
        if not pde & PTE_PRESENT:
            return None
        if pde & PTE_PS:
            return (pde & 0xFFC00000) | (vaddr & 0x3FFFFF)
        pte = memory.read_u32((pde & 0xFFFFF000) + ((vaddr >> 12) & 0x3FF) * 4)
        if not pte & PTE_PRESENT:
            return None
        return (pte & 0xFFFFF000) | (vaddr & 0xFFF)
    except GuestMemoryError:
        return None


def read_code(memory: GuestMemory, regs: dict[str, int], length: int = 16) -> bytes | None:
    rip = regs.get("rip", 0) + regs.get("cs_base", 0)
    paddr = translate(memory, regs, rip)
    if paddr is None or not memory.contains(paddr, length):
        return None
    return memory.read(paddr, length)
