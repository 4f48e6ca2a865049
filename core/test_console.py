"""The host side of the serial console: what reaches the file or terminal, and when."""
from __future__ import annotations

import os
import threading
import time

import pytest

from vmboot.abi.errors import VmbootError
from vmboot.core.console import SerialConsole
from vmboot.devices.served import OUTPUT_BATCH
from vmboot.ipc.batch import Flusher


@pytest.fixture
def log_path(tmp_path):
    return tmp_path / "serial.log"


def held(log_path):
    """A console whose flusher never comes in time: what is written is what write() let go."""
    return SerialConsole("file", log_path, flusher=Flusher(delay=3600))


def test_a_line_is_written_whole_at_its_newline(log_path):
    console = held(log_path)
    for byte in b"BdsDxe: loading":
        console.write(bytes([byte]))  # as the UART gives it: a byte at a time
    assert log_path.read_bytes() == b""
    console.write(b"\r\n")
    assert log_path.read_bytes() == b"BdsDxe: loading\r\n"
    console.close()


def test_a_partial_line_goes_after_a_short_wait(log_path):
    console = SerialConsole("file", log_path)  # the real flusher, PARTIAL_LINE_DELAY after the first byte
    console.write(b"Shell> ")
    deadline = time.monotonic() + 5
    while log_path.read_bytes() != b"Shell> " and time.monotonic() < deadline:
        time.sleep(0.001)
    assert log_path.read_bytes() == b"Shell> "
    console.close()


def test_a_full_batch_goes_without_a_newline(log_path):
    console = held(log_path)
    console.write(b"x" * (OUTPUT_BATCH - 1))
    assert log_path.stat().st_size == 0
    console.write(b"y")
    assert log_path.read_bytes() == b"x" * (OUTPUT_BATCH - 1) + b"y"
    console.close()


def test_close_writes_what_waits(log_path):
    console = held(log_path)
    console.write(b"Press ESC in 5 seconds")
    console.close()
    assert log_path.read_bytes() == b"Press ESC in 5 seconds"
    console.write(b"after close")  # a vCPU that still runs: nothing raised, nothing written
    console.flush_held()
    assert log_path.read_bytes() == b"Press ESC in 5 seconds"


def test_watchers_see_every_byte_at_once(log_path):
    console = held(log_path)
    seen = bytearray()
    console.watch(seen.extend)
    console.write(b"S")
    console.write(b"hell")
    assert seen == b"Shell" and log_path.read_bytes() == b""
    console.close()


def test_writers_on_several_threads_keep_each_write_whole_and_in_order(log_path):
    console = SerialConsole("file", log_path)  # the flusher's thread writes too
    lines = {n: [f"cpu{n} line {i}\n".encode() for i in range(300)] for n in range(4)}

    def writer(n):
        for line in lines[n]:
            console.write(line)
            console.write(b"")  # nothing to write: it waits for the flusher, as a partial line does

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    console.close()
    written = log_path.read_bytes().splitlines(keepends=True)
    assert len(written) == 4 * 300
    for n in range(4):
        assert [line for line in written if line.startswith(f"cpu{n} ".encode())] == lines[n]


def test_off_writes_nothing_and_file_errors_are_one_line(tmp_path):
    console = SerialConsole("off")
    console.write(b"nobody reads this\n")
    console.close()
    with pytest.raises(VmbootError, match=r"--serial file=.*/missing/serial.log: No such file or directory"):
        SerialConsole("file", tmp_path / "missing" / "serial.log")


def test_a_reader_that_went_away_does_not_stop_the_guest(tmp_path):
    r, w = os.pipe()
    os.close(r)
    console = SerialConsole("off")
    console._out_fd = w  # a terminal or pipe whose reader has gone (tty mode, stdout closed)
    console.write(b"line\n")  # EPIPE: dropped, as a UART with no cable drops it
    console.close()
    os.close(w)
