"""The vmboot command line on image files with FAT partitions (no root needed): --list, --dry-run, exec."""
from __future__ import annotations

import hashlib
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmboot.launcher.cli import EXIT_NOT_FOUND, main
from vmboot.tests.disk_images import fat_in, partition, pvh_elf, sparse_file

MiB = 1 << 20
FIRMWARE = pvh_elf()
KERNEL = pvh_elf(linux=True)
CORE = str(Path(sys.executable).parent / "vmboot-core")


def disk(tmp_path: Path, name: str, *volumes: dict[str, bytes]) -> str:
    """A GPT disk image with one FAT partition per ``volumes`` entry."""
    image = sparse_file(tmp_path / name, 64 * MiB)
    starts = [2048 + i * 20480 for i in range(len(volumes))]
    partition(image, "label: gpt\n" + "".join(f"start={s}, size=20480, type=uefi\n" for s in starts))
    for start, files in zip(starts, volumes):
        fat_in(image, start, 20480, files, tmp_path)
    return str(image)


@pytest.fixture(autouse=True)
def restore_logging():
    """main() installs its stderr handler on the "vmboot.launcher" logger; put the logger back afterwards."""
    logger = logging.getLogger("vmboot.launcher")
    saved = logger.handlers[:], logger.propagate, logger.level
    yield
    logger.handlers[:], logger.propagate, logger.level = saved


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def dry_run_command(out: str) -> str:
    """The printed command, with the memfd's descriptor number replaced by N."""
    return re.sub(r"/proc/self/fd/\d+", "/proc/self/fd/N", out.strip())


@pytest.fixture
def two_disks(tmp_path):
    fw = disk(tmp_path, "fw.img", {"/EFI/vmboot/CLOUDHV.fd": FIRMWARE,
                                   "/EFI/vmboot/vmboot.toml": b'memory = "2G"\ncpus = 2\nserial = "off"\n'},
              {"/CLOUDHV.fd": FIRMWARE})
    data = str(sparse_file(tmp_path / "data.img", 16 * MiB))
    return fw, data


def test_list(capsys, two_disks):
    fw, data = two_disks
    status, out, err = run(capsys, "--list", fw, data)
    assert status == 0
    assert out.splitlines() == [
        f"1  {fw}#1:/EFI/vmboot/CLOUDHV.fd  vfat  firmware  8KiB  /EFI/vmboot/vmboot.toml",
        f"2  {fw}#2:/CLOUDHV.fd             vfat  firmware  8KiB  -",
    ]
    assert err.splitlines() == [
        f"vmboot: scanning {fw}: GPT, 2 partitions",
        f"vmboot: found 1: {fw}#1:/EFI/vmboot/CLOUDHV.fd (vfat firmware, 8 KiB, with vmboot.toml)",
        f"vmboot: found 2: {fw}#2:/CLOUDHV.fd (vfat firmware, 8 KiB)",
        f"vmboot: scanning {data}: no partition table",
        f"vmboot: skipped {data}: no file system vmboot recognises",
    ]


def test_dry_run_uses_vmboot_toml_and_passes_the_other_disks(capsys, two_disks):
    fw, data = two_disks
    status, out, err = run(capsys, "--dry-run", "--log-level", "warn", fw, data)
    assert (status, err) == (0, "")
    assert dry_run_command(out) == (f"{CORE} --firmware /proc/self/fd/N --memory size=2048M --cpus boot=2 "
                                    f"--serial off --disk path={data}")


def test_command_line_overrides_vmboot_toml(capsys, two_disks):
    fw, data = two_disks
    status, out, _ = run(capsys, "--dry-run", "--cpus", "4", "--serial", "tty", "--accel", "emulate",
                         "--pass-firmware-disk", fw, data)
    assert status == 0
    assert dry_run_command(out) == (f"{CORE} --firmware /proc/self/fd/N --memory size=2048M --cpus boot=4 "
                                    f"--serial tty --accel emulate --disk path={fw} --disk path={data}")


