"""vmboot on real loop devices (root): GPT with ext4, a corrupt partition and XFS; MBR with vfat; a bad firmware.

The images are made at test time (tests/disk_images.py), attached without
partition scanning (these machines make no /dev/loopNpM nodes, so vmboot
reaches partitions through offsets), and detached afterwards even when a test
fails. Every vmboot run is checked for leftovers: no mount, no loop device.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .disk_images import (
    LINUX_FS, LoopDevice, ext4_image, fat_in, gpt_disk_with_bad_firmware, gpt_disk_with_xfs_firmware, loops_backed_by,
    mbr_disk_with_vfat_firmware, partition, sparse_file, splice,
)

pytestmark = pytest.mark.firmware

MiB = 1 << 20
VMBOOT = [sys.executable, "-m", "vmboot.launcher.cli"]
CORE = str(Path(sys.executable).parent / "vmboot-core")
NOT_PVH = Path("/bin/true")  # an ELF, but without the PVH entry note


@dataclass
class Disks:
    gpt: str
    mbr: str
    bad: str
    bare: str  # ext4 on the whole device, no partition table, /boot/CLOUDHV.fd
    images: list[str]


@pytest.fixture(scope="module")
def disks(tmp_path_factory, firmware):
    if os.geteuid() != 0:
        pytest.fail("these tests need root: they attach loop devices and vmboot mounts partitions")
    tmp = tmp_path_factory.mktemp("launcher-disks")
    fw = firmware.read_bytes()
    images = [
        gpt_disk_with_xfs_firmware(tmp / "gpt.img", fw, tmp),
        mbr_disk_with_vfat_firmware(tmp / "mbr.img", fw, tmp),
        gpt_disk_with_bad_firmware(tmp / "bad.img", NOT_PVH.read_bytes(), tmp),
        ext4_image(tmp / "bare.img", 64 * MiB, {"/boot/CLOUDHV.fd": fw}, tmp),
    ]
    with contextlib.ExitStack() as stack:
        loops = [stack.enter_context(LoopDevice(image)).path for image in images]
        yield Disks(*loops, images=[str(i) for i in images])
    assert loops_backed_by([str(i) for i in images]) == []


def host_mounts() -> list[str]:
    return Path("/proc/self/mountinfo").read_text().splitlines()


def vmboot(disks: Disks, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run vmboot; then check that it left no mount and no loop device behind."""
    before = set(host_mounts())
    proc = subprocess.run([*VMBOOT, *args], capture_output=True, text=True, timeout=timeout)
    check_no_leftovers(disks, before)
    return proc


def check_no_leftovers(disks: Disks, mounts_before: set[str]) -> None:
    ours = [disks.gpt, disks.mbr, disks.bad, disks.bare]
    deadline = time.monotonic() + 5  # an auto-clearing loop device goes when its last user has gone
    while loops_backed_by(disks.images + ours) != sorted(ours) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loops_backed_by(disks.images + ours) == sorted(ours), "vmboot left a loop device attached"
    new = [m for m in set(host_mounts()) - mounts_before
           if "vmboot-mnt-" in m or any(f" {d} " in m for d in ours) or " /dev/loop" in m]
    assert new == [], "vmboot left a mount behind"
    assert not [p for p in Path("/tmp").glob("vmboot-mnt-*")], "vmboot left a mount point directory"


def test_gpt_disk_lists_only_the_xfs_firmware(disks):
    proc = vmboot(disks, "--list", disks.gpt)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"1  {disks.gpt}#3:/CLOUDHV.fd  xfs  firmware  4096KiB  /vmboot.toml"]
    log = proc.stderr.splitlines()
    assert log[0] == f"vmboot: scanning {disks.gpt}: GPT, 3 partitions"
    assert log[1] == f"vmboot: searched {disks.gpt}#1 (ext4): no CLOUDHV.fd"
    assert re.fullmatch(rf"vmboot: warning: skipped {disks.gpt}#2 \(ext4\): cannot mount ext4: .+", log[2]), log
    assert log[3] == f"vmboot: found 1: {disks.gpt}#3:/CLOUDHV.fd (xfs firmware, 4096 KiB, with vmboot.toml)"
    assert len(log) == 4


