"""vmboot: the LinuxBoot-side launcher that finds a firmware on the disks and boots it (see cli.py)."""
