"""The serial console on the host side: the terminal, a file, or nothing.

In ``tty`` mode the guest's COM1 output goes to stdout and stdin goes to COM1.
When stdin is a terminal it is put in raw mode (restored on every exit path) so
that keys such as Ctrl-C reach the guest; ``Ctrl-a x`` quits, ``Ctrl-a Ctrl-a``
sends a literal Ctrl-a, as in QEMU.

Output is written a line at a time, as a device process sends it: a guest
writes its UART a byte at a time, and a write(2) per byte to a pipe costs the
reader a wake-up per byte too. So bytes wait here: they go at the end of a
line or at OUTPUT_BATCH bytes, from the writer's thread, or PARTIAL_LINE_DELAY
after the first of them (a prompt, an echoed key) from one flusher thread.
That delay is longer than a device process's OUTPUT_DELAY (devices/served.py),
whose wait is its poll loop's timeout and costs nothing: here it costs a
thread's wake-up, and at 2 ms the flusher woke several times inside every line
the kernel printed (its console writes about 80 bytes in 25 ms in the nested
rig) and made the whole boot slower, not faster. Watchers see every byte at once.
"""
from __future__ import annotations

import logging
import os
import sys
import termios
import threading
import time
import tty
from pathlib import Path
from typing import Callable

from vmboot.abi.errors import VmbootError
from vmboot.devices.served import OUTPUT_BATCH
from vmboot.ipc.batch import Flusher

CTRL_A = 0x01
ESCAPE_HELP = b"\r\nC-a x    quit vmboot\r\nC-a C-a  send C-a\r\nC-a h    this help\r\n"

log = logging.getLogger("vmboot.console")

PARTIAL_LINE_DELAY = 0.02  # seconds; too short for a person to see, longer than a kernel's line
FLUSHER = Flusher(PARTIAL_LINE_DELAY)  # the partial lines of every console in the process


class RawTerminal:
    """Raw mode on a terminal fd for the lifetime of the object."""

    active = False  # read by the log handler: raw terminals need CR LF

    def __init__(self, fd: int):
        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        tty.setraw(fd, termios.TCSANOW)
        RawTerminal.active = True

    def restore(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSANOW, self._saved)
            self._saved = None
            RawTerminal.active = False


class SerialConsole:
    def __init__(self, mode: str, path: Path | None = None, on_quit: Callable[[], None] = lambda: None,
                 flusher: Flusher = FLUSHER):
        self.mode = mode
        self.flusher = flusher
        self.on_quit = on_quit
        self._out_fd: int | None = None
        self._raw: RawTerminal | None = None
        self._deliver: Callable[[bytes], int] | None = None
        self._reader: threading.Thread | None = None
        self._watchers: list[Callable[[bytes], None]] = []
        self._pending = bytearray()  # output not yet written (a partial line)
        self._lock = threading.Lock()  # vCPU threads and the flusher write; in order
        if mode == "tty":
            self._out_fd = sys.stdout.fileno()
        elif mode == "file":
            try:
                self._out_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise VmbootError(f"--serial file={path}: {err.strerror}") from None
        elif mode != "off":
            raise ValueError(mode)

    def watch(self, fn: Callable[[bytes], None]) -> None:
        """Also show every byte of guest output to ``fn`` (boot milestones, tests)."""
        self._watchers.append(fn)

    # -- guest to host -----------------------------------------------------------------
    def write(self, data: bytes) -> None:
        for fn in self._watchers:
            fn(data)
        if self._out_fd is None:
            return
        with self._lock:
            self._pending += data
            if b"\n" in data or len(self._pending) >= OUTPUT_BATCH:
                self._emit()
                return
        self.flusher.schedule(self)

    def flush_held(self) -> None:
        """Write what waits (the flusher's call, and close's)."""
        with self._lock:
            self._emit()

    def _emit(self) -> None:
        data, fd = bytes(self._pending), self._out_fd
        self._pending.clear()
        if not data or fd is None:
            return
        try:
            while data:
                data = data[os.write(fd, data):]
        except (BrokenPipeError, BlockingIOError):
            pass  # nobody reads, or will not soon: the guest does not wait for its console

    # -- host to guest -------------------------------------------------------------------
    def attach(self, deliver: Callable[[bytes], int]) -> None:
        """Send console input to ``deliver`` (which returns how many bytes it took)."""
        self._deliver = deliver
        if self.mode != "tty" or self._reader is not None:
            return
        stdin = sys.stdin.fileno() if sys.stdin else -1
        if stdin < 0:
            return
        if os.isatty(stdin):
            self._raw = RawTerminal(stdin)
        self._reader = threading.Thread(target=self._read_loop, args=(stdin,), name="console", daemon=True)
        self._reader.start()

    def _read_loop(self, fd: int) -> None:
        escape = False
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                return
            if not chunk:
                return  # end of input: the VM runs on
            out = bytearray()
            for byte in chunk:
                if escape:
                    escape = False
                    if byte in (ord("x"), ord("X")):
                        self._send(bytes(out))
                        self.on_quit()
                        return
                    if byte == CTRL_A or byte == ord("a"):
                        out.append(CTRL_A)
                    elif byte in (ord("h"), ord("?")):
                        with self._lock:  # after what the guest wrote; not for the watchers
                            self._pending += ESCAPE_HELP
                            self._emit()
                    continue
                if byte == CTRL_A:
                    escape = True
                    continue
                out.append(byte)
            self._send(bytes(out))

    def _send(self, data: bytes) -> None:
        while data:
            deliver = self._deliver
            taken = deliver(data) if deliver else 0
            data = data[taken:]
            if data:
                time.sleep(0.01)  # the guest has not drained its UART yet

    def close(self) -> None:
        self.flush_held()
        if self._raw:
            self._raw.restore()
            self._raw = None
        if self.mode == "file" and self._out_fd is not None:
            with self._lock:
                os.close(self._out_fd)
                self._out_fd = None


class CrLfHandler(logging.StreamHandler):
    """A stderr log handler that stays readable while the terminal is raw."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\n", "\r\n") + "\r" if RawTerminal.active else text
