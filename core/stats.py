"""``--stats``: where the time and the exits went, printed when the VM ends."""
from __future__ import annotations

import time
from .bus import Bus

# Console lines that mark the phases of an EDK2 boot to the shell.
CONSOLE_MILESTONES = (
    ("first console output", b""),
    ("shell countdown", b"startup.nsh"),
    ("shell prompt", b"Shell>"),
)


class BootClock:
    """Wall-clock marks since vmboot-core started; each name is marked once."""

    def __init__(self, start: float | None = None):
        self.start = time.monotonic() if start is None else start
        self.marks: list[tuple[str, float]] = []

    def mark(self, name: str) -> None:
        if not any(n == name for n, _ in self.marks):
            self.marks.append((name, time.monotonic()))

    def elapsed(self, name: str) -> float | None:
        for n, t in self.marks:
            if n == name:
                return t - self.start
        return None

    def phases(self) -> list[tuple[str, float, float]]:
        """(name, seconds since start, seconds since the previous mark)."""
        out, prev = [], self.start
        for name, t in self.marks:
            out.append((name, t - self.start, t - prev))
            prev = t
        return out


class ConsoleMilestones:
    """Marks a BootClock when the console first prints each milestone."""

    def __init__(self, clock: BootClock, milestones=CONSOLE_MILESTONES):
        self.clock = clock
        self.pending = list(milestones)
        self.tail = b""

    def feed(self, data: bytes) -> None:
        if not self.pending:
            return
        self.tail = (self.tail + data)[-256:]
        while self.pending and self.pending[0][1] in self.tail:
            self.clock.mark(self.pending.pop(0)[0])


def report(clock: BootClock, ports: Bus, mmio: Bus, backend: dict[str, str]) -> str:
    lines = ["boot phases (wall time):"]
    for name, since_start, delta in clock.phases():
        lines.append(f"  {name:<28} {since_start:9.3f} s  (+{delta:.3f} s)")
    total_io = 0
    for bus in (ports, mmio):
        rows = sorted(bus.mappings, key=lambda m: -(m.reads + m.writes))
        rows = [m for m in rows if m.reads + m.writes]
        unhandled = sum(u.reads + u.writes for u in bus.unhandled.values())
        if not rows and not unhandled:
            continue
        lines.append(f"{bus.kind} exits:")
        for m in rows:
            total_io += m.reads + m.writes
            lines.append(f"  {m.label(bus.kind):<36} {m.reads:>10} reads {m.writes:>10} writes")
        if unhandled:
            total_io += unhandled
            addrs = ", ".join(f"{a:#x}" for a in sorted(bus.unhandled)[:8])
            more = " ..." if len(bus.unhandled) > 8 else ""
            lines.append(f"  {'unhandled':<36} {unhandled:>10} accesses at {addrs}{more}")
    lines.append(f"total I/O exits: {total_io}")
    for key, value in backend.items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)
