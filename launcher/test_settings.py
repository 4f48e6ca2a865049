"""vmboot.toml: values, errors that name the line, and the order in which layers override each other."""
from __future__ import annotations

import pytest

from vmboot.launcher.settings import DEFAULTS, ConfigError, DiskSetting, Settings, parse_config

WHERE = "/dev/sdb1:/vmboot.toml"
FULL = """\
# a complete file
memory = "2G"
cpus = 4
serial = "file=/var/log/guest.log"
accel = "emulate"
disks = ["/dev/nvme0n1", { path = "/dev/sdb", readonly = true }]
pass_firmware_disk = true
nets = ["tap0", "tap1"]
cmdline = "console=ttyS0 root=/dev/vda2"
"""


def test_every_key():
    assert parse_config(FULL, WHERE) == Settings(
        memory=2 << 30, cpus=4, serial="file=/var/log/guest.log", accel="emulate",
        disks=(DiskSetting("/dev/nvme0n1"), DiskSetting("/dev/sdb", readonly=True)), pass_firmware_disk=True,
        nets=("tap0", "tap1"), cmdline="console=ttyS0 root=/dev/vda2")


def test_empty_file_sets_nothing():
    assert parse_config("# nothing\n", WHERE) == Settings()


@pytest.mark.parametrize("text, message", [
    ('memory = "2G"\ncpus = \n', "line 2: invalid value"),
    ('memory = "2G"\ncpus = [1,\n', "line 2: invalid value"),  # at the end of the document: its last line
    ('cpus = 1\ncpus = 2\n', "line 2: cannot overwrite a value"),
    ('cmdline = "unterminated\n', "line 1: illegal character '\\n'"),
])
def test_toml_syntax_errors_name_the_line(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, WHERE)
    assert str(err.value) == f"{WHERE} {message}"


@pytest.mark.parametrize("text, message", [
    ('\n\nmemroy = "2G"\n', "line 3: unknown key 'memroy' (known: memory, cpus, serial, accel, disks, "
                             "pass_firmware_disk, nets, cmdline)"),
    ('cpus = "2"\n', "line 1: cpus must be an integer, not a string"),
    ('cpus = true\n', "line 1: cpus must be an integer, not a boolean"),
    ('cpus = 0\n', "line 1: cpus: 0 is not between 1 and 255"),
    ('# x\nmemory = "2X"\n', "line 2: memory: '2X' is not a size (use for example 512M or 2G)"),
    ('memory = "1536K"\n', "line 1: memory: '1536K' is not a whole, non-zero number of MiB"),
    ('serial = "com1"\n', "line 1: serial: 'com1' is not tty, off or file=PATH"),
    ('accel = "hvf"\n', "line 1: accel: 'hvf' is not one of auto, kvm, emulate"),
    ('disks = "some"\n', "line 1: disks: 'some' is not \"auto\", \"none\" or a list of disks"),
    ('disks = ["sdb"]\n', "line 1: disk 'sdb': give an absolute path such as /dev/sdb"),
    ('disks = [{ path = "/dev/sdb", ro = true }]\n', "line 1: disks: a table needs path and may have readonly, "
                                                      "nothing else"),
    ('disks = [3]\n', "line 1: disks entries must be paths or { path = ..., readonly = ... }, not an integer"),
    ('nets = ["a name with spaces"]\n', "line 1: net: 'a name with spaces' is not a network interface name"),
    ('pass_firmware_disk = "yes"\n', "line 1: pass_firmware_disk must be true or false, not a string"),
    ('cpus = 1\n[disks]\npath = "/dev/sdb"\n', "line 2: disks must be a list, not a table"),
])
def test_bad_values_name_the_line(text, message):
    with pytest.raises(ConfigError) as err:
        parse_config(text, WHERE)
    assert str(err.value) == f"{WHERE} {message}"


def test_layers_override_in_order():
    file = parse_config('memory = "2G"\ncpus = 2\nnets = ["tap0"]\n', WHERE)
    cli = Settings(cpus=8, disks="none")
    merged = cli.over(file.over(DEFAULTS))
    assert merged == Settings(memory=2 << 30, cpus=8, disks="none", pass_firmware_disk=False, nets=("tap0",))
    assert Settings().over(DEFAULTS) == DEFAULTS
