"""The KVM backend on the host's /dev/kvm, driven by 16-bit real-mode programs.

KVM-PVM (these machines) runs real-mode code, so every legacy device is
exercised here through real IN/OUT and MMIO exits, and the in-kernel PIC and
PIT deliver a real interrupt. These tests need /dev/kvm and fail if it is
missing.
"""
from __future__ import annotations

import calendar
import logging
import time

import pytest

from vmboot.core.events import Outcome
from vmboot.core.kvm.system import kvm_flavour
from vmboot.devices.pmtimer.pmtimer import PM_TIMER_FREQUENCY
from vmboot.devices.rtc.cmos import from_bcd
from vmboot.tests.guest import RecordingDevice, run_guest
from vmboot.tests.guest_asm import PROGRAM, assemble

pytestmark = pytest.mark.kvm


def test_serial_output_and_line_status():
    r = run_guest("""
        mov dx, PORT_COM1
        mov al, 'h'
        out dx, al
        mov al, 'i'
        out dx, al
        mov dx, PORT_COM1 + 5      ; LSR
        in al, dx
        mov dx, DEBUG_PORT
        out dx, al
        mov dx, PORT_COM1 + 7      ; scratch register keeps what is written
        mov al, 0xa5
        out dx, al
        in al, dx
        mov dx, DEBUG_PORT
        out dx, al
        poweroff
    """)
    assert r.outcome is Outcome.POWEROFF
    assert r.serial == b"hi"
    assert r.debug == bytes([0x60, 0xA5])  # THRE | TEMT, then the scratch byte


def test_serial_input_reaches_the_guest():
    r = run_guest("""
        mov dx, PORT_COM1 + 5
    poll:
        in al, dx
        test al, 1                 ; data ready
        jz poll
        mov dx, PORT_COM1
        in al, dx
        mov dx, DEBUG_PORT
        out dx, al
        poweroff
    """, serial_input=b"K")
    assert r.debug == b"K"


def test_rtc_reads_the_current_utc_time():
    r = run_guest("""
        mov dx, 0x70
        mov al, 0x0d               ; register D: valid RAM and time
        out dx, al
        inc dx
        in al, dx
        mov dx, DEBUG_PORT
        out dx, al
    %macro rtc 1
        mov al, %1
        out 0x70, al
        in al, 0x71
        mov dx, DEBUG_PORT
        out dx, al
    %endmacro
        rtc 0x32                   ; century
        rtc 0x09                   ; year
        rtc 0x08                   ; month
        rtc 0x07                   ; day
        rtc 0x04                   ; hours
        rtc 0x02                   ; minutes
        rtc 0x00                   ; seconds
        poweroff
    """)
    host = time.time()
    assert r.debug[0] & 0x80, "register D must report valid RAM and time"
    century, year, month, day, hour, minute, second = (from_bcd(b) for b in r.debug[1:])
    guest = calendar.timegm((century * 100 + year, month, day, hour, minute, second))
    assert abs(guest - host) <= 3


def test_pm_timer_counts_at_3_579545_mhz():
    r = run_guest("""
        mov dx, 0x608
        in eax, dx
        out_eax
        mov ecx, 2000000
    spin:
        loop spin
        mov dx, 0x608
        in eax, dx
        out_eax
        poweroff
    """)
    first, second = r.dwords()
    ticks = (second - first) & 0xFFFFFFFF
    assert 0 < ticks < r.elapsed * PM_TIMER_FREQUENCY * 1.05


def test_debug_port_reads_e9_and_post_codes_read_back():
    r = run_guest("""
        mov dx, DEBUG_PORT
        in al, dx
        out dx, al
        mov al, 0x5c
        out 0x80, al
        in al, 0x80
        mov dx, DEBUG_PORT
        out dx, al
        poweroff
    """)
    assert r.debug == bytes([0xE9, 0x5C])
    assert r.platform.windows["debugcon"][1].last == 0x5C  # the POST code window


def test_pci_host_bridge_and_empty_slot():
    r = run_guest("""
        mov dx, 0xcf8
        mov eax, 0x80000000        ; 00:00.0 register 0: vendor and device ID
        out dx, eax
        mov dx, 0xcfc
        in eax, dx
        out_eax
        mov dx, 0xcf8
        mov eax, 0x80000008        ; class code and revision
        out dx, eax
        mov dx, 0xcfc
        in eax, dx
        out_eax
        mov dx, 0xcf8
        mov eax, 0x80000800        ; 00:01.0: no device there
        out dx, eax
        mov dx, 0xcfc
        in eax, dx
        out_eax
        mov dx, 0xcfe              ; a 16-bit read through CONFIG_DATA + 2
        in ax, dx
        out_eax
        poweroff
    """)
    vendor_device, class_rev, empty, upper_half = r.dwords()
    assert vendor_device == 0x0D578086
    assert class_rev >> 8 == 0x060000
    assert empty == 0xFFFFFFFF
    assert upper_half & 0xFFFF == 0xFFFF


