"""The ``kvm`` CPU backend: one VM fd, in-kernel irqchip and PIT, a thread per vCPU."""
from __future__ import annotations

import threading
from collections import Counter
from typing import Callable

from vmboot.abi import layout
from vmboot.abi.memory import GuestMemory

from ..events import VmEvents
from ..vcpu.dispatch import IoDispatcher
from ..vcpu.exits import CpuError
from ..vcpu.pagewalk import read_code
from ..vcpu.runner import run_vcpu
from ..vcpu.state import EntryState
from ..vcpu.x87 import x87_instruction
from .abi import lib
from .cpuid import vcpu_cpuid
from .system import Kvm, kvm_flavour
from .vcpu import KvmVcpu, install_kick_handler
from .vm import KvmVm

# KVM_SET_GSI_ROUTING replaces the whole table, so it restates what KVM_CREATE_IRQCHIP set up
# (virt/kvm/irqchip.c and arch/x86/kvm/irq_comm.c, kvm_setup_default_irq_routing): GSIs 0-15 on
# both PICs and the IOAPIC, 16-23 on the IOAPIC. MSI routes take the GSIs after those.
IOAPIC_PINS, PIC_PINS = 24, 8
DEFAULT_ROUTES = [(gsi, lib.KVM_IRQCHIP_PIC_MASTER if gsi < PIC_PINS else lib.KVM_IRQCHIP_PIC_SLAVE, gsi % PIC_PINS)
                  for gsi in range(2 * PIC_PINS)] + [(gsi, lib.KVM_IRQCHIP_IOAPIC, gsi) for gsi in range(IOAPIC_PINS)]
FIRST_MSI_GSI = IOAPIC_PINS


class KvmBackend:
    name = "kvm"

    def __init__(self, memory: GuestMemory, cpus: int = 1):
        self.memory = memory
        self.kvm = Kvm()
        try:
            self.vm = KvmVm(self.kvm)
            self.vm.set_tss_addr(layout.KVM_TSS)
            self.vm.set_identity_map_addr(layout.KVM_IDENTITY_MAP)
            self.vm.create_irqchip()
            self.vm.create_pit2()
            for region in memory.regions:
                self.vm.add_memory(region.gpa, region.size, memory.host_address(region))
            supported = self.kvm.supported_cpuid()
            self.vcpus = []
            for index in range(cpus):
                vcpu = KvmVcpu(self.vm, index)
                vcpu.set_cpuid(vcpu_cpuid(supported, index, cpus))
                self.vcpus.append(vcpu)
        except BaseException:
            self.close()
            raise
        self._threads: list[threading.Thread] = []
        self._irq_levels: dict[int, bool] = {}
        self._routes_lock = threading.Lock()
        self._msi_gsi: dict[int, int] = {}  # irqfd -> its GSI, for the VM's life
        self._msi_routes: dict[int, tuple[int, int]] = {}  # GSI -> (address, data), while routed
        self.exit_counts: Counter[str] = Counter()

    def irq_line(self, gsi: int) -> Callable[[bool], None]:
        def set_level(level: bool) -> None:
            if self._irq_levels.get(gsi) != level:
                self._irq_levels[gsi] = level
                self.vm.irq_line(gsi, level)
        return set_level

    def msi(self, address: int, data: int) -> None:
        self.vm.signal_msi(address, data)

    def route_msi(self, fd: int, address: int, data: int) -> bool:
        """Deliver every signal of eventfd ``fd`` as this MSI in the kernel (KVM_IRQFD on an MSI route)."""
        with self._routes_lock:
            gsi = self._msi_gsi.setdefault(fd, FIRST_MSI_GSI + len(self._msi_gsi))
            assigned = gsi in self._msi_routes
            self._msi_routes[gsi] = (address, data)
            self.vm.set_gsi_routing(DEFAULT_ROUTES, self._msi_routes)
            if not assigned:
                self.vm.irqfd(fd, gsi)
        return True

    def unroute_msi(self, fd: int) -> None:
        with self._routes_lock:
            gsi = self._msi_gsi.get(fd)
            if gsi is None or self._msi_routes.pop(gsi, None) is None:
                return
            self.vm.irqfd(fd, gsi, deassign=True)
            self.vm.set_gsi_routing(DEFAULT_ROUTES, self._msi_routes)

    def bind_ioeventfd(self, fd: int, address: int | None, previous: int | None) -> bool:
        """Let KVM signal ``fd`` on a 2-byte MMIO write at ``address``, without an exit."""
        if previous is not None:
            self.vm.ioeventfd(fd, previous, 2, pio=False, deassign=True)
        if address is not None:
            self.vm.ioeventfd(fd, address, 2, pio=False)
        return True

    def dma_written(self, gpa: int, length: int) -> None:
        pass  # KVM needs no notice: there is no translated code to drop

    def start(self, entry: EntryState, io: IoDispatcher, events: VmEvents) -> None:
        install_kick_handler()
        bsp = self.vcpus[0]
        bsp.load(entry)
        events.on_stop(self.kick_all)
        # Application processors wait in the in-kernel LAPIC for INIT/SIPI.
        for vcpu in self.vcpus:
            t = threading.Thread(target=run_vcpu, args=(vcpu, io, events, self.explain, self.exit_counts),
                                 name=f"vcpu{vcpu.index}", daemon=True)
            self._threads.append(t)
            t.start()

    def kick_all(self) -> None:
        for vcpu in self.vcpus:
            vcpu.kick()

    def join(self, timeout: float = 5.0) -> None:
        for t in self._threads:
            t.join(timeout)

    def explain(self, vcpu: KvmVcpu, ex: CpuError) -> str:
        regs = vcpu.registers()
        code = read_code(self.memory, regs)
        insn = x87_instruction(code) if code else None
        if insn and kvm_flavour() == "pvm":
            return (f"this host's KVM is KVM-PVM (no VT-x/AMD-V) and cannot run this firmware: it stopped at "
                    f"its first x87 instruction ({insn} at rip {regs['rip']:#x}); use --accel emulate")
        where = f" at rip {ex.rip:#x}" if ex.rip is not None else ""
        shown = f" (code: {code[:8].hex(' ')})" if code else ""
        return f"vCPU {vcpu.index}: {ex.detail}{where}{shown}"

    def stats(self) -> dict[str, str]:
        counts = ", ".join(f"{k} {v}" for k, v in self.exit_counts.most_common()) or "none"
        return {"other kvm exits": counts}

    def close(self) -> None:
        for vcpu in getattr(self, "vcpus", []):
            vcpu.close()
        if getattr(self, "vm", None):
            self.vm.close()
        self.kvm.close()
