"""Direct Linux boot: boot_params bytes, the e820 map, the 64-bit entry state, and a
synthetic bzImage whose 64-bit entry point really runs on both CPU backends."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from vmboot.abi import layout
from vmboot.abi.errors import VmbootError
from vmboot.abi.memory import GuestMemory
from vmboot.core.boot.bzimage import BOOT_PD, BOOT_PDPT, BOOT_PML4, ZERO_PAGE, boot_kernel
from vmboot.core.boot.memmap import E820_RAM, E820_RESERVED
from vmboot.core.events import Outcome, VmEvents
from vmboot.core.platform import Platform
from vmboot.core.vcpu.state import CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from vmboot.tests.guest import make_backend
from vmboot.tests.kernels import PREF_ADDRESS, SETUP_SECTS, kernel_program, make_bzimage

MiB = 1 << 20


# 64-bit code at the 64-bit entry (load address + 0x200): checks the boot
# protocol's promises and reports through the debug port.
ENTRY_CHECKS = """
    mov rax, rsi                        ; boot_params
    out_eax
    mov eax, [rsi + 0x228]              ; cmd_line_ptr
    out_eax
    mov eax, [rsi + 0x218]              ; ramdisk_image
    out_eax
    movzx eax, byte [rsi + 0x1e8]       ; e820 entries
    out_eax
    mov ax, cs
    out_eax
    mov ax, ds
    out_eax
    mov rax, [0x20000]                  ; the command line
    out_eax
    mov rax, cr4
    out_eax
    poweroff
