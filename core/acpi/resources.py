"""Resource data descriptors for _CRS (ACPI 6.5, §6.4 "Resource Data Types for ACPI").

Each function returns one descriptor's bytes; :func:`resource_template` joins
them, appends the End Tag and wraps them in an AML Buffer, as ASL's
``ResourceTemplate () {...}`` does. The ASL macro each function mirrors is
named in its docstring, with the arguments in the same order where possible.
"""
from __future__ import annotations

import enum
import struct

from .aml import Aml, buffer

# §6.4.1 ASL Macros for Resource Descriptors: the tag byte of a small item is
# (item name << 3) | length; a large item has bit 7 set and a 16-bit length.
SMALL_ITEM_NAME_SHIFT = 3
LARGE_ITEM = 0x80

# §6.4.2 Small Resource Data Type
SMALL_IRQ = 0x04  # §6.4.2.1 IRQ Descriptor
SMALL_IO_PORT = 0x08  # §6.4.2.5 I/O Port Descriptor
SMALL_END_TAG = 0x0F  # §6.4.2.9 End Tag
IO_DECODE_16 = 0x01  # I/O Port Descriptor information byte, bit 0
END_TAG_CHECKSUM_OK = 0x00  # "a checksum of zero means the checksum is okay"

# §6.4.3 Large Resource Data Type
LARGE_MEMORY32_FIXED = 0x06  # §6.4.3.4 32-Bit Fixed Memory Range Descriptor
LARGE_DWORD_ADDRESS_SPACE = 0x07  # §6.4.3.5.2 DWord Address Space Descriptor
LARGE_WORD_ADDRESS_SPACE = 0x08  # §6.4.3.5.3 Word Address Space Descriptor
LARGE_EXTENDED_INTERRUPT = 0x09  # §6.4.3.6 Extended Interrupt Descriptor
LARGE_QWORD_ADDRESS_SPACE = 0x0A  # §6.4.3.5.1 QWord Address Space Descriptor

# §6.4.3.5 Address Space Resource Descriptors: resource type byte ...
RESOURCE_TYPE_MEMORY = 0
RESOURCE_TYPE_IO = 1
RESOURCE_TYPE_BUS_NUMBER = 2
# ... general flags byte ...
GENERAL_FLAG_CONSUMER = 1 << 0  # 0: this device produces and consumes the resource (a bridge window)
GENERAL_FLAG_SUB_DECODE = 1 << 1  # _DEC; 0 is positive decode
GENERAL_FLAG_MIN_FIXED = 1 << 2  # _MIF
GENERAL_FLAG_MAX_FIXED = 1 << 3  # _MAF
# ... and type-specific flags (§6.4.3.5.5 "Resource Type Specific Flags").
MEMORY_FLAG_READ_WRITE = 1 << 0  # _RW
MEMORY_CACHEABILITY_SHIFT = 1  # _MEM, bits 2:1
IO_RANGE_ENTIRE = 0x03  # _RNG: both ISA and non-ISA ranges

# §6.4.3.6 Extended Interrupt Descriptor flags.
INTERRUPT_FLAG_CONSUMER = 1 << 0
INTERRUPT_FLAG_EDGE = 1 << 1  # _HE; 0 is level-triggered
INTERRUPT_FLAG_ACTIVE_LOW = 1 << 2  # _LL; 0 is active-high
INTERRUPT_FLAG_SHARED = 1 << 3  # _SHR

IRQ_DESCRIPTOR_MAX = 15  # an IRQ Descriptor's mask covers ISA IRQs 0-15


class Cacheability(enum.IntEnum):
    """_MEM of a memory address space descriptor."""
    NON_CACHEABLE = 0
    CACHEABLE = 1
    WRITE_COMBINING = 2
    PREFETCHABLE = 3


def _small(item: int, body: bytes) -> bytes:
    return bytes([(item << SMALL_ITEM_NAME_SHIFT) | len(body)]) + body


def _large(item: int, body: bytes) -> bytes:
    return struct.pack("<BH", LARGE_ITEM | item, len(body)) + body


def _range_check(minimum: int, maximum: int, length: int, limit: int) -> None:
    if not 0 <= minimum <= maximum < limit or not 0 <= length < limit:
        raise ValueError(f"resource range {minimum:#x}-{maximum:#x} (length {length:#x}) does not fit "
                         f"in {limit.bit_length() - 1} bits")


def _address_flags(producer: bool) -> int:
    # Windows and bus ranges here always have fixed ends and positive decode.
    return GENERAL_FLAG_MIN_FIXED | GENERAL_FLAG_MAX_FIXED | (0 if producer else GENERAL_FLAG_CONSUMER)


def _address_space(item: int, fmt: str, resource_type: int, producer: bool, type_flags: int,
                   minimum: int, maximum: int) -> bytes:
    """Address space descriptor with _GRA 0 and _TRA 0; _LEN is maximum - minimum + 1."""
    length = maximum - minimum + 1
    _range_check(minimum, maximum, length, 1 << (8 * struct.calcsize("<" + fmt)))
    body = struct.pack(f"<BBB5{fmt}", resource_type, _address_flags(producer), type_flags,
                       0, minimum, maximum, 0, length)
    return _large(item, body)


