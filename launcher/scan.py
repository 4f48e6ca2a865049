"""Find firmware candidates on block devices and image files.

Disks come from the command line (block devices, partitions or image files, in
the order given) or from /sys/class/block (whole disks, in natural name order:
sda, sdb, ..., sdz, sdaa). A disk is skipped when it is empty, a RAM disk, or
behind a blocked PCI device; it is scanned but never passed to the VM when it
or one of its partitions is mounted, used as swap, or held by device-mapper or
md. A disk or partition mounted read-write is not read at all.

Each partition (or the whole disk when it has no partition table) is probed for
a file system. FAT and ISO 9660 are read in user space; XFS and ext4 are
mounted read-only in a private mount namespace (mountns.py). A failure is
reported and skipped, never fatal. In each file system vmboot looks for the
firmware name (CLOUDHV.fd unless --name says otherwise) in /, /boot/ and
/EFI/vmboot/, in that order, and for a vmboot.toml beside it.
"""
from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field

from vmboot.abi.errors import VmbootError

from . import fsprobe, mountns
from .fat import FatError, FatVolume
from .image import KERNEL, classify
from .iso9660 import IsoError, IsoVolume
from .partitions import PartitionTableError, read_partition_table
from .region import OpenDisk, Region, RegionError
from .settings import CONFIG_NAME, ConfigError, Settings, line_of, parse_config
from .sysfs import Mount, SysBlock, SysDisk, block_dev

DEFAULT_NAME = "CLOUDHV.fd"
SEARCH_DIRS = ("/", "/boot/", "/EFI/vmboot/")
IMAGE_LIMIT = 256 << 20  # bytes of firmware or kernel we are willing to read
CONFIG_LIMIT = 64 << 10

log = logging.getLogger("vmboot.launcher")


class ScanError(VmbootError):
    """An argument names something that cannot be scanned at all."""


@dataclass
class Disk:
    path: str  # what vmboot-core would get: /dev/sdb, /abs/path/disk.img
    size: int
    sys: SysDisk | None = None
    in_use: str | None = None  # why it must not be passed to the VM
    wanted: bool = True  # False: only one of its partitions was named on the command line


@dataclass
class Volume:
    disk: Disk
    number: int | None  # partition number; None: the whole disk, or a partition named by its node
    offset: int
    size: int
    node: str | None = None  # the kernel's device node for it (/dev/sdb1), when there is one

    @property
    def label(self) -> str:
        if self.node:
            return self.node
        return self.disk.path if self.number is None else f"{self.disk.path}#{self.number}"


@dataclass
class Candidate:
    volume: Volume
    fstype: str
    path: str  # inside the file system
    image: bytes
    kind: str  # image.FIRMWARE or image.KERNEL
    config_path: str | None = None
    settings: Settings | None = None
    config_error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.volume.label}:{self.path}"


@dataclass
class ScanResult:
    disks: list[Disk] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # one line each: where and why
    unreadable: list[str] = field(default_factory=list)  # disks and partitions that failed to read or mount


class Usage:
    """What the host already uses: mounted file systems, swap, device-mapper or md holders."""

    def __init__(self, mounts: list[Mount], swaps: list[str]):
        self.mounted: dict[tuple[int, int], Mount] = {}
        for m in mounts:
            source_dev = block_dev(m.source) if m.source.startswith("/dev/") else None
            for dev in {m.dev, source_dev} - {None}:
                if dev not in self.mounted or m.read_write:
                    self.mounted[dev] = m
        self.swap = {d for d in map(block_dev, swaps) if d}

    def rw_mount(self, dev: tuple[int, int] | None) -> Mount | None:
        m = self.mounted.get(dev)
        return m if m and m.read_write else None

    def reason(self, dev: tuple[int, int] | None, holders: list[str] = ()) -> str | None:
        if dev in self.mounted:
            m = self.mounted[dev]
            return f"mounted {'read-write' if m.read_write else 'read-only'} at {m.target}"
        if dev in self.swap:
            return "in use as swap"
        if holders:
            return f"held by {', '.join(holders)}"
        return None