def test_nets_are_checked_but_refused_until_vmboot_core_has_virtio_net(capsys, two_disks):
    fw, data = two_disks
    status, out, err = run(capsys, "--dry-run", "--net", "tap=tap0", "--net", "tap1", fw, data)
    assert (status, out) == (1, "")
    assert err.splitlines()[-1] == ("vmboot: cannot pass the network device tap0 to the VM: vmboot-core has no "
                                    "virtio-net device yet; remove nets from vmboot.toml or drop --net")
    status, _, err = run(capsys, "--dry-run", "--net", "tap=not a name", fw, data)
    assert status == 2 and "not a network interface name" in err


def test_explicit_disks_and_no_disks(capsys, two_disks, tmp_path):
    fw, data = two_disks
    status, out, _ = run(capsys, "--dry-run", "--disk", f"path={data},readonly=on", "--disk", fw, fw)
    assert status == 0
    assert dry_run_command(out).endswith(f"--disk path={data},readonly=on --disk path={fw}")
    status, out, _ = run(capsys, "--dry-run", "--no-disks", fw, data)
    assert "--disk" not in out
    status, _, err = run(capsys, "--dry-run", "--disk", str(tmp_path / "missing.img"), fw)
    assert (status, err.splitlines()[-1]) == (1, f"vmboot: disk {tmp_path}/missing.img: no such file or device")


def test_pick_and_device_choose_among_candidates(capsys, two_disks):
    fw, data = two_disks
    status, out, err = run(capsys, "--dry-run", "--pick", "2", fw, data)
    assert status == 0
    assert f"vmboot: booting {fw}#2:/CLOUDHV.fd with disks: {data}" in err.splitlines()
    assert "--memory size=1024M --cpus boot=1 --disk" in out  # the defaults: no vmboot.toml beside this one
    status, out, err = run(capsys, "--list", "--device", f"{fw}#2", fw, data)
    assert (status, out.split()[:2]) == (0, ["1", f"{fw}#2:/CLOUDHV.fd"])
    status, out, err = run(capsys, "--list", "--device", data, fw, data)
    assert (status, out) == (EXIT_NOT_FOUND, "")
    assert err.splitlines()[-1] == f"vmboot: no firmware candidate on {data} (2 elsewhere: see --list)"
    status, out, err = run(capsys, "--dry-run", "--pick", "3", fw, data)
    assert (status, err.splitlines()[-1]) == (1, "vmboot: --pick 3: there are only 2 candidates (see --list)")


def test_several_candidates_take_the_first_and_say_so(capsys, two_disks):
    fw, data = two_disks
    status, _, err = run(capsys, "--dry-run", fw, data)
    assert status == 0
    assert ("vmboot: 2 candidates: taking the first (--list shows them; --pick or --device chooses)"
            in err.splitlines())
    assert f"vmboot: not passing {fw}: it holds the firmware (--pass-firmware-disk passes it)" in err.splitlines()


def test_nothing_found(capsys, tmp_path):
    data = str(sparse_file(tmp_path / "data.img", 16 * MiB))
    assert run(capsys, "--list", data)[:2] == (EXIT_NOT_FOUND, "")
    status, _, err = run(capsys, data)
    assert (status, err.splitlines()[-1]) == (EXIT_NOT_FOUND, "vmboot: no firmware found")


def test_rejected_firmware_is_named_and_nothing_boots(capsys, tmp_path):
    bad = disk(tmp_path, "bad.img", {"/CLOUDHV.fd": b"not an ELF at all" * 100})
    status, out, err = run(capsys, "--list", bad)
    assert (status, out) == (EXIT_NOT_FOUND, "")
    assert err.splitlines()[-2:] == [
        f"vmboot: warning: rejected {bad}#1:/CLOUDHV.fd: not an ELF file (a PVH firmware such as CLOUDHV.fd "
        f"is an ELF image)",
        "vmboot: no usable firmware found (1 rejected, see above)",
    ]


def test_malformed_vmboot_toml_stops_the_boot_and_names_the_line(capsys, tmp_path):
    fw = disk(tmp_path, "fw.img", {"/boot/CLOUDHV.fd": FIRMWARE, "/boot/vmboot.toml": b"cpus = 2\nmemory = 2G\n"})
    status, out, err = run(capsys, "--list", fw)
    assert (status, out.split()[-1]) == (0, "/boot/vmboot.toml:invalid")
    status, out, err = run(capsys, "--dry-run", fw)
    assert (status, out) == (1, "")
    assert err.splitlines()[-1] == (f"vmboot: {fw}#1:/boot/vmboot.toml line 2: expected newline or end of document "
                                    f"after a statement")


