"""Scanning without root: FAT and ISO 9660 file systems in image files, and a synthetic /sys and /proc."""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

from vmboot.launcher.scan import Scanner, Usage
from vmboot.launcher.sysfs import Mount, SysBlock, mounts, natural_key
from vmboot.tests.disk_images import fat_in, partition, pvh_elf, sparse_file, splice

MiB = 1 << 20
FIRMWARE = pvh_elf()
KERNEL = pvh_elf(linux=True)


def gpt_disk(tmp_path: Path, name: str, fat_files: dict[str, bytes], second: dict[str, bytes] | None = None) -> Path:
    image = sparse_file(tmp_path / name, 64 * MiB)
    partition(image, "label: gpt\nstart=2048, size=20480, type=uefi\nstart=24576, size=20480, type=linux\n")
    fat_in(image, 2048, 20480, fat_files, tmp_path)
    if second is not None:
        fat_in(image, 24576, 20480, second, tmp_path)
    return image


def scanner(root="/", **kw) -> Scanner:
    return Scanner(SysBlock(root), Usage([], []), **kw)


def test_candidates_in_documented_order(tmp_path):
    """Disks as given, partitions by number, then /, /boot/, /EFI/vmboot/ in each file system."""
    first = gpt_disk(tmp_path, "a.img", {"/EFI/vmboot/CLOUDHV.fd": FIRMWARE, "/CLOUDHV.fd": FIRMWARE},
                     {"/boot/CLOUDHV.fd": KERNEL})
    second = sparse_file(tmp_path / "b.img", 16 * MiB)
    partition(second, "label: dos\nstart=2048, size=20480, type=c\n")
    fat_in(second, 2048, 20480, {"/CLOUDHV.fd": FIRMWARE}, tmp_path)
    result = scanner().scan([str(second), str(first)])
    assert [(c.where, c.fstype, c.kind) for c in result.candidates] == [
        (f"{second}#1:/CLOUDHV.fd", "vfat", "firmware"),
        (f"{first}#1:/CLOUDHV.fd", "vfat", "firmware"),
        (f"{first}#1:/EFI/vmboot/CLOUDHV.fd", "vfat", "firmware"),
        (f"{first}#2:/boot/CLOUDHV.fd", "vfat", "kernel"),
    ]
    assert all(c.image == (KERNEL if c.kind == "kernel" else FIRMWARE) for c in result.candidates)
    assert [d.path for d in result.disks] == [str(second), str(first)]


def test_vmboot_toml_beside_the_firmware_only(tmp_path):
    image = gpt_disk(tmp_path, "a.img", {"/EFI/vmboot/CLOUDHV.fd": FIRMWARE, "/EFI/vmboot/vmboot.toml": b"cpus = 3\n",
                                         "/CLOUDHV.fd": FIRMWARE, "/boot/vmboot.toml": b"cpus = 5\n"})
    root_fw, efi_fw = scanner().scan([str(image)]).candidates
    assert (root_fw.config_path, root_fw.settings) == (None, None)
    assert (efi_fw.config_path, efi_fw.settings.cpus) == ("/EFI/vmboot/vmboot.toml", 3)


def test_a_bad_vmboot_toml_marks_its_candidate(tmp_path):
    image = gpt_disk(tmp_path, "a.img", {"/CLOUDHV.fd": FIRMWARE, "/vmboot.toml": b"cpus = 2\ncmdline = 'x'\n"})
    [candidate] = scanner().scan([str(image)]).candidates
    assert candidate.config_error == (f"{image}#1:/vmboot.toml line 2: cmdline is for a Linux kernel, "
                                      f"and this image is a firmware")


def test_not_a_pvh_elf_is_rejected_with_the_reason(tmp_path, caplog):
    image = gpt_disk(tmp_path, "a.img", {"/CLOUDHV.fd": b"MZ this is a PE file" + bytes(500)},
                     {"/CLOUDHV.fd": b"\x7fELF" + bytes(60)})
    with caplog.at_level(logging.INFO, logger="vmboot.launcher"):
        result = scanner().scan([str(image)])
    assert result.candidates == []
    assert result.rejected[0] == (f"{image}#1:/CLOUDHV.fd: not an ELF file (a PVH firmware such as CLOUDHV.fd "
                                  f"is an ELF image)")
    assert result.rejected[1].startswith(f"{image}#2:/CLOUDHV.fd: corrupt or truncated ELF")
    assert f"rejected {result.rejected[0]}" in caplog.messages


