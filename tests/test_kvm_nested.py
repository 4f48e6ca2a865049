"""The product path on real KVM: CloudHv and the Debian guest with sandboxed devices, in the nested rig.

Our /dev/kvm is KVM-PVM, which cannot run the firmware; the rig (assets/l1_rig.py) boots an
L1 Linux under the patched QEMU's TCG with AMD SVM, whose kvm_amd gives a real /dev/kvm.
Each test sends one check (tests/kvm_l1.py) into L1 and asserts on what it saw. Nothing is
skipped: an L1 without SVM or kvm_amd fails the first test that needs it, saying why.
"""
from __future__ import annotations

import json
import re
import shlex
import sys

import pytest

from vmboot.assets.guest import guest_dir, load_manifest, parse_console
from vmboot.assets.l1_rig import L1
from vmboot.devices import registry

from .console import Console
from .test_shell import boot_to_prompt

pytestmark = [pytest.mark.firmware, pytest.mark.nested]

PLATFORM = sorted(k.name for k in registry.kinds(registry.Attach.PLATFORM))
CHECK = re.compile(r"^VMBOOT-CHECK (?P<json>\{.*\})$", re.M)


@pytest.fixture(scope="module")
def l1(tmp_path_factory):
    rig = L1(tmp_path_factory.mktemp("l1"), cpus=2)
    rig.start()
    yield rig
    rig.close()


def check(l1: L1, *args: str, timeout: float) -> dict:
    """Run ``python -m vmboot.tests.kvm_l1 ARGS`` in L1 (booting L1 again if an earlier check killed it)."""
    if not l1.alive():
        l1.start()
    res = l1.run(" ".join(shlex.quote(a) for a in (sys.executable, "-m", "vmboot.tests.kvm_l1", *args)), timeout)
    found = CHECK.search(res.output)
    assert found, f"the check in L1 ended with status {res.rc} and no result:\n{res.output[-3000:]}"
    return json.loads(found["json"])


def test_l1_has_a_real_svm_kvm(l1):
    assert re.fullmatch(r"VMBOOT-L1-READY svm=2 nested=1 npt=Y", l1.ready), l1.ready


def test_firmware_shell_on_kvm_with_sandboxed_devices_matches_emulate(l1, firmware):
    seen = check(l1, "shell", "--firmware", str(firmware), "--sandbox", "--commands", "ver", "pci", "memmap",
                 timeout=180)
    assert seen.get("error") is None, seen.get("error") + "\n" + seen["transcript"]
    assert seen["rc"] == 0 and seen["stderr"] == "", seen
    assert "UEFI Interactive Shell v2.2" in seen["ver"] and "UEFI v2.70 (EDK II, 0x00010000)" in seen["ver"]
    # Every platform device ran in its own sandbox on KVM too, and only the core holds KVM's fds.
    assert seen["sandbox"]["devices"] == PLATFORM
    assert seen["sandbox"]["errors"] == []
    assert {"/dev/kvm", "anon_inode:kvm-vm", "anon_inode:kvm-vcpu:0"} <= set(seen["sandbox"]["core_fds"])
    # The firmware sees the same machine on both backends.
    with Console("--firmware", str(firmware), "--accel", "emulate") as console:
        boot_to_prompt(console)
        emulated = {command: console.command(command) for command in ("pci", "memmap")}
        console.type("reset -s\r")
        assert console.wait(30) == 0
    assert seen["pci"] == emulated["pci"]
    assert kept_memory(seen["memmap"]) == kept_memory(emulated["memmap"])


# Memory types that outlive ExitBootServices (UEFI 2.9, 7.2 EFI_MEMORY_TYPE), and the total.
KEPT = ("Reserved", "RT_Code", "RT_Data", "ACPI_Recl", "ACPI_NVS", "MMIO", "Total Memory")


def kept_memory(memmap: str) -> list[str]:
    """The memmap lines of the types an OS keeps, by type and size and attributes, without addresses:
    where PEI puts its memory depends on the CPU's paging features (CPUID 80000001h:EDX[26], 1 GiB
    pages: KVM has them, the emulated CPU not), which moves every allocation by the same amount."""
    kept = []
    for line in memmap.splitlines():
        if line.strip().startswith(KEPT):
            parts = line.split()
            kept.append(" ".join(parts[:1] + parts[2:]) if "-" in line and len(parts) == 4 else line.strip())
    assert len(kept) > 10, memmap
    return kept


def test_a_killed_stateless_device_is_restarted_mid_boot_on_kvm(l1, firmware):
    seen = check(l1, "shell", "--firmware", str(firmware), "--kill", "pmtimer", "--kill-after", "1.5", timeout=180)
    assert seen.get("error") is None, seen.get("error") + "\n" + seen["transcript"]
    killed = seen["killed"]
    assert killed["at"] < seen["countdown_s"], "the device was killed after the boot, not during it"
    assert killed["now"] not in (None, killed["pid"]), killed
    assert seen["stderr"] == "vmboot-core: device pmtimer killed by SIGKILL; restarting it\n"
    assert seen["rc"] == 0


# (vCPUs, who carries virtio's kicks and interrupts): the kernel (ioeventfd and irqfd), or the core.
@pytest.mark.parametrize("cpus, eventfds", [(1, "kernel"), (2, "core")])
def test_debian_guest_on_kvm_from_virtio_disks(l1, firmware, cpus, eventfds):
    images = guest_dir()
    manifest = load_manifest(images)
    seen = check(l1, "guest", "--firmware", str(firmware), "--images", str(images),
                 "--work", f"{L1.GUEST_SCRATCH}/guest-{cpus}", "--cpus", str(cpus), "--virtio-eventfds", eventfds,
                 "--timeout", "240", timeout=300)
    console = seen["console"]
    assert seen["rc"] == 0, f"{seen['stderr']}\n{console[-3000:]}"
    assert seen["stderr"] == ""
    assert console.count("Linux version 6.1.0") == 1, "the guest rebooted"
    report = parse_console(console)
    assert report.failures == []
    assert report.clocksource == "kvm-clock"
    assert report.cpus == ("0" if cpus == 1 else f"0-{cpus - 1}")
    assert f"smp: Brought up 1 node, {cpus} CPU" in console
    assert report.disks == {"vda": manifest["esp"]["size"], "vdb": manifest["data"]["size"]}
    assert report.data_sha256 == manifest["pattern"]["sha256"]
    assert (report.wrote, seen["hello"]) == ("HELLO.TXT", manifest["hello"]["text"])
    assert "reboot: Power down" in console
    # With the kernel's eventfds, the virtio data path never reached the core's Python: ioeventfd
    # took every kick and irqfd every interrupt, for all the block requests the guest counted.
    # With the core's, each kick was an exit and each interrupt the relay thread's.
    assert min(report.requests.values()) > 10, report.requests
    counts = {disk: (int(kicks), int(interrupts)) for disk, kicks, interrupts in re.findall(
        r"^virtio (disk\d): (\d+) kicks through MMIO exits, (\d+) interrupts sent by the core$", seen["stats"], re.M)}
    assert set(counts) == {"disk0", "disk1"}, seen["stats"]
    if eventfds == "kernel":
        assert set(counts.values()) == {(0, 0)}, seen["stats"]
    else:
        assert all(kicks > 10 and interrupts > 10 for kicks, interrupts in counts.values()), seen["stats"]
