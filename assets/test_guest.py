"""The guest images: their pieces, what the build made, and a boot under QEMU + OVMF.

The boot tests validate the images without vmboot: Debian's QEMU (TCG) and OVMF
boot copies of them, and the guest's report and the data disk are checked.
The first run builds the images (downloads about 70 MiB from Debian).
"""
from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vmboot.abi.errors import VmbootError
from vmboot.assets import bootimage, guest

OVMF = Path("/usr/share/ovmf/OVMF.fd")
QEMU = "qemu-system-x86_64"
BOOT_TIMEOUT = 150  # seconds; a boot takes about 9 s under TCG on 2 cores


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(args, capture_output=True, check=True, env=env, **kw)


def mtools_read(image: Path, name: str) -> bytes:
    return run(["mtype", "-i", str(image), f"::/{name}"]).stdout


@pytest.fixture(scope="module")
def built() -> Path:
    return guest.guest_dir()


@pytest.fixture(scope="module")
def manifest(built) -> dict:
    return json.loads((built / guest.MANIFEST_NAME).read_text())


@pytest.fixture(scope="module")
def uki(built, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uki") / "BOOTX64.EFI"
    run(["mcopy", "-i", str(built / guest.ESP_NAME), f"::/{guest.BOOT_PATH}", str(out)])
    return out


def section(image: Path, name: str, tmp_path: Path) -> bytes:
    out = tmp_path / f"section{name}"
    run(["objcopy", "-O", "binary", f"--only-section={name}", str(image), str(out)])
    return out.read_bytes()


# ---------------------------------------------------------------- pieces


def test_pattern_is_a_sha256_counter_stream():
    assert guest.pattern(64) == (hashlib.sha256(b"vmboot-pattern 0").digest()
                                 + hashlib.sha256(b"vmboot-pattern 1").digest())
    assert guest.pattern(40) == guest.pattern(64)[:40]
    data = guest.pattern()
    assert len(data) == guest.PATTERN_SIZE == 1 << 20
    sectors = {data[i:i + 512] for i in range(0, len(data), 512)}
    assert len(sectors) == len(data) // 512  # a misplaced sector cannot go unnoticed


MODULES_DEP = """\
kernel/fs/fat/fat.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko \
kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/fs/nls/nls_cp437.ko:
kernel/drivers/char/hw_random/virtio-rng.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
"""


def test_module_order_loads_dependencies_first_each_once():
    order = guest.module_load_order(MODULES_DEP, ("virtio_pci", "virtio_blk", "vfat", "virtio_rng"))
    assert order == [
        "kernel/drivers/virtio/virtio_ring.ko",
        "kernel/drivers/virtio/virtio.ko",
        "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
        "kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
        "kernel/drivers/virtio/virtio_pci.ko",
        "kernel/drivers/block/virtio_blk.ko",
        "kernel/fs/fat/fat.ko",
        "kernel/fs/fat/vfat.ko",
        "kernel/drivers/char/hw_random/virtio-rng.ko",  # found by its name with '-' as '_'
    ]


def test_module_order_rejects_a_missing_module_and_a_loop():
    with pytest.raises(VmbootError, match="no module nls_utf8"):
        guest.module_load_order(MODULES_DEP, ("nls_utf8",))
    with pytest.raises(VmbootError, match="loop"):
        guest.module_load_order("a.ko: b.ko\nb.ko: a.ko\n", ("a",))


def test_kernel_dependency_names_the_real_package():
    assert guest.kernel_dependency("linux-image-6.1.0-56-amd64 (= 6.1.192-2)") == \
        "linux-image-6.1.0-56-amd64=6.1.192-2"
    assert guest.kernel_dependency("linux-image-6.1.0-9-amd64") == "linux-image-6.1.0-9-amd64"
    with pytest.raises(VmbootError, match="Depends"):
        guest.kernel_dependency("initramfs-tools")


def test_parse_console_reads_the_report_through_kernel_noise():
    text = ("[    2.1] virtio_blk virtio1: [vdb] 32768 512-byte logical blocks\r\n"
            "VMBOOT-GUEST acpi=APIC,DSDT,FACP,SSDT1,SSDT2 disks=vda:33554432,vdb:16777216 "
            "rtc=2024-02-29 23:59:58 clocksource=tsc-early cpus=0-1\r\n"
            "[    2.2] clocksource: Switched to clocksource tsc\r\n"
            f"VMBOOT-DATA sha256={'ab' * 32}\r\nVMBOOT-WROTE HELLO.TXT\r\n"
            "VMBOOT-IO requests=vda:41,vdb:117\r\n")
    report = guest.parse_console(text)
    assert report.acpi == ["APIC", "DSDT", "FACP", "SSDT1", "SSDT2"]
    assert report.disks == {"vda": 33554432, "vdb": 16777216}
    assert (report.rtc, report.clocksource, report.cpus) == ("2024-02-29 23:59:58", "tsc-early", "0-1")
    assert (report.data_sha256, report.wrote, report.failures) == ("ab" * 32, "HELLO.TXT", [])
    assert report.requests == {"vda": 41, "vdb": 117}

    failed = guest.parse_console("VMBOOT-GUEST acpi= disks= rtc=none clocksource=jiffies\n"
                                 "VMBOOT-FAIL no virtio disk holds PATTERN.BIN\n")
    assert (failed.acpi, failed.disks, failed.rtc, failed.cpus) == ([], {}, "none", None)
    assert (failed.data_sha256, failed.wrote, failed.requests) == (None, None, None)
    assert failed.failures == ["no virtio disk holds PATTERN.BIN"]
    assert guest.parse_console("").acpi is None


def test_init_script_agrees_with_guest_py():
    script = guest.INIT_SCRIPT.read_text()
    assert script.startswith("#!/bin/busybox sh\n")
    assert f"/mnt/{guest.PATTERN_NAME}" in script
    assert f'echo "{guest.HELLO_TEXT.decode().rstrip()}" > /mnt/{guest.HELLO_NAME}' in script
    assert f'echo "VMBOOT-WROTE {guest.HELLO_NAME}"' in script
    assert 'echo "VMBOOT-GUEST acpi=$acpi disks=$disks rtc=$rtc clocksource=$clocksource cpus=$cpus"' in script
    assert script.count("VMBOOT-GUEST") == 2  # the comment and the one line it prints
    assert 'echo "VMBOOT-IO requests=$io"' in script
    assert "poweroff -f" in script and "exec sh" not in script


# ---------------------------------------------------------------- what the build made


def test_manifest_describes_the_images(built, manifest):
    assert manifest["esp"]["size"] == (built / guest.ESP_NAME).stat().st_size == guest.ESP_SIZE
    assert manifest["data"]["size"] == (built / guest.DATA_NAME).stat().st_size == guest.DATA_SIZE
    assert manifest["pattern"] == {"file": "PATTERN.BIN", "size": 1 << 20,
                                   "sha256": hashlib.sha256(guest.pattern()).hexdigest()}
    assert manifest["hello"] == {"file": "HELLO.TXT", "text": "hello from the vmboot guest\n"}
    assert manifest["cmdline"] == guest.CMDLINE
    release = manifest["kernel_release"]
    assert re.fullmatch(r"6\.1\.0-\d+-amd64", release)
    packages = manifest["packages"]
    assert set(packages) == {"linux-image-amd64", f"linux-image-{release}", "busybox-static", "systemd-boot-efi"}
    assert packages["linux-image-amd64"] == packages[f"linux-image-{release}"]


def test_data_disk_holds_the_pattern(built):
    data = built / guest.DATA_NAME
    assert mtools_read(data, "PATTERN.BIN") == guest.pattern()
    listing = run(["mdir", "-b", "-i", str(data), "::/"]).stdout.decode().split()
    assert listing == ["::/PATTERN.BIN"]


def test_esp_holds_only_the_uki(built, manifest, uki):
    listing = run(["mdir", "-/", "-b", "-i", str(built / guest.ESP_NAME), "::/"]).stdout.decode().split()
    assert listing == ["::/EFI/", "::/EFI/BOOT/", "::/EFI/BOOT/BOOTX64.EFI"]
    assert uki.stat().st_size == manifest["esp"]["uki_size"]
    assert uki.read_bytes()[:2] == b"MZ"


def test_uki_sections(uki, tmp_path):
    sections = bootimage.pe_sections(uki)
    names = list(sections)
    assert names[-4:] == [".osrel", ".cmdline", ".linux", ".initrd"]
    assert ".sdmagic" in names[:-4]  # systemd-stub's own
    stub_end = max(vma + size for name, (vma, size) in sections.items() if name not in guest.UKI_SECTIONS)
    previous_end = stub_end
    for name in guest.UKI_SECTIONS:
        vma, size = sections[name]
        assert vma % 0x1000 == 0 and vma >= previous_end, name
        previous_end = vma + size
    assert section(uki, ".cmdline", tmp_path) == b"console=ttyS0 panic=-1"
    assert b"ID=vmboot-guest\n" in section(uki, ".osrel", tmp_path)
    linux = section(uki, ".linux", tmp_path)
    assert linux[0x202:0x206] == b"HdrS" and linux[:2] == b"MZ"  # a bzImage with its EFI stub


def test_initramfs_contents(uki, manifest, tmp_path):
    archive = gzip.decompress(section(uki, ".initrd", tmp_path))
    listing = run(["cpio", "-t", "--quiet"], input=archive).stdout.decode().split()
    modules = [f"lib/modules/{name}" for name in manifest["modules"]]
    assert set(listing) == {"bin", "dev", "dev/console", "etc", "etc/vmboot", "etc/vmboot/modules", "init", "lib",
                            "lib/modules", "mnt", "proc", "sbin", "sys", "usr", "usr/bin", "usr/sbin",
                            "bin/busybox", *modules}

    def member(name: str) -> bytes:
        return run(["cpio", "-i", "--to-stdout", "--quiet", name], input=archive).stdout

    assert member("init") == guest.INIT_SCRIPT.read_bytes()
    order = member("etc/vmboot/modules").decode().splitlines()
    assert order == manifest["modules"]
    position = {name: index for index, name in enumerate(order)}
    assert position["virtio_ring.ko"] < position["virtio.ko"] < position["virtio_pci.ko"] < position["virtio_blk.ko"]
    assert position["virtio_pci_modern_dev.ko"] < position["virtio_pci.ko"]
    assert position["fat.ko"] < position["vfat.ko"]
    assert {"nls_cp437.ko", "nls_ascii.ko"} <= set(order)
    assert member("bin/busybox")[:4] == b"\x7fELF"
    assert member("lib/modules/virtio_blk.ko")[:4] == b"\x7fELF"  # uncompressed, as insmod needs


def test_fresh_copy_leaves_the_cache_alone(built, tmp_path):
    assert (built / guest.ESP_NAME).stat().st_mode & 0o777 == 0o444
    assert (built / guest.DATA_NAME).stat().st_mode & 0o777 == 0o444
    before = (built / guest.DATA_NAME).read_bytes()
    images = guest.fresh_copy(tmp_path / "boot", built)
    assert images.esp.read_bytes() == (built / guest.ESP_NAME).read_bytes()
    assert images.data.read_bytes() == before
    assert images.manifest["pattern"]["sha256"] == hashlib.sha256(guest.pattern()).hexdigest()
    with open(images.data, "r+b") as f:
        f.write(b"scribble")
    assert (built / guest.DATA_NAME).read_bytes() == before


def test_cli_prints_the_guest_directory(built, capsys):
    from vmboot.assets.cli import main
    assert main(["guest"]) == 0
    assert capsys.readouterr().out == f"{built}\n"


# ---------------------------------------------------------------- boots under QEMU + OVMF


def qemu_boot(disks: list[Path]) -> tuple[int, str]:
    missing = [what for what, present in ((QEMU, shutil.which(QEMU)), (str(OVMF), OVMF.is_file())) if not present]
    if missing:
        pytest.fail(f"the QEMU boot test needs {', '.join(missing)} (Debian's qemu-system-x86 and ovmf)")
    args = [QEMU, "-machine", "q35", "-accel", "tcg", "-m", "512", "-bios", str(OVMF), "-nographic",
            "-no-reboot"]  # a reset (a panic, or init dying) ends QEMU instead of booting again
    for disk in disks:
        args += ["-drive", f"if=virtio,format=raw,file={disk}"]
    try:
        proc = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=BOOT_TIMEOUT)
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"").decode(errors="replace")[-3000:]
        pytest.fail(f"the guest did not power off within {BOOT_TIMEOUT} s; console tail:\n{tail}")
    return proc.returncode, (proc.stdout + proc.stderr).decode(errors="replace")


