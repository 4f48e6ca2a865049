"""Build EDK2's CloudHv firmware (CLOUDHV.fd) from Debian 12's edk2 source package.

The recipe is cloud-hypervisor's docs/uefi.md ("Building UEFI Firmware for x86-64":
BaseTools, then ``build -a X64 -t GCC5 -p OvmfPkg/CloudHv/CloudHvX64.dsc``), run on
Debian's source package instead of a git checkout. Both flavours come out of one source
tree: RELEASE (quiet, fast) and DEBUG (logs to the debug port 0x402).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from vmboot.abi.errors import VmbootError

from .cache import build_step, cached, digest, progress
from .debian import PrivateApt

EDK2_PACKAGE = "edk2"
EDK2_VERSION = "2022.11-6+deb12u2"
FLAVOURS = ("RELEASE", "DEBUG")
PLATFORM = "OvmfPkg/CloudHv/CloudHvX64.dsc"
OUTPUT = "FV/CLOUDHV.fd"
# Debian disables the shell under Secure Boot with this patch; with it,
# CloudHvX64.dsc fails: "Instance of library class [SecureBootVariableLib] is not found".
REVERSED_PATCH = "debian/patches/Disable-the-Shell-when-SecureBoot-is-enabled.patch"
BUILD_TOOLS = ("nasm", "iasl", "make", "gcc", "dpkg-source", "apt-get", "patch")

# Anything that changes what the build produces goes into the cache key.
RECIPE = f"{EDK2_VERSION} {PLATFORM} -a X64 -t GCC5 reverse:{REVERSED_PATCH} v1"


def firmware_key() -> str:
    return f"cloudhv-{EDK2_VERSION}-{digest([RECIPE])}"


def firmware_path(flavour: str, build: bool = True) -> Path:
    """Path of CLOUDHV.fd for ``flavour``, building both flavours first if needed."""
    flavour = flavour.upper()
    if flavour not in FLAVOURS:
        raise VmbootError(f"firmware flavour must be one of {', '.join(FLAVOURS).lower()}")
    return cached("firmware", firmware_key(), _build, fill=build) / flavour / "CLOUDHV.fd"


def _check_tools() -> None:
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing:
        raise VmbootError(f"building the firmware needs {', '.join(missing)} (run the setup in the README)")


def _build(dest: Path) -> None:
    _check_tools()
    jobs = str(os.cpu_count() or 2)
    with tempfile.TemporaryDirectory(prefix="vmboot-edk2-") as work:
        work = Path(work)
        log = dest / "build.log"
        progress(f"downloading Debian's {EDK2_PACKAGE} {EDK2_VERSION} source package")
        apt = PrivateApt(work / "apt")
        apt.source(EDK2_PACKAGE, EDK2_VERSION, work)
        dsc = next(work.glob(f"{EDK2_PACKAGE}_*.dsc"))
        src = work / "src"
        build_step("firmware", ["dpkg-source", "--no-check", "-x", dsc.name, str(src)], work, log)
        build_step("firmware", ["patch", "-R", "-p1", "-i", REVERSED_PATCH], src, log)
        progress("building EDK2's BaseTools")
        build_step("firmware", ["make", "-C", "BaseTools", f"-j{jobs}"], src, log)
        for flavour in FLAVOURS:
            progress(f"building CloudHv firmware ({flavour}); about a minute and a half")
            build = f". ./edksetup.sh >/dev/null && build -a X64 -t GCC5 -b {flavour} -p {PLATFORM} -n {jobs}"
            build_step("firmware", ["bash", "-c", build], src, log)
            out = dest / flavour
            out.mkdir()
            shutil.copy2(src / "Build" / "CloudHvX64" / f"{flavour}_GCC5" / OUTPUT, out / "CLOUDHV.fd")
