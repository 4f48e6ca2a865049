"""What it costs to keep devices in their own processes.

    .venv/bin/python bench/exits.py [--reads N] [--runs N]

1. A forwarded port read, p50 and p99, and the cost of a posted write:
   - naive: pyzmq PAIR over ipc:// with msgpack, to a device process (the first design);
   - vmboot: the real sandboxed RTC process, over vmboot's SEQPACKET channel (ipc/channel.py);
   - vmboot hot path: the PM timer, which its process declares a side-effect-free counter, so
     the core answers without a round trip (ipc/fastpath.py). Target: p50 <= 20 us.
   - vmboot hot path: the 16550's line status register, which its process mirrors into every
     reply, so a poll between two writes costs no round trip; and a whole console byte as
     Linux's 8250 driver sends it (LSR poll, then THR write).
2. Boot to the shell's countdown with --devices sandboxed against --devices inproc, interleaved
   (target: <= 1.15x).
3. Total proportional set size (PSS) of vmboot-core and its device processes at the shell prompt.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from boot import time_to_marker, vmboot_cmd  # noqa: E402

from vmboot.devices.serial.uart16550 import LSR as UART_LSR  # noqa: E402
from vmboot.devices.serial.uart16550 import LSR_THRE as UART_LSR_THRE  # noqa: E402
from vmboot.devices.serial.uart16550 import THR as UART_THR  # noqa: E402

NAIVE_DEVICE = r"""
import sys, zmq, msgpack
from vmboot.devices.rtc.cmos import CmosRtc
rtc = CmosRtc()
s = zmq.Context().socket(zmq.PAIR)
s.connect(sys.argv[1])
while True:
    msg = msgpack.unpackb(s.recv())
    if msg[0] == 10:
        break
    if msg[0] == 2:  # READ seq window offset size
        s.send(msgpack.packb([4, msg[1], rtc.read(msg[3], msg[4])]))
    elif msg[0] == 3:  # WRITE window offset data (posted)
        rtc.write(msg[2], msg[3])
"""


def percentiles(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return samples[len(samples) // 2] * 1e6, samples[int(len(samples) * 0.99)] * 1e6


def timed(fn, count: int) -> list[float]:
    out = []
    for _ in range(count):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_naive_zmq(reads: int) -> tuple[list[float], list[float]]:
    import msgpack
    import zmq
    directory = tempfile.mkdtemp(prefix="vmboot-zmq-")
    endpoint = f"ipc://{directory}/rtc"
    sock = zmq.Context.instance().socket(zmq.PAIR)
    sock.bind(endpoint)
    device = subprocess.Popen([sys.executable, "-c", NAIVE_DEVICE, endpoint])
    try:
        seq = iter(range(1, 1 << 30))

        def read() -> bytes:
            sock.send(msgpack.packb([2, next(seq), 0, 1, 1]))
            return msgpack.unpackb(sock.recv())[2]

        def write() -> None:
            sock.send(msgpack.packb([3, 0, 0, b"\x0a"]))
        read()
        return timed(read, reads), timed(write, reads)
    finally:
        sock.send(msgpack.packb([10]))
        device.wait(10)
        sock.close()


def bench_vmboot(reads: int) -> tuple[list[float], ...]:
    from vmboot.core.platform import InprocHost
    from vmboot.core.supervisor.device import DeviceConfig
    from vmboot.core.supervisor.supervisor import Supervisor
    from vmboot.devices import registry
    supervisor = Supervisor("kill", "warn")
    host = InprocHost([], {}, time.time, time.monotonic)

    def start(name: str):
        kind = registry.get(name)
        return supervisor.add(DeviceConfig(kind, name, kind.params(host))).proxy.window(0)
    try:
        rtc, pm, uart = start("rtc"), start("pmtimer"), start("serial")
        rtc.write(0, b"\x0a")
        rtc.read(1, 1)
        pm.read(0, 4)
        uart.read(UART_LSR, 1)  # the handshakes are done, and the line status mirrored
        forwarded = timed(lambda: rtc.read(1, 1), reads)
        posted = timed(lambda: rtc.write(0, b"\x0a"), reads)
        rtc.read(1, 1)  # drain
        hot = timed(lambda: pm.read(0, 4), reads)
        mirrored = timed(lambda: uart.read(UART_LSR, 1), reads)

        def console_byte() -> None:  # what Linux's 8250 console does for every byte
            while not uart.read(UART_LSR, 1)[0] & UART_LSR_THRE:
                pass
            uart.write(UART_THR, b".")
        console = timed(console_byte, reads)
        return forwarded, posted, hot, mirrored, console
    finally:
        supervisor.close()


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def bench_memory(firmware: Path) -> tuple[int, int, int]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from vmboot.tests.console import Console
    from vmboot.tests.processes import descendants
    with Console(*vmboot_cmd(firmware, "sandboxed")[3:]) as console:
        console.expect(b"Shell> ", 60)
        time.sleep(1)
        core = console.proc.pid
        children = descendants(core)
        devices = sum(pss_kib(pid) for pid in children)
        result = (pss_kib(core), devices, len(children))
        console.type("reset -s\r")
        console.wait(30)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reads", type=int, default=5000)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    from vmboot.assets.firmware import firmware_path
    firmware = firmware_path("release")

    naive_read, naive_write = bench_naive_zmq(args.reads)
    read, write, hot, mirrored, console = bench_vmboot(args.reads)
    print(f"port read forwarded to a device process ({args.reads} each)        p50        p99")
    for name, samples in (("naive: pyzmq PAIR + msgpack, RTC read", naive_read),
                          ("vmboot: SEQPACKET channel, RTC read (sandboxed)", read),
                          ("vmboot hot path: PM timer counter (sandboxed)", hot),
                          ("vmboot hot path: 16550 LSR mirror (sandboxed)", mirrored),
                          ("a console byte: LSR poll + THR write (sandboxed)", console)):
        p50, p99 = percentiles(samples)
        print(f"  {name:<52} {p50:7.1f} us {p99:7.1f} us")
    print("posted write")
    for name, samples in (("naive: pyzmq PAIR + msgpack", naive_write),
                          ("vmboot: SEQPACKET channel (sandboxed)", write)):
        p50, p99 = percentiles(samples)
        print(f"  {name:<52} {p50:7.1f} us {p99:7.1f} us")

    times: dict[str, list[float]] = {"sandboxed": [], "inproc": []}
    for _ in range(args.runs):
        for mode in times:
            times[mode].append(time_to_marker(vmboot_cmd(firmware, mode)))
    sandboxed, inproc = statistics.median(times["sandboxed"]), statistics.median(times["inproc"])
    print(f"boot to the shell's countdown, median of {args.runs} runs (emulate)")
    print(f"  --devices inproc     {inproc:6.3f} s")
    print(f"  --devices sandboxed  {sandboxed:6.3f} s   {sandboxed / inproc:4.2f}x")

    core, devices, count = bench_memory(firmware)
    print("memory at the shell prompt (PSS)")
    print(f"  vmboot-core {core / 1024:6.1f} MiB (guest RAM is a shared memfd, counted once)")
    print(f"  {count} helper and device processes {devices / 1024:6.1f} MiB")
    print(f"  total {(core + devices) / 1024:6.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
