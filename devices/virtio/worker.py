"""Serve a virtio device's queues: wait for kicks, process, signal calls.

This loop is the whole data path of a virtio device, vhost-user style: it
reads the rings in guest memory itself, is woken by a kick eventfd per queue
and interrupts the guest by writing a call eventfd per queue. The same loop
runs in a thread of the core (--devices inproc) or in the device's sandboxed
process.
"""
from __future__ import annotations

import logging
import os
import select
import threading
from typing import Callable, Protocol

from vmboot.abi.virtio import VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC

from .queue import QueueBroken, SplitQueue

log = logging.getLogger("vmboot.virtio")


class QueueDevice(Protocol):
    name: str

    def process(self, queue: SplitQueue, index: int) -> bool:
        """Serve every available request on ``queue``; return whether to interrupt."""


class QueueWorker:
    def __init__(self, device: QueueDevice, memory, kick_fds: list[int], call_fds: list[int],
                 on_dma_write: Callable[[int, int], None] | None = None):
        self.device = device
        self.memory = memory
        self.kick_fds = kick_fds
        self.call_fds = call_fds
        self.on_dma_write = on_dma_write
        self.queues: dict[int, SplitQueue] = {}
        self.lock = threading.Lock()
        self.control_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.running = True
        self.broken: set[int] = set()

    # -- control (from the transport) -------------------------------------------------------
    def activate(self, features: int, queues) -> None:
        indirect = bool(features >> VIRTIO_RING_F_INDIRECT_DESC & 1)
        event_idx = bool(features >> VIRTIO_RING_F_EVENT_IDX & 1)
        built = {}
        for q in queues:
            try:
                built[q.index] = SplitQueue(self.memory, q.size, q.desc, q.driver, q.device, indirect, event_idx)
                built[q.index].record_dma = self.on_dma_write is not None
            except QueueBroken as err:
                log.warning("%s: queue %d cannot be used: %s", self.device.name, q.index, err)
        with self.lock:
            self.queues = built
            self.broken.clear()
        os.eventfd_write(self.control_fd, 1)

    def reset(self) -> None:
        with self.lock:
            self.queues = {}
        os.eventfd_write(self.control_fd, 1)

    def stop(self) -> None:
        self.running = False
        os.eventfd_write(self.control_fd, 1)

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> None:
        poller = select.poll()
        poller.register(self.control_fd, select.POLLIN)
        for fd in self.kick_fds:
            poller.register(fd, select.POLLIN)
        index_of = {fd: i for i, fd in enumerate(self.kick_fds)}
        while self.running:
            for fd, _ in poller.poll():
                if fd == self.control_fd:
                    _drain(fd)
                    continue
                _drain(fd)
                self.serve(index_of[fd])

    def serve(self, index: int) -> None:
        with self.lock:
            queue = self.queues.get(index)
        if queue is None or index in self.broken:
            return
        try:
            interrupt = self.device.process(queue, index)
        except QueueBroken as err:
            self.broken.add(index)
            log.warning("%s: queue %d stopped: %s", self.device.name, index, err)
            return
        if self.on_dma_write is not None:
            for gpa, length in queue.take_dma_writes():
                self.on_dma_write(gpa, length)
        if interrupt:
            os.eventfd_write(self.call_fds[index], 1)

    def close(self) -> None:
        with self.lock:
            self.queues = {}  # drop every view of guest memory
        os.close(self.control_fd)


def _drain(fd: int) -> None:
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


def new_eventfds(count: int) -> list[int]:
    return [os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(count)]
