"""vmboot-assets: build (once) and print the paths of what vmboot needs.

    vmboot-assets firmware [--flavour release|debug]   CloudHv firmware (both flavours are built)
    vmboot-assets unicorn                              the patched Unicorn wheel
    vmboot-assets guest                                guest disk images for boot tests
    vmboot-assets nested                               the nested-KVM rig: patched QEMU and the L1 Linux

Paths go to stdout, progress to stderr. Results are cached under
~/.cache/vmboot (or $VMBOOT_CACHE), keyed by their inputs.
"""
from __future__ import annotations

import argparse
import sys

from vmboot.abi.errors import VmbootError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vmboot-assets", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    fw = sub.add_parser("firmware", help="build EDK2 CloudHv (RELEASE and DEBUG) from Debian's edk2 source")
    fw.add_argument("--flavour", choices=("release", "debug"), default="release")
    sub.add_parser("unicorn", help="build the patched Unicorn 2.1.4 wheel")
    sub.add_parser("guest", help="build the guest disk images (esp.img, data.img, guest.json); boot copies of them")
    sub.add_parser("nested", help="build the nested-KVM rig: the patched QEMU 7.2 and the L1 kernel and initramfs")
    args = p.parse_args(argv)
    try:
        if args.what == "firmware":
            from .firmware import firmware_path
            print(firmware_path(args.flavour))
        elif args.what == "unicorn":
            from .unicorn_build import wheel_path
            print(wheel_path())
        elif args.what == "guest":
            from .guest import guest_dir
            print(guest_dir())
        elif args.what == "nested":
            from .l1_image import l1_dir
            from .qemu_build import qemu_path
            print(qemu_path())
            print(l1_dir())
    except VmbootError as err:
        print(f"vmboot-assets: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