def test_mbr_disk_lists_the_vfat_firmware(disks):
    proc = vmboot(disks, "--list", disks.mbr)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"1  {disks.mbr}#1:/EFI/vmboot/CLOUDHV.fd  vfat  firmware  4096KiB  -"]


def test_disk_with_a_bad_firmware_file_rejects_it(disks):
    proc = vmboot(disks, "--list", disks.bad)
    assert (proc.returncode, proc.stdout) == (5, "")
    assert proc.stderr.splitlines()[-2:] == [
        f"vmboot: warning: rejected {disks.bad}#1:/boot/CLOUDHV.fd: ELF has no PVH entry point (no 'Xen' note "
        f"of type XEN_ELFNOTE_PHYS32_ENTRY); it is not a PVH firmware or kernel",
        "vmboot: no usable firmware found (1 rejected, see above)",
    ]


def test_unpartitioned_ext4_disk_is_mounted_whole(disks):
    proc = vmboot(disks, "--list", disks.bare)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"1  {disks.bare}:/boot/CLOUDHV.fd  ext4  firmware  4096KiB  -"]


def test_all_disks_in_the_order_given(disks):
    proc = vmboot(disks, "--list", disks.bad, disks.mbr, disks.gpt, disks.bare)
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[1] for line in proc.stdout.splitlines()] == [
        f"{disks.mbr}#1:/EFI/vmboot/CLOUDHV.fd", f"{disks.gpt}#3:/CLOUDHV.fd", f"{disks.bare}:/boot/CLOUDHV.fd"]


def test_dry_run_builds_the_command(disks):
    proc = vmboot(disks, "--dry-run", disks.gpt, disks.mbr, disks.bad)
    assert proc.returncode == 0, proc.stderr
    command = re.sub(r"/proc/self/fd/\d+", "/proc/self/fd/N", proc.stdout.strip())
    assert command == (f"{CORE} --firmware /proc/self/fd/N --memory size=768M --cpus boot=1 "
                       f"--disk path={disks.mbr} --disk path={disks.bad}")
    log = proc.stderr.splitlines()
    assert f"vmboot: not passing {disks.gpt}: it holds the firmware (--pass-firmware-disk passes it)" in log
    assert f"vmboot: booting {disks.gpt}#3:/CLOUDHV.fd with disks: {disks.mbr}, {disks.bad}" in log


def test_dry_run_with_device_picks_the_mbr_firmware(disks):
    proc = vmboot(disks, "--dry-run", "--device", f"{disks.mbr}#1", "--memory", "1G", disks.gpt, disks.mbr)
    assert proc.returncode == 0, proc.stderr
    command = re.sub(r"/proc/self/fd/\d+", "/proc/self/fd/N", proc.stdout.strip())
    assert command == f"{CORE} --firmware /proc/self/fd/N --memory size=1024M --cpus boot=1 --disk path={disks.gpt}"


def test_scan_of_sys_class_block_finds_the_loop_devices(disks):
    """Without arguments vmboot walks /sys/class/block; the root disk, mounted read-write, is left alone."""
    proc = vmboot(disks, "--list")
    assert proc.returncode == 0, proc.stderr
    wanted = [f"{disks.gpt}#3:/CLOUDHV.fd", f"{disks.mbr}#1:/EFI/vmboot/CLOUDHV.fd", f"{disks.bare}:/boot/CLOUDHV.fd"]
    listed = [line.split()[1] for line in proc.stdout.splitlines()]
    ours = [w for w in listed if w in wanted]  # other loop devices on this host may hold firmware too
    by_loop_number = sorted(wanted, key=lambda w: int(re.match(r"/dev/loop(\d+)", w)[1]))
    assert ours == by_loop_number
    root = next(fields[fields.index("-") + 2] for fields in map(str.split, host_mounts()) if fields[4] == "/")
    if root.startswith("/dev/") and not os.path.islink(root):  # the whole disk, or its partition's node
        assert f"vmboot: skipped {root}: mounted read-write at /" in proc.stderr.splitlines()


