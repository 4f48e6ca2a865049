"""Small guest programs for backend tests: run them on the real platform, observe.

A program talks back through the platform's own devices: bytes written to the
debug port 0x402 are collected in ``Result.debug``, COM1 output in
``Result.serial``, and it ends the VM like a real guest, usually by powering
off through ACPI (the ``poweroff`` macro). Programs run on the real platform
(``vmboot.core.platform.Platform``) with either CPU backend.

Entry modes:
- ``real``: 16-bit real mode at 0:PROGRAM (KVM-PVM runs these);
- ``protected``: the PVH entry state (32-bit, flat, paging off);
- ``long``: the Linux 64-bit entry state (identity-mapped 4 GiB, CS=0x10).

Assembling programs, the memory they may use and the nasm macros every program
gets: tests/guest_asm.py.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from vmboot.abi.memory import GuestMemory
from vmboot.core.boot.bzimage import long_mode_entry
from vmboot.core.boot.pvh import pvh_entry_state
from vmboot.core.events import Outcome, VmEvents
from vmboot.core.platform import Platform
from vmboot.core.vcpu.state import real_mode_entry
from vmboot.tests.guest_asm import PROGRAM, STACK_TOP, assemble_with_symbols


@dataclass
class Result:
    outcome: Outcome | None
    message: str
    debug: bytes
    serial: bytes
    elapsed: float
    platform: Platform = field(repr=False)
    backend: object = field(repr=False)
    symbols: dict[str, int] = field(default_factory=dict, repr=False)  # the program's labels

    def dwords(self) -> list[int]:
        """The debug bytes as little-endian 32-bit values (programs using out_eax)."""
        return [int.from_bytes(self.debug[i:i + 4], "little") for i in range(0, len(self.debug) - 3, 4)]

    def qwords(self) -> list[int]:
        """The debug bytes as little-endian 64-bit values (programs using out_rax)."""
        return [int.from_bytes(self.debug[i:i + 8], "little") for i in range(0, len(self.debug) - 7, 8)]


def make_backend(accel: str, memory: GuestMemory, irqchip: bool = True):
    if accel == "kvm":
        from vmboot.core.kvm.backend import KvmBackend
        return KvmBackend(memory)
    from vmboot.core.emulate.backend import EmulateBackend
    return EmulateBackend(memory)


class GuestRun:
    """Run one program; a context manager so the VM is always torn down."""

    def __init__(self, source: str | bytes, accel: str = "kvm", mode: str = "real", memory: int = 2 << 20,
                 extra_mmio: list[tuple[int, int, object, str]] = (), serial_input: bytes = b""):
        self.code, self.symbols = (source, {}) if isinstance(source, bytes) else assemble_with_symbols(source, mode)
        self.accel, self.mode = accel, mode
        self.memory = GuestMemory(memory)
        self.events = VmEvents()
        self.debug = bytearray()
        self.serial = bytearray()
        self.backend = make_backend(accel, self.memory)
        self.platform = Platform(self.events, self.backend.irq_line, serial_out=self.serial.extend,
                                 debug_out=self.debug.extend)
        for base, size, device, name in extra_mmio:
            self.platform.mmio.register(base, size, device, name)
        if serial_input:
            self.platform.serial_input(serial_input)

    def entry(self):
        if self.mode == "real":
            return real_mode_entry(0, PROGRAM, sp=STACK_TOP)
        if self.mode == "protected":
            state = pvh_entry_state(self.memory, PROGRAM)
            state.gprs["rsp"] = STACK_TOP
            return state
        state = long_mode_entry(self.memory, PROGRAM, rsi=0)
        state.gprs["rsp"] = STACK_TOP
        return state

    def run(self, timeout: float = 10.0) -> Result:
        self.start()
        return self.finish(timeout)

    def start(self) -> None:
        """Load the program and start the vCPU; the test may then act as the host while it runs."""
        self.memory.write(PROGRAM, self.code)
        self._started = time.monotonic()
        self.backend.start(self.entry(), self.platform.io, self.events)

    def wait_until(self, condition, timeout: float = 5.0, what: str = "the guest") -> None:
        """Poll ``condition()`` while the guest runs; fail loudly if it stays false or the VM stops."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.events.stopping:
                raise AssertionError(f"the VM stopped while waiting for {what}: {self.events.stop.message}; "
                                     f"debug output {bytes(self.debug)!r}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                     f"debug output {bytes(self.debug)!r}")
            time.sleep(0.001)

    def finish(self, timeout: float = 10.0) -> Result:
        """Wait for the VM to stop (at most ``timeout`` seconds from start()) and tear the vCPU down."""
        finished = self.events.stopped.wait(max(0.0, self._started + timeout - time.monotonic()))
        elapsed = time.monotonic() - self._started
        if not finished:
            self.events.request(Outcome.ERROR, f"timed out after {timeout} s")
        self.backend.kick_all()
        self.backend.join()
        stop = self.events.stop
        return Result(stop.outcome if finished else None, stop.message, bytes(self.debug), bytes(self.serial),
                      elapsed, self.platform, self.backend, self.symbols)

    def close(self) -> None:
        self.backend.close()
        self.memory.close()

    def __enter__(self) -> GuestRun:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_guest(source: str | bytes, accel: str = "kvm", mode: str = "real", timeout: float = 10.0, **kw) -> Result:
    with GuestRun(source, accel, mode, **kw) as run:
        return run.run(timeout)


class RecordingDevice:
    """A test device for bus dispatch: records accesses, answers a fixed pattern."""

    def __init__(self, value: bytes = b"\x11\x22\x33\x44\x55\x66\x77\x88"):
        self.value = value
        self.accesses: list[tuple[str, int, object]] = []
        self.lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        with self.lock:
            self.accesses.append(("read", offset, size))
        return self.value[:size]

    def write(self, offset: int, data: bytes) -> None:
        with self.lock:
            self.accesses.append(("write", offset, bytes(data)))
