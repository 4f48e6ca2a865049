"""Build the QEMU of the nested-KVM rig: Debian 12's qemu 7.2, x86_64 only, plus assets/qemu/*.patch.

Debian's own qemu-system-x86 aborts under nested SVM (assets/qemu/README.md); this
builds ``qemu-system-x86_64`` from the same source package with the fix applied, and
only what the rig uses: TCG, the PC machines and their default devices, and VirtFS
(virtio-9p) to export the host's tree into L1. Firmware blobs (SeaBIOS, the option
ROMs) come from Debian's installed qemu-system-data and seabios (``-L``), as the
dfsg source ships none.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from vmboot.abi.errors import VmbootError

from .cache import build_step, cached, digest, progress
from .debian import PrivateApt

QEMU_PACKAGE = "qemu"
QEMU_VERSION = "1:7.2+dfsg-7+deb12u18"
PATCH_DIR = Path(__file__).parent / "qemu"
BINARY = "qemu-system-x86_64"
# Everything off but what the rig needs; --disable-install-blobs: the blobs come from Debian (-L).
CONFIGURE = ("--target-list=x86_64-softmmu", "--without-default-features", "--enable-tcg", "--enable-virtfs",
             "--enable-attr", "--enable-cap-ng", "--enable-fdt=system", "--disable-docs", "--disable-werror",
             "--disable-tools", "--disable-install-blobs", "--enable-trace-backends=nop")
BUILD_TOOLS = ("apt-get", "dpkg-source", "patch", "meson", "ninja", "pkg-config", "gcc")
# Where the installed Debian packages keep the firmware blobs QEMU loads (bios-256k.bin, linuxboot_dma.bin, ...).
BLOB_DIRS = ("/usr/share/qemu", "/usr/share/seabios")


def patches() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.patch"))


def qemu_key() -> str:
    parts = [QEMU_VERSION, " ".join(CONFIGURE), "v1"] + [p.read_bytes() for p in patches()]
    return f"qemu-7.2-{digest(parts)}"


def qemu_path(build: bool = True) -> Path:
    """The patched qemu-system-x86_64, building it first if needed (about 2 minutes on 2 cores)."""
    return cached("qemu", qemu_key(), _build, fill=build) / BINARY


def blob_args() -> list[str]:
    return [arg for d in BLOB_DIRS if os.path.isdir(d) for arg in ("-L", d)]


def _build(dest: Path) -> None:
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing:
        raise VmbootError(f"building the rig's QEMU needs {', '.join(missing)} (run ./dev setup)")
    log = dest / "build.log"
    with tempfile.TemporaryDirectory(prefix="vmboot-qemu-") as work:
        work = Path(work)
        progress(f"downloading Debian's {QEMU_PACKAGE} {QEMU_VERSION} source package")
        PrivateApt(work / "apt").source(QEMU_PACKAGE, QEMU_VERSION, work)
        dsc = next(work.glob(f"{QEMU_PACKAGE}_*.dsc"))
        src = work / "src"
        build_step("qemu", ["dpkg-source", "--no-check", "-x", dsc.name, str(src)], work, log)
        for patch in patches():
            progress(f"applying {patch.name}")
            build_step("qemu", ["patch", "-p1", "--forward", "-i", str(patch)], src, log)
        build = src / "build"
        build.mkdir()
        progress("configuring QEMU for x86_64 (TCG and VirtFS only)")
        build_step("qemu", ["../configure", *CONFIGURE], build, log)
        progress("building qemu-system-x86_64 (about 2 minutes on 2 cores; cached afterwards)")
        build_step("qemu", ["ninja", f"-j{os.cpu_count() or 2}", BINARY], build, log)
        shutil.copy2(build / BINARY, dest / BINARY)
    try:
        version = subprocess.run([str(dest / BINARY), "--version"], capture_output=True, text=True, timeout=30)
    except OSError as err:
        raise VmbootError(f"the built {BINARY} does not run: {err}") from None
    if version.returncode or "7.2" not in version.stdout:
        raise VmbootError(f"the built {BINARY} does not run: {version.stderr.strip() or version.stdout.strip()}")
