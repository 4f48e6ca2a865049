"""Validate a found image as a PVH ELF and tell a firmware (CloudHv) from a Linux kernel (a PVH vmlinux)."""
from __future__ import annotations

import io
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vmboot.abi.pvh import parse_pvh

FIRMWARE = "firmware"
KERNEL = "kernel"
# include/linux/elfnote.h: Linux's own notes (LINUX_ELFNOTE_BUILD_SALT, ...) are owned by "Linux"
LINUX_NOTE_OWNER = "Linux"


def classify(where: str, data: bytes) -> str:
    """FIRMWARE or KERNEL; raises VmbootError, with a message that starts with ``where``, if it is no PVH ELF."""
    parse_pvh(Path(where), data)
    return KERNEL if _has_linux_note(data) else FIRMWARE


def _has_linux_note(data: bytes) -> bool:
    try:
        elf = ELFFile(io.BytesIO(data))
        return any(note["n_name"] == LINUX_NOTE_OWNER
                   for seg in elf.iter_segments() if seg["p_type"] == "PT_NOTE"
                   for note in seg.iter_notes())
    except (ELFError, ValueError, UnicodeDecodeError):
        return False  # parse_pvh accepted it; a note we cannot decode is not Linux's
