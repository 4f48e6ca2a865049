"""Recognise x87 floating-point instructions (Intel SDM Vol. 2, opcode map, escape opcodes D8-DF)."""
from __future__ import annotations

LEGACY_PREFIXES = {0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65}
FWAIT = 0x9B
X87_ESCAPES = range(0xD8, 0xE0)

NAMES = {
    bytes([0xDB, 0xE3]): "fninit",
    bytes([0x9B, 0xDB, 0xE3]): "finit",
    bytes([0xD9, 0xE8]): "fld1",
    bytes([0xDF, 0xE0]): "fnstsw ax",
}


def x87_instruction(code: bytes) -> str | None:
    """The name of the x87 instruction ``code`` starts with, or None if it is not one."""
    i = 0
    while i < len(code) and (code[i] in LEGACY_PREFIXES or 0x40 <= code[i] <= 0x4F):
        i += 1
    if i >= len(code):
        return None
    if code[i] != FWAIT and code[i] not in X87_ESCAPES:
        return None
    for pattern, name in NAMES.items():
        if code[i:].startswith(pattern):
            return name
    return "fwait" if code[i] == FWAIT else f"an x87 instruction ({code[i]:02x} {code[i + 1]:02x})"
