"""What a KVM exit costs vmboot, and what reaches its Python per virtio request: run inside a real KVM.

    .venv/bin/python bench/kvm_exits.py round-trip [--reads N]
    .venv/bin/python bench/kvm_exits.py requests [--cpus N]

bench/kvm.py runs both inside the nested rig's L1 (this host's /dev/kvm is KVM-PVM).

round-trip: a 16-bit real-mode program on KVM reads one port N times between two writes to a
marker port (a device of this script, in the core, that notes the time); the time between the
marks, over N, is one exit, its dispatch in vmboot-core and the device's answer, for:
  - a port no device claims (the exit and the core's dispatch alone);
  - the CMOS/RTC data port, forwarded to the sandboxed RTC process (a round trip on the channel),
    and to the same device in the core (--devices inproc);
  - the PM timer, which its process declares a side-effect-free counter (no round trip);
  - the 16550's line status register, mirrored in the core (no round trip).

requests: the Debian guest boots on KVM from two virtio disks (the guest images) with --stats,
once with --virtio-eventfds kernel (ioeventfd and irqfd) and once with core; per disk, the
guest counts its block requests (/sys/block/*/stat) and vmboot-core counts the notifications
that reached it as MMIO exits (each one wakes a vCPU thread's Python) and the interrupts it
sent itself (each one a wake-up of its relay thread).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmboot.abi.memory import GuestMemory
from vmboot.core.events import Outcome, VmEvents
from vmboot.core.kvm.backend import KvmBackend
from vmboot.core.platform import Platform
from vmboot.core.supervisor.supervisor import Supervisor
from vmboot.core.vcpu.state import real_mode_entry
from vmboot.tests.guest_asm import PROGRAM, STACK_TOP, assemble

UNCLAIMED_PORT = 0x2F0  # no device of the platform claims it: reads answer all ones
MARK_PORT = 0x2F4  # this script's marker, free on the platform as well
RTC_INDEX, RTC_DATA, RTC_SECONDS = 0x70, 0x71, 0x00
PM_TIMER, UART_LSR = 0x608, 0x3F8 + 5
MAX_READS = 0xFFFF  # CX counts them

# (what, port, sandboxed devices?)
ROUND_TRIPS = (
    ("an unclaimed port: the exit and the core's dispatch", UNCLAIMED_PORT, True),
    ("CMOS/RTC data, forwarded to the sandboxed process", RTC_DATA, True),
    ("CMOS/RTC data, the device in the core (inproc)", RTC_DATA, False),
    ("PM timer, a declared counter (sandboxed, no round trip)", PM_TIMER, True),
    ("16550 LSR, mirrored in the core (sandboxed)", UART_LSR, True),
)


def read_loop(port: int, reads: int) -> bytes:
    return assemble(f"""
        mov dx, {RTC_INDEX}
        mov al, {RTC_SECONDS}
        out dx, al
        mov dx, {MARK_PORT}
        out dx, al                 ; mark: start
        mov dx, {port}
        mov cx, {reads}
    again:
        in al, dx
        dec cx
        jnz again
        mov dx, {MARK_PORT}
        out dx, al                 ; mark: end
        poweroff
    """, "real")


class Marker:
    """A port in the core that notes when it is written."""

    def __init__(self):
        self.times: list[float] = []

    def read(self, offset: int, size: int) -> bytes:
        return b"\xff" * size

    def write(self, offset: int, data: bytes) -> None:
        self.times.append(time.perf_counter())


def wait_until_started(supervisor: Supervisor, timeout: float = 60.0) -> None:
    """Until every device has said hello and settled: a device still starting takes the CPUs
    that the timed loop should have."""
    for device in supervisor.devices:
        if not device.started.wait(timeout) or device.proxy.generation == 0:
            raise RuntimeError(f"device {device.name} did not start")
    time.sleep(0.5)


def time_reads(port: int, reads: int, sandboxed: bool) -> float:
    """Seconds per read of ``port`` by a program on KVM, between its two marks."""
    memory = GuestMemory(2 << 20)
    events = VmEvents()
    marker = Marker()
    supervisor = Supervisor("kill", "warn", on_fatal=events.error) if sandboxed else None
    backend = KvmBackend(memory)
    try:
        platform = Platform(events, backend.irq_line, serial_out=lambda data: None, supervisor=supervisor)
        platform.ports.register(MARK_PORT, 1, marker, "marker")
        if supervisor is not None:
            wait_until_started(supervisor)
        memory.write(PROGRAM, read_loop(port, reads))
        backend.start(real_mode_entry(0, PROGRAM, sp=STACK_TOP), platform.io, events)
        finished = events.stopped.wait(120)
        if not finished:
            events.request(Outcome.ERROR, "timed out")
        backend.kick_all()
        backend.join()
        if not finished:
            raise RuntimeError(f"the read loop on port {port:#x} did not end in 120 s")
        marks = marker.times
        if len(marks) != 2:
            raise RuntimeError(f"port {port:#x}: {len(marks)} marks, not 2: {events.stop.message}")
        return (marks[1] - marks[0]) / reads
    finally:
        backend.close()
        if supervisor is not None:
            supervisor.close()
        memory.close()


def round_trip(args) -> None:
    reads = min(args.reads, MAX_READS)
    print(f"port read from a real-mode program on KVM, mean of {reads} reads")
    for name, port, sandboxed in ROUND_TRIPS:
        time_reads(port, 100, sandboxed)  # warm: the device started, the imports done
        print(f"  {name:<58} {time_reads(port, reads, sandboxed) * 1e6:8.1f} us", flush=True)


STAT = re.compile(r"^virtio (?P<name>\S+): (?P<kicks>\d+) kicks through MMIO exits, "
                  r"(?P<interrupts>\d+) interrupts sent by the core$", re.M)


def boot_counts(firmware: Path, mode: str, cpus: int, work: Path) -> dict[str, tuple[int, int, int]]:
    """Per guest disk (vda, vdb): (block requests the guest counted, kicks through exits,
    interrupts from the core), for one boot."""
    from vmboot.assets.guest import fresh_copy, guest_dir, parse_console
    disks = fresh_copy(work, guest_dir())
    serial = work / "serial.log"
    proc = subprocess.run(
        [sys.executable, "-m", "vmboot.core.cli", "--firmware", str(firmware), "--accel", "kvm",
         "--cpus", f"boot={cpus}", "--virtio-eventfds", mode, "--stats", "--serial", f"file={serial}",
         "--disk", f"path={disks.esp}", "--disk", f"path={disks.data}"],
        capture_output=True, text=True, timeout=400, stdin=subprocess.DEVNULL)
    report = parse_console(serial.read_text(errors="replace"))
    stats = {m["name"]: (int(m["kicks"]), int(m["interrupts"])) for m in STAT.finditer(proc.stderr)}
    names = {f"disk{i}": f"vd{chr(ord('a') + i)}" for i in range(2)}  # --disk order is PCI slot order
    if proc.returncode != 0 or report.requests is None or set(stats) != set(names) \
            or set(report.requests) != set(names.values()):
        raise RuntimeError(f"--virtio-eventfds {mode}: exit status {proc.returncode}, guest requests "
                           f"{report.requests}, device counts {stats}:\n{proc.stderr[-2000:]}")
    return {names[disk]: (report.requests[names[disk]], *counts) for disk, counts in sorted(stats.items())}


def requests(args) -> None:
    from vmboot.assets.firmware import firmware_path
    firmware = firmware_path("release")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vmboot-bench-") as tmp:
        for mode in ("kernel", "core"):
            for disk, counts in boot_counts(firmware, mode, args.cpus, Path(tmp) / mode).items():
                rows.append((mode, disk, *counts))
    print("per virtio-blk request of the Debian guest's boot on KVM (requests as the guest counts them)")
    print(f"  {'--virtio-eventfds':<18} {'disk':<5} {'requests':>9} {'kicks by exit':>14} {'core interrupts':>16} "
          f"{'vCPU-thread wakeups/request':>28} {'core wakeups/request':>21}")
    for mode, disk, count, kicks, interrupts in rows:
        print(f"  {mode:<18} {disk:<5} {count:>9} {kicks:>14} {interrupts:>16} {kicks / count:>28.2f} "
              f"{(kicks + interrupts) / count:>21.2f}")
    print("  (vda's kicks also carry the firmware's reads of the kernel image, which the guest does not count;")
    print("   vdb, the data disk, is the guest's almost alone)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="part", required=True)
    rt = sub.add_parser("round-trip")
    rt.add_argument("--reads", type=int, default=20000)
    rq = sub.add_parser("requests")
    rq.add_argument("--cpus", type=int, default=1)
    args = p.parse_args()
    round_trip(args) if args.part == "round-trip" else requests(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