def test_other_names_and_iso9660(tmp_path):
    tree = tmp_path / "tree"
    (tree / "boot").mkdir(parents=True)
    (tree / "boot" / "fw.elf").write_bytes(FIRMWARE)
    iso = tmp_path / "fw.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-R", "-o", str(iso), str(tree)], check=True, capture_output=True)
    result = scanner(names=("CLOUDHV.fd", "fw.elf")).scan([str(iso)])
    assert [(c.where, c.fstype) for c in result.candidates] == [(f"{iso}:/boot/fw.elf", "iso9660")]


def test_unrecognised_and_unsupported_file_systems_are_skipped(tmp_path, caplog):
    image = sparse_file(tmp_path / "d.img", 64 * MiB)
    partition(image, "label: gpt\nstart=2048, size=20480\nstart=24576, size=20480\n")
    swap = sparse_file(tmp_path / "swap.img", 20480 * 512)
    subprocess.run(["mkswap", str(swap)], check=True, capture_output=True)
    splice(swap, image, 24576)
    with caplog.at_level(logging.INFO, logger="vmboot.launcher"):
        result = scanner().scan([str(image)])
    assert result.candidates == [] and result.rejected == []
    assert f"skipped {image}#1: no file system vmboot recognises" in caplog.messages
    assert f"skipped {image}#2: swap is not supported" in caplog.messages


def test_a_corrupt_gpt_is_reported_and_the_disk_still_listed(tmp_path, caplog):
    image = gpt_disk(tmp_path, "a.img", {"/CLOUDHV.fd": FIRMWARE})
    with open(image, "r+b") as f:
        for offset in (512 + 8, 64 * MiB - 512 + 8):  # both headers' revision fields: CRCs no longer match
            f.seek(offset)
            f.write(b"\xff")
    with caplog.at_level(logging.INFO, logger="vmboot.launcher"):
        result = scanner().scan([str(image)])
    assert result.candidates == [] and [d.path for d in result.disks] == [str(image)]
    assert any(m.startswith(f"skipped {image}: GPT unusable: primary GPT header at LBA 1: header CRC32 mismatch")
               for m in caplog.messages)


# --- /sys/class/block ---------------------------------------------------------------------------------

def fake_host(tmp_path: Path, disks: list[tuple], mountinfo: str = "") -> Path:
    """disks: (name, image or None, size, dev, pci, holders). Links class/block/NAME to a devices path."""
    root = tmp_path / "root"
    (root / "sys/class/block").mkdir(parents=True)
    (root / "dev").mkdir()
    for name, image, size, dev, pci, holders in disks:
        parent = root / "sys/devices/virtual"
        if pci:
            parent = root / "sys/devices/pci0000:00" / pci[0]
            parent.mkdir(parents=True, exist_ok=True)
            (parent / "vendor").write_text(f"0x{pci[1]:04x}\n")
            (parent / "device").write_text(f"0x{pci[2]:04x}\n")
        node = parent / "block" / name
        (node / "holders").mkdir(parents=True)
        for h in holders:
            (node / "holders" / h).mkdir()
        (node / "size").write_text(f"{size // 512}\n")
        (node / "dev").write_text(f"{dev[0]}:{dev[1]}\n")
        (root / "sys/class/block" / name).symlink_to(node)
        if image:
            (root / "dev" / name).symlink_to(image)
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    return root


