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
from .cpuid import vcpu_cpuid
from .system import Kvm, kvm_flavour
from .vcpu import KvmVcpu, install_kick_handler
from .vm import KvmVm


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
        self.exit_counts: Counter[str] = Counter()

    def irq_line(self, gsi: int) -> Callable[[bool], None]:
        def set_level(level: bool) -> None:
            if self._irq_levels.get(gsi) != level:
                self._irq_levels[gsi] = level
                self.vm.irq_line(gsi, level)
        return set_level

    def msi(self, address: int, data: int) -> None:
        self.vm.signal_msi(address, data)

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
