"""Debug output ports: QEMU's debug console (0x402) and the POST code port (0x80).

The debug console is Bochs/QEMU's "port E9 hack" moved to 0x402: reading it
returns 0xE9, which is how EDK2's DEBUG builds detect it before they print to it.
"""
from __future__ import annotations

from typing import Callable

DEBUGCON_READBACK = 0xE9


class DebugCon:
    def __init__(self, sink: Callable[[bytes], None]):
        self._sink = sink

    def read(self, offset: int, size: int) -> bytes:
        return bytes([DEBUGCON_READBACK]) * size

    def write(self, offset: int, data: bytes) -> None:
        self._sink(data)


class PostCodes:
    """Port 0x80: keeps the last POST code, and reports each to ``on_code``."""

    def __init__(self, on_code: Callable[[int], None] | None = None):
        self.last = 0
        self._on_code = on_code

    def read(self, offset: int, size: int) -> bytes:
        return bytes([self.last]) * size

    def write(self, offset: int, data: bytes) -> None:
        for code in data:
            self.last = code
            if self._on_code:
                self._on_code(code)
