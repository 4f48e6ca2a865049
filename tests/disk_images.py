"""Disk images for the launcher's tests, made with the real tools and without root.

sfdisk writes the partition tables, mkfs.fat + mtools, mke2fs -d and
mkfs.xfs -p fill file systems from the host's files, and ``splice`` copies a
file system image into a partition without filling the holes of sparse files.
``LoopDevice`` attaches an image (root only) and always detaches it again.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
from pathlib import Path

MiB = 1 << 20
SECTOR = 512
XFS_MIN_SIZE = 300 * MiB  # mkfs.xfs refuses smaller file systems

# ELF64 (System V gABI) and the Xen PVH note (xen/include/public/elfnote.h)
ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")
PROGRAM_HEADER = struct.Struct("<IIQQQQQQ")
PT_LOAD, PT_NOTE = 1, 4
XEN_ELFNOTE_PHYS32_ENTRY = 18
LINUX_ELFNOTE_BUILD_SALT = 0x100


def _note(owner: bytes, kind: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)
    return struct.pack("<III", len(owner) + 1, len(desc), kind) + pad(owner + b"\0") + pad(desc)


def pvh_elf(linux: bool = False, load_addr: int = 0x100000, size: int = 0x2000) -> bytes:
    """A small PVH ELF: one PT_LOAD at ``load_addr``, a Xen PHYS32_ENTRY note, and for a "kernel" a Linux note."""
    notes = _note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", load_addr + 0x1000))
    if linux:
        notes += _note(b"Linux", LINUX_ELFNOTE_BUILD_SALT, b"salt")
    phoff = ELF_HEADER.size
    notes_off = phoff + 2 * PROGRAM_HEADER.size
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)  # 64-bit, little-endian, version 1
    header = ELF_HEADER.pack(ident, 2, 62, 1, load_addr + 0x1000, phoff, 0, 0, ELF_HEADER.size,
                             PROGRAM_HEADER.size, 2, 64, 0, 0)  # ET_EXEC, EM_X86_64
    load = PROGRAM_HEADER.pack(PT_LOAD, 5, 0, load_addr, load_addr, size, size, 0x1000)
    note = PROGRAM_HEADER.pack(PT_NOTE, 4, notes_off, 0, 0, len(notes), len(notes), 4)
    image = header + load + note + notes
    return image + bytes(size - len(image))


def sparse_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def partition(image: Path, script: str) -> list[dict]:
    """Write a partition table with sfdisk; return sfdisk's view of the partitions (start/size in sectors)."""
    subprocess.run(["sfdisk", "-q", str(image)], input=script, text=True, check=True, capture_output=True)
    out = subprocess.run(["sfdisk", "--json", str(image)], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["partitiontable"]["partitions"]


def fat_in(image: Path, start: int, sectors: int, files: dict[str, bytes], tmp: Path) -> None:
    """A FAT file system at sector ``start`` of ``image``, holding ``files`` ({"/EFI/x/NAME": bytes})."""
    subprocess.run(["mkfs.fat", f"--offset={start}", str(image), str(sectors * SECTOR // 1024)], check=True,
                   capture_output=True)
    target = f"{image}@@{start * SECTOR}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    made = set()
    for path, data in files.items():
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in made:
                subprocess.run(["mmd", "-i", target, f"::/{d}"], check=True, capture_output=True, env=env)
                made.add(d)
        local = tmp / parts[-1]
        local.write_bytes(data)
        subprocess.run(["mcopy", "-i", target, str(local), f"::/{'/'.join(parts)}"], check=True,
                       capture_output=True, env=env)
        local.unlink()


def _tree(root: Path, files: dict[str, bytes]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        target = root / path.strip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)


def ext4_image(path: Path, size: int, files: dict[str, bytes], tmp: Path) -> Path:
    tree = tmp / f"{path.name}.tree"
    _tree(tree, files)
    sparse_file(path, size)
    subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(path)], check=True, capture_output=True)
    return path


def xfs_image(path: Path, size: int, files: dict[str, bytes], tmp: Path) -> Path:
    """mkfs.xfs -p: a prototype file lists the tree (xfs_mkfs(8), "PROTOTYPE FILE")."""
    tree = tmp / f"{path.name}.tree"
    _tree(tree, files)
    lines = ["/dev/null", "0 0", "d--755 0 0"]

    def walk(directory: Path, depth: int) -> None:
        for entry in sorted(directory.iterdir()):
            if entry.is_dir():
                lines.append(f"{entry.name} d--755 0 0")
                walk(entry, depth + 1)
                lines.append("$")
            else:
                lines.append(f"{entry.name} ---644 0 0 {entry}")

    walk(tree, 0)
    lines.append("$")
    proto = tmp / f"{path.name}.proto"
    proto.write_text("\n".join(lines) + "\n")
    sparse_file(path, max(size, XFS_MIN_SIZE))
    subprocess.run(["mkfs.xfs", "-q", "-f", "-p", str(proto), str(path)], check=True, capture_output=True)
    return path


def splice(fs_image: Path, disk: Path, start_sector: int) -> None:
    """Copy ``fs_image`` into ``disk`` at ``start_sector``, data extents only (SEEK_DATA/SEEK_HOLE)."""
    base = start_sector * SECTOR
    with open(fs_image, "rb") as src, open(disk, "r+b") as dst:
        size = os.fstat(src.fileno()).st_size
        pos = 0
        while pos < size:
            try:
                pos = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(src.fileno(), pos, os.SEEK_HOLE)
            while pos < end:
                chunk = os.pread(src.fileno(), min(end - pos, 8 * MiB), pos)
                os.pwrite(dst.fileno(), chunk, base + pos)
                pos += len(chunk)


def corrupt_ext4_image(path: Path, size: int, tmp: Path) -> Path:
    """An ext4 file system whose superblock keeps its magic but claims an impossible block size."""
    ext4_image(path, size, {"/README": b"damaged on purpose\n"}, tmp)
    with open(path, "r+b") as f:
        f.seek(1024 + 0x18)  # s_log_block_size
        f.write(struct.pack("<I", 40))
    return path


class LoopDevice:
    """``losetup`` an image (no partition scan) for the duration of a with-block; detached even on failure."""

    def __init__(self, image: Path, read_only: bool = False):
        self.image = image
        self.read_only = read_only
        self.path: str | None = None

    def __enter__(self) -> LoopDevice:
        args = ["losetup", "--find", "--show"] + (["--read-only"] if self.read_only else []) + [str(self.image)]
        self.path = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()
        return self

    def __exit__(self, *exc) -> None:
        if self.path:
            subprocess.run(["losetup", "--detach", self.path], check=True, capture_output=True)
            self.path = None


def loops_backed_by(paths: list[str]) -> list[str]:
    """Loop devices whose backing file is one of ``paths`` (compared as real paths)."""
    wanted = {os.path.realpath(p) for p in paths}
    out = []
    for entry in Path("/sys/block").glob("loop*"):
        backing = entry / "loop" / "backing_file"
        if backing.exists() and os.path.realpath(backing.read_text().strip()) in wanted:
            out.append(f"/dev/{entry.name}")
    return sorted(out)


# --- the disks of the launcher's root tests (tests/test_launcher_disks.py, tests/test_launcher_boot.py) ---

GPT_LAYOUT = {  # partition: (start sector, sectors)
    1: (2048, 64 * MiB // SECTOR),  # ext4, no firmware
    2: (2048 + 64 * MiB // SECTOR, 32 * MiB // SECTOR),  # corrupt ext4
    3: (2048 + 96 * MiB // SECTOR, 320 * MiB // SECTOR),  # XFS: /CLOUDHV.fd and /vmboot.toml
}
GPT_DISK_SIZE = 448 * MiB
GPT_VMBOOT_TOML = b'# vmboot settings for this machine\nmemory = "768M"\ncpus = 1\n'
MBR_LABEL_ID = 0x1234ABCD
MBR_FAT = (2048, 40960)  # start, sectors of the vfat partition
LINUX_FS = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def gpt_disk_with_xfs_firmware(path: Path, firmware: bytes, tmp: Path) -> Path:
    """GPT: 1 ext4 without firmware, 2 a corrupt ext4, 3 XFS with /CLOUDHV.fd and /vmboot.toml."""
    sparse_file(path, GPT_DISK_SIZE)
    partition(path, "label: gpt\n" + "".join(f"start={s}, size={n}, type={LINUX_FS}\n"
                                             for s, n in GPT_LAYOUT.values()))
    pieces = (
        ext4_image(tmp / "p1.ext4", GPT_LAYOUT[1][1] * SECTOR, {"/etc/hostname": b"guest\n",
                                                                "/boot/README": b"no firmware here\n"}, tmp),
        corrupt_ext4_image(tmp / "p2.ext4", GPT_LAYOUT[2][1] * SECTOR, tmp),
        xfs_image(tmp / "p3.xfs", GPT_LAYOUT[3][1] * SECTOR, {"/CLOUDHV.fd": firmware,
                                                              "/vmboot.toml": GPT_VMBOOT_TOML}, tmp),
    )
    for number, piece in enumerate(pieces, 1):
        splice(piece, path, GPT_LAYOUT[number][0])
        piece.unlink()
    return path


def mbr_disk_with_vfat_firmware(path: Path, firmware: bytes, tmp: Path) -> Path:
    """MBR (disk identifier MBR_LABEL_ID): 1 vfat with /EFI/vmboot/CLOUDHV.fd."""
    sparse_file(path, 64 * MiB)
    partition(path, f"label: dos\nlabel-id: {MBR_LABEL_ID:#x}\nstart={MBR_FAT[0]}, size={MBR_FAT[1]}, type=c\n")
    fat_in(path, MBR_FAT[0], MBR_FAT[1], {"/EFI/vmboot/CLOUDHV.fd": firmware}, tmp)
    return path


def gpt_disk_with_bad_firmware(path: Path, not_pvh: bytes, tmp: Path) -> Path:
    """GPT: 1 ext4 whose /boot/CLOUDHV.fd is not a PVH ELF."""
    sparse_file(path, 64 * MiB)
    partition(path, f"label: gpt\nstart=2048, size={48 * MiB // SECTOR}, type={LINUX_FS}\n")
    piece = ext4_image(tmp / "bad.ext4", 48 * MiB, {"/boot/CLOUDHV.fd": not_pvh}, tmp)
    splice(piece, path, 2048)
    piece.unlink()
    return path
