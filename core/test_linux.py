"""core/linux.py against the system's headers: a C program prints every value it declares."""
from __future__ import annotations

import shutil
import subprocess

from vmboot.core import linux

HEADERS = ["sched.h", "sys/mount.h", "sys/prctl.h", "linux/capability.h", "linux/falloc.h", "sys/syscall.h",
           "stdio.h"]
NAMES = [name for name, value in vars(linux).items() if type(value) is int]


def test_every_value_is_the_headers(tmp_path):
    assert shutil.which("cc"), "the C compiler (build-essential) is needed to read the kernel headers"
    assert len(NAMES) == 26 and "SYS_pivot_root" in NAMES
    source = "#define _GNU_SOURCE\n" + "".join(f"#include <{h}>\n" for h in HEADERS)
    source += "int main(void) {\n" + "".join(
        f'    printf("{name} %llu\\n", (unsigned long long)({name}));\n' for name in NAMES) + "}\n"
    (tmp_path / "linux.c").write_text(source)
    subprocess.run(["cc", "-o", str(tmp_path / "linux"), str(tmp_path / "linux.c")], check=True)
    printed = subprocess.run([str(tmp_path / "linux")], capture_output=True, text=True, check=True).stdout
    assert {line.split()[0]: int(line.split()[1]) for line in printed.splitlines()} == {
        name: getattr(linux, name) for name in NAMES}
