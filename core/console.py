"""The serial console on the host side: the terminal, a file, or nothing.

In ``tty`` mode the guest's COM1 output goes to stdout and stdin goes to COM1.
When stdin is a terminal it is put in raw mode (restored on every exit path) so
that keys such as Ctrl-C reach the guest; ``Ctrl-a x`` quits, ``Ctrl-a Ctrl-a``
sends a literal Ctrl-a, as in QEMU.
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

CTRL_A = 0x01
ESCAPE_HELP = b"\r\nC-a x    quit vmboot\r\nC-a C-a  send C-a\r\nC-a h    this help\r\n"

log = logging.getLogger("vmboot.console")


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
    def __init__(self, mode: str, path: Path | None = None, on_quit: Callable[[], None] = lambda: None):
        self.mode = mode
        self.on_quit = on_quit
        self._out_fd: int | None = None
        self._raw: RawTerminal | None = None
        self._deliver: Callable[[bytes], int] | None = None
        self._reader: threading.Thread | None = None
        self._watchers: list[Callable[[bytes], None]] = []
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
        if self._out_fd is not None:
            try:
                os.write(self._out_fd, data)
            except (BrokenPipeError, BlockingIOError):
                pass

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
                        if self._out_fd is not None:
                            os.write(self._out_fd, ESCAPE_HELP)
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
        if self._raw:
            self._raw.restore()
            self._raw = None
        if self.mode == "file" and self._out_fd is not None:
            os.close(self._out_fd)
            self._out_fd = None


class CrLfHandler(logging.StreamHandler):
    """A stderr log handler that stays readable while the terminal is raw."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text.replace("\n", "\r\n") + "\r" if RawTerminal.active else text