def test_kernel_images_get_kernel_and_cmdline(capsys, tmp_path):
    fw = disk(tmp_path, "k.img", {"/CLOUDHV.fd": KERNEL, "/vmboot.toml": b'cmdline = "console=ttyS0"\n'})
    status, out, _ = run(capsys, "--dry-run", "--no-disks", fw)
    assert dry_run_command(out) == (f"{CORE} --kernel /proc/self/fd/N --memory size=1024M --cpus boot=1 "
                                    f"--cmdline console=ttyS0")
    status, out, _ = run(capsys, "--dry-run", "--no-disks", "--cmdline", "quiet root=/dev/vda1", fw)
    assert dry_run_command(out).endswith("--cmdline 'quiet root=/dev/vda1'")


def test_cmdline_for_a_firmware_is_an_error(capsys, two_disks):
    fw, data = two_disks
    status, _, err = run(capsys, "--dry-run", "--cmdline", "quiet", fw)
    assert (status, err.splitlines()[-1]) == (1, f"vmboot: --cmdline is for a Linux kernel, and "
                                                 f"{fw}#1:/EFI/vmboot/CLOUDHV.fd is a firmware")


@pytest.mark.parametrize("argv, message", [
    (["--block", "8086"], "--block: '8086' is not VENDOR:DEVICE in hexadecimal, e.g. 0x8086:0x1234"),
    (["--pick", "0"], "--pick counts from 1 (see --list)"),
    (["--memory", "lots"], "memory: 'lots' is not a size (use for example 512M or 2G)"),
    (["--disk", "path=/dev/sdb,cache=off"], "--disk path=/dev/sdb,cache=off: use path=PATH[,readonly=on]"),
    (["--no-disks", "--disk", "/dev/sdb"], "--no-disks and --disk contradict each other"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate (see --help)"),
])
def test_usage_errors(capsys, argv, message):
    status, out, err = run(capsys, *argv)
    assert (status, out, err) == (2, "", f"vmboot: {message}\n")


def test_missing_device_argument(capsys, tmp_path):
    status, _, err = run(capsys, "--list", str(tmp_path / "nope"))
    assert (status, err.splitlines()[-1]) == (1, f"vmboot: {tmp_path}/nope: No such file or directory")


def test_help_documents_order_exit_status_and_log_lines(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for text in ("Candidate order", "/NAME, then /boot/NAME, then /EFI/vmboot/NAME", "Exit status:",
                 "5  no usable firmware was found", "vmboot: exec COMMAND", "--pass-firmware-disk"):
        assert text in out


def test_exec_hands_a_sealed_copy_of_the_firmware_to_vmboot_core(tmp_path, two_disks):
    """A stand-in vmboot-core reports its arguments and what it finds behind --firmware."""
    fw, data = two_disks
    report = tmp_path / "report.txt"
    fake = tmp_path / "fake-core"
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import hashlib, os, sys
        path = sys.argv[sys.argv.index("--firmware") + 1]
        data = open(path, "rb").read()
        try:
            os.write(os.open(path, os.O_RDWR), b"x")
            writable = "writable"
        except OSError as err:
            writable = err.strerror
        with open({str(report)!r}, "w") as out:
            out.write("\\n".join([" ".join(sys.argv[1:]), hashlib.sha256(data).hexdigest(), writable]))
        sys.exit(3)
    """))
    fake.chmod(0o755)
    proc = subprocess.run([sys.executable, "-m", "vmboot.launcher.cli", "--core", str(fake), fw, data],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr  # the stand-in's status: vmboot exec'd it
    args, digest, writable = report.read_text().splitlines()
    assert re.fullmatch(rf"--firmware /proc/self/fd/\d+ --memory size=2048M --cpus boot=2 --serial off "
                        rf"--disk path={re.escape(data)}", args)
    assert digest == hashlib.sha256(FIRMWARE).hexdigest()
    assert writable == "Operation not permitted"  # F_SEAL_WRITE
    assert re.search(rf"^vmboot: exec {re.escape(str(fake))} --firmware /proc/self/fd/\d+ ", proc.stderr, re.M)
