"""The device registry: every device kind, declared once, by its own folder.

Each ``devices/<kind>/kind.py`` declares one :class:`DeviceKind` as ``KIND``;
:func:`discover` registers them all (importing a module registers nothing, so a
test's kind is registered only while the test wants it). Everything else derives
from the registry: the core's platform maps a kind's register windows and wires
its interrupts and consoles, the virtio host attaches one device per disk, the
supervisor restarts a device by its :class:`Restart` policy, the device zygote
imports the kinds' modules before it forks, and the policy tests and the
exercise find each kind's policy. No other module names a kind.

A kind's ``build`` runs wherever the device runs: in its own sandboxed process
(devices/process/), or in the core with ``--devices inproc``. It gets its
parameters (from the core's HELLO), its descriptors by name, and a
:class:`Host`, through which the model raises interrupts and writes its
consoles without knowing which of the two it is in.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from vmboot.policies.compiler import POLICY_DIR


class Restart(enum.Enum):
    """What the core does when the device process dies."""

    STATELESS = "stateless"  # start it again: it had nothing worth keeping
    SNAPSHOT = "snapshot"  # start it again from the last snapshot it sent
    NEVER = "never"  # the VM cannot go on without it (a disk with requests in flight)


class Attach(enum.Enum):
    """When a machine has the device."""

    PLATFORM = "platform"  # always: a legacy device at fixed ports
    DISK = "disk"  # one per --disk


@dataclass(frozen=True)
class Window:
    """A register window of the device and where the platform maps it (ports)."""

    number: int  # the device's window number: the models know offsets in it, never this base
    base: int
    size: int
    label: str  # how --stats names the range
    console: str | None = None  # mapped only when the machine has this console sink (a debug port)


@dataclass(frozen=True)
class Virtio:
    """What the transport must know before the device process answers."""

    device_type: int  # virtio 1.2 §5
    queues: int
    pci_class: int  # (base class << 16) | (subclass << 8) | programming interface


class Host(Protocol):
    """What a model is given by whoever runs it: the device process, or the core (inproc)."""

    def irq(self, line: int, level: bool) -> None: ...

    def console(self, window: int) -> Callable[[bytes], None]: ...

    def dma(self, gpa: int, length: int) -> None: ...

    def wall_clock(self) -> float: ...

    def monotonic(self) -> float: ...


Build = Callable[[dict, dict, Host], Any]


@dataclass(frozen=True)
class DeviceKind:
    name: str
    restart: Restart
    build: Build  # (params, fds, host) -> a Served (devices/served.py), or the virtio device model
    attach: Attach = Attach.PLATFORM
    windows: tuple[Window, ...] = ()
    irqs: tuple[int, ...] = ()  # the device's interrupt line N is the guest's GSI irqs[N]
    consoles: dict[int, str] = field(default_factory=dict)  # output window -> sink: "console" (takes input), "debug"
    params: Callable[[Host], dict] = lambda host: {}  # the core's parameters for a new device
    virtio: Virtio | None = None
    policy_dir: Path = POLICY_DIR  # <policy_dir>/<name>.policy
    exercise: str | None = None  # a module whose exercise(bench) is the real work that proves its policy
    #                              (core/exercise.py runs it; no device process imports it)
    module: str = ""  # the module that registered it, for the zygote to import (set by register)

    @property
    def policy(self) -> Path:
        return self.policy_dir / f"{self.name}.policy"


_KINDS: dict[str, DeviceKind] = {}
_discovered = False


class ExerciseFailed(Exception):
    """A device died or answered its exercise wrong (core/exercise.py, a kind's ``exercise`` module);
    the message says how, in one line."""


class UnknownKind(LookupError):
    pass


def register(kind: DeviceKind, module: str) -> DeviceKind:
    """Add a kind; ``module`` (its declaring module's ``__name__``) is what a zygote imports for it."""
    existing = _KINDS.get(kind.name)
    if existing is not None:
        if existing.module != module:
            raise ValueError(f"device kind {kind.name!r} is registered twice ({existing.module}, {module})")
        return existing  # the same module, imported again
    kind = dataclasses.replace(kind, module=module)
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """For tests that register a kind of their own."""
    _KINDS.pop(name, None)


def discover() -> None:
    """Register the ``KIND`` of every ``devices/<kind>/kind.py``."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = Path(__file__).resolve().parent
    for info in sorted(pkgutil.iter_modules([str(package)]), key=lambda i: i.name):
        if info.ispkg and (package / info.name / "kind.py").exists():
            _register_module(f"{__package__}.{info.name}.kind")


def _register_module(name: str) -> DeviceKind:
    module = importlib.import_module(name)
    kind = getattr(module, "KIND", None)
    if not isinstance(kind, DeviceKind):
        raise TypeError(f"{name} declares no device kind (a module-level KIND = DeviceKind(...))")
    return register(kind, name)


def kinds(attach: Attach | None = None) -> list[DeviceKind]:
    """Every registered kind (in registration order), or those attached the way given."""
    discover()
    return [k for k in _KINDS.values() if attach is None or k.attach is attach]


def get(name: str) -> DeviceKind:
    discover()
    try:
        return _KINDS[name]
    except KeyError:
        raise UnknownKind(f"unknown device kind {name!r} (known: {', '.join(_KINDS)})") from None


def outside_modules() -> list[str]:
    """The modules of kinds registered outside devices/ (a test's): a device program imports them first."""
    return [k.module for k in kinds() if not k.module.startswith(__package__ + ".")]


def load(modules: list[str]) -> None:
    """Register the kinds declared outside devices/ (a test's), by the modules that declare them."""
    discover()
    for module in modules:
        _register_module(module)