def test_a_disk_mounted_read_write_is_neither_read_nor_passed(disks, tmp_path):
    image = ext4_image(tmp_path / "busy.img", 32 * MiB, {"/CLOUDHV.fd": b"not read"}, tmp_path)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with LoopDevice(image) as loop:
        busy = loop.path
        subprocess.run(["mount", "-t", "ext4", busy, str(mountpoint)], check=True, capture_output=True)
        try:
            proc = subprocess.run([*VMBOOT, "--dry-run", disks.gpt, busy], capture_output=True, text=True,
                                  timeout=120)
        finally:
            subprocess.run(["umount", str(mountpoint)], check=True, capture_output=True)
    assert proc.returncode == 0, proc.stderr
    log = proc.stderr.splitlines()
    assert f"vmboot: skipped {busy}: mounted read-write at {mountpoint}" in log
    assert f"vmboot: not passing {busy}: mounted read-write at {mountpoint}" in log
    assert "--disk" not in proc.stdout


def test_symbolic_links_on_the_disk_are_not_followed(disks, tmp_path, firmware):
    """A link on a mounted disk would resolve against the host's root: /CLOUDHV.fd -> the host's own firmware."""
    tree = tmp_path / "tree"
    (tree / "EFI").mkdir(parents=True)
    (tree / "CLOUDHV.fd").symlink_to(firmware)
    (tree / "boot").symlink_to(firmware.parent)  # /boot/CLOUDHV.fd through a linked directory
    image = tmp_path / "links.img"
    with open(image, "wb") as f:
        f.truncate(32 * MiB)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-d", str(tree), str(image)], check=True, capture_output=True)
    with LoopDevice(image) as loop:
        proc = subprocess.run([*VMBOOT, "--list", loop.path], capture_output=True, text=True, timeout=120)
        path = loop.path
    assert (proc.returncode, proc.stdout) == (5, ""), proc.stderr
    assert proc.stderr.splitlines()[-3:] == [
        f"vmboot: warning: rejected {path}:/CLOUDHV.fd: a symbolic link (not followed)",
        f"vmboot: warning: rejected {path}:/boot/CLOUDHV.fd: /boot is a symbolic link (not followed)",
        "vmboot: no usable firmware found (2 rejected, see above)",
    ]


def test_without_root_a_mount_failure_is_reported_and_fat_still_read(firmware, tmp_path):
    """As an unprivileged user the XFS/ext4 mounts fail: each is reported, the FAT partition is still read."""
    if os.geteuid() != 0:
        pytest.fail("this test needs root to run vmboot as the user nobody")
    shared = Path(tempfile.mkdtemp(prefix="vmboot-test-"))  # pytest's tmp_path is private to root
    try:
        shared.chmod(0o755)
        image = sparse_file(shared / "mixed.img", 64 * MiB)
        partition(image, f"label: gpt\nstart=2048, size=40960, type={LINUX_FS}\nstart=43008, size=20480, "
                         f"type=uefi\n")
        splice(ext4_image(tmp_path / "p1.ext4", 40960 * 512, {"/CLOUDHV.fd": firmware.read_bytes()}, tmp_path),
               image, 2048)
        fat_in(image, 43008, 20480, {"/EFI/vmboot/CLOUDHV.fd": firmware.read_bytes()}, tmp_path)
        image.chmod(0o644)
        proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *VMBOOT, "--list",
                               str(image)], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(shared)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"1  {image}#2:/EFI/vmboot/CLOUDHV.fd  vfat  firmware  4096KiB  -"]
    assert (f"vmboot: warning: skipped {image}#1 (ext4): unshare(CLONE_NEWNS): Operation not permitted "
            f"(mounting needs root)") in proc.stderr.splitlines()
