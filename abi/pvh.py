"""Read a PVH ELF: its Xen PHYS32_ENTRY note and its loadable segments, checked.

The note is Xen's (xen/include/public/elfnote.h). The launcher reads images
with this to tell a PVH kernel from a firmware without starting a VM; the core
loads what it returns.
"""
from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError, ELFParseError
from elftools.elf.elffile import ELFFile

from .errors import VmbootError

# xen/include/public/elfnote.h
XEN_ELFNOTE_NAME = "Xen"
XEN_ELFNOTE_PHYS32_ENTRY = 18


@dataclass(frozen=True)
class PvhImage:
    entry: int
    segments: list[tuple[int, int, bytes]]  # (paddr, memsz, file bytes)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise VmbootError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise VmbootError(f"{path}: is a directory, not a firmware image") from None
    except OSError as err:
        raise VmbootError(f"{path}: {err.strerror}") from None


def parse_pvh(path: Path, data: bytes | None = None) -> PvhImage:
    """Validate a PVH ELF and return its entry point and loadable segments."""
    data = _read(path) if data is None else data
    if data[:4] != b"\x7fELF":
        raise VmbootError(f"{path}: not an ELF file (a PVH firmware such as CLOUDHV.fd is an ELF image)")
    try:
        elf = ELFFile(io.BytesIO(data))
        entry = None
        segments = []
        for seg in elf.iter_segments():
            kind = seg["p_type"]
            if seg["p_offset"] + seg["p_filesz"] > len(data):
                raise VmbootError(
                    f"{path}: corrupt or truncated ELF: a {kind} segment at file offset {seg['p_offset']:#x} "
                    f"runs past the end of the file ({len(data)} bytes)"
                )
            if kind == "PT_NOTE":
                for note in seg.iter_notes():
                    if note["n_name"] == XEN_ELFNOTE_NAME and note["n_type"] == XEN_ELFNOTE_PHYS32_ENTRY:
                        entry = _note_address(path, note["n_descdata"])
            elif kind == "PT_LOAD" and seg["p_memsz"]:
                if seg["p_filesz"] > seg["p_memsz"]:
                    raise VmbootError(f"{path}: corrupt ELF: a PT_LOAD segment has more file bytes than memory")
                segments.append((seg["p_paddr"], seg["p_memsz"], seg.data()))
    except (ELFError, ELFParseError, struct.error, ValueError, UnicodeDecodeError) as err:
        raise VmbootError(f"{path}: corrupt or truncated ELF ({err})") from None
    if entry is None:
        raise VmbootError(f"{path}: ELF has no PVH entry point (no '{XEN_ELFNOTE_NAME}' note of type "
                          f"XEN_ELFNOTE_PHYS32_ENTRY); it is not a PVH firmware or kernel")
    if not segments:
        raise VmbootError(f"{path}: ELF has no loadable segment")
    if not any(paddr <= entry < paddr + memsz for paddr, memsz, _ in segments):
        raise VmbootError(f"{path}: PVH entry point {entry:#x} is outside every loadable segment")
    return PvhImage(entry, segments)


def _note_address(path: Path, desc: bytes) -> int:
    if len(desc) == 4:
        return struct.unpack("<I", desc)[0]
    if len(desc) == 8:
        return struct.unpack("<Q", desc)[0]
    raise VmbootError(f"{path}: PVH entry note has a {len(desc)}-byte descriptor (expected 4 or 8)")
