"""Synthetic Linux kernels for loader and CLI tests.

A bzImage with a genuine setup header (Documentation/arch/x86/boot.rst) whose
protected-mode part is a small program at the 64-bit entry point (load address
+ 0x200), assembled with nasm: enough to exercise direct boot end to end
without a real kernel.
"""
from __future__ import annotations

import struct
from pathlib import Path

from vmboot.tests.guest_asm import assemble

MiB = 1 << 20
PREF_ADDRESS = 0x1000000
SETUP_SECTS = 3
ENTRY_64 = 0x200


def make_bzimage(payload: bytes, version: int = 0x020F, xloadflags: int = 1, init_size: int = 4 * MiB) -> bytes:
    setup = bytearray((SETUP_SECTS + 1) * 512)
    setup[0x1F1] = SETUP_SECTS
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, 0x66])  # jmp over the header: it ends at 0x202 + 0x66
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 0x01  # loadflags: LOADED_HIGH
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)  # initrd_addr_max
    struct.pack_into("<I", setup, 0x230, 0x200000)  # kernel_alignment
    setup[0x234] = 1  # relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, 2048)  # cmdline_size
    struct.pack_into("<Q", setup, 0x258, PREF_ADDRESS)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + payload


def kernel_program(body: str) -> bytes:
    """A bzImage whose 64-bit entry runs ``body`` (64-bit nasm, with tests.guest_asm's macros)."""
    return make_bzimage(assemble(f"times {ENTRY_64} db 0x90\n{body}", "long", org=PREF_ADDRESS))


def write_kernel(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_bytes(kernel_program(body))
    return path
