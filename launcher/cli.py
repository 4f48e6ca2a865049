"""vmboot: find a UEFI firmware on this machine's disks and boot it in a VM with the other disks.

The LinuxBoot side of vmboot. On a machine booted into LinuxBoot, vmboot scans
the block devices (or the devices and image files named on the command line),
finds the CloudHv firmware on one of their partitions, and execs vmboot-core
with it and with the machine's other whole disks as virtio disks, so that the
firmware can boot the operating system on them.

What is read: GPT (CRC-checked, with the backup header as fallback) and MBR
partition tables, parsed by vmboot itself. Disks that are empty, RAM disks, or
behind a PCI device on the --block list are skipped; a disk or partition mounted
read-write is not read, and a disk in use (mounted, swap, held by dm or md) is
never passed to the VM. vfat and ISO 9660 are read without mounting; XFS and
ext4 are mounted read-only in a private mount namespace that vanishes with it,
so the host's mounts are never touched. A partition that fails is reported and
skipped. The image must be a PVH ELF (a CloudHv firmware, or a Linux vmlinux,
which is booted with --kernel); vmboot-core gets a sealed in-memory copy of it
as /proc/self/fd/N, so --dry-run shows that path.

vmboot.toml, beside the image, sets the VM (the command line overrides it):
  memory = "2G"   cpus = 2   serial = "tty"|"off"|"file=PATH"   accel = "auto"
  disks = "auto" | "none" | ["/dev/sdb", { path = "/dev/sdc", readonly = true }]
  pass_firmware_disk = false   nets = ["tap0"]   cmdline = "..." (kernels only)
  "auto" passes every usable whole disk that was scanned, except the one that
  holds the image. A malformed file is an error naming its line. nets (and
  --net) are checked, then refused: vmboot-core has no virtio-net device yet.

Candidate order (what --list shows, --pick counts, and the default takes: the first):
  1. disks in the order given on the command line; without arguments, the
     whole disks of /sys/class/block in natural name order (sda, sdb, ..., sdz, sdaa);
  2. within a disk, partitions by partition number (a disk without a partition
     table is one file system);
  3. within a file system, /NAME, then /boot/NAME, then /EFI/vmboot/NAME, for
     each --name in the order given (default name: CLOUDHV.fd).
  A file that is not a PVH ELF is rejected with a warning and never listed.

Exit status:
  0  --list found candidates, or --dry-run printed the command
  1  error (one line on stderr says what), e.g. an invalid vmboot.toml
  2  usage error
  5  no usable firmware was found (nothing found, everything rejected, or
     nothing on the --device given)
  Otherwise vmboot execs vmboot-core, whose own statuses follow: 0 the guest
  powered off, 1 error, 2 usage error, 3 the guest reset (--no-reboot),
  4 stopped by the user.

Log lines (stderr, "vmboot: " first; --log-level warn keeps only warnings):
  vmboot: scanning DISK: GPT, N partitions             what is read
  vmboot: skipped DEV: REASON                          a disk or partition left alone
  vmboot: searched DEV (FSTYPE): no NAME               a file system without the image
  vmboot: warning: skipped DEV (FSTYPE): ERROR         a partition that failed to mount or read
  vmboot: warning: rejected WHERE: REASON              a firmware file that is not usable
  vmboot: found N: WHERE (FSTYPE KIND, SIZE KiB...)    a candidate
  vmboot: not passing DISK: REASON                     a disk the VM does not get
  vmboot: booting WHERE with disks: ...                the choice
  vmboot: exec COMMAND                                 the vmboot-core command line
WHERE is DEVICE:PATH, for example /dev/sdb1:/boot/CLOUDHV.fd; a partition
without a device node of its own is named DISK#N (/dev/loop0#2, disk.img#1).
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys

from vmboot.abi.cli import ACCELS, EXIT_ERROR, EXIT_POWEROFF, EXIT_USAGE, Parser
from vmboot.abi.errors import UsageError, VmbootError

from . import launch, sysfs
from .image import KERNEL
from .scan import DEFAULT_NAME, Candidate, Scanner, ScanResult, Usage
from .settings import (
    DEFAULTS, DISKS_NONE, ConfigError, Settings, accel_value, cpus_value, disk_value, memory_value, net_value,
    serial_value,
)

PROG = "vmboot"
EXIT_OK = EXIT_POWEROFF
EXIT_NOT_FOUND = 5  # after vmboot-core's own statuses
PCI_ID = re.compile(r"(?:0x)?([0-9a-fA-F]{1,4}):(?:0x)?([0-9a-fA-F]{1,4})")

log = logging.getLogger("vmboot.launcher")


def build_parser() -> Parser:
    doc = __doc__.split("\n\n", 2)
    p = Parser(prog=PROG, description=doc[1], epilog=doc[2], formatter_class=argparse.RawDescriptionHelpFormatter,
               usage="%(prog)s [options] [DEVICE|IMAGE ...]")
    p.add_argument("devices", nargs="*", metavar="DEVICE|IMAGE",
                   help="block devices, partitions or disk image files to scan (default: all of /sys/class/block)")
    find = p.add_argument_group("finding the firmware")
    find.add_argument("--name", action="append", metavar="NAME",
                      help=f"the file to look for (default {DEFAULT_NAME}); may be repeated")
    find.add_argument("--block", metavar="VENDOR:DEVICE,...", default="",
                      help="skip disks behind these PCI devices, e.g. 0x8086:0x1234,8086:abcd (as u-root's vmboot)")
    find.add_argument("--list", action="store_true", help="list the candidates and exit")
    find.add_argument("--pick", type=int, metavar="N",
                      help="boot candidate N of --list (with --device, of what --list --device shows; "
                           "default: the first)")
    find.add_argument("--device", metavar="PATH",
                      help="boot the candidate on this partition or disk (a node, an image, or DISK#N)")
    vm = p.add_argument_group("the VM (each overrides vmboot.toml)")
    vm.add_argument("--memory", metavar="SIZE", help="guest RAM, e.g. 2G (default 1G)")
    vm.add_argument("--cpus", type=int, metavar="N", help="vCPUs (default 1)")
    vm.add_argument("--serial", metavar="tty|off|file=PATH", help="the guest's COM1 (default tty)")
    vm.add_argument("--accel", choices=ACCELS, help="vmboot-core's CPU backend (default auto)")
    vm.add_argument("--disk", action="append", metavar="path=PATH[,readonly=on]",
                    help="pass this disk; may be repeated; replaces the automatic choice")
    vm.add_argument("--no-disks", action="store_true", help="pass no disk")
    vm.add_argument("--pass-firmware-disk", action="store_true",
                    help="also pass the disk that holds the firmware (automatic choice only)")
    vm.add_argument("--net", action="append", metavar="tap=NAME",
                    help="pass this host tap device (not yet: vmboot-core has no virtio-net, so it is refused)")
    vm.add_argument("--cmdline", metavar="TEXT", help="kernel command line, when the image is a Linux kernel")
    run = p.add_argument_group("running")
    run.add_argument("--dry-run", action="store_true", help="print the vmboot-core command instead of running it")
    run.add_argument("--core", metavar="PATH", help="the vmboot-core to run (default: the one installed with vmboot)")
    run.add_argument("--log-level", default="info", choices=("error", "warn", "info", "debug"))
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.pick is not None and args.pick < 1:
        raise UsageError("--pick counts from 1 (see --list)")
    if args.no_disks and args.disk:
        raise UsageError("--no-disks and --disk contradict each other")
    args.blocklist = parse_blocklist(args.block)
    try:
        args.settings = cli_settings(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    return args


def parse_blocklist(text: str) -> frozenset[tuple[int, int]]:
    out = set()
    for item in filter(None, (i.strip() for i in text.split(","))):
        m = PCI_ID.fullmatch(item)
        if not m:
            raise UsageError(f"--block: '{item}' is not VENDOR:DEVICE in hexadecimal, e.g. 0x8086:0x1234")
        out.add((int(m[1], 16), int(m[2], 16)))
    return frozenset(out)


def cli_settings(args: argparse.Namespace) -> Settings:
    disks = None
    if args.no_disks:
        disks = DISKS_NONE
    elif args.disk:
        disks = tuple(_disk_arg(d) for d in args.disk)
    return Settings(
        memory=memory_value(args.memory) if args.memory is not None else None,
        cpus=cpus_value(args.cpus) if args.cpus is not None else None,
        serial=serial_value(args.serial) if args.serial is not None else None,
        accel=accel_value(args.accel) if args.accel is not None else None,
        disks=disks,
        pass_firmware_disk=True if args.pass_firmware_disk else None,
        nets=tuple(net_value(n.removeprefix("tap=")) for n in args.net) if args.net else None,
        cmdline=args.cmdline,
    )


def _disk_arg(text: str):
    if "=" not in text:
        return disk_value(text)
    keys = dict(item.split("=", 1) if "=" in item else (item, "") for item in text.split(","))
    if set(keys) - {"path", "readonly"} or "path" not in keys:
        raise ValueError(f"--disk {text}: use path=PATH[,readonly=on]")
    if keys.get("readonly", "off") not in ("on", "off"):
        raise ValueError(f"--disk {text}: readonly is on or off")
    return disk_value(keys["path"], keys.get("readonly") == "on")


class LogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{PROG}: {level}{record.getMessage()}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    log.handlers[:] = [handler]
    log.setLevel({"error": logging.ERROR, "warn": logging.WARNING, "info": logging.INFO,
                  "debug": logging.DEBUG}[level])
    log.propagate = False


# --- choosing ---

def on_device(candidates: list[Candidate], device: str) -> list[Candidate]:
    """The candidates on a partition (node, image, DISK#N) or on any partition of a disk."""
    def same(a: str, b: str) -> bool:
        return os.path.realpath(a) == os.path.realpath(b)

    disk_part = device.rsplit("#", 1) if "#" in device else None
    out = []
    for c in candidates:
        v = c.volume
        if (v.node and same(v.node, device)) or same(v.disk.path, device) or (
                disk_part and v.number is not None and str(v.number) == disk_part[1] and same(v.disk.path,
                                                                                             disk_part[0])):
            out.append(c)
    return out


def list_candidates(candidates: list[Candidate]) -> str:
    rows = []
    for n, c in enumerate(candidates, 1):
        config = c.config_path or "-"
        if c.config_error:
            config += ":invalid"
        rows.append((str(n), c.where, c.fstype, c.kind, f"{len(c.image) >> 10}KiB", config))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))] if rows else []
    return "".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() + "\n" for r in rows)


