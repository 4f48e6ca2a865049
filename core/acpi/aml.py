"""A small encoder for the ACPI Machine Language (ACPI 6.5, §20 "AML Specification").

Every builder returns :class:`Aml`, the encoded bytes of one AML object. Where
the grammar takes a data object, Python values are accepted too and encoded
the obvious way: ``int`` as an Integer, ``str`` as a String, a list or tuple as
a Package. Raw ``bytes`` are refused there, because they are ambiguous: wrap
them in :func:`buffer` (data) or build an :class:`Aml` object explicitly.

    scope("\\_SB", device("COM1", name("_HID", eisa_id("PNP0501")), name("_UID", 0)))
"""
from __future__ import annotations

import re
from typing import Sequence, Union

# §20.2.2 Name Objects Encoding
ROOT_CHAR = 0x5C  # '\'
PARENT_PREFIX_CHAR = 0x5E  # '^'
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
NULL_NAME = 0x00
NAME_SEG_LENGTH = 4
MULTI_NAME_MAX_SEGMENTS = 255

# §20.2.3 Data Objects Encoding
ZERO_OP = 0x00
ONE_OP = 0x01
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E

# §20.2.4 Package Length Encoding: PkgLeadByte bits 7-6 count the bytes that
# follow (0-3); a one-byte PkgLength holds 6 bits, longer ones 4 bits in the
# lead byte and 8 bits in each following byte. The length counts itself.
PKG_LENGTH_ONE_BYTE_MAX = 0x3F
PKG_LENGTH_MAX = (1 << 28) - 1

# §20.2.5.1 Namespace Modifier Objects Encoding
NAME_OP = 0x08
SCOPE_OP = 0x10
# §20.2.5.2 Named Objects Encoding
EXT_OP_PREFIX = 0x5B
DEVICE_OP = bytes([EXT_OP_PREFIX, 0x82])
METHOD_OP = 0x14
METHOD_ARG_COUNT_MAX = 7  # MethodFlags bits 0-2
METHOD_SERIALIZE_FLAG = 1 << 3
METHOD_SYNC_LEVEL_SHIFT = 4  # MethodFlags bits 4-7
# §20.2.5.3 Statement Opcodes Encoding
RETURN_OP = 0xA4
# §20.2.5.4 Expression Opcodes Encoding
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
PACKAGE_MAX_ELEMENTS = 255  # NumElements is a ByteData; VarPackageOp is not needed here

_LEAD_NAME_CHAR = re.compile(r"[A-Z_]")
_NAME_CHARS = re.compile(r"[A-Z0-9_]*")
_EISA_ID = re.compile(r"[A-Z]{3}[0-9A-F]{4}")


class Aml(bytes):
    """Encoded AML: a term, a data object or a name string."""

    def __repr__(self) -> str:
        return f"Aml({bytes(self).hex(' ')})"


DataObject = Union[Aml, int, str, Sequence["DataObject"]]


def _aml(*parts: bytes | int) -> Aml:
    return Aml(b"".join(bytes([p]) if isinstance(p, int) else p for p in parts))


# -- names (§20.2.2) -------------------------------------------------------------------------------

def name_seg(seg: str) -> bytes:
    """A NameSeg: a lead character [A-Z_], then up to three of [A-Z0-9_], padded with '_'."""
    if not 1 <= len(seg) <= NAME_SEG_LENGTH or not _LEAD_NAME_CHAR.fullmatch(seg[0]) \
            or not _NAME_CHARS.fullmatch(seg[1:]):
        raise ValueError(f"invalid AML name segment {seg!r}")
    return seg.ljust(NAME_SEG_LENGTH, "_").encode("ascii")


