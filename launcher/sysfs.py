"""The host's block devices, from /sys/class/block, and what already uses them (mounts, swap, holders).

Everything is read from files under a root directory (``/`` on a real host) so
that tests can give a synthetic tree.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

SECTOR = 512  # /sys/class/block/*/size and */start count 512-byte sectors whatever the device's block size
PCI_ADDRESS = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]")
LETTER_DISK = re.compile(r"(sd|vd|hd|xvd)([a-z]+)")  # disks named by letters: sda ... sdz, sdaa ...
MEMORY_DISKS = re.compile(r"(zram|ram)\d+")  # RAM-backed: nothing on them to boot, nothing to pass


@dataclass
class SysPartition:
    name: str  # sdb1
    number: int
    start: int  # bytes
    size: int  # bytes
    dev: tuple[int, int]


@dataclass
class SysDisk:
    name: str  # sdb
    size: int  # bytes
    dev: tuple[int, int]
    pci: tuple[int, int] | None  # vendor, device of the nearest PCI function above it
    holders: list[str]
    partitions: list[SysPartition] = field(default_factory=list)


def natural_key(name: str) -> list:
    """sda < sdb < sdz < sdaa (as the kernel names them), nvme0n2 < nvme0n10: digit runs compare as numbers."""
    m = LETTER_DISK.fullmatch(name)
    parts = [m[1], len(m[2]), m[2]] if m else [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    return [(1, p) if isinstance(p, str) else (0, p) for p in parts]


class SysBlock:
    def __init__(self, root: str | Path = "/"):
        self.root = Path(root)
        self.class_block = self.root / "sys/class/block"

    def disks(self) -> list[SysDisk]:
        """Whole disks, in natural name order, without RAM disks."""
        names = sorted((p.name for p in self.class_block.iterdir()), key=natural_key)
        return [self.disk(n) for n in names
                if not (self.class_block / n / "partition").exists() and not MEMORY_DISKS.fullmatch(n)]

    def disk(self, name: str) -> SysDisk:
        path = self.class_block / name
        holders = sorted(os.listdir(path / "holders")) if (path / "holders").is_dir() else []
        disk = SysDisk(name, _int(path / "size") * SECTOR, _dev(path / "dev"), self._pci(path), holders)
        for child in sorted(path.resolve().iterdir(), key=lambda p: natural_key(p.name)):
            if (child / "partition").exists():
                disk.partitions.append(SysPartition(
                    child.name, _int(child / "partition"), _int(child / "start") * SECTOR,
                    _int(child / "size") * SECTOR, _dev(child / "dev")))
        return disk

    def by_dev(self, dev: tuple[int, int]) -> tuple[str, str | None]:
        """(disk name, partition name or None) for a block device number."""
        path = (self.root / f"sys/dev/block/{dev[0]}:{dev[1]}").resolve()
        if (path / "partition").exists():
            return path.parent.name, path.name
        return path.name, None

    def _pci(self, path: Path) -> tuple[int, int] | None:
        """The vendor and device ID of the closest PCI function among the device's sysfs ancestors."""
        node = path.resolve()
        while node != node.parent:
            if PCI_ADDRESS.fullmatch(node.name) and (node / "vendor").exists() and (node / "device").exists():
                return int((node / "vendor").read_text(), 16), int((node / "device").read_text(), 16)
            node = node.parent
        return None

    def dev_node(self, name: str) -> str | None:
        node = self.root / "dev" / name
        return str(node) if node.exists() else None


@dataclass(frozen=True)
class Mount:
    dev: tuple[int, int]
    target: str
    read_write: bool
    source: str


def mounts(root: str | Path = "/") -> list[Mount]:
    """/proc/self/mountinfo (proc(5)): device number, mount point, rw or ro, source."""
    out = []
    for line in (Path(root) / "proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        major, minor = fields[2].split(":")
        options = fields[5].split(",")
        out.append(Mount((int(major), int(minor)), _unescape(fields[4]), "rw" in options, _unescape(fields[sep + 2])))
    return out


def swaps(root: str | Path = "/") -> list[str]:
    """Swap devices in use, from /proc/swaps."""
    lines = (Path(root) / "proc/swaps").read_text().splitlines()[1:]
    return [_unescape(line.split()[0]) for line in lines if line.strip()]


def block_dev(path: str) -> tuple[int, int] | None:
    """The (major, minor) of a block device node; None for anything else."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (os.major(st.st_rdev), os.minor(st.st_rdev)) if stat.S_ISBLK(st.st_mode) else None


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), text)


def _int(path: Path) -> int:
    return int(path.read_text().strip())


def _dev(path: Path) -> tuple[int, int]:
    major, minor = path.read_text().strip().split(":")
    return int(major), int(minor)