def choose(candidates: list[Candidate], pick: int | None) -> Candidate:
    if pick is not None:
        if pick > len(candidates):
            raise VmbootError(f"--pick {pick}: there {'is' if len(candidates) == 1 else 'are'} only "
                              f"{len(candidates)} candidate{'s' if len(candidates) != 1 else ''} (see --list)")
        return candidates[pick - 1]
    if len(candidates) > 1:
        log.info("%d candidates: taking the first (--list shows them; --pick or --device chooses)", len(candidates))
    return candidates[0]


class NotFound(VmbootError):
    exit_status = EXIT_NOT_FOUND


def run(args: argparse.Namespace, scanner: Scanner, usage: Usage) -> int:
    result: ScanResult = scanner.scan(args.devices or None)
    candidates = result.candidates
    if args.device:
        candidates = on_device(candidates, args.device)
        if not candidates:
            raise NotFound(f"no firmware candidate on {args.device}"
                           + (f" ({len(result.candidates)} elsewhere: see --list)" if result.candidates else ""))
    if args.list:
        sys.stdout.write(list_candidates(candidates))
        if not candidates:
            raise NotFound(_nothing(result))
        return EXIT_OK
    if not candidates:
        raise NotFound(_nothing(result))
    chosen = choose(candidates, args.pick)
    if chosen.config_error:
        raise VmbootError(chosen.config_error)
    settings = args.settings.over((chosen.settings or Settings()).over(DEFAULTS))
    if settings.cmdline is not None and chosen.kind != KERNEL:
        raise VmbootError(f"--cmdline is for a Linux kernel, and {chosen.where} is a {chosen.kind}")
    disks = launch.disks_to_pass(settings, result.disks, chosen, usage)
    core = launch.find_core(args.core)
    fd = launch.seal_image(chosen)
    argv = launch.core_command(core, f"/proc/self/fd/{fd}", chosen.kind, settings, disks)
    log.info("booting %s with %s", chosen.where,
             "disks: " + ", ".join(d.path for d in disks) if disks else "no disk")
    if args.dry_run:
        print(shlex.join(argv))
        return EXIT_OK
    log.info("exec %s", shlex.join(argv))
    launch.exec_core(argv)
    return EXIT_ERROR  # not reached: exec_core replaces this process or raises


def _nothing(result: ScanResult) -> str:
    notes = []
    if result.rejected:
        notes.append(f"{len(result.rejected)} rejected")
    if result.unreadable:
        notes.append(f"{len(result.unreadable)} unreadable")
    what = "no usable firmware found" if result.rejected else "no firmware found"
    return f"{what} ({', '.join(notes)}, see above)" if notes else what


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level)
    try:
        usage = Usage(sysfs.mounts(), sysfs.swaps())
        scanner = Scanner(sysfs.SysBlock(), usage, tuple(args.name or (DEFAULT_NAME,)), args.blocklist)
        return run(args, scanner, usage)
    except (VmbootError, ConfigError) as err:
        print(f"{PROG}: {err}", file=sys.stderr)
        return getattr(err, "exit_status", EXIT_ERROR)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
