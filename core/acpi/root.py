"""The root of the tables: the RSDP (ACPI 6.5 §5.2.5.3) and the XSDT (§5.2.8).

There is no RSDT: the RSDP is revision 2 and its RsdtAddress is zero, which
the CloudHv firmware and every 64-bit OS accept (the firmware follows only
XsdtAddress).
"""
from __future__ import annotations

import struct

from .sdt import OEM_ID, checksum, table

# §5.2.5.3: Signature, Checksum, OEMID, Revision, RsdtAddress, Length,
# XsdtAddress, Extended Checksum, Reserved.
RSDP = struct.Struct("<8sB6sBIIQB3s")
RSDP_SIGNATURE = b"RSD PTR "
RSDP_REVISION = 2  # ACPI 2.0 and later: the 36-byte structure with XsdtAddress
RSDP_V1_LENGTH = 20  # the Checksum covers only the ACPI 1.0 part
RSDP_CHECKSUM_OFFSET = 8
RSDP_EXTENDED_CHECKSUM_OFFSET = 32

XSDT_SIGNATURE = b"XSDT"
XSDT_REVISION = 1


def rsdp(xsdt_address: int) -> bytes:
    data = bytearray(RSDP.pack(RSDP_SIGNATURE, 0, OEM_ID, RSDP_REVISION, 0, RSDP.size, xsdt_address, 0, bytes(3)))
    data[RSDP_CHECKSUM_OFFSET] = checksum(data[:RSDP_V1_LENGTH])
    data[RSDP_EXTENDED_CHECKSUM_OFFSET] = checksum(data)
    return bytes(data)


def xsdt(entries: list[int]) -> bytes:
    """The XSDT: 64-bit addresses of every table but the DSDT (and FACS), which the FADT points to."""
    return table(XSDT_SIGNATURE, XSDT_REVISION, struct.pack(f"<{len(entries)}Q", *entries))
