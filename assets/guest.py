"""Guest disk images for boot tests, built from Debian 12's packages.

``guest_dir()`` builds once and caches a directory holding:

- ``esp.img``: a partitionless ("superfloppy") FAT disk whose \\EFI\\BOOT\\BOOTX64.EFI is a
  unified kernel image: systemd-boot-efi's stub + Debian's kernel + a busybox initramfs
  + the command line ``CMDLINE``;
- ``data.img``: a FAT disk holding ``PATTERN_NAME``, ``PATTERN_SIZE`` bytes of ``pattern()``;
- ``guest.json``: the manifest (file names and sizes, the pattern's digest, package versions).

The guest (assets/guest_files/init) prints one ``VMBOOT-GUEST`` line (its ACPI tables,
disks, RTC, clocksource and online CPUs), checks and prints the pattern's digest, writes ``HELLO_NAME``
to the data disk and powers off through ACPI; ``parse_console()`` reads its report back.

A boot writes to the data disk, so never boot the cached images (they are read-only): boot
the copies that ``fresh_copy(dest_dir)`` makes. The packages are whatever version Debian
serves when the cache is first built (guest.json records them); the cache key names the
recipe, so a kernel update reaches the images only when the entry is removed or the recipe changes.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vmboot.abi.errors import VmbootError

from .bootimage import CpioEntry, cpio_newc, make_fat, make_uki, output
from .cache import cached, digest, file_sha256, progress
from .debian import PrivateApt

MiB = 1 << 20

# Debian packages (bookworm, whatever version the mirror serves when the cache is built;
# the versions used are recorded in guest.json).
KERNEL_METAPACKAGE = "linux-image-amd64"  # depends on the real linux-image-6.1.0-NN-amd64
BUSYBOX_PACKAGE = "busybox-static"
STUB_PACKAGE = "systemd-boot-efi"
BUSYBOX_PATH = "bin/busybox"
STUB_PATH = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"

# The kernel prints to COM1; panic=-1 resets at once should init ever die.
CMDLINE = "console=ttyS0 panic=-1"
# Modules the init loads, with what they need from modules.dep: virtio-pci and virtio-blk
# for the disks; vfat with the code page (cp437) and I/O charset (ascii) of Debian's
# CONFIG_FAT_DEFAULT_CODEPAGE and CONFIG_FAT_DEFAULT_IOCHARSET, to mount the data disk.
MODULES = ("virtio_pci", "virtio_blk", "vfat", "nls_cp437", "nls_ascii")
OS_RELEASE = 'NAME="vmboot test guest"\nID=vmboot-guest\nPRETTY_NAME="vmboot test guest"\n'

# The disks.
ESP_NAME, ESP_SIZE, ESP_LABEL, ESP_SERIAL = "esp.img", 32 * MiB, "VMBOOTESP", 0x0B00E5F1
DATA_NAME, DATA_SIZE, DATA_LABEL, DATA_SERIAL = "data.img", 16 * MiB, "VMBOOTDATA", 0x0B00DA7A
MANIFEST_NAME = "guest.json"
BOOT_PATH = "EFI/BOOT/BOOTX64.EFI"  # the UEFI removable-media boot path for x64
PATTERN_NAME, PATTERN_SIZE = "PATTERN.BIN", 1 * MiB
HELLO_NAME, HELLO_TEXT = "HELLO.TXT", b"hello from the vmboot guest\n"

FILES = Path(__file__).with_name("guest_files")
INIT_SCRIPT = FILES / "init"

# UKI sections, in this order after the stub's own (systemd-stub(7)).
UKI_SECTIONS = (".osrel", ".cmdline", ".linux", ".initrd")

TOOLS = ("apt-get", "dpkg-deb", "depmod", "objcopy", "objdump", "mformat", "mmd", "mcopy")

RECIPE = (f"{KERNEL_METAPACKAGE} {BUSYBOX_PACKAGE} {STUB_PACKAGE} cmdline={CMDLINE!r} modules={MODULES} "
          f"esp={ESP_SIZE}:{ESP_LABEL}:{ESP_SERIAL:x} data={DATA_SIZE}:{DATA_LABEL}:{DATA_SERIAL:x} "
          f"pattern={PATTERN_NAME}:{PATTERN_SIZE} os-release={OS_RELEASE!r} v3")


# ---------------------------------------------------------------- the cache


def guest_key() -> str:
    return f"guest-{digest([RECIPE, INIT_SCRIPT.read_bytes()])}"


def guest_dir(build: bool = True) -> Path:
    """The directory holding esp.img, data.img and guest.json, building them first if needed."""
    return cached("guest", guest_key(), _build, fill=build)


def load_manifest(directory: Path) -> dict:
    try:
        return json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as err:
        raise VmbootError(f"cannot read the guest manifest in {directory}: {err}") from None


@dataclass(frozen=True)
class GuestImages:
    esp: Path
    data: Path
    manifest: dict


def fresh_copy(dest_dir: Path, source: Path | None = None) -> GuestImages:
    """Copy the cached images into ``dest_dir`` for one boot (a boot writes HELLO.TXT to data.img)."""
    source = guest_dir() if source is None else source
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name in (ESP_NAME, DATA_NAME):
        shutil.copyfile(source / name, dest_dir / name)
    return GuestImages(dest_dir / ESP_NAME, dest_dir / DATA_NAME, load_manifest(source))


# ---------------------------------------------------------------- what the guest reports

GUEST_LINE = re.compile(r"VMBOOT-GUEST acpi=(?P<acpi>\S*) disks=(?P<disks>\S*) "
                        r"rtc=(?P<rtc>none|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) clocksource=(?P<clocksource>\S+)"
                        r"(?: cpus=(?P<cpus>\S+))?")
DATA_LINE = re.compile(r"VMBOOT-DATA sha256=(?P<sha256>[0-9a-f]{64})")
WROTE_LINE = re.compile(r"VMBOOT-WROTE (?P<name>\S+)")
IO_LINE = re.compile(r"VMBOOT-IO requests=(?P<requests>\S*)")
FAIL_LINE = re.compile(r"VMBOOT-FAIL (?P<reason>.*)")


@dataclass(frozen=True)
class GuestReport:
    acpi: list[str] | None  # sysfs names of the tables (a repeated signature gets a number: SSDT1)
    disks: dict[str, int] | None  # virtio disk name -> size in bytes
    rtc: str | None  # "YYYY-MM-DD HH:MM:SS", or "none" when the guest found no RTC
    clocksource: str | None
    cpus: str | None  # /sys/devices/system/cpu/online: "0", "0-1"
    data_sha256: str | None
    wrote: str | None
    failures: list[str]
    requests: dict[str, int] | None = None  # virtio disk name -> block requests it completed


def _named_counts(items: str) -> dict[str, int]:
    """ "vda:1,vdb:2" -> {"vda": 1, "vdb": 2} """
    out = {}
    for item in filter(None, items.split(",")):
        name, _, value = item.partition(":")
        out[name] = int(value)
    return out


def parse_console(text: str) -> GuestReport:
    """Read the guest's VMBOOT- lines out of its console output (None for a line it never printed)."""
    text = text.replace("\r", "")
    guest, data, wrote = GUEST_LINE.search(text), DATA_LINE.search(text), WROTE_LINE.search(text)
    io = IO_LINE.search(text)
    return GuestReport(
        acpi=guest["acpi"].split(",") if guest and guest["acpi"] else ([] if guest else None),
        disks=_named_counts(guest["disks"]) if guest else None,
        rtc=guest["rtc"] if guest else None,
        clocksource=guest["clocksource"] if guest else None,
        cpus=guest["cpus"] if guest else None,
        data_sha256=data["sha256"] if data else None,
        wrote=wrote["name"] if wrote else None,
        failures=[m["reason"] for m in FAIL_LINE.finditer(text)],
        requests=_named_counts(io["requests"]) if io else None,
    )


