"""A private apt configuration: fetch Debian packages without touching the system's apt.

Everything apt needs (sources list, package lists, downloaded archives) lives
under one directory of ours; the system's /etc/apt is never written.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

from vmboot.abi.errors import VmbootError

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SUITE = "bookworm"


class PrivateApt:
    def __init__(self, root: Path):
        self.root = root
        (root / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (root / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        self.sources = root / "sources.list"
        lines = []
        for kind in ("deb", "deb-src"):
            lines += [
                f"{kind} {MIRROR} {SUITE} main",
                f"{kind} {MIRROR} {SUITE}-updates main",
                f"{kind} {SECURITY} {SUITE}-security main",
            ]
        self.sources.write_text("\n".join(lines) + "\n")
        self._updated = False

    def options(self) -> list[str]:
        return [
            "-o", f"Dir::Etc::SourceList={self.sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            "-o", f"Dir::Cache::Archives={self.root / 'archives'}",
            "-o", "Dir::State::Status=/var/lib/dpkg/status",
            "-o", "Debug::NoLocking=1",
            "-qq",
        ] + (["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else [])

    def _run(self, args: list[str], cwd: Path | None = None) -> None:
        try:
            subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        except FileNotFoundError:
            raise VmbootError(f"{args[0]} is not installed (run the setup in the README)") from None
        except subprocess.CalledProcessError as err:
            raise VmbootError(f"'{' '.join(args[:2])} ...' failed with status {err.returncode}") from None

    def update(self) -> None:
        if not self._updated:
            self._run(["apt-get", *self.options(), "update"])
            self._updated = True

    def source(self, package: str, version: str, dest: Path) -> None:
        """Download (not unpack) a source package's files into ``dest``."""
        self.update()
        dest.mkdir(parents=True, exist_ok=True)
        self._run(["apt-get", *self.options(), "source", "--download-only", f"{package}={version}"], cwd=dest)

    def download(self, packages: list[str], dest: Path) -> None:
        """Download binary packages (.deb) into ``dest``."""
        self.update()
        dest.mkdir(parents=True, exist_ok=True)
        self._run(["apt-get", *self.options(), "download", *packages], cwd=dest)
