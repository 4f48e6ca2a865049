"""A KVM virtual machine: memory slots, the in-kernel irqchip and PIT, interrupt plumbing."""
from __future__ import annotations

import os

from .abi import ffi, ioctl, lib
from .system import Kvm


class KvmVm:
    def __init__(self, kvm: Kvm):
        self.kvm = kvm
        self.fd = ioctl(kvm.fd, lib.KVM_CREATE_VM, 0)
        os.set_inheritable(self.fd, False)
        self._next_slot = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- set-up -----------------------------------------------------------------
    def set_tss_addr(self, addr: int) -> None:
        ioctl(self.fd, lib.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        ioctl(self.fd, lib.KVM_SET_IDENTITY_MAP_ADDR, ffi.new("uint64_t *", addr))

    def create_irqchip(self) -> None:
        """The in-kernel PIC pair, IOAPIC and per-vCPU LAPICs."""
        ioctl(self.fd, lib.KVM_CREATE_IRQCHIP)

    def create_pit2(self) -> None:
        ioctl(self.fd, lib.KVM_CREATE_PIT2, ffi.new("struct kvm_pit_config *", {"flags": lib.KVM_PIT_SPEAKER_DUMMY}))

    def add_memory(self, gpa: int, size: int, host_addr: int, readonly: bool = False) -> int:
        slot = self._next_slot
        region = ffi.new(
            "struct kvm_userspace_memory_region *",
            {"slot": slot, "flags": 0, "guest_phys_addr": gpa, "memory_size": size, "userspace_addr": host_addr},
        )
        ioctl(self.fd, lib.KVM_SET_USER_MEMORY_REGION, region)
        self._next_slot += 1
        return slot

    # -- interrupts -----------------------------------------------------------------
    def irq_line(self, gsi: int, level: bool) -> None:
        ioctl(self.fd, lib.KVM_IRQ_LINE, ffi.new("struct kvm_irq_level *", {"irq": gsi, "level": int(level)}))

    def signal_msi(self, address: int, data: int) -> None:
        msi = ffi.new(
            "struct kvm_msi *",
            {"address_lo": address & 0xFFFFFFFF, "address_hi": address >> 32, "data": data},
        )
        ioctl(self.fd, lib.KVM_SIGNAL_MSI, msi)

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        """Let KVM raise ``gsi`` (through the routing table) whenever ``fd`` is signalled."""
        ioctl(self.fd, lib.KVM_IRQFD, ffi.new("struct kvm_irqfd *", {
            "fd": fd, "gsi": gsi, "flags": lib.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0}))

    def set_gsi_routing(self, chips: list[tuple[int, int, int]], msis: dict[int, tuple[int, int]]) -> None:
        """Replace the whole routing table: (gsi, irqchip, pin) entries and {gsi: (address, data)} MSI entries."""
        count = len(chips) + len(msis)
        table = ffi.new("struct kvm_irq_routing *", {"nr": count, "entries": count})
        for i, (gsi, chip, pin) in enumerate(chips):
            e = table.entries[i]
            e.gsi, e.type, e.u.irqchip.irqchip, e.u.irqchip.pin = gsi, lib.KVM_IRQ_ROUTING_IRQCHIP, chip, pin
        for i, (gsi, (address, data)) in enumerate(sorted(msis.items()), start=len(chips)):
            e = table.entries[i]
            e.gsi, e.type = gsi, lib.KVM_IRQ_ROUTING_MSI
            e.u.msi.address_lo, e.u.msi.address_hi, e.u.msi.data = address & 0xFFFFFFFF, address >> 32, data
        ioctl(self.fd, lib.KVM_SET_GSI_ROUTING, table)

    def ioeventfd(self, fd: int, addr: int, length: int, pio: bool, datamatch: int | None = None,
                  deassign: bool = False) -> None:
        flags = (lib.KVM_IOEVENTFD_FLAG_PIO if pio else 0) | (lib.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        if datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
        ioctl(self.fd, lib.KVM_IOEVENTFD, ffi.new(
            "struct kvm_ioeventfd *",
            {"datamatch": datamatch or 0, "addr": addr, "len": length, "fd": fd, "flags": flags},
        ))
