"""Pieces of bootable images: a cpio initramfs, a unified kernel image, a FAT disk.

Each is built the way its consumer reads it: the initramfs in the "newc" cpio
format the kernel unpacks (Documentation/driver-api/early-userspace), the
unified kernel image as systemd-stub(7) lays its sections out, the FAT disk by
mtools with no partition table at all. The guest images (assets/guest.py) are
made of them.
"""
from __future__ import annotations

import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from vmboot.abi.errors import VmbootError

# cpio "newc" (the format the kernel unpacks for an initramfs: Documentation/driver-api/early-userspace).
CPIO_MAGIC = b"070701"
CPIO_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class CpioEntry:
    name: str  # without a leading slash
    mode: int  # file type and permissions
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def cpio_newc(entries: list[CpioEntry]) -> bytes:
    """An uncompressed cpio archive: owner root, mtime 0, so the same entries give the same bytes."""
    out = bytearray()
    for ino, entry in enumerate([*entries, CpioEntry(CPIO_TRAILER, 0)], start=1):
        name = entry.name.encode() + b"\0"
        is_trailer = entry.name == CPIO_TRAILER
        fields = (0 if is_trailer else ino, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, 0,
                  len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
        out += _pad4(CPIO_MAGIC + b"".join(b"%08X" % f for f in fields) + name)
        out += _pad4(entry.data)
    return bytes(out)


def uki_layout(stub_end: int, alignment: int, sizes: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """VMAs for sections appended after a PE image ending at ``stub_end``, each aligned, in order."""
    layout, vma = [], stub_end
    for name, size in sizes:
        vma = -(-vma // alignment) * alignment
        layout.append((name, vma))
        vma += size
    return layout


OBJDUMP_SECTION = re.compile(r"^\s*\d+\s+(?P<name>\S+)\s+(?P<size>[0-9a-f]+)\s+(?P<vma>[0-9a-f]+)\s", re.M)
OBJDUMP_ALIGNMENT = re.compile(r"^SectionAlignment\s+(?P<value>[0-9a-f]+)", re.M)


def pe_sections(image: Path) -> dict[str, tuple[int, int]]:
    """Section name -> (VMA, size), from ``objdump -h``."""
    out = output(["objdump", "-h", str(image)])
    return {m["name"]: (int(m["vma"], 16), int(m["size"], 16)) for m in OBJDUMP_SECTION.finditer(out)}


def make_uki(stub: Path, sections: dict[str, Path], out: Path) -> None:
    """Join a systemd-stub with its payload sections (name -> file, in order), as systemd-stub(7) does with objcopy.

    Each section goes after the stub's last one, aligned to the stub's SectionAlignment
    (at least a page), so that the payloads never overlap the stub's code.
    """
    match = OBJDUMP_ALIGNMENT.search(output(["objdump", "-p", str(stub)]))
    if not match:
        raise VmbootError(f"objdump -p shows no SectionAlignment for {stub}")
    alignment = max(int(match["value"], 16), 0x1000)
    stub_end = max(vma + size for vma, size in pe_sections(stub).values())
    sizes = [(name, path.stat().st_size) for name, path in sections.items()]
    args = ["objcopy"]
    for name, vma in uki_layout(stub_end, alignment, sizes):
        args += ["--add-section", f"{name}={sections[name]}", "--change-section-vma", f"{name}={vma:#x}"]
    output([*args, str(stub), str(out)])


# An MBR's partition table: 4 entries of 16 bytes before the 0x55AA signature.
MBR_PARTITION_TABLE, MBR_PARTITION_TABLE_SIZE = 0x1BE, 64


def _clear_fake_partition_table(image: Path) -> None:
    """Zero the partition entry mformat writes into the boot sector.

    mformat fills in a "partition 1" starting at sector 0 and spanning the disk (rounded
    up to whole cylinders, so past its end). Linux then shows a truncated vda1 that is the
    disk itself. A FAT boot sector keeps boot code there, which no one runs on these disks.
    """
    with open(image, "r+b") as f:
        f.seek(MBR_PARTITION_TABLE)
        f.write(bytes(MBR_PARTITION_TABLE_SIZE))


def make_fat(image: Path, size: int, label: str, serial: int, files: dict[str, Path]) -> None:
    """A partitionless FAT disk of ``size`` bytes holding ``files`` (path inside -> host file), by mtools."""
    with open(image, "wb") as f:
        f.truncate(size)
    mtools(["mformat", "-i", str(image), "-v", label, "-N", f"{serial:08x}", "::"])
    _clear_fake_partition_table(image)
    made: set[str] = set()
    for inside, host in files.items():
        parts = inside.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in made:
                mtools(["mmd", "-i", str(image), f"::/{folder}"])
                made.add(folder)
        mtools(["mcopy", "-i", str(image), str(host), f"::/{inside}"])


def output(args: list[str], env: dict | None = None) -> str:
    """Run a build tool; its output, or a VmbootError with its last line of complaint."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise VmbootError(f"{args[0]} is not installed (run ./dev setup)") from None
    if proc.returncode:
        detail = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise VmbootError(f"'{' '.join(args[:2])} ...' failed with status {proc.returncode}: {detail}")
    return proc.stdout


def mtools(args: list[str]) -> None:
    """Run an mtools command on an image file."""
    # MTOOLS_SKIP_CHECK: an image file has no real disk geometry to agree with.
    output(args, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
