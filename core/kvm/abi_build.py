"""cffi build script for the KVM ABI (out-of-line API mode).

Every structure below is declared with ``...;`` so that the C compiler, reading
``<linux/kvm.h>``, decides sizes and offsets. Nothing here is hand-typed layout:
if a field we name does not exist in the installed header, the build fails.

The ioctl request numbers are the kernel's own macros, evaluated by the
compiler (``#define NAME ...``).
"""
from cffi import FFI

ffibuilder = FFI()

IOCTLS = """
KVM_GET_API_VERSION KVM_CREATE_VM KVM_CHECK_EXTENSION KVM_GET_VCPU_MMAP_SIZE
KVM_GET_SUPPORTED_CPUID KVM_CREATE_VCPU KVM_SET_USER_MEMORY_REGION
KVM_SET_TSS_ADDR KVM_SET_IDENTITY_MAP_ADDR KVM_CREATE_IRQCHIP KVM_CREATE_PIT2
KVM_IRQ_LINE KVM_SET_GSI_ROUTING KVM_IOEVENTFD KVM_SIGNAL_MSI KVM_IRQFD
KVM_RUN KVM_GET_REGS KVM_SET_REGS KVM_GET_SREGS KVM_SET_SREGS KVM_SET_CPUID2
KVM_GET_MP_STATE KVM_SET_MP_STATE KVM_ENABLE_CAP
"""

CONSTANTS = """
KVM_API_VERSION
KVM_EXIT_UNKNOWN KVM_EXIT_EXCEPTION KVM_EXIT_IO KVM_EXIT_DEBUG KVM_EXIT_HLT
KVM_EXIT_MMIO KVM_EXIT_IRQ_WINDOW_OPEN KVM_EXIT_SHUTDOWN KVM_EXIT_FAIL_ENTRY
KVM_EXIT_INTR KVM_EXIT_INTERNAL_ERROR KVM_EXIT_SYSTEM_EVENT
KVM_EXIT_IO_IN KVM_EXIT_IO_OUT
KVM_INTERNAL_ERROR_EMULATION KVM_INTERNAL_ERROR_SIMUL_EX
KVM_INTERNAL_ERROR_DELIVERY_EV KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON
KVM_SYSTEM_EVENT_SHUTDOWN KVM_SYSTEM_EVENT_RESET KVM_SYSTEM_EVENT_CRASH
KVM_CAP_IRQCHIP KVM_CAP_PIT2 KVM_CAP_USER_MEMORY KVM_CAP_SET_TSS_ADDR
KVM_CAP_SET_IDENTITY_MAP_ADDR KVM_CAP_EXT_CPUID KVM_CAP_IOEVENTFD
KVM_CAP_IRQ_ROUTING KVM_CAP_SIGNAL_MSI KVM_CAP_IMMEDIATE_EXIT KVM_CAP_NR_VCPUS
KVM_CAP_MAX_VCPUS KVM_CAP_IRQFD
KVM_IRQFD_FLAG_DEASSIGN
KVM_IRQ_ROUTING_IRQCHIP KVM_IRQ_ROUTING_MSI
KVM_IRQCHIP_PIC_MASTER KVM_IRQCHIP_PIC_SLAVE KVM_IRQCHIP_IOAPIC
KVM_IOEVENTFD_FLAG_DATAMATCH KVM_IOEVENTFD_FLAG_PIO KVM_IOEVENTFD_FLAG_DEASSIGN
KVM_PIT_SPEAKER_DUMMY
KVM_MP_STATE_RUNNABLE KVM_MP_STATE_UNINITIALIZED KVM_MP_STATE_HALTED
KVM_NR_INTERRUPTS
"""

CDEF = """
typedef uint8_t __u8; typedef uint16_t __u16; typedef uint32_t __u32; typedef uint64_t __u64;
typedef int32_t __s32;

struct kvm_run {
    __u8 request_interrupt_window;
    __u8 immediate_exit;
    __u32 exit_reason;
    __u8 ready_for_interrupt_injection;
    __u8 if_flag;
    __u16 flags;
    __u64 cr8;
    __u64 apic_base;
    union {
        struct { __u64 hardware_exit_reason; } hw;
        struct { __u64 hardware_entry_failure_reason; __u32 cpu; } fail_entry;
        struct { __u32 exception; __u32 error_code; } ex;
        struct { __u8 direction; __u8 size; __u16 port; __u32 count; __u64 data_offset; } io;
        struct { __u64 phys_addr; __u8 data[8]; __u32 len; __u8 is_write; } mmio;
        struct { __u32 suberror; __u32 ndata; __u64 data[16]; } internal;
        struct { __u32 type; __u32 ndata; __u64 data[16]; } system_event;
    };
    ...;
};

struct kvm_regs {
    __u64 rax, rbx, rcx, rdx;
    __u64 rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11;
    __u64 r12, r13, r14, r15;
    __u64 rip, rflags;
    ...;
};

struct kvm_segment {
    __u64 base;
    __u32 limit;
    __u16 selector;
    __u8 type;
    __u8 present, dpl, db, s, l, g, avl;
    __u8 unusable;
    ...;
};

struct kvm_dtable { __u64 base; __u16 limit; ...; };

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8;
    __u64 efer;
    __u64 apic_base;
    __u64 interrupt_bitmap[...];
    ...;
};

struct kvm_userspace_memory_region {
    __u32 slot; __u32 flags; __u64 guest_phys_addr; __u64 memory_size; __u64 userspace_addr;
    ...;
};

struct kvm_cpuid_entry2 {
    __u32 function; __u32 index; __u32 flags; __u32 eax; __u32 ebx; __u32 ecx; __u32 edx;
    ...;
};
struct kvm_cpuid2 { __u32 nent; struct kvm_cpuid_entry2 entries[]; ...; };

struct kvm_pit_config { __u32 flags; ...; };
struct kvm_irq_level { __u32 irq; __u32 level; ...; };

struct kvm_ioeventfd { __u64 datamatch; __u64 addr; __u32 len; __s32 fd; __u32 flags; ...; };
struct kvm_msi { __u32 address_lo; __u32 address_hi; __u32 data; __u32 flags; ...; };
struct kvm_irqfd { __u32 fd; __u32 gsi; __u32 flags; __u32 resamplefd; ...; };

struct kvm_irq_routing_irqchip { __u32 irqchip; __u32 pin; };
struct kvm_irq_routing_msi { __u32 address_lo; __u32 address_hi; __u32 data; __u32 pad; };
struct kvm_irq_routing_entry {
    __u32 gsi; __u32 type; __u32 flags;
    union {
        struct kvm_irq_routing_irqchip irqchip;
        struct kvm_irq_routing_msi msi;
        __u32 pad[8];
    } u;
    ...;
};
struct kvm_irq_routing { __u32 nr; __u32 flags; struct kvm_irq_routing_entry entries[]; ...; };

struct kvm_mp_state { __u32 mp_state; ...; };
struct kvm_enable_cap { __u32 cap; __u32 flags; __u64 args[4]; ...; };

int ioctl(int fd, unsigned long request, ...);
"""

CDEF += "".join(f"#define {name} ...\n" for name in (IOCTLS + CONSTANTS).split())

ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "vmboot.core.kvm._abi",
    """
    #include <sys/ioctl.h>
    #include <linux/kvm.h>
    """,
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