def io(minimum: int, maximum: int, alignment: int, length: int) -> bytes:
    """IO (Decode16, _MIN, _MAX, _ALN, _LEN): §6.4.2.5."""
    _range_check(minimum, maximum, 0, 1 << 16)
    if not 0 <= alignment <= 0xFF or not 0 <= length <= 0xFF:
        raise ValueError("an I/O port descriptor's alignment and length are bytes")
    return _small(SMALL_IO_PORT, struct.pack("<BHHBB", IO_DECODE_16, minimum, maximum, alignment, length))


def irq_no_flags(*irqs: int) -> bytes:
    """IRQNoFlags () {irqs}: §6.4.2.1, the two-byte form (edge-triggered, active-high, exclusive)."""
    if not irqs or any(not 0 <= irq <= IRQ_DESCRIPTOR_MAX for irq in irqs):
        raise ValueError(f"IRQNoFlags takes ISA IRQs 0-{IRQ_DESCRIPTOR_MAX}, not {irqs}")
    mask = 0
    for irq in irqs:
        mask |= 1 << irq
    return _small(SMALL_IRQ, struct.pack("<H", mask))


def interrupt(*gsis: int, consumer: bool = True, edge: bool = False, active_low: bool = False,
              shared: bool = False) -> bytes:
    """Interrupt (ResourceConsumer, Level|Edge, ActiveHigh|ActiveLow, Exclusive|Shared) {gsis}: §6.4.3.6."""
    if not 1 <= len(gsis) <= 0xFF or any(not 0 <= gsi < 1 << 32 for gsi in gsis):
        raise ValueError("Interrupt takes 1 to 255 32-bit interrupt numbers")
    flags = ((INTERRUPT_FLAG_CONSUMER if consumer else 0) | (INTERRUPT_FLAG_EDGE if edge else 0)
             | (INTERRUPT_FLAG_ACTIVE_LOW if active_low else 0) | (INTERRUPT_FLAG_SHARED if shared else 0))
    return _large(LARGE_EXTENDED_INTERRUPT, struct.pack(f"<BB{len(gsis)}I", flags, len(gsis), *gsis))


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    """Memory32Fixed (ReadWrite|ReadOnly, base, length): §6.4.3.4."""
    _range_check(base, base + max(length, 1) - 1, length, 1 << 32)
    return _large(LARGE_MEMORY32_FIXED, struct.pack("<BII", MEMORY_FLAG_READ_WRITE if writable else 0,
                                                    base, length))


def word_bus_number(minimum: int, maximum: int, producer: bool = True) -> bytes:
    """WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, _MIN, _MAX, 0, _LEN): §6.4.3.5.3."""
    return _address_space(LARGE_WORD_ADDRESS_SPACE, "H", RESOURCE_TYPE_BUS_NUMBER, producer, 0, minimum, maximum)


def word_io(minimum: int, maximum: int, producer: bool = True) -> bytes:
    """WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, _MIN, _MAX, 0, _LEN):
    §6.4.3.5.3."""
    return _address_space(LARGE_WORD_ADDRESS_SPACE, "H", RESOURCE_TYPE_IO, producer, IO_RANGE_ENTIRE,
                          minimum, maximum)


def _memory_flags(cacheability: Cacheability, writable: bool) -> int:
    return (cacheability << MEMORY_CACHEABILITY_SHIFT) | (MEMORY_FLAG_READ_WRITE if writable else 0)


def dword_memory(minimum: int, maximum: int, cacheability: Cacheability = Cacheability.NON_CACHEABLE,
                 writable: bool = True, producer: bool = True) -> bytes:
    """DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, _MEM, _RW, 0, _MIN, _MAX, 0, _LEN):
    §6.4.3.5.2."""
    return _address_space(LARGE_DWORD_ADDRESS_SPACE, "I", RESOURCE_TYPE_MEMORY, producer,
                          _memory_flags(cacheability, writable), minimum, maximum)


def qword_memory(minimum: int, maximum: int, cacheability: Cacheability = Cacheability.NON_CACHEABLE,
                 writable: bool = True, producer: bool = True) -> bytes:
    """QWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, _MEM, _RW, 0, _MIN, _MAX, 0, _LEN):
    §6.4.3.5.1."""
    return _address_space(LARGE_QWORD_ADDRESS_SPACE, "Q", RESOURCE_TYPE_MEMORY, producer,
                          _memory_flags(cacheability, writable), minimum, maximum)


def end_tag() -> bytes:
    """§6.4.2.9: ends every resource template."""
    return _small(SMALL_END_TAG, bytes([END_TAG_CHECKSUM_OK]))


def resource_template(*descriptors: bytes) -> Aml:
    """ResourceTemplate () {descriptors}: a Buffer of the descriptors and an End Tag."""
    return buffer(b"".join(descriptors) + end_tag())