def test_qemu_boots_the_guest_which_checks_and_writes_the_data_disk(built, manifest, tmp_path):
    images = guest.fresh_copy(tmp_path, built)
    status, console = qemu_boot([images.esp, images.data])
    assert status == 0, console[-3000:]
    report = guest.parse_console(console)
    assert report.failures == [], console[-3000:]
    assert len(re.findall(r"VMBOOT-GUEST ", console)) == 1
    assert {"FACP", "DSDT", "APIC"} <= set(report.acpi)
    assert report.disks == {"vda": guest.ESP_SIZE, "vdb": guest.DATA_SIZE}
    rtc = datetime.datetime.strptime(report.rtc, "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    assert abs(rtc - datetime.datetime.now(datetime.timezone.utc)) < datetime.timedelta(minutes=10)
    assert report.clocksource in ("tsc-early", "tsc", "hpet", "acpi_pm", "kvm-clock", "refined-jiffies")
    assert report.data_sha256 == manifest["pattern"]["sha256"]
    assert report.wrote == "HELLO.TXT"
    assert set(report.requests) == {"vda", "vdb"} and min(report.requests.values()) > 0
    assert "reboot: Power down" in console  # an ACPI power-off, not a reset
    assert "vda1" not in console  # the superfloppy shows no (fake) partition
    assert mtools_read(images.data, "HELLO.TXT") == b"hello from the vmboot guest\n"
    assert mtools_read(images.data, "PATTERN.BIN") == guest.pattern()
    run(["fsck.fat", "-n", str(images.data)])  # unmounted cleanly


def test_qemu_guest_without_data_disk_reports_and_powers_off(built, tmp_path):
    images = guest.fresh_copy(tmp_path, built)
    status, console = qemu_boot([images.esp])
    assert status == 0, console[-3000:]
    report = guest.parse_console(console)
    assert report.disks == {"vda": guest.ESP_SIZE}
    assert report.failures == ["no virtio disk holds PATTERN.BIN"]
    assert (report.data_sha256, report.wrote) == (None, None)
    assert "reboot: Power down" in console
    assert images.esp.read_bytes() == (built / guest.ESP_NAME).read_bytes()  # probed read-only
