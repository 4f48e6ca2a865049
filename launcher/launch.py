"""From a chosen candidate to the vmboot-core command line, and the exec.

The image is copied into a sealed memfd (memfd_create(2) with F_SEAL_WRITE,
F_SEAL_GROW, F_SEAL_SHRINK and F_SEAL_SEAL): a private copy that nothing can
change after it was validated, that lives exactly as long as vmboot-core, and
that leaves no file behind. vmboot-core inherits it and opens it as
/proc/self/fd/N.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sys
from pathlib import Path

from vmboot.abi import layout
from vmboot.abi.errors import VmbootError

from .image import KERNEL
from .scan import Candidate, Disk, Usage
from .settings import DISKS_AUTO, DISKS_NONE, DiskSetting, Settings
from .sysfs import block_dev

CORE_NAME = "vmboot-core"
MEMFD_NAME_MAX = 249  # memfd_create(2): the name is at most 249 bytes
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

log = logging.getLogger("vmboot.launcher")


def disks_to_pass(settings: Settings, disks: list[Disk], chosen: Candidate, usage: Usage) -> list[DiskSetting]:
    """The disks the VM gets: the explicit list, none, or (auto) every usable scanned disk but the firmware's."""
    if settings.disks == DISKS_NONE:
        return []
    if settings.disks != DISKS_AUTO:
        for spec in settings.disks:
            _check_explicit(spec, usage)
        return list(settings.disks)
    out = []
    for disk in disks:
        if disk.in_use:
            log.info("not passing %s: %s", disk.path, disk.in_use)
        elif disk is chosen.volume.disk and not settings.pass_firmware_disk:
            log.info("not passing %s: it holds the firmware (--pass-firmware-disk passes it)", disk.path)
        else:
            out.append(DiskSetting(disk.path))
    return out


def _check_explicit(spec: DiskSetting, usage: Usage) -> None:
    if not os.path.exists(spec.path):
        raise VmbootError(f"disk {spec.path}: no such file or device")
    reason = usage.reason(block_dev(spec.path))
    if reason:
        raise VmbootError(f"refusing to pass disk {spec.path} to the VM: it is {reason}")


def core_command(core: str, image_path: str, kind: str, settings: Settings, disks: list[DiskSetting]) -> list[str]:
    argv = [core, "--kernel" if kind == KERNEL else "--firmware", image_path,
            "--memory", f"size={settings.memory // layout.MiB}M", "--cpus", f"boot={settings.cpus}"]
    if settings.serial:
        argv += ["--serial", settings.serial]
    if settings.accel:
        argv += ["--accel", settings.accel]
    for disk in disks:
        argv += ["--disk", disk.core_arg()]
    if settings.nets:
        # vmboot.toml and --net are parsed and checked already, so that a file written for a
        # vmboot-core with virtio-net is validated today; this one cannot pass them on.
        raise VmbootError(f"cannot pass the network device {settings.nets[0]} to the VM: vmboot-core has no "
                          "virtio-net device yet; remove nets from vmboot.toml or drop --net")
    if settings.cmdline is not None:
        argv += ["--cmdline", settings.cmdline]
    return argv


def find_core(explicit: str | None) -> str:
    """--core, else the vmboot-core installed beside this Python (a virtual environment), else the one on PATH."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise VmbootError(f"--core {explicit}: not an executable file")
        return os.path.abspath(explicit)
    beside = Path(sys.executable).parent / CORE_NAME
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(CORE_NAME)
    if not found:
        raise VmbootError(f"{CORE_NAME} not found beside {sys.executable} or on PATH; give --core PATH")
    return os.path.abspath(found)


def seal_image(candidate: Candidate) -> int:
    """A sealed memfd holding the image; inheritable, so that vmboot-core gets it over exec."""
    name = f"vmboot {candidate.where}".encode()[:MEMFD_NAME_MAX].decode(errors="ignore")
    fd = os.memfd_create(name, os.MFD_ALLOW_SEALING)  # no MFD_CLOEXEC
    view = memoryview(candidate.image)
    while view:
        view = view[os.write(fd, view):]
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def exec_core(argv: list[str]) -> None:
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    try:
        os.execv(argv[0], argv)
    except OSError as err:
        raise VmbootError(f"cannot run {argv[0]}: {err.strerror}") from None
