"""Typed vCPU exits: what a backend's ``run()`` returns.

Both CPU backends speak these types. The KVM backend decodes ``kvm_run`` into
them; the emulate backend builds them in its instruction hooks. The core's exit
handler is the only consumer, so the rest of the core never knows which backend
runs.
"""
from __future__ import annotations

from dataclasses import dataclass


class Exit:
    __slots__ = ()


@dataclass(slots=True)
class IoIn(Exit):
    """``count`` reads of ``size`` bytes (``count`` > 1 for ``rep ins``)."""

    port: int
    size: int
    count: int = 1


@dataclass(slots=True)
class IoOut(Exit):
    """Writes of ``size`` bytes each; ``data`` holds them back to back (``rep outs``)."""

    port: int
    size: int
    data: bytes


@dataclass(slots=True)
class MmioRead(Exit):
    addr: int
    size: int


@dataclass(slots=True)
class MmioWrite(Exit):
    addr: int
    data: bytes


@dataclass(slots=True)
class Hlt(Exit):
    """The vCPU halted and the backend does not sleep by itself."""


@dataclass(slots=True)
class Shutdown(Exit):
    """The CPU shut down, normally a triple fault."""

    rip: int


@dataclass(slots=True)
class SystemEvent(Exit):
    """The hypervisor reports a platform event (power off, reset, crash)."""

    kind: str


@dataclass(slots=True)
class Interrupted(Exit):
    """``run()`` returned early because the core asked it to (a kick)."""


@dataclass(slots=True)
class CpuError(Exit):
    """The CPU cannot continue: an emulation failure, a failed entry, and so on.

    ``detail`` is a sentence for the user; ``rip`` is where it happened.
    """

    detail: str
    rip: int | None = None


IO_EXITS = (IoIn, IoOut, MmioRead, MmioWrite)
