"""vmboot-core as a user runs it: exit statuses, one-line errors, accelerator choice."""
from __future__ import annotations

import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmboot.abi.errors import VmbootError
from vmboot.core import cli
from vmboot.core.kvm import system

from .kernels import write_kernel

VMBOOT_CORE = [sys.executable, "-m", "vmboot.core.cli"]


def run(*args: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*VMBOOT_CORE, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kw)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The whole of stderr: exactly one line, no traceback."""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vmboot-core: ")
    return lines[0]


POWEROFF = "out_byte 'k'\npoweroff"
RESET = "out_byte 'r'\nmov dx, 0xcf9\nmov al, 0x06\nout dx, al\nhlt"
SPIN = "out_byte 's'\nspin: pause\njmp spin"


@pytest.fixture(scope="module")
def kernels(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("kernels")
    return {name: write_kernel(d, name, body) for name, body in
            (("poweroff", POWEROFF), ("reset", RESET), ("spin", SPIN))}


# -- usage errors: status 2 ---------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    ((), "give exactly one of --firmware PATH or --kernel PATH"),
    (("--firmware", "a", "--kernel", "b"), "give exactly one of --firmware PATH or --kernel PATH"),
    (("--firmware", "x", "--memory", "size=lots"), "--memory size: 'lots' is not a size"),
    (("--firmware", "x", "--memory", "512M"), "--memory: '512M' is not key=value"),
    (("--firmware", "x", "--memory", "bytes=1G"), "--memory: unknown key 'bytes'"),
    (("--firmware", "x", "--cpus", "boot=0"), "--cpus boot must be between 1 and 255"),
    (("--firmware", "x", "--serial", "pty"), "--serial: 'pty' is not one of tty, file=PATH or off"),
    (("--firmware", "x", "--debugcon", "tty"), "--debugcon: 'tty' is not one of file=PATH or off"),
    (("--firmware", "x", "--accel", "tcg"), "argument --accel: invalid choice: 'tcg'"),
    (("--firmware", "x", "--virtio-eventfds", "off"), "argument --virtio-eventfds: invalid choice: 'off'"),
    (("--firmware", "x", "--cmdline", "quiet"), "--initramfs and --cmdline go with --kernel"),
])
def test_usage_errors(args, message):
    proc = run(*args)
    assert proc.returncode == 2
    assert message in one_line_error(proc)


# -- errors: status 1 -----------------------------------------------------------------------
def test_missing_firmware(tmp_path):
    proc = run("--firmware", str(tmp_path / "CLOUDHV.fd"), "--accel", "emulate")
    assert proc.returncode == 1
    assert one_line_error(proc) == f"vmboot-core: {tmp_path / 'CLOUDHV.fd'}: no such file"


def test_non_elf_firmware(tmp_path):
    fw = tmp_path / "fw.bin"
    fw.write_bytes(b"\x55\xaa" * 1000)
    proc = run("--firmware", str(fw), "--accel", "emulate")
    assert proc.returncode == 1 and "not an ELF file" in one_line_error(proc)


def test_elf_without_pvh_note(firmware, tmp_path):
    data = bytearray(firmware.read_bytes())
    note = data.index(b"Xen\0")
    struct.pack_into("<I", data, note - 4, 17)
    fw = tmp_path / "nopvh.fd"
    fw.write_bytes(bytes(data))
    proc = run("--firmware", str(fw), "--accel", "emulate")
    assert proc.returncode == 1 and "no PVH entry point" in one_line_error(proc)


def test_memory_too_small_for_the_firmware(firmware):
    proc = run("--firmware", str(firmware), "--memory", "size=32M", "--accel", "emulate")
    assert proc.returncode == 1
    assert one_line_error(proc) == "vmboot-core: --memory size=32M is too small: the firmware needs at least 64M"


def test_kvm_cannot_run_the_firmware_on_kvm_pvm(firmware):
    assert system.kvm_flavour() == "pvm" and not system.host_has_hw_virt(), "this test describes KVM-PVM hosts"
    proc = run("--firmware", str(firmware), "--accel", "kvm", "--serial", "off")
    assert proc.returncode == 1
    assert one_line_error(proc) == (
        "vmboot-core: this host's KVM is KVM-PVM (no VT-x/AMD-V) and cannot run this firmware: it stopped at its "
        "first x87 instruction (finit at rip 0x4d20f4); use --accel emulate")


def _unshared(script: str) -> subprocess.CompletedProcess:
    assert shutil.which("unshare"), "util-linux unshare is needed"
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_kvm_on_a_host_without_vmx_svm_or_dev_kvm(kernels):
    # Hide /dev/kvm in a private mount namespace (the host's stays untouched):
    # with neither VT-x/AMD-V nor KVM-PVM there is nothing --accel kvm can use.
    proc = _unshared(f"mount -t tmpfs none /dev && exec {sys.executable} -m vmboot.core.cli "
                     f"--kernel {kernels['poweroff']} --accel kvm")
    assert proc.returncode == 1
    assert one_line_error(proc) == ("vmboot-core: --accel kvm needs VT-x or AMD-V and this host has neither; "
                                    "use --accel emulate")


def test_missing_dev_kvm_message(tmp_path):
    with pytest.raises(VmbootError) as err:
        system.Kvm(str(tmp_path / "kvm"))
    assert str(err.value) == (f"{tmp_path / 'kvm'} does not exist: this host has no KVM (load kvm_intel "
                              "or kvm_amd, or use --accel emulate)")


def test_dev_kvm_not_permitted(kernels, tmp_path):
    fake = tmp_path / "kvm"
    fake.write_bytes(b"")
    fake.chmod(0)
    # As a user without rights on /dev/kvm (nobody), opening it fails with EACCES.
    proc = _unshared(f"mount --bind {fake} /dev/kvm && chmod o+rx {tmp_path} && "
                     f"exec setpriv --reuid=65534 --regid=65534 --clear-groups "
                     f"{sys.executable} -m vmboot.core.cli --kernel {kernels['poweroff']} --accel kvm")
    assert proc.returncode == 1
    assert one_line_error(proc) == ("vmboot-core: /dev/kvm: permission denied (run as a member of its group, "
                                    "or use --accel emulate)")


# -- choosing the accelerator -----------------------------------------------------------------
def test_auto_picks_emulate_without_vmx_or_svm_and_says_so(kernels):
    assert not system.host_has_hw_virt()
    proc = run("--kernel", str(kernels["poweroff"]))
    assert proc.returncode == 0
    assert proc.stderr.splitlines() == [
        "vmboot-core: this host has no VT-x/AMD-V: using the emulate backend (software CPU)"]


def test_host_flag_detection():
    assert system.host_has_hw_virt("processor: 0\nflags\t\t: fpu vme vmx sse\n")
    assert system.host_has_hw_virt("flags : fpu svm\n")
    assert not system.host_has_hw_virt("flags : fpu vme sse2 hypervisor\n")


def test_kvm_without_vmx_svm_or_pvm_is_refused(monkeypatch):
    monkeypatch.setattr(cli, "host_has_hw_virt", lambda: False)
    monkeypatch.setattr(cli, "kvm_flavour", lambda: "hardware")
    with pytest.raises(VmbootError, match="--accel kvm needs VT-x or AMD-V and this host has neither"):
        cli.choose_accel("kvm")


def test_auto_picks_kvm_with_vmx(monkeypatch):
    monkeypatch.setattr(cli, "host_has_hw_virt", lambda: True)
    assert cli.choose_accel("auto") == "kvm"


# -- how the VM ends ------------------------------------------------------------------------------
@pytest.mark.parametrize("accel", ["kvm", "emulate"])
def test_guest_poweroff_exits_0(kernels, tmp_path, accel):
    debug = tmp_path / "debug.log"
    proc = run("--kernel", str(kernels["poweroff"]), "--accel", accel, "--debugcon", f"file={debug}")
    assert (proc.returncode, proc.stderr) == (0, "")
    assert debug.read_bytes() == b"k"


def test_guest_reset_with_no_reboot_exits_3(kernels):
    proc = run("--kernel", str(kernels["reset"]), "--accel", "emulate", "--no-reboot")
    assert proc.returncode == 3
    assert one_line_error(proc) == ("vmboot-core: guest reset through the reset control register 0xCF9 "
                                    "(--no-reboot)")


def test_guest_reset_restarts_the_vm(kernels, tmp_path):
    log = tmp_path / "stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen([*VMBOOT_CORE, "--kernel", str(kernels["reset"]), "--accel", "emulate",
                                 "--log-level", "info"], stdout=subprocess.DEVNULL, stderr=err,
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while log.read_text().count("restarting the VM") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 4
    assert log.read_text().count("restarting the VM") >= 3


def test_sigterm_stops_the_vm_with_status_4(kernels):
    proc = subprocess.Popen([*VMBOOT_CORE, "--kernel", str(kernels["spin"]), "--accel", "emulate"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 4
    assert err == b""


def test_ctrl_a_x_on_the_console_quits(kernels):
    proc = subprocess.Popen([*VMBOOT_CORE, "--kernel", str(kernels["spin"]), "--accel", "emulate"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.PIPE)
    time.sleep(1.0)
    out, err = proc.communicate(b"\x01x", timeout=10)
    assert proc.returncode == 4 and err == b""


def test_stats_report_exits_and_phases(kernels):
    proc = run("--kernel", str(kernels["poweroff"]), "--accel", "emulate", "--stats", "--debugcon", "file=/dev/null")
    assert proc.returncode == 0
    report = proc.stderr
    assert "boot phases (wall time):" in report and "vm ready" in report and "vm stopped" in report
    assert "debugcon 0x0402-0x0402" in report
    assert "acpi-sleep 0x0600-0x0600" in report
    assert "total I/O exits: 2" in report
    # Each sandboxed device's channel: the poweroff program writes the debug port once.
    assert "device debugcon: 0 requests, 1 posted writes in 1 messages, 0 reads answered in the core" in report
    assert "device pmtimer: 0 requests, 0 posted writes in 0 messages, 0 reads answered in the core" in report


def test_serial_file_output(tmp_path, kernels):
    kernel = write_kernel(tmp_path, "hello", "mov dx, PORT_COM1\nmov al, 'H'\nout dx, al\nmov al, 'i'\n"
                                             "out dx, al\npoweroff")
    out = tmp_path / "serial.txt"
    proc = run("--kernel", str(kernel), "--accel", "emulate", "--serial", f"file={out}")
    assert proc.returncode == 0 and proc.stdout == ""
    assert out.read_bytes() == b"Hi"


def test_serial_tty_goes_to_stdout(tmp_path):
    kernel = write_kernel(tmp_path, "hello", "mov dx, PORT_COM1\nmov al, 'Z'\nout dx, al\npoweroff")
    proc = run("--kernel", str(kernel), "--accel", "emulate")
    assert proc.returncode == 0 and proc.stdout == "Z"


def test_unwritable_serial_file(tmp_path, kernels):
    proc = run("--kernel", str(kernels["poweroff"]), "--accel", "emulate", "--serial",
               f"file={tmp_path}/no/such/dir/out")
    assert proc.returncode == 1
    assert one_line_error(proc) == f"vmboot-core: --serial file={tmp_path}/no/such/dir/out: No such file or directory"


def test_help_documents_exit_statuses():
    proc = run("--help")
    assert proc.returncode == 0
    for line in ("0  the guest powered off", "3  the guest reset and --no-reboot was given",
                 "4  stopped by the user: Ctrl-a x on the console, SIGINT or SIGTERM"):
        assert line in proc.stdout