def test_unhandled_port_answers_all_ones_and_is_logged_once(caplog):
    caplog.set_level(logging.INFO, logger="vmboot.bus")
    r = run_guest("""
        mov dx, 0x510
        xor eax, eax
        in al, dx
        out_eax
        mov dx, 0x510
        xor eax, eax
        in ax, dx
        out_eax
        mov dx, 0x510
        in eax, dx
        out_eax
        poweroff
    """)
    assert r.dwords() == [0xFF, 0xFFFF, 0xFFFFFFFF]
    logged = [m for m in caplog.messages if "0x510" in m]
    assert len(logged) == 1 and "all ones" in logged[0]
    assert r.platform.ports.unhandled[0x510].reads == 3


def test_mmio_exit_reaches_the_device_at_its_offset():
    device = RecordingDevice(b"\x78\x56\x34\x12")
    r = run_guest("""
        mov ax, 0x9000             ; 0x90000 is past the end of RAM: MMIO
        mov es, ax
        mov eax, [es:0x10]
        out_eax
        mov dword [es:0x24], 0xcafef00d
        poweroff
    """, memory=0x80000, extra_mmio=[(0x90000, 0x1000, device, "test")])
    assert r.dwords() == [0x12345678]
    assert device.accesses == [("read", 0x10, 4), ("write", 0x24, bytes.fromhex("0df0feca"))]


def test_pit_interrupt_reaches_a_real_mode_handler():
    r = run_guest("""
        cli
        ; ICW1-ICW4: master PIC at vectors 0x20-0x27, cascade on IRQ 2
        mov al, 0x11
        out 0x20, al
        mov al, 0x20
        out 0x21, al
        mov al, 0x04
        out 0x21, al
        mov al, 0x01
        out 0x21, al
        mov al, 0xfe               ; unmask IRQ 0 only
        out 0x21, al
        mov word [0x20 * 4], handler
        mov word [0x20 * 4 + 2], 0
        ; PIT channel 0, mode 2, a short period
        mov al, 0x34
        out 0x43, al
        mov al, 0x00
        out 0x40, al
        mov al, 0x10
        out 0x40, al
        sti
    poll:
        hlt
        cmp byte [ticks], 3
        jb poll
        cli
        out_byte 'D'
        poweroff
    handler:
        push ax
        push dx
        inc byte [ticks]
        out_byte 'T'
        mov al, 0x20               ; EOI
        out 0x20, al
        pop dx
        pop ax
        iret
    ticks: db 0
    """)
    assert r.outcome is Outcome.POWEROFF
    assert r.debug == b"TTTD"


@pytest.mark.parametrize("program, outcome", [
    ("mov dx, 0x600\n mov al, 0x34\n out dx, al\n hlt", Outcome.POWEROFF),
    ("mov dx, 0x600\n mov al, 0x01\n out dx, al\n hlt", Outcome.RESET),
    ("mov dx, 0xcf9\n mov al, 0x06\n out dx, al\n hlt", Outcome.RESET),
    ("mov al, 0xfe\n out 0x64, al\n hlt", Outcome.RESET),
])
def test_power_off_and_reset_ports(program, outcome):
    assert run_guest(program).outcome is outcome


def test_undeliverable_exception_ends_the_vm_with_a_clear_message():
    # Protected mode with the PVH boot IDT, which holds no usable gate: #BP,
    # then #GP and #DF find no gate either. Hardware KVM reports the triple
    # fault (KVM_EXIT_SHUTDOWN); KVM-PVM reports an emulation failure at the
    # int3. Either way the VM stops with one line naming where. (Real mode
    # cannot show this on KVM: its IVT has no limit check.)
    r = run_guest("""
        out_byte 'A'
        int3
        out_byte 'B'
    """, mode="protected")
    assert r.outcome is Outcome.ERROR
    assert r.debug == b"A"
    int3_rip = PROGRAM + len(assemble("out_byte 'A'", "protected"))
    if kvm_flavour() == "pvm":
        assert r.message == (f"vCPU 0: KVM could not emulate an instruction at rip {int3_rip:#x} "
                             f"(code: cc b0 42 66 ba 02 04 ee)")
    else:
        assert r.message == f"the guest triple-faulted (CPU shutdown) at rip {int3_rip:#x}"


def test_hlt_with_interrupts_off_sleeps_until_the_vm_is_stopped():
    r = run_guest("cli\n out_byte 'S'\n hlt\n out_byte 'X'", timeout=1.0)
    assert r.outcome is None  # still asleep when the test gave up
    assert r.debug == b"S"