"""


@pytest.fixture
def kernel(tmp_path: Path) -> Path:
    path = tmp_path / "bzImage"
    path.write_bytes(kernel_program(ENTRY_CHECKS))
    return path


@pytest.fixture
def initramfs(tmp_path: Path) -> Path:
    path = tmp_path / "initramfs"
    path.write_bytes(b"070701" + bytes(range(256)) * 16)
    return path


def test_boot_params_and_memory(kernel, initramfs):
    with GuestMemory(256 * MiB) as mem:
        entry = boot_kernel(mem, kernel, initramfs, "console=ttyS0 quiet", rsdp=layout.RSDP)
        params = mem.read(ZERO_PAGE, 4096)
        assert struct.unpack_from("<Q", params, 0x070)[0] == layout.RSDP  # acpi_rsdp_addr
        image = kernel.read_bytes()
        # the setup header is copied, with the loader's fields filled in
        assert params[0x1F1] == SETUP_SECTS
        assert params[0x202:0x206] == b"HdrS"
        assert params[0x210] == 0xFF  # type_of_loader: undefined
        assert params[0x211] & 0x81 == 0x81  # LOADED_HIGH | CAN_USE_HEAP
        assert struct.unpack_from("<I", params, 0x228)[0] == layout.CMDLINE
        assert mem.read(layout.CMDLINE, 20) == b"console=ttyS0 quiet\0"
        # the initramfs goes as high as it can, page aligned, below the low RAM end
        size = initramfs.stat().st_size
        addr, rsize = struct.unpack_from("<II", params, 0x218)
        assert rsize == size and addr % 4096 == 0 and addr + size <= 256 * MiB
        assert addr == (256 * MiB - size) & ~0xFFF
        assert mem.read(addr, size) == initramfs.read_bytes()
        # the e820 map
        assert params[0x1E8] == 3
        assert [struct.unpack_from("<QQI", params, 0x2D0 + 20 * i) for i in range(3)] == [
            (0, 0xA0000, E820_RAM), (0x100000, 255 * MiB, E820_RAM), (0xC0000000, 0x40000000, E820_RESERVED)]
        # the protected-mode kernel at its preferred address
        payload = image[(SETUP_SECTS + 1) * 512:]
        assert mem.read(PREF_ADDRESS, len(payload)) == payload
        # the 64-bit entry state
        assert entry.rip == PREF_ADDRESS + 0x200
        assert entry.gprs["rsi"] == ZERO_PAGE
        assert entry.cr0 & CR0_PG and entry.cr4 & CR4_PAE and entry.efer == EFER_LME | EFER_LMA
        assert (entry.cs.selector, entry.cs.l, entry.ds.selector) == (0x10, 1, 0x18)
        assert entry.cr3 == BOOT_PML4
        # identity page tables: 4 GiB in 2 MiB pages
        assert struct.unpack_from("<Q", mem.read(BOOT_PML4, 8))[0] == BOOT_PDPT | 3
        assert struct.unpack_from("<Q", mem.read(BOOT_PDPT + 24, 8))[0] == (BOOT_PD + 3 * 4096) | 3
        assert struct.unpack_from("<Q", mem.read(BOOT_PD + 3 * 4096 + 511 * 8, 8))[0] == (0xFFE00000 | 0x83)


@pytest.mark.parametrize("accel", ["kvm", "emulate"])
def test_synthetic_kernel_runs_from_its_64bit_entry(kernel, initramfs, accel):
    debug = bytearray()
    with GuestMemory(256 * MiB) as mem:
        events = VmEvents()
        backend = make_backend(accel, mem)
        try:
            platform = Platform(events, backend.irq_line, serial_out=lambda b: None, debug_out=debug.extend)
            entry = boot_kernel(mem, kernel, initramfs, "console=ttyS0")
            backend.start(entry, platform.io, events)
            assert events.stopped.wait(10), "the guest did not power off"
            backend.join()
        finally:
            backend.close()
    words = [int.from_bytes(debug[i:i + 4], "little") for i in range(0, len(debug), 4)]
    initrd_addr = (256 * MiB - initramfs.stat().st_size) & ~0xFFF
    assert events.stop.outcome is Outcome.POWEROFF
    assert words == [ZERO_PAGE, layout.CMDLINE, initrd_addr, 3, 0x10, 0x18,
                     int.from_bytes(b"cons", "little"), CR4_PAE]


def test_pvh_vmlinux_gets_the_initramfs_as_a_module(firmware, tmp_path):
    # CLOUDHV.fd is a PVH ELF too: use it as a stand-in for a PVH vmlinux.
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"\x42" * 5000)
    with GuestMemory(256 * MiB) as mem:
        entry = boot_kernel(mem, firmware, initrd, "root=/dev/vda")
        info = mem.read(layout.PVH_START_INFO, 56)
        nr_modules, modlist, cmdline = struct.unpack_from("<IQQ", info, 12)
        assert (nr_modules, modlist, cmdline) == (1, layout.PVH_MODLIST, layout.CMDLINE)
        paddr, size = struct.unpack_from("<QQ", mem.read(layout.PVH_MODLIST, 16))
        assert size == 5000 and mem.read(paddr, size) == initrd.read_bytes()
        assert mem.read(layout.CMDLINE, 13) == b"root=/dev/vda"
        assert entry.rip == 0x4FFFD0


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.__setitem__(slice(0x202, 0x206), b"XXXX"), "not a Linux bzImage"),
    (lambda d: struct.pack_into("<H", d, 0x206, 0x0209), "too old"),
    (lambda d: struct.pack_into("<H", d, 0x236, 0), "no 64-bit entry point"),
])
def test_bad_bzimages_are_rejected(tmp_path, mutate, message):
    data = bytearray(make_bzimage(b"\x90" * 1024))
    mutate(data)
    path = tmp_path / "bad"
    path.write_bytes(bytes(data))
    with GuestMemory(64 * MiB) as mem, pytest.raises(VmbootError, match=message):
        boot_kernel(mem, path, None, "")


def test_kernel_larger_than_ram_is_rejected(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(make_bzimage(b"\x90" * 1024, init_size=60 * MiB))
    with GuestMemory(32 * MiB) as mem, pytest.raises(VmbootError, match="more --memory"):
        boot_kernel(mem, path, None, "")


def test_overlong_cmdline_is_rejected(kernel):
    with GuestMemory(64 * MiB) as mem, pytest.raises(VmbootError, match="at most 2048"):
        boot_kernel(mem, kernel, None, "x" * 3000)
