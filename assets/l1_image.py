"""The nested-KVM rig's L1 Linux: Debian 12's kernel and a busybox initramfs, cached.

``l1_dir()`` builds once and caches a directory holding ``vmlinuz`` (Debian's
kernel, as packaged), ``initrd.img`` (assets/l1_files/init, busybox-static and
the modules ``MODULES`` need, in load order) and ``l1.json`` (what went in).
The rig that boots it is assets/l1_rig.py.
"""
from __future__ import annotations

import gzip
import json
import shutil
import tempfile
from pathlib import Path

from vmboot.abi.errors import VmbootError

from .bootimage import cpio_newc
from .cache import cached, digest, progress
from .guest import BUSYBOX_PACKAGE, BUSYBOX_PATH, initramfs_entries, unpack_kernel

# kvm_amd: L1's /dev/kvm on the SVM that QEMU's TCG emulates; virtio_pci, 9p and
# 9pnet_virtio: the host's tree and the scratch folder (virtio-9p-pci).
MODULES = ("kvm_amd", "virtio_pci", "9p", "9pnet_virtio")
FILES = Path(__file__).with_name("l1_files")
INIT_SCRIPT = FILES / "init"
AGENT_SCRIPT = FILES / "agent"
KERNEL_NAME, INITRD_NAME, MANIFEST_NAME = "vmlinuz", "initrd.img", "l1.json"
TOOLS = ("apt-get", "dpkg-deb", "depmod")
RECIPE = f"linux-image-amd64 {BUSYBOX_PACKAGE} modules={MODULES} v1"


def l1_key() -> str:
    return f"l1-{digest([RECIPE, INIT_SCRIPT.read_bytes()])}"


def l1_dir(build: bool = True) -> Path:
    return cached("l1", l1_key(), _build, fill=build)


def _build(dest: Path) -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise VmbootError(f"building the L1 image needs {', '.join(missing)} (run ./dev setup)")
    with tempfile.TemporaryDirectory(prefix="vmboot-l1-") as work:
        work = Path(work)
        progress("downloading Debian's kernel and busybox-static for the nested-KVM rig")
        kernel = unpack_kernel(work, (BUSYBOX_PACKAGE,))
        order = kernel.load_order(MODULES)
        modules = {Path(path).name: (kernel.moddir / path).read_bytes() for path in order}
        entries = initramfs_entries((kernel.root / BUSYBOX_PATH).read_bytes(), modules, INIT_SCRIPT.read_bytes())
        (dest / INITRD_NAME).write_bytes(gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0))
        shutil.copyfile(kernel.vmlinuz, dest / KERNEL_NAME)
        manifest = {"kernel_release": kernel.release, "modules": list(modules), "packages": kernel.packages()}
        (dest / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
