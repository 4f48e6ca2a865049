"""The virtio block device (VIRTIO 1.2 §5.2), transport-blind.

It owns an open disk file descriptor and serves requests from one virtqueue.
Data moves between the disk and guest memory with preadv/pwritev on views of
guest RAM: no copy in between. A request that is malformed, out of range, or
fails on the host gets VIRTIO_BLK_S_IOERR (or S_UNSUPP); the device never stops
for a guest's mistake. FLUSH is fdatasync, so nothing acknowledged is lost.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import struct

from vmboot.abi.linux import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from vmboot.abi.virtio import (
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
    VIRTIO_BLK_SECTOR_SIZE, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES, VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP, VIRTIO_F_VERSION_1,
    VIRTIO_ID_BLOCK, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
)
from vmboot.devices.virtio.queue import Chain, SplitQueue

log = logging.getLogger("vmboot.virtio_blk")

REQUEST_HEADER = struct.Struct("<IIQ")  # type, reserved, sector
DISCARD_SEGMENT = struct.Struct("<QII")  # sector, num_sectors, flags
QUEUE_SIZE = 256
IOV_MAX = os.sysconf("SC_IOV_MAX")
MAX_DISCARD_SECTORS = 1 << 22  # 2 GiB per segment
MAX_DISCARD_SEGMENTS = 32

# struct virtio_blk_config (§5.2.4), the fields this device fills in.
CONFIG = struct.Struct("<QII HBB I BBHI BB H IIIIIB3x")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def disk_size(fd: int) -> int:
    """Size in bytes of a regular file or a block device."""
    return os.lseek(fd, 0, os.SEEK_END)


def supports_hole_punching(fd: int) -> bool:
    try:
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, disk_size(fd) + (1 << 20), 4096)
    except OSError:
        return False
    return True


class BlkError(Exception):
    """A request fails with IOERR; the message says why (for the log)."""


class BlkUnsupported(BlkError):
    """A request this device does not support: it fails with UNSUPP."""


class VirtioBlk:
    device_type = VIRTIO_ID_BLOCK
    num_queues = 1
    queue_max_size = QUEUE_SIZE

    def __init__(self, fd: int, readonly: bool = False, serial: str = "", name: str = "virtio-blk"):
        self.fd = fd
        self.readonly = readonly
        self.name = name
        self.size = disk_size(fd)
        self.capacity = self.size // VIRTIO_BLK_SECTOR_SIZE
        self.serial = serial.encode()[:VIRTIO_BLK_ID_BYTES]
        self.can_discard = not readonly and supports_hole_punching(fd)
        self.features = ((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_INDIRECT_DESC)
                         | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_BLK_F_SEG_MAX)
                         | (1 << VIRTIO_BLK_F_BLK_SIZE) | (1 << VIRTIO_BLK_F_FLUSH))
        if readonly:
            self.features |= 1 << VIRTIO_BLK_F_RO
        if self.can_discard:
            self.features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES)
        self.config = CONFIG.pack(
            self.capacity, 0, QUEUE_SIZE - 2,  # capacity, size_max (unused), seg_max
            0, 0, 0,  # geometry
            VIRTIO_BLK_SECTOR_SIZE,  # blk_size
            0, 0, 0, 0,  # topology
            0, 0,  # writeback, unused
            1,  # num_queues
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, 1,  # discard limits, alignment in sectors
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS, 1,  # write zeroes limits, may unmap
        )
        self.stats = {"requests": 0, "errors": 0, "bytes_read": 0, "bytes_written": 0}
        self._reported: set[str] = set()

    # -- configuration space ---------------------------------------------------------------
    def config_read(self, offset: int, size: int) -> bytes:
        return self.config[offset : offset + size].ljust(size, b"\0")

    def config_write(self, offset: int, data: bytes) -> None:
        pass  # nothing in virtio_blk_config is writable without CONFIG_WCE

    # -- requests ------------------------------------------------------------------------------
    def process(self, queue: SplitQueue, index: int = 0) -> bool:
        """Serve every available request; returns whether the driver wants an interrupt."""
        while True:
            chain = queue.pop()
            if chain is None:
                break
            queue.push(chain.head, self.handle(chain))
        return queue.needs_interrupt()

    def handle(self, chain: Chain) -> int:
        """Serve one request; returns how many bytes were written into its buffers."""
        self.stats["requests"] += 1
        if chain.error:
            self._fail(f"malformed descriptor chain: {chain.error}")
            return 0
        if not chain.writable or not len(chain.writable[-1]):
            self._fail("request without a status byte")
            return 0
        status_view = chain.writable[-1][-1:]
        data_in = chain.writable[:-1] + ([chain.writable[-1][:-1]] if len(chain.writable[-1]) > 1 else [])
        header = b"".join(bytes(v[:REQUEST_HEADER.size]) for v in chain.readable)[:REQUEST_HEADER.size]
        if len(header) < REQUEST_HEADER.size:
            status_view[0] = VIRTIO_BLK_S_IOERR
            self._fail("request header shorter than 16 bytes")
            return 1
        kind, _, sector = REQUEST_HEADER.unpack(header)
        payload = _skip(chain.readable, REQUEST_HEADER.size)
        written = 0
        try:
            if kind == VIRTIO_BLK_T_IN:
                written = self._read(sector, data_in)
            elif kind == VIRTIO_BLK_T_OUT:
                self._write(sector, payload)
            elif kind == VIRTIO_BLK_T_FLUSH:
                if not self.readonly:
                    os.fdatasync(self.fd)
            elif kind == VIRTIO_BLK_T_GET_ID:
                written = self._get_id(data_in)
            elif kind in (VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES):
                self._discard(kind, payload)
            else:
                status_view[0] = VIRTIO_BLK_S_UNSUPP
                return written + 1
            status_view[0] = VIRTIO_BLK_S_OK
        except BlkUnsupported as err:
            status_view[0] = VIRTIO_BLK_S_UNSUPP
            self._fail(str(err))
        except (BlkError, OSError) as err:
            status_view[0] = VIRTIO_BLK_S_IOERR
            self._fail(str(err))
        return written + 1

    def _check_range(self, sector: int, length: int) -> int:
        if length % VIRTIO_BLK_SECTOR_SIZE:
            raise BlkError(f"transfer of {length} bytes is not a whole number of sectors")
        if sector + length // VIRTIO_BLK_SECTOR_SIZE > self.capacity:
            raise BlkError(f"sectors {sector}+{length // VIRTIO_BLK_SECTOR_SIZE} are past the end "
                           f"({self.capacity} sectors)")
        return sector * VIRTIO_BLK_SECTOR_SIZE

    def _read(self, sector: int, buffers: list[memoryview]) -> int:
        length = sum(len(b) for b in buffers)
        offset = self._check_range(sector, length)
        done = 0
        while done < length:
            n = os.preadv(self.fd, _skip(buffers, done)[:IOV_MAX], offset + done)
            if n == 0:
                raise BlkError(f"short read at byte {offset + done}")
            done += n
        self.stats["bytes_read"] += length
        return length

    def _write(self, sector: int, buffers: list[memoryview]) -> None:
        if self.readonly:
            raise BlkError("write to a read-only disk")
        length = sum(len(b) for b in buffers)
        offset = self._check_range(sector, length)
        done = 0
        while done < length:
            done += os.pwritev(self.fd, _skip(buffers, done)[:IOV_MAX], offset + done)
        self.stats["bytes_written"] += length

    def _get_id(self, buffers: list[memoryview]) -> int:
        ident = self.serial.ljust(VIRTIO_BLK_ID_BYTES, b"\0")
        done = 0
        for buf in buffers:
            n = min(len(buf), len(ident) - done)
            buf[:n] = ident[done : done + n]
            done += n
        return done

    def _discard(self, kind: int, buffers: list[memoryview]) -> None:
        if self.readonly or not self.can_discard:
            raise BlkUnsupported("discard or write-zeroes not supported on this disk")
        size = sum(len(b) for b in buffers)  # bounded before anything is copied
        if not size or size % DISCARD_SEGMENT.size:
            raise BlkError(f"discard payload of {size} bytes is not a list of segments")
        if size // DISCARD_SEGMENT.size > MAX_DISCARD_SEGMENTS:
            raise BlkError(f"{size // DISCARD_SEGMENT.size} discard segments, the limit is {MAX_DISCARD_SEGMENTS}")
        payload = b"".join(bytes(b) for b in buffers)
        segments = [DISCARD_SEGMENT.unpack_from(payload, i) for i in range(0, size, DISCARD_SEGMENT.size)]
        ranges = []
        for sector, count, flags in segments:  # check every segment before touching the disk
            # §5.2.6.2: UNSUPP for an unknown flag, and for the unmap flag on a discard
            if flags & ~VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP or (kind == VIRTIO_BLK_T_DISCARD and flags):
                raise BlkUnsupported(f"discard or write-zeroes flags {flags:#x} not supported")
            if count > MAX_DISCARD_SECTORS:
                raise BlkError(f"discard of {count} sectors, the limit is {MAX_DISCARD_SECTORS}")
            ranges.append((self._check_range(sector, count * VIRTIO_BLK_SECTOR_SIZE), count * VIRTIO_BLK_SECTOR_SIZE,
                           flags))
        for offset, length, flags in ranges:
            if not length:  # nothing to do; fallocate(2) would fail with EINVAL
                continue
            if kind == VIRTIO_BLK_T_DISCARD or flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP:
                fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            else:
                try:
                    fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length)
                except OSError as err:
                    if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)

    def _fail(self, why: str) -> None:
        self.stats["errors"] += 1
        if why not in self._reported:
            self._reported.add(why)
            log.info("%s: request failed: %s", self.name, why)


def _skip(buffers: list[memoryview], skip: int) -> list[memoryview]:
    """The buffers after the first ``skip`` bytes."""
    out = []
    for buf in buffers:
        if skip >= len(buf):
            skip -= len(buf)
            continue
        out.append(buf[skip:])
        skip = 0
    return out
