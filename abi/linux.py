"""Linux ABI numbers (x86_64), declared once, each group under the header it comes from.

abi/test_linux.py compiles a program against those headers and checks every
value here. The seccomp policies name these constants (policies/compiler.py
offers every public one), and the sandbox, the channel, the launcher's mount
namespace and loop devices and the disk device pass them to the kernel.
"""

# <sched.h>, <linux/sched.h>
CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_SIGHAND = 0x800
CLONE_THREAD = 0x10000
CLONE_NEWNS = 0x00020000
CLONE_SYSVSEM = 0x40000
CLONE_SETTLS = 0x80000
CLONE_PARENT_SETTID = 0x100000
CLONE_CHILD_CLEARTID = 0x200000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h>
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2

# <sys/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# <linux/capability.h>
_LINUX_CAPABILITY_VERSION_3 = 0x20080522  # the header's name

# <sys/mman.h> (<asm-generic/mman-common.h>, <linux/mman.h>)
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_STACK = 0x20000
MAP_FIXED_NOREPLACE = 0x100000
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MREMAP_MAYMOVE = 1

# <sys/ioctl.h> (<asm-generic/ioctls.h>)
FIONREAD = 0x541B
FIONBIO = 0x5421
FIONCLEX = 0x5450
FIOCLEX = 0x5451

# <fcntl.h> (<asm-generic/fcntl.h>, <linux/fcntl.h>)
F_DUPFD = 0
F_GETFD = 1
F_SETFD = 2
F_GETFL = 3
F_SETFL = 4
F_DUPFD_CLOEXEC = 1030
FD_CLOEXEC = 1
O_NONBLOCK = 0o4000
O_CLOEXEC = 0o2000000

# <linux/falloc.h>
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# <linux/futex.h>
FUTEX_WAIT = 0
FUTEX_WAKE = 1
FUTEX_WAIT_BITSET = 9
FUTEX_WAKE_BITSET = 10
FUTEX_PRIVATE_FLAG = 128
FUTEX_CLOCK_REALTIME = 256
FUTEX_WAIT_PRIVATE = 128
FUTEX_WAKE_PRIVATE = 129
FUTEX_WAIT_BITSET_PRIVATE = 137
FUTEX_WAKE_BITSET_PRIVATE = 138

# <signal.h>
SIGKILL = 9
SIGTERM = 15
SIGSYS = 31  # what a seccomp filter kills with

# <time.h>
CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1

# <sys/socket.h> (<asm-generic/socket.h>)
SOL_SOCKET = 1
SO_ERROR = 4
SO_SNDBUF = 7
SO_RCVBUF = 8
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

# <linux/loop.h>
LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_NAME_SIZE = 64
LO_KEY_SIZE = 32

# <linux/audit.h>
AUDIT_SECCOMP = 1326  # the record type of a seccomp action in the kernel log

# <sys/syscall.h>: calls glibc has no wrapper for
SYS_capset = 126
SYS_pivot_root = 155


def constants() -> dict[str, int]:
    """Every public number here, by name: what a seccomp policy may name."""
    return {name: value for name, value in globals().items() if type(value) is int and not name.startswith("_")}
