"""Build the Unicorn engine that the emulate backend needs: 2.1.4 plus vmboot's patches.

Stock Unicorn cannot run a whole machine (see assets/unicorn/README.md). This
downloads the 2.1.4 source distribution from PyPI, checks its digest, applies
the patches in assets/unicorn/, builds the library for x86 only, and packs it
into a wheel with version ``2.1.4+vmboot.<digest>``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from vmboot.abi.errors import VmbootError

from .cache import cached, digest, file_sha256, progress

UNICORN_VERSION = "2.1.4"
SDIST_SHA256 = "00567a70e323f749b419cd86bee4f9115beab7ebba32194581c090cbb7c59cff"
PATCH_DIR = Path(__file__).parent / "unicorn"
BUILD_TOOLS = ("cmake", "make", "gcc", "patch", "pkg-config")


def patches() -> list[Path]:
    return sorted(PATCH_DIR.glob("*.patch"))


def wheel_key() -> str:
    parts = [UNICORN_VERSION, SDIST_SHA256, "x86-only v1"] + [p.read_bytes() for p in patches()]
    return f"{UNICORN_VERSION}-{digest(parts)}"


def wheel_path() -> Path:
    root = cached("unicorn", wheel_key(), _build)
    return next(root.glob("unicorn-*.whl"))


def _run(args: list[str], cwd: Path, log: Path, env: dict | None = None) -> None:
    with open(log, "ab") as out:
        result = subprocess.run(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise VmbootError(f"unicorn build step '{' '.join(args[:3])} ...' failed (status {result.returncode}):\n"
                          + "\n".join(tail))


def _build(dest: Path) -> None:
    missing = [tool for tool in BUILD_TOOLS if shutil.which(tool) is None]
    if missing:
        raise VmbootError(f"building unicorn needs {', '.join(missing)} (run the setup in the README)")
    log = dest / "build.log"
    local = wheel_key().split("-", 1)[1]
    with tempfile.TemporaryDirectory(prefix="vmboot-unicorn-") as work:
        work = Path(work)
        progress(f"downloading the unicorn {UNICORN_VERSION} source distribution")
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              f"unicorn=={UNICORN_VERSION}", "-d", str(work)], work, log)
        sdist = work / f"unicorn-{UNICORN_VERSION}.tar.gz"
        if file_sha256(sdist) != SDIST_SHA256:
            raise VmbootError(f"{sdist.name} does not have the expected SHA-256 {SDIST_SHA256}")
        with tarfile.open(sdist) as tar:
            # The "data" filter (Python >= 3.11.4) refuses links and paths that leave ``work``.
            tar.extractall(work, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        root = work / f"unicorn-{UNICORN_VERSION}"
        for patch in patches():
            progress(f"applying {patch.name}")
            _run(["patch", "-p1", "--forward", "-i", str(patch)], root, log)
        progress("building libunicorn for x86 (about 20 s on 2 cores)")
        src, build = root / "src", root / "src" / "build"
        jobs = str(os.cpu_count() or 2)
        _run(["cmake", "-B", str(build), "-S", str(src), "-DCMAKE_BUILD_TYPE=Release",
              "-DUNICORN_BUILD_TESTS=off", "-DUNICORN_ARCH=x86"], src, log)
        _run(["cmake", "--build", str(build), f"-j{jobs}"], src, log)
        prebuilt = root / "prebuilt"
        prebuilt.mkdir(exist_ok=True)
        for name in ("libunicorn.so.2", "libunicorn.a"):
            shutil.copy2(build / name, prebuilt / name)
        progress("packing the wheel")
        # A local version label tells the patched build from PyPI's (setuptools-scm takes it from here).
        env = dict(os.environ, SETUPTOOLS_SCM_PRETEND_VERSION=f"{UNICORN_VERSION}+vmboot.{local}")
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(dest), str(root)], root, log, env)
    if not list(dest.glob("unicorn-*.whl")):
        raise VmbootError("the unicorn build produced no wheel")
