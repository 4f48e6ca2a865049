"""The MCFG: where PCI Express ECAM lives (PCI Firmware Specification 3.2, §4.1.2).

Offered only when the VMM decodes ECAM; the CloudHv firmware itself uses
configuration mechanism #1 at 0xCF8, so the default platform has no MCFG.
"""
from __future__ import annotations

import struct

from .sdt import table

MCFG_SIGNATURE = b"MCFG"
MCFG_REVISION = 1
MCFG_RESERVED = bytes(8)
# The configuration space base address allocation structure: base address, PCI segment group,
# start bus, end bus, reserved.
MCFG_ALLOCATION = struct.Struct("<QHBBI")
ECAM_BYTES_PER_BUS = 1 << 20  # 32 devices x 8 functions x 4 KiB


def ecam_size(start_bus: int, end_bus: int) -> int:
    return (end_bus - start_bus + 1) * ECAM_BYTES_PER_BUS


def mcfg(base: int, segment: int = 0, start_bus: int = 0, end_bus: int = 0) -> bytes:
    """One allocation: ``base`` is the ECAM address of ``start_bus``."""
    if not 0 <= start_bus <= end_bus <= 0xFF:
        raise ValueError(f"invalid PCI bus range {start_bus}-{end_bus}")
    allocation = MCFG_ALLOCATION.pack(base, segment, start_bus, end_bus, 0)
    return table(MCFG_SIGNATURE, MCFG_REVISION, MCFG_RESERVED + allocation)
