"""abi/linux.py against the system's headers: a C program prints every value it declares."""
from __future__ import annotations

import shutil
import subprocess

from vmboot.abi import linux

HEADERS = ["sched.h", "sys/mount.h", "sys/prctl.h", "linux/capability.h", "sys/mman.h", "sys/ioctl.h", "fcntl.h",
           "linux/falloc.h", "linux/futex.h", "signal.h", "time.h", "sys/socket.h", "linux/loop.h", "sys/syscall.h",
           "linux/audit.h", "stdio.h"]
NAMES = [name for name, value in vars(linux).items() if type(value) is int]


def test_every_value_is_the_headers(tmp_path):
    assert shutil.which("cc"), "the C compiler (build-essential) is needed to read the kernel headers"
    assert len(NAMES) == 97 and "SYS_pivot_root" in NAMES and "FUTEX_WAKE_PRIVATE" in NAMES
    source = "#define _GNU_SOURCE\n" + "".join(f"#include <{h}>\n" for h in HEADERS)
    source += "int main(void) {\n" + "".join(
        f'    printf("{name} %llu\\n", (unsigned long long)({name}));\n' for name in NAMES) + "}\n"
    (tmp_path / "linux.c").write_text(source)
    subprocess.run(["cc", "-o", str(tmp_path / "linux"), str(tmp_path / "linux.c")], check=True)
    printed = subprocess.run([str(tmp_path / "linux")], capture_output=True, text=True, check=True).stdout
    assert {line.split()[0]: int(line.split()[1]) for line in printed.splitlines()} == {
        name: getattr(linux, name) for name in NAMES}


def test_policies_may_name_every_public_number_and_no_private_one():
    table = linux.constants()
    assert table["FIONBIO"] == 0x5421 and table["CLONE_THREAD"] == 0x10000
    assert "_LINUX_CAPABILITY_VERSION_3" not in table and len(table) == len(NAMES) - 1
