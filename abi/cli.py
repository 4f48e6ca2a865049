"""What vmboot's command lines share, and vmboot-core's contract with the programs that run it.

The launcher builds a vmboot-core command line and reports its exit status, so
the CPU backends, the size syntax and the statuses are declared here, once.
"""
from __future__ import annotations

import argparse
import re

from .errors import UsageError

ACCELS = ("auto", "kvm", "emulate")  # vmboot-core --accel

# vmboot-core's exit statuses.
EXIT_POWEROFF = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_RESET = 3  # --no-reboot and the guest reset
EXIT_QUIT = 4  # the user stopped the VM

SIZE_SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (UsageError, exit status 2)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def parse_size(text: str, what: str) -> int:
    """``512M``, ``2G``, ``4096``: bytes. ``what`` names the option in the error."""
    m = re.fullmatch(r"(\d+)([KMGT]?)i?B?", text.strip(), re.IGNORECASE)
    if not m:
        raise UsageError(f"{what}: '{text}' is not a size (use for example 512M or 2G)")
    return int(m.group(1)) * SIZE_SUFFIXES[m.group(2).upper()]