# ---------------------------------------------------------------- the guest's own pieces (the generic ones: assets/bootimage.py)


def pattern(size: int = PATTERN_SIZE) -> bytes:
    """A deterministic pattern in which every 32 bytes differ: SHA-256 of a block counter."""
    blocks = (size + 31) // 32
    return b"".join(hashlib.sha256(b"vmboot-pattern %d" % i).digest() for i in range(blocks))[:size]


def module_load_order(modules_dep: str, wanted: tuple[str, ...]) -> list[str]:
    """Paths (as modules.dep writes them) to insmod, dependencies first, each once.

    A modules.dep line is ``path: dep dep ...``; modprobe loads a line's dependencies
    from the last to the first, then the module itself.
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in modules_dep.splitlines():
        path, sep, rest = line.partition(":")
        if not sep:
            continue
        deps[path] = rest.split()
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[name] = path
    order: list[str] = []

    def visit(path: str, chain: tuple[str, ...]) -> None:
        if path in order:
            return
        if path in chain:
            raise VmbootError(f"modules.dep has a dependency loop through {path}")
        for dep in reversed(deps.get(path, [])):
            visit(dep, chain + (path,))
        order.append(path)

    for name in wanted:
        if name.replace("-", "_") not in by_name:
            raise VmbootError(f"the kernel package has no module {name}")
        visit(by_name[name.replace("-", "_")], ())
    return order


CONSOLE_DEVICE = (5, 1)  # /dev/console: major 5, minor 1 (Documentation/admin-guide/devices.txt)


def initramfs_entries(busybox: bytes, modules: dict[str, bytes], init: bytes) -> list[CpioEntry]:
    """The initramfs: /init, /bin/busybox, the modules flat in /lib/modules and their load order."""
    entries = [CpioEntry(d, stat.S_IFDIR | 0o755) for d in
               ("bin", "dev", "etc", "etc/vmboot", "lib", "lib/modules", "mnt", "proc", "sbin", "sys",
                "usr", "usr/bin", "usr/sbin")]
    entries.append(CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=CONSOLE_DEVICE))
    entries.append(CpioEntry("init", stat.S_IFREG | 0o755, init))
    entries.append(CpioEntry(BUSYBOX_PATH, stat.S_IFREG | 0o755, busybox))
    for name, data in modules.items():
        entries.append(CpioEntry(f"lib/modules/{name}", stat.S_IFREG | 0o644, data))
    order = "".join(f"{name}\n" for name in modules)
    entries.append(CpioEntry("etc/vmboot/modules", stat.S_IFREG | 0o644, order.encode()))
    return entries


# ---------------------------------------------------------------- the build


def _check_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise VmbootError(f"building the guest images needs {', '.join(missing)} (run ./dev setup)")


def _field(deb: Path, name: str) -> str:
    return output(["dpkg-deb", "-f", str(deb), name]).strip()


def _fetch(apt: PrivateApt, package: str, debs: Path) -> Path:
    apt.download([package], debs)
    name = package.split("=")[0]
    found = sorted(debs.glob(f"{name}_*.deb"))
    if len(found) != 1:
        raise VmbootError(f"expected one {name} package after the download, found {len(found)}")
    return found[0]


def kernel_dependency(depends: str) -> str:
    """``linux-image-6.1.0-NN-amd64=VERSION`` from the metapackage's Depends field."""
    match = re.match(r"\s*(?P<name>linux-image-[^\s,(|]+)\s*(?:\(\s*=\s*(?P<version>[^)\s]+)\s*\))?", depends)
    if not match:
        raise VmbootError(f"cannot find the kernel in {KERNEL_METAPACKAGE}'s Depends: {depends!r}")
    return match["name"] + (f"={match['version']}" if match["version"] else "")


