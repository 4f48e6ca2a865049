"""vmboot-core's command line, with cloud-hypervisor's option names and ``key=value`` syntax."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from vmboot.abi import layout
from vmboot.abi.cli import ACCELS, EXIT_ERROR, EXIT_POWEROFF, EXIT_QUIT, EXIT_RESET, EXIT_USAGE, Parser, parse_size
from vmboot.abi.errors import UsageError
from vmboot.abi.virtio import VIRTIO_BLK_ID_BYTES

from .disk import DiskSpec

LOG_LEVELS = ("error", "warn", "info", "debug")

EPILOG = f"""\
exit status:
  {EXIT_POWEROFF}  the guest powered off
  {EXIT_ERROR}  error (one line on stderr says what)
  {EXIT_USAGE}  usage error
  {EXIT_RESET}  the guest reset and --no-reboot was given (without it, the VM restarts)
  {EXIT_QUIT}  stopped by the user: Ctrl-a x on the console, SIGINT or SIGTERM

console keys (--serial tty): Ctrl-a x quits, Ctrl-a Ctrl-a sends Ctrl-a, Ctrl-a h helps.
"""


@dataclass
class OutputSetting:
    mode: str  # "tty", "file" or "off"
    path: Path | None = None


@dataclass
class VmConfig:
    firmware: Path | None = None
    kernel: Path | None = None
    initramfs: Path | None = None
    cmdline: str | None = None
    memory: int = 512 * layout.MiB
    cpus: int = 1
    serial: OutputSetting = field(default_factory=lambda: OutputSetting("tty"))
    debugcon: OutputSetting = field(default_factory=lambda: OutputSetting("off"))
    accel: str = "auto"
    log_level: str = "warn"
    stats: bool = False
    no_reboot: bool = False
    disks: list[DiskSpec] = field(default_factory=list)
    devices: str = "sandboxed"
    seccomp: str = "kill"
    virtio_eventfds: str = "kernel"


def parse_kv(option: str, text: str, keys: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in text.split(","):
        if "=" not in item:
            raise UsageError(f"{option}: '{item}' is not key=value (keys: {', '.join(keys)})")
        key, value = item.split("=", 1)
        if key not in keys:
            raise UsageError(f"{option}: unknown key '{key}' (keys: {', '.join(keys)})")
        out[key] = value
    return out


def parse_output(option: str, text: str, allow_tty: bool) -> OutputSetting:
    if text == "off":
        return OutputSetting("off")
    if text == "tty" and allow_tty:
        return OutputSetting("tty")
    if text.startswith("file="):
        path = text[5:]
        if not path:
            raise UsageError(f"{option}: file= needs a path")
        return OutputSetting("file", Path(path))
    choices = "tty, file=PATH or off" if allow_tty else "file=PATH or off"
    raise UsageError(f"{option}: '{text}' is not one of {choices}")


def build_parser() -> Parser:
    p = Parser(
        prog="vmboot-core",
        description="Run one virtual machine: UEFI firmware (or a Linux kernel) with vmboot's devices.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    boot = p.add_argument_group("what to boot (one of)")
    boot.add_argument("--firmware", type=Path, metavar="PATH", help="a PVH firmware image such as CLOUDHV.fd")
    boot.add_argument("--kernel", type=Path, metavar="PATH", help="a Linux bzImage or a PVH vmlinux")
    boot.add_argument("--initramfs", type=Path, metavar="PATH", help="initramfs for --kernel")
    boot.add_argument("--cmdline", metavar="TEXT", help="kernel command line for --kernel")
    vm = p.add_argument_group("virtual machine")
    vm.add_argument("--memory", default="size=512M", metavar="size=SIZE", help="guest RAM (default size=512M)")
    vm.add_argument("--cpus", default="boot=1", metavar="boot=N", help="vCPUs (default boot=1)")
    vm.add_argument("--accel", default="auto", choices=ACCELS,
                    help="CPU backend: kvm, emulate (software CPU), or auto: kvm when the host has VT-x/AMD-V")
    vm.add_argument("--no-reboot", action="store_true", help=f"exit with status {EXIT_RESET} when the guest resets")
    vm.add_argument("--disk", action="append", default=[], metavar="path=IMG[,readonly=on][,id=NAME]",
                    help="a virtio-blk disk (a raw image or a block device); repeat for more")
    sec = p.add_argument_group("device isolation")
    sec.add_argument("--devices", choices=("sandboxed", "inproc"), default="sandboxed",
                     help="run each device in its own sandboxed process (default), or in vmboot-core (debugging)")
    sec.add_argument("--seccomp", choices=("true", "false", "log"), default="true",
                     help="device seccomp filters: enforce (default), off, or log violations instead of killing")
    vm.add_argument("--virtio-eventfds", choices=("kernel", "core"), default="kernel",
                    help="on kvm, who carries virtio notifications and interrupts: the kernel (ioeventfd and "
                         "irqfd, default) or vmboot-core's threads (a baseline for measurements); emulate is "
                         "always core")
    out = p.add_argument_group("console and diagnostics")
    out.add_argument("--serial", default="tty", metavar="tty|file=PATH|off", help="COM1 (default tty)")
    out.add_argument("--debugcon", default="off", metavar="file=PATH|off",
                     help="the firmware debug port 0x402 (default off)")
    out.add_argument("--log-level", default="warn", choices=LOG_LEVELS)
    out.add_argument("--stats", action="store_true",
                     help="when the VM ends, print exit counts per port and MMIO range and boot phase times")
    return p


def parse_args(argv: list[str]) -> VmConfig:
    args = build_parser().parse_args(argv)
    if bool(args.firmware) == bool(args.kernel):
        raise UsageError("give exactly one of --firmware PATH or --kernel PATH (see --help)")
    if args.firmware and (args.initramfs or args.cmdline is not None):
        raise UsageError("--initramfs and --cmdline go with --kernel, not --firmware")
    memory = parse_size(parse_kv("--memory", args.memory, ("size",)).get("size", "512M"), "--memory size")
    if memory % layout.MiB:
        raise UsageError("--memory size must be a whole number of MiB")
    cpus_kv = parse_kv("--cpus", args.cpus, ("boot",))
    try:
        cpus = int(cpus_kv.get("boot", "1"))
    except ValueError:
        raise UsageError(f"--cpus boot={cpus_kv['boot']} is not a number") from None
    if not 1 <= cpus <= 255:
        raise UsageError("--cpus boot must be between 1 and 255")
    disks = [parse_disk(text) for text in args.disk]
    return VmConfig(
        firmware=args.firmware, kernel=args.kernel, initramfs=args.initramfs, cmdline=args.cmdline,
        memory=memory, cpus=cpus,
        serial=parse_output("--serial", args.serial, allow_tty=True),
        debugcon=parse_output("--debugcon", args.debugcon, allow_tty=False),
        accel=args.accel, log_level=args.log_level, stats=args.stats, no_reboot=args.no_reboot,
        disks=disks, devices=args.devices, seccomp={"true": "kill", "false": "off", "log": "log"}[args.seccomp],
        virtio_eventfds=args.virtio_eventfds,
    )


def parse_disk(text: str) -> DiskSpec:
    kv = parse_kv("--disk", text, ("path", "readonly", "id"))
    if not kv.get("path"):
        raise UsageError("--disk needs path=IMAGE")
    readonly = kv.get("readonly", "off")
    if readonly not in ("on", "off"):
        raise UsageError(f"--disk readonly={readonly}: use on or off")
    ident = kv.get("id")
    if ident is not None and (not ident or len(ident.encode()) > VIRTIO_BLK_ID_BYTES):
        raise UsageError(f"--disk id={ident}: 1 to {VIRTIO_BLK_ID_BYTES} bytes (it is the virtio-blk serial)")
    return DiskSpec(Path(kv["path"]), readonly == "on", ident)
