"""With the default flags every device runs in its own sandboxed process: check each one."""
from __future__ import annotations

import os
import re
import signal

import pytest

from vmboot.devices import registry

from .console import Console
from .kernels import write_kernel
from .processes import (
    alive, check_sandboxed, comm, descendants, device_processes, fd_targets, make_fat_disk, status, wait_for_devices,
)

DEVICES = {k.name for k in registry.kinds()}  # a disk among them: the test boots with one
PLATFORM = {k.name for k in registry.kinds(registry.Attach.PLATFORM)}


def test_devices_are_sandboxed_processes_while_the_shell_runs(firmware, tmp_path):
    disk = make_fat_disk(tmp_path / "disk.img", files={"HELLO.TXT": b"sandboxed\n"})
    with Console("--firmware", str(firmware), "--accel", "emulate", "--disk", f"path={disk}") as console:
        console.expect(b"Shell> ", timeout=60)
        core = console.proc.pid
        devices = wait_for_devices(core, DEVICES)
        everything = descendants(core)
        for kind, pid in devices.items():
            check_sandboxed(core, kind, pid)
        # Only the disk device maps guest memory and holds the disk.
        blk = fd_targets(devices["virtio_blk"])
        assert any(t.startswith("/memfd:vmboot-ram") for t in blk) and str(disk) in blk
        for kind in PLATFORM:
            targets = fd_targets(devices[kind])
            assert not any("memfd" in t or str(disk) in t for t in targets), f"{kind}: {targets}"
        # The zygote that forked them, and each device's reaper, keep none of it.
        zygotes = [pid for pid in everything if comm(pid) == "vmboot-zygote"]
        assert len(zygotes) == 1
        held = sorted(re.sub(r"^socket:\[\d+\]$", "socket", os.readlink(f"/proc/{zygotes[0]}/fd/{fd}"))
                      for fd in os.listdir(f"/proc/{zygotes[0]}/fd") if int(fd) > 2)  # past stdio
        assert held == ["anon_inode:[pidfd]"] * len(DEVICES) + ["socket"], held  # its channel, a pidfd per device
        reapers = {comm(pid) for pid in everything if comm(pid).startswith("reap:")}
        assert reapers == {f"reap:{kind}" for kind in DEVICES}
        for pid in everything:
            if comm(pid).startswith("reap:"):
                assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2"], f"{comm(pid)}: {fd_targets(pid)}"
        # The guest sees the disk through the sandboxed device.
        assert "sandboxed" in console.command("type fs0:\\HELLO.TXT")
        console.type("reset -s\r")
        assert console.wait(30) == 0
    assert alive(everything) == set(), "device processes outlived vmboot-core"


def test_kvm_fds_stay_in_the_core(tmp_path):
    # A KVM VM (KVM-PVM runs this small kernel) with sandboxed devices: the core
    # holds /dev/kvm and the VM fd, no device does.
    kernel = write_kernel(tmp_path, "spin", "out_byte 'k'\nspin: pause\njmp spin")
    disk = make_fat_disk(tmp_path / "disk.img")
    with Console("--kernel", str(kernel), "--accel", "kvm", "--disk", f"path={disk}") as console:
        core = console.proc.pid
        devices = wait_for_devices(core, DEVICES)
        core_fds = fd_targets(core)
        assert "/dev/kvm" in core_fds and "anon_inode:kvm-vm" in core_fds
        for kind, pid in devices.items():
            check_sandboxed(core, kind, pid)
        everything = descendants(core)
        console.proc.send_signal(signal.SIGTERM)
        assert console.wait(30) == 4
    assert alive(everything) == set()


def test_inproc_devices_run_in_the_core(firmware):
    with Console("--firmware", str(firmware), "--accel", "emulate", "--devices", "inproc") as console:
        console.expect(b"Shell> ", timeout=60)
        assert device_processes(console.proc.pid) == {}
        assert "UEFI Interactive Shell" in console.command("ver")
        console.type("reset -s\r")
        assert console.wait(30) == 0


@pytest.mark.parametrize("mode, status_line", [("false", "0"), ("log", "2")])
def test_seccomp_flag(firmware, mode, status_line):
    with Console("--firmware", str(firmware), "--accel", "emulate", "--seccomp", mode) as console:
        console.expect(b"Shell> ", timeout=60)
        devices = device_processes(console.proc.pid)
        assert devices and all(status(pid)["Seccomp"] == status_line for pid in devices.values())
        console.type("reset -s\r")
        assert console.wait(30) == 0
