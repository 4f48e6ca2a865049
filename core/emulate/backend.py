"""The ``emulate`` CPU backend: vmboot's TCG, for hosts without VT-x/AMD-V.

One Unicorn engine runs the guest in one long ``uc_emu_start`` on its own
thread. Port I/O and MMIO reach the same buses as under KVM, through the same
typed exits. What KVM's in-kernel irqchip does is done here: a local APIC and
an I/O APIC (Python models), interrupts injected through QEMU's own delivery
path (the patch's INTR line and acknowledge callback), HLT that sleeps until an
interrupt, and timers served by their own thread. Nothing ever stops the CPU
to let time pass, so the guest's TSC, APIC timer, PM timer and RTC all follow
the host's clock.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter, deque
from typing import Callable

from vmboot.abi import layout
from vmboot.abi.errors import VmbootError
from vmboot.abi.memory import GuestMemory

from ..events import VmEvents
from ..vcpu.dispatch import IoDispatcher
from ..vcpu.exits import IoIn, IoOut, MmioRead, MmioWrite
from ..vcpu.state import EntryState
from .cpuid import CpuidEntry, CpuidTable
from .engine import UC_ERR_EXCEPTION, UC_ERR_OK, MachineEngine, unicorn
from .ioapic import IoApic
from .lapic import LocalApic
from .msrs import MsrPolicy
from .pic import Elcr, Pic8259
from .timers import TimerQueue

log = logging.getLogger("vmboot.emulate")

RFLAGS_IF = 1 << 9
PORT_PIC_MASTER = 0x20
PORT_PIC_SLAVE = 0xA0
PORT_ELCR = 0x4D0
PHYS_ADDR_TOP = 1 << 36  # the catch-all MMIO above RAM ends here (64 GiB)
SWITCH_INTERVAL = 0.0005  # seconds; see start()
STOP_RETRY = 0.05  # seconds between stops while the vCPU thread is being joined


def probe_cpuid(leaf: int, subleaf: int, _engines={}) -> CpuidEntry:
    """Run CPUID on a scratch engine of the same model (no machine mode, no hooks)."""
    uc = _engines.get("probe")
    if uc is None:
        uc = _engines["probe"] = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_32)
        uc.mem_map(0x1000, 0x1000)
        uc.mem_write(0x1000, b"\x0f\xa2")  # cpuid
    from unicorn import x86_const as X86
    uc.reg_write(X86.UC_X86_REG_EAX, leaf)
    uc.reg_write(X86.UC_X86_REG_ECX, subleaf)
    uc.emu_start(0x1000, 0x1002)
    return CpuidEntry(*(uc.reg_read(r) for r in (X86.UC_X86_REG_EAX, X86.UC_X86_REG_EBX,
                                                   X86.UC_X86_REG_ECX, X86.UC_X86_REG_EDX)))


class EmulateBackend:
    name = "emulate"

    def __init__(self, memory: GuestMemory, cpus: int = 1, clock: Callable[[], float] = time.monotonic):
        if cpus != 1:
            raise VmbootError("--accel emulate runs one vCPU; use --cpus boot=1")
        self.memory = memory
        self.engine = MachineEngine()
        self.timers = TimerQueue(clock)
        self.ioapic = IoApic(deliver=lambda vector, level: self.lapic.accept(vector, level))
        self.lapic = LocalApic(clock, self.timers, raise_intr=self._raise_intr, eoi_level=self.ioapic.eoi)
        self.msrs = MsrPolicy(self.lapic)
        self.cpuid = CpuidTable(probe_cpuid)
        self.stopping = False
        self._wake = threading.Condition()
        self._kicked = False
        self._thread: threading.Thread | None = None
        self.counts: Counter[str] = Counter()
        self._dma: deque[tuple[int, int]] = deque()
        for region in memory.regions:
            self.engine.map_ram(region.gpa, region.size, memory.host_address(region))

    # -- interrupt plumbing ------------------------------------------------------------
    def irq_line(self, gsi: int) -> Callable[[bool], None]:
        return lambda level: self.ioapic.set_irq(gsi, level)

    def _raise_intr(self) -> None:
        self.engine.raise_irq()
        with self._wake:
            self._kicked = True
            self._wake.notify()

    def msi(self, address: int, data: int) -> None:
        """An MSI write (Intel SDM Vol. 3A §11.11): the vector is in the low byte of the data."""
        self.lapic.accept(data & 0xFF, level=False)

    def bind_ioeventfd(self, fd: int, address: int | None, previous: int | None) -> bool:
        return False  # no kernel help: the transport signals the kick eventfd itself

    def route_msi(self, fd: int, address: int, data: int) -> bool:
        return False  # no kernel help: the interrupt relay turns the call eventfd into msi()

    def unroute_msi(self, fd: int) -> None:
        pass

    def dma_written(self, gpa: int, length: int) -> None:
        """A device wrote guest memory behind the CPU's back (thread-safe)."""
        self._dma.append((gpa, length))

    def _drop_stale_code(self) -> None:
        """At a safe point of the vCPU thread: forget code translated from DMA-written memory."""
        while self._dma:
            gpa, length = self._dma.popleft()
            self.engine.invalidate_code(gpa, gpa + length)
            self.counts["dma invalidations"] += 1

    def _intack(self) -> int:
        if self._dma:
            self._drop_stale_code()
        vector = self.lapic.intack()
        if vector >= 0:
            self.counts["interrupts"] += 1
        return vector

    def _halt(self) -> None:
        """HLT: sleep until an interrupt can be taken, or the VM stops."""
        self.counts["hlt"] += 1
        if self._dma:
            self._drop_stale_code()
        interrupts_on = self.engine.reg("eflags") & RFLAGS_IF
        while not self.stopping:
            if interrupts_on and self.lapic.has_interrupt():
                return
            with self._wake:
                if not self._kicked and not self.stopping:
                    self._wake.wait()
                self._kicked = False

    # -- start and stop ----------------------------------------------------------------
    def _map_platform(self, io: IoDispatcher) -> None:
        io.mmio.register(layout.LAPIC_START, layout.LAPIC_SIZE, self.lapic, "lapic")
        io.mmio.register(layout.IOAPIC_START, layout.IOAPIC_SIZE, self.ioapic, "ioapic")
        io.ports.register(PORT_PIC_MASTER, 2, Pic8259(), "pic-master")
        io.ports.register(PORT_PIC_SLAVE, 2, Pic8259(), "pic-slave")
        io.ports.register(PORT_ELCR, 2, Elcr(), "elcr")

        dma = self._dma
        drop = self._drop_stale_code

        def mmio_window(base: int):
            handle = io.handle

            def read(off: int, size: int) -> int:
                if dma:
                    drop()
                return int.from_bytes(handle(MmioRead(base + off, size)), "little")

            def write(off: int, size: int, value: int) -> None:
                if dma:
                    drop()
                handle(MmioWrite(base + off, value.to_bytes(8, "little")[:size]))
            return read, write

        # Everything that is not RAM is MMIO: the buses answer, all ones where no device is.
        holes, cursor = [], 0
        for region in self.memory.regions:
            if region.gpa > cursor:
                holes.append((cursor, region.gpa))
            cursor = region.end
        holes.append((cursor, PHYS_ADDR_TOP))
        for start, end in holes:
            self.engine.map_mmio(start, end - start, *mmio_window(start))

        handle = io.handle

        def port_in(port: int, size: int) -> int:
            if dma:
                drop()
            return int.from_bytes(handle(IoIn(port, size)), "little")

        def port_out(port: int, size: int, value: int) -> None:
            if dma:
                drop()
            handle(IoOut(port, size, value.to_bytes(4, "little")[:size]))
        self.engine.hook_port_in(port_in)
        self.engine.hook_port_out(port_out)
        self.engine.hook_msr(self.msrs.rdmsr, self.msrs.wrmsr)
        self.engine.hook_cpuid(self._cpuid)
        self.engine.machine_mode(self._intack, self._halt)

    def _cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        e = self.cpuid.lookup(leaf, subleaf)
        return e.eax, e.ebx, e.ecx, e.edx

    def load(self, entry: EntryState) -> None:
        """Put the CPU in the entry state, through descriptor-loading register writes."""
        eng = self.engine
        eng.set_reg("gdtr", (0, entry.gdt.base, entry.gdt.limit, 0))
        eng.set_reg("idtr", (0, entry.idt.base, entry.idt.limit, 0))
        eng.set_reg("cr4", entry.cr4)
        eng.uc.msr_write(0xC0000080, entry.efer & ~(1 << 10))  # LMA follows from CR0.PG
        eng.set_reg("cr3", entry.cr3)
        eng.set_reg("cr0", entry.cr0)
        for name in ("cs", "ds", "es", "fs", "gs", "ss"):
            eng.set_reg(name, getattr(entry, name).selector)
        tr = entry.tr
        eng.set_reg("tr", (tr.selector, tr.base, tr.limit, tr.attributes))
        eng.set_reg("rflags", entry.rflags)
        for name, value in entry.gprs.items():
            eng.set_reg(name, value)

    def start(self, entry: EntryState, io: IoDispatcher, events: VmEvents) -> None:
        # The vCPU thread takes the GIL for every port read (the firmware's Stall()
        # polls the PM timer); with Python's default 5 ms switch interval a timer
        # expiry waits milliseconds for it. 0.5 ms keeps timer interrupts on time.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._map_platform(io)
        self.load(entry)
        events.on_stop(self.kick_all)
        self._thread = threading.Thread(target=self._run, args=(entry.rip, events), name="vcpu0", daemon=True)
        self._thread.start()

    def _run(self, rip: int, events: VmEvents) -> None:
        try:
            status = self.engine.run(rip)
        except Exception as err:
            events.error(f"the emulated CPU failed: {err}")
            return
        if self.engine.error is not None:
            err = self.engine.error
            log.debug("emulate callback failed", exc_info=err)
            events.error(f"the emulated CPU stopped: {type(err).__name__}: {err}")
        elif status == UC_ERR_EXCEPTION:
            events.error(f"the guest triple-faulted (CPU shutdown) at rip {self.engine.reg('rip'):#x}")
        elif status != UC_ERR_OK:
            events.error(f"the emulated CPU stopped at rip {self.engine.reg('rip'):#x}: {unicorn.UcError(status)}")
        elif not events.stopping:
            events.error(f"the emulated CPU stopped unexpectedly at rip {self.engine.reg('rip'):#x}")

    def kick_all(self) -> None:
        self.stopping = True
        with self._wake:
            self._wake.notify()
        self.engine.stop()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the vCPU thread, stopping the engine again meanwhile: Unicorn forgets a
        stop that comes before uc_emu_start has begun, so one kick can miss a thread that
        was just starting."""
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            self.kick_all()
            self._thread.join(STOP_RETRY)

    def stats(self) -> dict[str, str]:
        c = self.counts
        return {
            "emulate": f"{c['interrupts']} interrupts injected, {c['hlt']} HLT, "
                       f"{self.lapic.timer_fires} APIC timer expiries, "
                       f"{self.msrs.counts['rdmsr']} RDMSR, {self.msrs.counts['wrmsr']} WRMSR, "
                       f"{self.msrs.counts['#GP']} #GP from MSRs",
        }

    def close(self) -> None:
        self.stopping = True
        self.timers.close()
        if self._thread is not None and self._thread.is_alive():
            # Freeing the engine under a running thread would crash the process; the
            # thread is a daemon and goes when the process does.
            log.error("the vCPU thread did not stop; its engine is left in place")
            return
        self.engine.close()