class Scanner:
    def __init__(self, sysblock: SysBlock, usage: Usage, names: tuple[str, ...] = (DEFAULT_NAME,),
                 blocklist: frozenset[tuple[int, int]] = frozenset(), mount_timeout: float = mountns.MOUNT_TIMEOUT):
        self.sys = sysblock
        self.usage = usage
        self.names = names
        self.blocklist = blocklist
        self.mount_timeout = mount_timeout

    # --- what to scan ---

    def scan(self, paths: list[str] | None = None) -> ScanResult:
        result = ScanResult()
        targets = self._from_sysfs() if not paths else [self._from_path(p) for p in paths]  # check all first
        seen: set[tuple[str, int | None]] = set()
        for disk, volumes in targets:
            if disk is None:
                continue
            key = (os.path.realpath(disk.path), volumes[0].number if volumes else None)
            if paths and key in seen:  # the same disk or partition named twice on the command line
                log.info("skipped %s: given twice", volumes[0].label if volumes else disk.path)
                continue
            seen.add(key)
            if disk.wanted:
                result.disks.append(disk)
            self._scan_disk(disk, volumes, result)
        return result

    def _from_sysfs(self):
        """(disk, None) for each whole disk, lazily, so that the log follows the scan."""
        for sd in self.sys.disks():
            yield self._sys_disk(sd, self.sys.dev_node(sd.name) or f"/dev/{sd.name}"), None

    def _sys_disk(self, sd: SysDisk, path: str) -> Disk | None:
        if sd.size == 0:
            log.debug("skipped %s: empty (size 0)", path)  # unattached loop devices: many, and not news
            return None
        if sd.pci in self.blocklist:
            log.info("skipped %s: PCI device %04x:%04x is on the --block list", path, *sd.pci)
            return None
        reason = self.usage.reason(sd.dev, sd.holders)
        for part in sd.partitions:
            reason = reason or self.usage.reason(part.dev, self._holders(part.name))
        return Disk(path, sd.size, sd, reason)

    def _holders(self, name: str) -> list[str]:
        path = self.sys.class_block / name / "holders"
        return sorted(os.listdir(path)) if path.is_dir() else []

    def _from_path(self, path: str) -> tuple[Disk | None, list[Volume] | None]:
        try:
            st = os.stat(path)
        except OSError as err:
            raise ScanError(f"{path}: {err.strerror}") from None
        if stat.S_ISREG(st.st_mode):
            return Disk(os.path.abspath(path), st.st_size), None
        if not stat.S_ISBLK(st.st_mode):
            raise ScanError(f"{path}: not a block device or a disk image file")
        dev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        disk_name, part_name = self.sys.by_dev(dev)
        sd = self.sys.disk(disk_name)
        if part_name is None:
            return self._sys_disk(sd, path), None
        disk = self._sys_disk(sd, self.sys.dev_node(disk_name) or f"/dev/{disk_name}")
        if disk is None:
            return None, None
        disk.wanted = False  # only this partition was asked for
        part = next(p for p in sd.partitions if p.name == part_name)
        return disk, [Volume(disk, part.number, part.start, part.size, path)]

    # --- scanning ---

    def _scan_disk(self, disk: Disk, volumes: list[Volume] | None, result: ScanResult) -> None:
        if disk.sys and self.usage.rw_mount(disk.sys.dev):
            log.info("skipped %s: mounted read-write at %s", disk.path, self.usage.rw_mount(disk.sys.dev).target)
            return
        try:
            opened = OpenDisk(disk.path)
        except RegionError as err:
            log.warning("skipped %s: %s", disk.path, err)
            result.unreadable.append(disk.path)
            return
        with opened:
            if volumes is None:
                volumes = self._volumes(disk, opened, result)
            for volume in volumes:
                self._scan_volume(volume, opened.region, result)

    def _volumes(self, disk: Disk, opened: OpenDisk, result: ScanResult) -> list[Volume]:
        try:
            table = read_partition_table(opened.region, opened.sector_size if opened.is_block else None)
        except (PartitionTableError, RegionError) as err:
            log.warning("skipped %s: %s", disk.path, err)
            result.unreadable.append(disk.path)
            return []
        for warning in table.warnings:
            log.warning("%s: %s", disk.path, warning)
        if table.scheme == "none":
            log.info("scanning %s: no partition table", disk.path)
            return [Volume(disk, None, 0, opened.region.size, None)]
        log.info("scanning %s: %s, %d partition%s", disk.path, table.scheme.upper(), len(table.partitions),
                 "" if len(table.partitions) == 1 else "s")
        nodes = {(p.start, p.size): p for p in disk.sys.partitions} if disk.sys else {}
        volumes = []
        for part in table.partitions:
            sp = nodes.get((part.start, part.size))
            volumes.append(Volume(disk, part.number, part.start, part.size, sp and self.sys.dev_node(sp.name)))
        return volumes

    def _scan_volume(self, volume: Volume, disk_region: Region, result: ScanResult) -> None:
        part_dev = self._node_dev(volume)
        if part_dev and self.usage.rw_mount(part_dev):
            log.info("skipped %s: mounted read-write at %s", volume.label, self.usage.rw_mount(part_dev).target)
            return
        try:
            region = disk_region.sub(volume.label, volume.offset, volume.size)
        except RegionError as err:
            log.warning("skipped %s: %s", volume.label, err)
            return
        fstype = fsprobe.probe(region)
        if fstype is None:
            log.info("skipped %s: no file system vmboot recognises", volume.label)
            return
        if fstype not in fsprobe.SUPPORTED:
            log.info("skipped %s: %s is not supported", volume.label, fstype)
            return
        wanted = [d + n for d in SEARCH_DIRS for n in self.names]
        configs = [d + CONFIG_NAME for d in SEARCH_DIRS]
        try:
            files = self._read_files(volume, region, fstype, wanted + configs)
        except (FatError, IsoError, mountns.MountError, RegionError) as err:
            log.warning("skipped %s (%s): %s", volume.label, fstype, err)
            result.unreadable.append(volume.label)
            return
        present = [path for path in wanted if files[path] != (None, None)]
        if not present:
            log.info("searched %s (%s): no %s", volume.label, fstype, " or ".join(self.names))
        for path in present:
            data, error = files[path]
            if error:
                self._reject(result, f"{volume.label}:{path}: {error}")
            else:
                self._candidate(volume, fstype, path, data, files, result)

    def _node_dev(self, volume: Volume) -> tuple[int, int] | None:
        return block_dev(volume.node) if volume.node else None

    def _read_files(self, volume: Volume, region: Region, fstype: str, paths: list[str]) -> dict:
        """{path: (bytes or None, error or None)}; (None, None) when absent."""
        wanted = [(path, CONFIG_LIMIT if path.endswith("/" + CONFIG_NAME) else IMAGE_LIMIT) for path in paths]
        if fstype in (fsprobe.VFAT, fsprobe.ISO9660):
            fs = FatVolume(region) if fstype == fsprobe.VFAT else IsoVolume(region)
            out = {}
            for path, limit in wanted:
                entry = fs.lookup(path)
                if entry is None:
                    out[path] = (None, None)
                elif entry.is_dir:
                    out[path] = (None, "not a regular file")
                elif entry.size > limit:
                    out[path] = (None, f"{entry.size} bytes, more than the {limit}-byte limit")
                else:
                    out[path] = (fs.read_file(entry), None)
            return out
        if volume.node:
            source, offset, size = volume.node, 0, volume.size
        else:
            source, offset, size = volume.disk.path, volume.offset, volume.size
        found = mountns.read_files(source, offset, size, fstype, wanted, self.mount_timeout)
        return {f.path: (f.data, f.error) for f in found}

    def _candidate(self, volume: Volume, fstype: str, path: str, data: bytes, files: dict,
                   result: ScanResult) -> None:
        where = f"{volume.label}:{path}"
        try:
            kind = classify(where, data)
        except VmbootError as err:
            self._reject(result, str(err))
            return
        candidate = Candidate(volume, fstype, path, data, kind)
        config_path = path.rsplit("/", 1)[0] + "/" + CONFIG_NAME
        text, error = files.get(config_path, (None, None))
        config_where = f"{volume.label}:{config_path}"
        if error:
            candidate.config_path, candidate.config_error = config_path, f"{config_where}: {error}"
        elif text is not None:
            candidate.config_path = config_path
            try:
                candidate.settings = _parse(text, config_where, kind)
            except ConfigError as err:
                candidate.config_error = str(err)
        result.candidates.append(candidate)
        log.info("found %d: %s (%s %s, %d KiB%s)", len(result.candidates), where, fstype, kind, len(data) >> 10,
                 f", with {CONFIG_NAME}" if candidate.config_path else "")
        if candidate.config_error:
            log.warning("%s", candidate.config_error)

    def _reject(self, result: ScanResult, message: str) -> None:
        result.rejected.append(message)
        log.warning("rejected %s", message)


def _parse(raw: bytes, where: str, kind: str) -> Settings:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{where} line {line}: not UTF-8 text") from None
    settings = parse_config(text, where)
    if settings.cmdline is not None and kind != KERNEL:
        raise ConfigError(f"{where} line {line_of(text, 'cmdline')}: cmdline is for a Linux kernel, "
                          f"and this image is a {kind}")
    return settings
