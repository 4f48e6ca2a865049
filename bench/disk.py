"""Disk throughput through virtio-blk's real request path, against the host's limit on the same file.

    python bench/disk.py [--size-mib 256] [--seconds 3] [--depth 8] [--runner sandboxed|inproc] [--dir DIR]

vmboot's figures come from a guest driver (devices/virtio/driver.py) that writes
virtio-blk requests into guest memory, publishes them in the available ring and
kicks the queue's eventfd, exactly as a guest does; the device serves them from
its queue worker and signals the call eventfd. Which device serves them is the
runner: "inproc" is core.virtio_host.InprocBackend (a thread of the core);
"sandboxed" is the device process vmboot-core runs by default, which maps the
memfd and is kicked and answers through the same eventfds.

The host's limit is measured on the same file with the same kind of I/O: buffered
(no O_DIRECT) and one request at a time, which is what the device issues:
dd for sequential 1 MiB reads, fio (psync) for random 4 KiB reads, or a Python
pread loop where fio is not installed. Random runs advise POSIX_FADV_RANDOM on
both sides, as fio does by default, so that readahead does not turn them into a
race to cache the whole file. Cold figures drop the page cache before every run
(root only); the file is read once first, so that a cache below this machine (a
VM's backing store) is equally warm for every run. Warm figures read a file that
is already in the page cache. Sequential figures are the best of three runs.
MB/s counts 10**6 bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from vmboot.abi.errors import VmbootError
from vmboot.abi.memory import GuestMemory
from vmboot.abi.virtio import VIRTIO_BLK_S_OK, VIRTIO_BLK_SECTOR_SIZE, VIRTIO_BLK_T_IN, VIRTIO_F_VERSION_1, QueueSetup
from vmboot.core.disk import DiskSpec, open_disk
from vmboot.core.platform import InprocHost
from vmboot.core.supervisor.supervisor import Supervisor
from vmboot.core.virtio_host import InprocBackend, process_backend
from vmboot.devices import registry
from vmboot.devices.virtio.driver import Arena, QueueDriver, Segment

MB = 10**6
MIB = 1 << 20
SEQ_BLOCK = MIB
RAND_BLOCK = 4096
QUEUE_SIZE = 256
REQUEST_HEADER = struct.Struct("<IIQ")  # struct virtio_blk_req's header (VIRTIO 1.2 §5.2.6)
DROP_CACHES = "/proc/sys/vm/drop_caches"
RING_AREA = 0x100000  # guest memory below this holds the rings; request buffers follow
SEQ_RUNS = 3


# -- runners: who serves the queue ---------------------------------------------------------------------


DISK = registry.kinds(registry.Attach.DISK)[0]  # the kind a --disk gets
PARAMS = {"name": "bench", "readonly": True, "serial": "bench"}


def inproc_runner(memory: GuestMemory, fd: int):
    return InprocBackend(DISK.build(PARAMS, {"disk": fd}, InprocHost([], {}, time.time, time.monotonic)), memory)


class SandboxedDisk:
    """The sandboxed virtio-blk device process, as vmboot-core runs it (forked by a zygote,
    seccomp in kill mode), behind the same backend interface."""

    def __init__(self, memory: GuestMemory, fd: int):
        self.supervisor = Supervisor("kill", "warn")
        self.backend = process_backend(self.supervisor, memory, DISK, "bench", PARAMS, {"disk": fd}, 0)

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def close(self) -> None:
        self.supervisor.close()
        self.backend.close()


RUNNERS: dict[str, Callable] = {"inproc": inproc_runner, "sandboxed": SandboxedDisk}


# -- the guest's side ------------------------------------------------------------------------------------


class BenchError(Exception):
    pass


class Guest:
    """A virtio-blk driver reading the disk through one queue, with ``depth`` requests in flight."""

    def __init__(self, runner: Callable, disk_fd: int, depth: int, block: int):
        self.block = block
        self.memory = GuestMemory(RING_AREA + depth * (block + 4096) + MIB)
        self.backend = runner(self.memory, disk_fd)
        self.driver = QueueDriver(self.memory, Arena(0x1000, RING_AREA), QUEUE_SIZE)
        arena = Arena(RING_AREA, self.memory.size)
        self.slots = [(arena.alloc(16), arena.alloc(block, 4096), arena.alloc(1)) for _ in range(depth)]
        # accept every feature offered, as Linux does (event index included: the driver keeps used_event)
        features = self.backend.features
        if not features >> VIRTIO_F_VERSION_1 & 1:
            raise BenchError(f"the device offers features {features:#x}, without VIRTIO_F_VERSION_1")
        self.backend.activate(features, [QueueSetup(0, QUEUE_SIZE, self.driver.desc, self.driver.avail,
                                                    self.driver.used)])
        self.kick_fd = self.backend.kick_fds[0]
        self.call_fd = self.backend.call_fds[0]

    def close(self) -> None:
        self.backend.close()
        self.memory.close()

    def read(self, offsets: Iterator[int]) -> int:
        """Read ``block`` bytes at each offset; returns how many requests completed."""
        free = list(range(len(self.slots)))
        inflight: dict[int, int] = {}  # head -> slot
        done = 0

        def submit() -> bool:
            added = False
            while free:
                offset = next(offsets, None)
                if offset is None:
                    break
                slot = free.pop(0)
                header, data, status = self.slots[slot]
                self.memory.write(header, REQUEST_HEADER.pack(VIRTIO_BLK_T_IN, 0, offset // VIRTIO_BLK_SECTOR_SIZE))
                head = self.driver.add([Segment(header, 16), Segment(data, self.block, True),
                                        Segment(status, 1, True)])
                inflight[head] = slot
                added = True
            return added

        if submit():
            os.eventfd_write(self.kick_fd, 1)
        while inflight:
            ready, _, _ = select.select([self.call_fd], [], [], 10)
            if not ready:
                raise BenchError(f"the device stopped answering with {len(inflight)} requests in flight")
            os.eventfd_read(self.call_fd)
            for head, written in self.driver.completions():
                slot = inflight.pop(head)
                status = self.memory.read(self.slots[slot][2], 1)[0]
                if status != VIRTIO_BLK_S_OK or written != self.block + 1:
                    raise BenchError(f"request failed: status {status}, {written} bytes written")
                free.append(slot)
                done += 1
            if submit():
                os.eventfd_write(self.kick_fd, 1)
        return done

    def data(self, slot: int = 0) -> bytes:
        return self.memory.read(self.slots[slot][1], self.block)


# -- workloads ----------------------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int
    seconds: float
    block: int
    tool: str = "vmboot"

    @property
    def mb_per_s(self) -> float:
        return self.requests * self.block / self.seconds / MB

    @property
    def iops(self) -> float:
        return self.requests / self.seconds


def sequential(size: int) -> Iterator[int]:
    return iter(range(0, size, SEQ_BLOCK))


def random_until(size: int, seconds: float, seed: int = 1) -> Iterator[int]:
    rng = random.Random(seed)
    blocks = size // RAND_BLOCK
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        yield rng.randrange(blocks) * RAND_BLOCK


def vmboot_seq(runner, path: str, size: int, depth: int) -> Result:
    return _vmboot(runner, path, SEQ_BLOCK, depth, lambda: sequential(size), os.POSIX_FADV_NORMAL)


def vmboot_rand(runner, path: str, size: int, depth: int, seconds: float) -> Result:
    return _vmboot(runner, path, RAND_BLOCK, depth, lambda: random_until(size, seconds), os.POSIX_FADV_RANDOM)


def _vmboot(runner, path: str, block: int, depth: int, offsets: Callable[[], Iterator[int]], advice: int) -> Result:
    fd = open_disk(DiskSpec(path, readonly=True))
    guest = None
    try:
        os.posix_fadvise(fd, 0, 0, advice)  # on the open file, so the device's reads follow it
        guest = Guest(runner, fd, depth, block)
        guest.read(iter([0]))  # the device is up and reads the right bytes
        if guest.data(0) != os.pread(fd, block, 0):
            raise BenchError("the device read different bytes from the file")
        start = time.perf_counter()
        requests = guest.read(offsets())
        return Result(requests, time.perf_counter() - start, block)
    finally:
        if guest is not None:
            guest.close()
        os.close(fd)


def host_seq(path: str, size: int) -> Result:
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", f"bs={SEQ_BLOCK}"], check=True, capture_output=True)
    return Result(size // SEQ_BLOCK, time.perf_counter() - start, SEQ_BLOCK, "dd")


def host_rand(path: str, size: int, seconds: float) -> Result:
    if shutil.which("fio"):
        out = subprocess.run(
            ["fio", "--name=randread", f"--filename={path}", "--rw=randread", f"--bs={RAND_BLOCK}",
             "--ioengine=psync", "--direct=0", "--invalidate=0", "--fadvise_hint=1", "--time_based",
             f"--runtime={seconds}", f"--size={size}", "--output-format=json"],
            check=True, capture_output=True, text=True).stdout
        job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
        runtime = job["runtime"] / 1000
        return Result(job["total_ios"], runtime, RAND_BLOCK, "fio")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        count = 0
        start = time.perf_counter()
        for offset in random_until(size, seconds, seed=2):
            os.pread(fd, RAND_BLOCK, offset)
            count += 1
        return Result(count, time.perf_counter() - start, RAND_BLOCK, "pread")
    finally:
        os.close(fd)


# -- the run --------------------------------------------------------------------------------------------------


def make_file(directory: str, size: int) -> str:
    fd, path = tempfile.mkstemp(prefix="vmboot-bench-", suffix=".img", dir=directory)
    try:
        chunk = os.urandom(MIB)  # incompressible, and no holes: every block is really on disk
        for _ in range(size // MIB):
            os.write(fd, chunk)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def can_drop_caches() -> bool:
    return os.access(DROP_CACHES, os.W_OK)


def drop_caches() -> None:
    os.sync()
    with open(DROP_CACHES, "w") as f:
        f.write("3\n")


def warm(path: str) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


def best(runs: Callable[[], Result], prepare: Callable[[], None]) -> Result:
    results = []
    for _ in range(SEQ_RUNS):
        prepare()
        results.append(runs())
    return max(results, key=lambda r: r.mb_per_s)


def measure(args, path: str, size: int, cold: bool) -> list[tuple[str, Result, Result]]:
    runner = RUNNERS[args.runner]
    prepare = drop_caches if cold else (lambda: warm(path))
    warm(path)  # and any cache below this machine with it
    rows = []
    host = best(lambda: host_seq(path, size), prepare)
    mine = best(lambda: vmboot_seq(runner, path, size, args.depth), prepare)
    rows.append(("sequential 1 MiB", mine, host))
    prepare()
    host = host_rand(path, size, args.seconds)
    prepare()
    mine = vmboot_rand(runner, path, size, args.depth, args.seconds)
    rows.append(("random 4 KiB", mine, host))
    return rows


def report(rows: list[tuple[str, str, Result, Result]]) -> str:
    lines = [f"{'read':<18}{'cache':<7}{'vmboot MB/s':>12}{'IOPS':>10}   {'host MB/s':>10}{'IOPS':>10}"
             f"{'tool':>7}   {'vmboot/host':>11}"]
    for name, cache, mine, host in rows:
        lines.append(f"{name:<18}{cache:<7}{mine.mb_per_s:>12.0f}{mine.iops:>10.0f}   {host.mb_per_s:>10.0f}"
                     f"{host.iops:>10.0f}{host.tool:>7}   {mine.mb_per_s / host.mb_per_s:>11.0%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="size of the test file (default 256)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each random-read run (default 3)")
    parser.add_argument("--depth", type=int, default=8, help="requests in flight in the guest (default 8)")
    parser.add_argument("--runner", choices=sorted(RUNNERS), default="sandboxed", help="who serves the queue")
    parser.add_argument("--dir", default=os.environ.get("TMPDIR", "/tmp"), help="where the test file goes")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.depth < 1 or args.depth * 3 > QUEUE_SIZE or args.seconds <= 0:
        parser.error(f"need --size-mib >= 1, --seconds > 0 and 1 <= --depth <= {QUEUE_SIZE // 3}")
    size = args.size_mib * MIB
    path = None
    try:
        path = make_file(args.dir, size)
        print(f"disk bench: {args.size_mib} MiB file in {args.dir}, runner {args.runner}, "
              f"{args.depth} requests in flight, buffered I/O", flush=True)
        rows = []
        if can_drop_caches():
            rows += [(name, "cold", mine, host) for name, mine, host in measure(args, path, size, cold=True)]
        else:
            print("cold-cache runs skipped: dropping the page cache needs root", flush=True)
        rows += [(name, "warm", mine, host) for name, mine, host in measure(args, path, size, cold=False)]
        print(report(rows))
        seq = [mine.mb_per_s / host.mb_per_s for name, _, mine, host in rows if name.startswith("sequential")]
        print(f"target: vmboot >= 50% of the host for sequential 1 MiB reads: "
              f"{'met' if min(seq) >= 0.5 else 'NOT met'} (lowest {min(seq):.0%})")
        return 0
    except (BenchError, VmbootError, OSError, subprocess.CalledProcessError) as err:
        print(f"disk bench: {err}", file=sys.stderr)
        return 1
    finally:
        if path is not None:
            os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
