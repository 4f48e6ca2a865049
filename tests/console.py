"""Drive vmboot-core's serial console like a person at a terminal: wait for text, type keys."""
from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

ANSI = re.compile(rb"\x1b\[[0-9;=?]*[A-Za-z]")
VMBOOT_CORE = [sys.executable, "-m", "vmboot.core.cli"]


def plain(data: bytes) -> str:
    """Console bytes without ANSI escape sequences or carriage returns."""
    return ANSI.sub(b"", data).replace(b"\r", b"").decode(errors="replace")


class ConsoleTimeout(AssertionError):
    pass


class Console:
    """vmboot-core with --serial tty, its stdin and stdout on pipes."""

    def __init__(self, *args: str, stderr=subprocess.PIPE, command: list[str] = VMBOOT_CORE):
        self.started = time.monotonic()
        self.proc = subprocess.Popen([*command, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr)
        self.buffer = b""
        self.transcript = b""

    def expect(self, pattern: bytes, timeout: float = 30.0) -> bytes:
        """Wait for ``pattern``; return everything up to and including it."""
        deadline = time.monotonic() + timeout
        while pattern not in self.buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
            if not ready:
                raise ConsoleTimeout(f"no {pattern!r} on the console after {timeout} s; it last showed:\n"
                                     f"{plain(self.buffer[-600:])}")
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                raise ConsoleTimeout(f"the console closed before {pattern!r}; it last showed:\n"
                                     f"{plain(self.buffer[-600:])}")
            self.buffer += chunk
            self.transcript += chunk
        end = self.buffer.index(pattern) + len(pattern)
        seen, self.buffer = self.buffer[:end], self.buffer[end:]
        return seen

    def type(self, text: str) -> None:
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def command(self, line: str, prompt: bytes = b"Shell> ", timeout: float = 30.0) -> str:
        """Type a shell command and Enter; return its output (without the echo and the next prompt)."""
        self.type(line + "\r")
        out = plain(self.expect(prompt, timeout))
        out = out[: -len(plain(prompt))]
        return out.split("\n", 1)[1] if "\n" in out else ""

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
