"""The asset cache: costly build outputs, outside the clone, keyed by their inputs.

Layout: ``$VMBOOT_CACHE`` (default ``~/.cache/vmboot``) / KIND / KEY / files.
A KEY names the inputs (a version and a digest of the recipe), so a changed
recipe builds anew while an unchanged one is reused. Builds go to a temporary
directory first and are renamed into place, so an interrupted build never
leaves a half-made entry behind; a lock keeps two builds of one entry apart.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable

from vmboot.abi.errors import VmbootError


def cache_root() -> Path:
    if os.environ.get("VMBOOT_CACHE"):
        return Path(os.environ["VMBOOT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vmboot"


def digest(parts: Iterable[bytes | str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached(kind: str, key: str, build: Callable[[Path], None], fill: bool = True) -> Path:
    """Return the cache directory for (kind, key), calling ``build(tmpdir)`` to fill it if absent;
    with ``fill`` false, only where it is or would be (to look without building)."""
    final = cache_root() / kind / key
    if final.is_dir() or not fill:
        return final
    with _locked(cache_root() / kind / f".{key}.lock"):
        if final.is_dir():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            build(tmp)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def progress(message: str) -> None:
    print(f"vmboot-assets: {message}", file=sys.stderr, flush=True)


def build_step(what: str, args: list[str], cwd: Path, log: Path, env: dict | None = None) -> None:
    """Run one step of building ``what``, its output appended to ``log``.

    A failing step raises a VmbootError that quotes the log's last lines."""
    with open(log, "ab") as out:
        result = subprocess.run(args, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode:
        tail = log.read_text(errors="replace").splitlines()[-15:]
        raise VmbootError(f"{what} build step '{' '.join(args)}' failed (status {result.returncode}); "
                          f"last lines of {log}:\n" + "\n".join(tail))
