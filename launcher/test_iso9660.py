"""The user-space ISO 9660 reader, on images made by xorriso (Debian package xorriso; no root needed)."""
from __future__ import annotations

import os
import subprocess

import pytest

from vmboot.launcher.iso9660 import IsoError, IsoVolume
from vmboot.launcher.region import OpenDisk

LONG_NAME = "a-rather-long-name-that-needs-a-continuation-area-" + "x" * 150 + ".bin"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tree"
    (root / "EFI" / "vmboot").mkdir(parents=True)
    payload = os.urandom(70_000)
    (root / "EFI" / "vmboot" / "CLOUDHV.fd").write_bytes(payload)
    (root / "EFI" / "vmboot" / "vmboot.toml").write_text("cpus = 2\n")
    (root / LONG_NAME).write_bytes(b"long")
    return root, payload


def mkisofs(tmp_path, root, *flags):
    image = tmp_path / "image.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", *flags, "-o", str(image), str(root)], check=True,
                   capture_output=True)
    return image


@pytest.mark.parametrize("flags", [["-R"], ["--norock", "-J", "-joliet-long"], ["-R", "-J"]],
                         ids=["rock-ridge", "joliet", "both"])
def test_reads_files_by_their_real_names(tmp_path, tree, flags):
    root, payload = tree
    image = mkisofs(tmp_path, root, *flags)
    with OpenDisk(str(image)) as disk:
        iso = IsoVolume(disk.region)
        entry = iso.lookup("/EFI/vmboot/CLOUDHV.fd")
        assert (entry.name, entry.size) == ("CLOUDHV.fd", len(payload))
        assert iso.read_file(entry) == payload
        assert iso.read_file(iso.lookup("/efi/VMBOOT/vmboot.toml")) == b"cpus = 2\n"
        assert iso.joliet == ("-R" not in flags)  # Rock Ridge names win over Joliet's
        names = sorted(e.name for e in iso.listdir())
        if "-R" in flags:  # Rock Ridge keeps names of any length, continued in a CE area
            assert names == ["EFI", LONG_NAME]
        else:  # mkisofs cuts Joliet names to about 103 characters, keeping the extension
            assert names[0] == "EFI" and names[1].endswith(".bin") and LONG_NAME.startswith(names[1][:100])
        assert iso.lookup("/EFI/vmboot/missing") is None


def test_plain_iso_names_without_version_suffix(tmp_path, tree):
    root, payload = tree
    image = mkisofs(tmp_path, root, "--norock")  # ISO level 1: 8.3 upper-case names
    with OpenDisk(str(image)) as disk:
        iso = IsoVolume(disk.region)
        assert iso.read_file(iso.lookup("/EFI/VMBOOT/CLOUDHV.fd")) == payload
        assert iso.lookup("/EFI/vmboot/vmboot.toml") is None  # it is VMBOOT.TOM on such an image
        assert iso.lookup("/EFI/vmboot/vmboot.tom") is not None


def test_not_iso_is_an_error(tmp_path):
    image = tmp_path / "zero.img"
    image.write_bytes(bytes(64 << 10))
    with OpenDisk(str(image)) as disk, pytest.raises(IsoError, match="no CD001 identifier"):
        IsoVolume(disk.region)