@dataclass(frozen=True)
class KernelTree:
    """Debian's kernel package (and others) unpacked into ``root``, with a modules.dep made."""
    root: Path
    release: str  # 6.1.0-NN-amd64
    vmlinuz: Path
    moddir: Path
    debs: list[Path]  # the packages fetched, the metapackage first

    def load_order(self, wanted: tuple[str, ...]) -> list[str]:
        return module_load_order((self.moddir / "modules.dep").read_text(), wanted)

    def packages(self) -> dict[str, str]:
        return {_field(deb, "Package"): _field(deb, "Version") for deb in self.debs}


def unpack_kernel(work: Path, others: tuple[str, ...]) -> KernelTree:
    """Download Debian's current 6.1 kernel and the packages ``others`` into ``work``, and unpack them."""
    debs, root = work / "debs", work / "root"
    apt = PrivateApt(work / "apt")
    meta = _fetch(apt, KERNEL_METAPACKAGE, debs)
    kernel_deb = _fetch(apt, kernel_dependency(_field(meta, "Depends")), debs)
    packages = [meta, kernel_deb] + [_fetch(apt, name, debs) for name in others]
    progress("unpacking them")
    for deb in packages[1:]:
        output(["dpkg-deb", "-x", str(deb), str(root)])
    release = _field(kernel_deb, "Package").removeprefix("linux-image-")
    vmlinuz = root / "boot" / f"vmlinuz-{release}"
    moddir = root / "lib" / "modules" / release
    if not vmlinuz.is_file() or not moddir.is_dir():
        raise VmbootError(f"{kernel_deb.name} holds no boot/vmlinuz-{release} and lib/modules/{release}")
    # Debian's package ships no modules.dep (its postinst runs depmod): make one, in our tree.
    output(["depmod", "-b", str(root), release])
    return KernelTree(root, release, vmlinuz, moddir, packages)