def test_sysfs_disks_order_skips_and_use(tmp_path, caplog):
    fw = gpt_disk(tmp_path, "fw.img", {"/CLOUDHV.fd": FIRMWARE})
    data = sparse_file(tmp_path / "data.img", 8 * MiB)
    root = fake_host(tmp_path, [
        ("sdb", data, 8 * MiB, (8, 16), ("0000:00:1f.2", 0x8086, 0x2922), []),
        ("sdaa", data, 8 * MiB, (65, 160), ("0000:00:1f.2", 0x8086, 0x2922), []),
        ("sda", fw, 64 * MiB, (8, 0), ("0000:00:1f.2", 0x8086, 0x2922), []),
        ("nvme0n1", data, 8 * MiB, (259, 0), ("0000:00:04.0", 0x144d, 0xa808), []),
        ("vda", data, 8 * MiB, (254, 0), ("0000:00:02.0", 0x1af4, 0x1001), []),
        ("sdc", data, 8 * MiB, (8, 32), None, ["dm-0"]),
        ("loop0", None, 0, (7, 0), None, []),
        ("zram0", data, 8 * MiB, (252, 0), None, []),
    ], mountinfo="22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n")
    usage = Usage(mounts(root), [])
    with caplog.at_level(logging.DEBUG, logger="vmboot.launcher"):
        result = Scanner(SysBlock(root), usage, blocklist=frozenset({(0x144D, 0xA808)})).scan()
    assert [(Path(d.path).name, d.in_use) for d in result.disks] == [
        ("sda", None), ("sdb", None), ("sdc", "held by dm-0"), ("sdaa", None),
        ("vda", "mounted read-write at /")]
    assert [c.where for c in result.candidates] == [f"{root}/dev/sda#1:/CLOUDHV.fd"]
    assert "skipped /dev/loop0: empty (size 0)" in caplog.messages
    assert f"skipped {root}/dev/nvme0n1: PCI device 144d:a808 is on the --block list" in caplog.messages
    assert f"skipped {root}/dev/vda: mounted read-write at /" in caplog.messages
    assert not any("zram0" in m for m in caplog.messages)


def test_mountinfo_parsing(tmp_path):
    root = fake_host(tmp_path, [], mountinfo=(
        "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n"
        "37 35 8:17 / /boot ro,relatime shared:2 - vfat /dev/sdb1 ro\n"))
    assert mounts(root) == [Mount((98, 0), "/mnt/with space", True, "/dev/root"),
                            Mount((8, 17), "/boot", False, "/dev/sdb1")]


def test_natural_order():
    names = ["sdaa", "sdb", "nvme0n10", "sda", "nvme0n2", "vda", "sdz"]
    assert sorted(names, key=natural_key) == ["nvme0n2", "nvme0n10", "sda", "sdb", "sdz", "sdaa", "vda"]


def test_partitions_with_kernel_nodes_are_named_by_them(tmp_path):
    """On real hardware the kernel made /dev/sda1 and sysfs has its start and size: vmboot uses that name."""
    fw = gpt_disk(tmp_path, "fw.img", {"/CLOUDHV.fd": FIRMWARE}, {"/boot/CLOUDHV.fd": FIRMWARE})
    root = fake_host(tmp_path, [("sda", fw, 64 * MiB, (8, 0), None, [])])
    disk_dir = (root / "sys/class/block/sda").resolve()
    for number, start in ((1, 2048), (2, 24576)):
        part = disk_dir / f"sda{number}"
        part.mkdir()
        for name, value in (("partition", number), ("start", start), ("size", 20480), ("dev", f"8:{number}")):
            (part / name).write_text(f"{value}\n")
    (root / "dev/sda2").symlink_to(fw)  # sda1 has no node: it keeps the DISK#N name
    result = Scanner(SysBlock(root), Usage([], [])).scan()
    assert [c.where for c in result.candidates] == [f"{root}/dev/sda#1:/CLOUDHV.fd",
                                                    f"{root}/dev/sda2:/boot/CLOUDHV.fd"]


def test_a_disk_given_twice_is_scanned_once(tmp_path, caplog):
    image = gpt_disk(tmp_path, "a.img", {"/CLOUDHV.fd": FIRMWARE})
    alias = tmp_path / "alias.img"
    alias.symlink_to(image)
    with caplog.at_level(logging.INFO, logger="vmboot.launcher"):
        result = scanner().scan([str(image), str(alias)])
    assert [c.where for c in result.candidates] == [f"{image}#1:/CLOUDHV.fd"]
    assert [d.path for d in result.disks] == [str(image)]
    assert f"skipped {alias}: given twice" in caplog.messages
