"""What every ACPI table shares: the header, the checksum and the Generic Address Structure.

ACPI 6.5 §5.2.6 "System Description Table Header" and §5.2.3.2 "Generic
Address Structure (GAS)".
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

OEM_ID = b"VMBOOT"
OEM_TABLE_ID = b"VMBOOT  "
OEM_REVISION = 1
CREATOR_ID = b"VMBT"  # the "ASL compiler" that made the tables: vmboot itself
CREATOR_REVISION = 1

# §5.2.6: Signature, Length, Revision, Checksum, OEMID, OEM Table ID, OEM Revision,
# Creator ID, Creator Revision.
SDT_HEADER = struct.Struct("<4sIBB6s8sI4sI")
CHECKSUM_OFFSET = 9

# §5.2.3.2: Address Space ID and Access Size.
GAS = struct.Struct("<BBBBQ")
ADDRESS_SPACE_SYSTEM_MEMORY = 0
ADDRESS_SPACE_SYSTEM_IO = 1
ACCESS_SIZE_BYTE = 1
ACCESS_SIZE_WORD = 2
ACCESS_SIZE_DWORD = 3
ACCESS_SIZE_QWORD = 4
_ACCESS_SIZES = {8: ACCESS_SIZE_BYTE, 16: ACCESS_SIZE_WORD, 32: ACCESS_SIZE_DWORD, 64: ACCESS_SIZE_QWORD}


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` (with that byte as zero) sum to zero, mod 256."""
    return -sum(data) & 0xFF


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A complete table: header, ``body``, and the checksum over both."""
    if len(signature) != 4:
        raise ValueError(f"an ACPI table signature has 4 characters, not {signature!r}")
    length = SDT_HEADER.size + len(body)
    header = SDT_HEADER.pack(signature, length, revision, 0, OEM_ID, OEM_TABLE_ID, OEM_REVISION,
                             CREATOR_ID, CREATOR_REVISION)
    data = bytearray(header + body)
    data[CHECKSUM_OFFSET] = checksum(data)
    return bytes(data)


@dataclass(frozen=True)
class GenericAddress:
    """A register in a Generic Address Structure; all zeros means "not present"."""
    space_id: int = ADDRESS_SPACE_SYSTEM_MEMORY
    bit_width: int = 0
    address: int = 0
    bit_offset: int = 0

    @classmethod
    def io_port(cls, port: int, bit_width: int) -> GenericAddress:
        return cls(ADDRESS_SPACE_SYSTEM_IO, bit_width, port)

    def pack(self) -> bytes:
        access = _ACCESS_SIZES.get(self.bit_width, 0) if self.address else 0
        return GAS.pack(self.space_id, self.bit_width, self.bit_offset, access, self.address)


NO_REGISTER = GenericAddress()
