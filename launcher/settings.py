"""What the VM gets: settings from vmboot.toml beside the firmware, overridden by the command line.

vmboot.toml (TOML 1.0; every key optional)::

    memory = "2G"              # guest RAM: vmboot-core --memory size=
    cpus = 2                   # vCPUs: --cpus boot=
    serial = "tty"             # "tty", "off" or "file=/path/to/log"
    accel = "auto"             # "auto", "kvm" or "emulate"
    disks = "auto"             # "auto": every usable whole disk but the one holding the firmware;
                               # "none"; or a list: ["/dev/nvme0n1", { path = "/dev/sdb", readonly = true }]
    pass_firmware_disk = false # with disks = "auto": pass the firmware's own disk too
    nets = ["tap0"]            # host tap devices: --net tap=NAME (checked, then refused: no virtio-net yet)
    cmdline = "console=ttyS0"  # kernel command line; only when the image is a Linux kernel

A malformed file, an unknown key or a bad value is an error that names the file and the line.
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, fields, replace

from vmboot.abi import layout
from vmboot.abi.cli import ACCELS, parse_size
from vmboot.abi.errors import UsageError

CONFIG_NAME = "vmboot.toml"
DEFAULT_MEMORY = 1 * layout.GiB
DEFAULT_CPUS = 1
MAX_CPUS = 255
DISKS_AUTO = "auto"
DISKS_NONE = "none"
IFNAMSIZ = 16  # <net/if.h>: interface names are at most 15 characters
TAP_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,%d}" % (IFNAMSIZ - 1))
TOML_POSITION = re.compile(r"\s*\(at (?:line (\d+), column \d+|end of document)\)$")


class ConfigError(Exception):
    """A bad vmboot.toml (message: "WHERE line N: what is wrong") or a bad command-line setting."""


@dataclass(frozen=True)
class DiskSetting:
    path: str
    readonly: bool = False

    def core_arg(self) -> str:
        return f"path={self.path}" + (",readonly=on" if self.readonly else "")


@dataclass(frozen=True)
class Settings:
    """Each field is None when unset, so that layers can be merged."""

    memory: int | None = None  # bytes
    cpus: int | None = None
    serial: str | None = None
    accel: str | None = None
    disks: str | tuple[DiskSetting, ...] | None = None  # DISKS_AUTO, DISKS_NONE or explicit disks
    pass_firmware_disk: bool | None = None
    nets: tuple[str, ...] | None = None
    cmdline: str | None = None

    def over(self, base: Settings) -> Settings:
        """These settings where set, ``base``'s elsewhere."""
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(self)
                                if getattr(self, f.name) is not None})


DEFAULTS = Settings(memory=DEFAULT_MEMORY, cpus=DEFAULT_CPUS, disks=DISKS_AUTO, pass_firmware_disk=False, nets=())


# --- values, shared by the file and the command line -------------------------------------------------

def memory_value(text: str) -> int:
    try:
        size = parse_size(text, "memory")
    except UsageError as err:
        raise ValueError(str(err)) from None
    if size % layout.MiB or size == 0:
        raise ValueError(f"memory: '{text}' is not a whole, non-zero number of MiB")
    return size


def cpus_value(value: int) -> int:
    if not 1 <= value <= MAX_CPUS:
        raise ValueError(f"cpus: {value} is not between 1 and {MAX_CPUS}")
    return value


def serial_value(text: str) -> str:
    if text in ("tty", "off") or (text.startswith("file=") and len(text) > len("file=")):
        return text
    raise ValueError(f"serial: '{text}' is not tty, off or file=PATH")


def accel_value(text: str) -> str:
    if text not in ACCELS:
        raise ValueError(f"accel: '{text}' is not one of {', '.join(ACCELS)}")
    return text


def disk_value(path: str, readonly: bool = False) -> DiskSetting:
    if not path.startswith("/"):
        raise ValueError(f"disk '{path}': give an absolute path such as /dev/sdb")
    if "," in path:
        raise ValueError(f"disk '{path}': a path with a comma cannot be passed to vmboot-core")
    return DiskSetting(path, readonly)


def net_value(name: str) -> str:
    if not TAP_NAME.fullmatch(name):
        raise ValueError(f"net: '{name}' is not a network interface name")
    return name


# --- vmboot.toml -----------------------------------------------------------------------------------

def parse_config(text: str, where: str) -> Settings:
    """Settings from the text of a vmboot.toml; ``where`` names it in errors ("/dev/sdb1:/vmboot.toml")."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        m = TOML_POSITION.search(message)
        line = (m[1] if m and m[1] else str(len(text.splitlines()) or 1))
        message = TOML_POSITION.sub("", message)
        raise ConfigError(f"{where} line {line}: {message[:1].lower()}{message[1:]}") from None
    values = {}
    for key, value in table.items():
        line = line_of(text, key)
        try:
            values[key] = _KEYS[key](value) if key in _KEYS else _unknown(key)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{where} line {line}: {err}") from None
    return Settings(**values)


def _unknown(key: str):
    raise ValueError(f"unknown key '{key}' (known: {', '.join(_KEYS)})")


def _expect(kind, what: str, value):
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        names = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}
        raise TypeError(f"{what} must be {names[kind]}, not {_toml_type(value)}")
    return value


def _toml_type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def _disks(value) -> str | tuple[DiskSetting, ...]:
    if isinstance(value, str):
        if value not in (DISKS_AUTO, DISKS_NONE):
            raise ValueError(f"disks: '{value}' is not \"auto\", \"none\" or a list of disks")
        return value
    specs = []
    for item in _expect(list, "disks", value):
        if isinstance(item, str):
            specs.append(disk_value(item))
        elif isinstance(item, dict):
            unknown = set(item) - {"path", "readonly"}
            if unknown or "path" not in item:
                raise ValueError("disks: a table needs path and may have readonly, nothing else")
            specs.append(disk_value(_expect(str, "disks path", item["path"]),
                                    _expect(bool, "disks readonly", item.get("readonly", False))))
        else:
            raise TypeError(f"disks entries must be paths or {{ path = ..., readonly = ... }}, not {_toml_type(item)}")
    return tuple(specs)


_KEYS = {
    "memory": lambda v: memory_value(_expect(str, "memory", v)),
    "cpus": lambda v: cpus_value(_expect(int, "cpus", v)),
    "serial": lambda v: serial_value(_expect(str, "serial", v)),
    "accel": lambda v: accel_value(_expect(str, "accel", v)),
    "disks": _disks,
    "pass_firmware_disk": lambda v: _expect(bool, "pass_firmware_disk", v),
    "nets": lambda v: tuple(net_value(_expect(str, "nets entries", n)) for n in _expect(list, "nets", v)),
    "cmdline": lambda v: _expect(str, "cmdline", v),
}


def line_of(text: str, key: str) -> int:
    """The line that sets top-level ``key`` (bare or quoted), or that opens table ``[key]``."""
    quoted = re.escape(key)
    pattern = re.compile(rf"^\s*(?:(?:{quoted}|\"{quoted}\"|'{quoted}')\s*[=.]|\[+\s*{quoted}\s*[\].])")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return 1
