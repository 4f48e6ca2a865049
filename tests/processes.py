"""Finding and inspecting vmboot's device processes from the outside, through /proc."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

NAMESPACES = ("user", "mnt", "pid", "ipc", "net")
CAPABILITY_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


def device_processes(core_pid: int) -> dict[str, int]:
    """{device kind: pid} for the devices of the vmboot-core process ``core_pid``.

    The core's zygote forks a reaper per device, which forks the device; each
    names itself (/proc/PID/comm): "vmboot-zygote", "reap:KIND", "dev:KIND".
    """
    found = {}
    for pid in descendants(core_pid):
        name = comm(pid)
        if name.startswith("dev:"):
            found[name[len("dev:"):]] = pid
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def descendants(pid: int) -> set[int]:
    out, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        try:
            for task in os.listdir(f"/proc/{parent}/task"):
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
                for child in map(int, children):
                    if child not in out:
                        out.add(child)
                        frontier.append(child)
        except OSError:
            continue
    return out


def alive(pids: set[int]) -> set[int]:
    return {pid for pid in pids if Path(f"/proc/{pid}").exists() and _state(pid) != "Z"}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def namespace(pid: int, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


def fd_targets(pid: int) -> list[str]:
    targets = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
    return targets


def make_fat_disk(path: Path, size_mib: int = 8, files: dict[str, bytes] | None = None) -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mformat", "-i", str(path), "::"], check=True, capture_output=True)
    for name, data in (files or {}).items():
        src = path.parent / f".{name}"
        src.write_bytes(data)
        subprocess.run(["mcopy", "-i", str(path), str(src), f"::/{name}"], check=True, capture_output=True)
        src.unlink()
    return path
