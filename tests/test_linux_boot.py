"""A real OS from a virtio disk through the firmware: CloudHv boots a Debian kernel (UKI)
on the emulate backend, its initramfs checks what it was given and powers off."""
from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import time

import pytest

from vmboot.assets.guest import fresh_copy, guest_dir, load_manifest, parse_console

pytestmark = pytest.mark.firmware

ACPI_TROUBLE = re.compile(r"ACPI (BIOS )?(Error|Warning)|ACPI Exception|\bAE_[A-Z_]+|acpi.*fail", re.I)
# The one expected note: the platform offers no ECAM (the firmware uses port 0xCF8: edk2's
# OvmfPkg/CloudHv/CloudHvX64.dsc links PciLib to BasePciLibCf8; see core/acpi/mcfg.py),
# so Linux says it cannot reach extended configuration space, as on QEMU's i440fx machine.
NO_ECAM = "acpi PNP0A03:00: fail to add MMCONFIG information, can't access extended PCI configuration space"


@pytest.fixture(scope="module")
def images():
    return guest_dir()


@pytest.mark.parametrize("devices", ["sandboxed", "inproc"])
def test_linux_boots_from_the_disk_and_powers_off(firmware, images, tmp_path, devices):
    manifest = load_manifest(images)
    disks = fresh_copy(tmp_path, images)
    serial = tmp_path / "serial.log"
    started = dt.datetime.now(dt.timezone.utc)
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "vmboot.core.cli", "--firmware", str(firmware), "--accel", "emulate",
         "--devices", devices, "--disk", f"path={disks.esp}", "--disk", f"path={disks.data}",
         "--serial", f"file={serial}"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    elapsed = time.monotonic() - t0
    console = serial.read_text(errors="replace")
    assert proc.returncode == 0, f"{proc.stderr}\n{console[-3000:]}"
    assert proc.stderr == ""

    # The firmware booted the UKI from the first virtio disk.
    assert "BdsDxe: starting Boot0001" in console
    assert "EFI stub: Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path" in console
    assert console.count("Linux version 6.1.0") == 1, "the guest rebooted"
    assert "Run /init as init process" in console

    report = parse_console(console)
    assert report.failures == []
    assert {"FACP", "DSDT", "APIC"} <= set(report.acpi)
    assert report.disks == {"vda": manifest["esp"]["size"], "vdb": manifest["data"]["size"]}
    rtc = dt.datetime.strptime(report.rtc, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
    assert started - dt.timedelta(seconds=5) <= rtc <= started + dt.timedelta(seconds=elapsed + 5)
    # A calibrated TSC (the switch from tsc-early to tsc waits on the watchdog, which a loaded host can
    # delay past /init) or the PM timer; never jiffies, which would mean no usable timer was found.
    assert report.clocksource in ("tsc-early", "tsc", "acpi_pm")
    assert report.data_sha256 == manifest["pattern"]["sha256"]
    assert report.wrote == "HELLO.TXT"
    assert "reboot: Power down" in console

    # No ACPI complaint in the kernel log.
    trouble = [line for line in console.splitlines() if ACPI_TROUBLE.search(line)]
    assert [line for line in trouble if NO_ECAM not in line] == []
    assert len(trouble) == 1, "Linux found an ECAM it should not have"

    # The guest's write is on the disk image.
    hello = subprocess.run(["mtype", "-i", str(disks.data), "::/HELLO.TXT"], capture_output=True, check=True)
    assert hello.stdout.decode() == manifest["hello"]["text"]


def test_the_devices_of_a_linux_boot_need_nothing_their_policies_refuse(firmware, images, tmp_path):
    """Every device under strace through a whole Linux boot: each syscall it made after
    seccomp is one its policy allows, with those arguments. (The policies' own test proves
    each line needed on the real processes, tests/test_policy_proof.py; a boot does not use them all.)"""
    from vmboot.policies.compiler import device_names, load_policy
    from vmboot.policies.trace import prove, read_traces

    disks = fresh_copy(tmp_path, images)
    traces = tmp_path / "traces"
    traces.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "vmboot.core.cli", "--firmware", str(firmware), "--accel", "emulate",
         "--disk", f"path={disks.esp}", "--disk", f"path={disks.data}",
         "--serial", f"file={tmp_path / 'serial.log'}"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        env=dict(os.environ, VMBOOT_DEVICE_TRACE=str(traces)))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in traces.iterdir()) == [
        "debugcon.strace", "pmtimer.strace", "rtc.strace", "serial.strace",
        "virtio_blk.1.strace", "virtio_blk.strace"]  # one file per process: two disks

    names = device_names()
    proof = prove({n: load_policy(n) for n in names}, read_traces(traces, names))
    assert proof.untraced == []
    assert {n: dict(m) for n, m in proof.missing.items()} == {n: {} for n in names}
    assert proof.refused == {n: {} for n in names}
    used = {n: proof.traced[n].used() for n in names}
    assert used["virtio_blk"]["preadv2"] > 100 and used["virtio_blk"]["pwritev2"] > 0  # the guest's write
    assert proof.traced["virtio_blk"].files == 2
    # The kernel's console went through the traced device: an OUTPUT event at least per line
    # (about 350 of them; the bytes of a line come in batches, and LSR, IER, MCR and MSR are mirrored).
    assert used["serial"]["sendto"] > 300
