"""vmboot end to end (root): find CloudHv on a GPT disk's XFS partition, boot it, and see the other disk in the shell.

The GPT disk (ext4, a corrupt partition, XFS with CLOUDHV.fd and vmboot.toml)
holds the firmware, so vmboot keeps it from the VM; the MBR disk, whose vfat
partition also holds a firmware (the second candidate), is passed through as a
virtio disk. The EFI shell's ``map`` must show that partition, by the MBR's disk
identifier, start and size.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .console import Console, plain
from .disk_images import (
    MBR_FAT, MBR_LABEL_ID, LoopDevice, gpt_disk_with_xfs_firmware, loops_backed_by, mbr_disk_with_vfat_firmware,
)

pytestmark = pytest.mark.firmware

VMBOOT = [sys.executable, "-m", "vmboot.launcher.cli"]


class LauncherConsole(Console):
    """tests/console.py's Console, driving vmboot (which execs vmboot-core) instead of vmboot-core."""

    def __init__(self, *args: str):
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*VMBOOT, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.buffer = b""
        self.transcript = b""


def test_vmboot_boots_the_found_firmware_with_the_other_disk(firmware, tmp_path):
    if os.geteuid() != 0:
        pytest.fail("this test needs root: it attaches loop devices and vmboot mounts partitions")
    fw = firmware.read_bytes()
    gpt = gpt_disk_with_xfs_firmware(tmp_path / "gpt.img", fw, tmp_path)
    mbr = mbr_disk_with_vfat_firmware(tmp_path / "mbr.img", fw, tmp_path)
    mounts_before = set(Path("/proc/self/mountinfo").read_text().splitlines())
    with LoopDevice(gpt) as g, LoopDevice(mbr) as m:
        gpt_loop, mbr_loop = g.path, m.path
        with LauncherConsole("--accel", "emulate", gpt_loop, mbr_loop) as console:
            console.expect(b"startup.nsh", timeout=60)
            console.expect(b"Shell> ", timeout=30)
            mapping = console.command("map")
            console.type("reset -s\r")
            status = console.wait(30)
            log = console.proc.stderr.read().decode()
    assert status == 0, log
    assert f"vmboot: booting {gpt_loop}#3:/CLOUDHV.fd with disks: {mbr_loop}" in log.splitlines()
    partition = f"HD(1,MBR,{MBR_LABEL_ID:#X},{MBR_FAT[0]:#X},{MBR_FAT[1]:#X})".replace("0X", "0x")
    assert re.search(r"FS0: Alias\(s\):\S+\s+PciRoot\(0x0\)/Pci\(0x[0-9A-F]+,0x0\)/" + re.escape(partition),
                     mapping), plain(console.transcript)[-2000:]
    assert "GPT" not in mapping  # the firmware's own disk stayed with the host
    assert loops_backed_by([str(gpt), str(mbr), gpt_loop, mbr_loop]) == []
    new_mounts = set(Path("/proc/self/mountinfo").read_text().splitlines()) - mounts_before
    assert [line for line in new_mounts if "vmboot-mnt-" in line or " /dev/loop" in line] == []