def _build(dest: Path) -> None:
    _check_tools()
    with tempfile.TemporaryDirectory(prefix="vmboot-guest-") as work:
        work = Path(work)
        progress("downloading Debian's kernel, busybox-static and systemd-boot-efi")
        kernel = unpack_kernel(work, (BUSYBOX_PACKAGE, STUB_PACKAGE))
        root, release, vmlinuz, moddir = kernel.root, kernel.release, kernel.vmlinuz, kernel.moddir
        order = kernel.load_order(MODULES)

        progress("making the initramfs and the unified kernel image")
        modules = {Path(path).name: (moddir / path).read_bytes() for path in order}
        entries = initramfs_entries((root / BUSYBOX_PATH).read_bytes(), modules, INIT_SCRIPT.read_bytes())
        parts = {".osrel": work / "os-release", ".cmdline": work / "cmdline", ".linux": vmlinuz,
                 ".initrd": work / "initrd.cpio.gz"}
        parts[".osrel"].write_text(OS_RELEASE)
        parts[".cmdline"].write_text(CMDLINE)
        parts[".initrd"].write_bytes(gzip.compress(cpio_newc(entries), compresslevel=9, mtime=0))
        uki = work / "BOOTX64.EFI"
        make_uki(root / STUB_PATH, parts, uki)

        progress("making the disk images")
        make_fat(dest / ESP_NAME, ESP_SIZE, ESP_LABEL, ESP_SERIAL, {BOOT_PATH: uki})
        (work / PATTERN_NAME).write_bytes(pattern())
        make_fat(dest / DATA_NAME, DATA_SIZE, DATA_LABEL, DATA_SERIAL, {PATTERN_NAME: work / PATTERN_NAME})
        manifest = {
            "esp": {"file": ESP_NAME, "size": ESP_SIZE, "boot": BOOT_PATH, "uki_size": uki.stat().st_size},
            "data": {"file": DATA_NAME, "size": DATA_SIZE},
            "pattern": {"file": PATTERN_NAME, "size": PATTERN_SIZE, "sha256": file_sha256(work / PATTERN_NAME)},
            "hello": {"file": HELLO_NAME, "text": HELLO_TEXT.decode()},
            "cmdline": CMDLINE,
            "kernel_release": release,
            "modules": list(modules),
            "packages": kernel.packages(),
        }
        (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        for name in (ESP_NAME, DATA_NAME):  # boot copies (fresh_copy), never these
            (dest / name).chmod(0o444)