def name_string(path: str) -> Aml:
    """A NameString such as ``_HID``, ``\\_SB.PCI0`` or ``^^FOO``; ``\\`` alone is the root."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([ROOT_CHAR]), path[1:]
    else:
        while path.startswith("^"):
            prefix, path = prefix + bytes([PARENT_PREFIX_CHAR]), path[1:]
    if not path:
        if not prefix:
            raise ValueError("empty AML name")
        return _aml(prefix, NULL_NAME)
    segs = [name_seg(seg) for seg in path.split(".")]
    if len(segs) == 1:
        return _aml(prefix, segs[0])
    if len(segs) == 2:
        return _aml(prefix, DUAL_NAME_PREFIX, *segs)
    if len(segs) > MULTI_NAME_MAX_SEGMENTS:
        raise ValueError(f"AML name {path!r} has more than {MULTI_NAME_MAX_SEGMENTS} segments")
    return _aml(prefix, MULTI_NAME_PREFIX, len(segs), *segs)


# -- package length (§20.2.4) ----------------------------------------------------------------------

def pkg_length(length: int) -> bytes:
    """The PkgLength for ``length`` bytes of content that follow it (it adds its own size)."""
    if length < 0:
        raise ValueError("negative package length")
    if length + 1 <= PKG_LENGTH_ONE_BYTE_MAX:
        return bytes([length + 1])
    for extra in (1, 2, 3):
        total = length + 1 + extra
        if total < 1 << (4 + 8 * extra):
            following = [(total >> (4 + 8 * i)) & 0xFF for i in range(extra)]
            return bytes([(extra << 6) | (total & 0x0F), *following])
    raise ValueError(f"AML package of {length} bytes exceeds the PkgLength limit of {PKG_LENGTH_MAX}")


def _with_pkg_length(opcode: bytes | int, *body: bytes) -> Aml:
    content = b"".join(body)
    return _aml(opcode, pkg_length(len(content)), content)


# -- data objects (§20.2.3) ------------------------------------------------------------------------

def integer(value: int) -> Aml:
    """The shortest encoding: ZeroOp, OneOp, or a Byte/Word/DWord/QWord constant."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML integer {value} is outside 0..2**64-1")
    if value == 0:
        return _aml(ZERO_OP)
    if value == 1:
        return _aml(ONE_OP)
    for prefix, size in ((BYTE_PREFIX, 1), (WORD_PREFIX, 2), (DWORD_PREFIX, 4), (QWORD_PREFIX, 8)):
        if value < 1 << (8 * size):
            return _aml(prefix, value.to_bytes(size, "little"))
    raise AssertionError("unreachable")


def dword(value: int) -> Aml:
    """A DWordConst whatever the value (as iasl writes EISAID values and some fixed fields)."""
    return _aml(DWORD_PREFIX, value.to_bytes(4, "little"))


def string(text: str) -> Aml:
    """A String: ASCII characters 0x01-0x7F, NUL-terminated."""
    raw = text.encode("ascii")
    if b"\0" in raw:
        raise ValueError("an AML string cannot contain NUL")
    return _aml(STRING_PREFIX, raw, NULL_NAME)


def buffer(data: bytes) -> Aml:
    """A Buffer whose BufferSize is its byte count."""
    return _with_pkg_length(BUFFER_OP, integer(len(data)), bytes(data))


def package(*elements: DataObject) -> Aml:
    if len(elements) > PACKAGE_MAX_ELEMENTS:
        raise ValueError(f"an AML Package holds at most {PACKAGE_MAX_ELEMENTS} elements")
    return _with_pkg_length(PACKAGE_OP, bytes([len(elements)]), *(data_object(e) for e in elements))


def data_object(value: DataObject) -> Aml:
    """Encode a Python value where AML takes a data object."""
    if isinstance(value, Aml):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError("raw bytes are ambiguous in AML: use buffer() or an Aml object")
    if isinstance(value, int):
        return integer(int(value))
    if isinstance(value, str):
        return string(value)
    if isinstance(value, (list, tuple)):
        return package(*value)
    raise TypeError(f"cannot encode {type(value).__name__} as an AML data object")


def eisa_id(text: str) -> Aml:
    """ASL's EISAID("PNP0A03") (ACPI 6.5 §19.6, EISAID): three letters of five bits, four hex digits,
    stored big-endian in a DWord."""
    if not _EISA_ID.fullmatch(text):
        raise ValueError(f"invalid EISA ID {text!r} (three capital letters, four hex digits)")
    letters = 0
    for ch in text[:3]:
        letters = (letters << 5) | (ord(ch) - ord("A") + 1)
    value = (letters << 16) | int(text[3:], 16)
    return dword(int.from_bytes(value.to_bytes(4, "big"), "little"))


# -- terms (§20.2.5) -------------------------------------------------------------------------------

def name(path: str, value: DataObject) -> Aml:
    """Name (path, value)."""
    return _aml(NAME_OP, name_string(path), data_object(value))


def scope(path: str, *terms: Aml) -> Aml:
    return _with_pkg_length(SCOPE_OP, name_string(path), *terms)


def device(path: str, *terms: Aml) -> Aml:
    return _with_pkg_length(DEVICE_OP, name_string(path), *terms)


def method(path: str, *terms: Aml, args: int = 0, serialized: bool = False, sync_level: int = 0) -> Aml:
    if not 0 <= args <= METHOD_ARG_COUNT_MAX:
        raise ValueError(f"an AML method takes 0..{METHOD_ARG_COUNT_MAX} arguments, not {args}")
    if not 0 <= sync_level <= 15:
        raise ValueError(f"an AML method's SyncLevel is 0..15, not {sync_level}")
    flags = args | (METHOD_SERIALIZE_FLAG if serialized else 0) | (sync_level << METHOD_SYNC_LEVEL_SHIFT)
    return _with_pkg_length(METHOD_OP, name_string(path), bytes([flags]), *terms)


def return_(value: DataObject) -> Aml:
    """Return (value)."""
    return _aml(RETURN_OP, data_object(value))
