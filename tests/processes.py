"""Finding and inspecting vmboot's device processes from the outside, through /proc."""
from __future__ import annotations

import os
import subprocess
import time
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


def wait_for_devices(core_pid: int, kinds: set[str], timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = device_processes(core_pid)
        if set(found) >= kinds and all(status(pid).get("Seccomp") == "2" for pid in found.values()):
            return found
        time.sleep(0.1)
    raise AssertionError(f"devices {kinds - set(device_processes(core_pid))} never came up sandboxed")


def check_sandboxed(core_pid: int, kind: str, pid: int) -> None:
    st = status(pid)
    assert st["Seccomp"] == "2", f"{kind}: seccomp filter mode"
    assert st["Seccomp_filters"] == "1", kind
    assert st["NoNewPrivs"] == "1", kind
    for cap in CAPABILITY_FIELDS:
        assert int(st[cap], 16) == 0, f"{kind}: {cap} = {st[cap]}"
    for ns in NAMESPACES:
        assert namespace(pid, ns) != namespace(core_pid, ns), f"{kind} shares the core's {ns} namespace"
    assert os.listdir(f"/proc/{pid}/root") == [], f"{kind} can see files"
    targets = fd_targets(pid)
    assert not any(t == "/dev/kvm" or t.startswith("anon_inode:kvm") for t in targets), f"{kind} holds {targets}"
