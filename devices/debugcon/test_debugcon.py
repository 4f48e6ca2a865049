"""The debug console (port 0x402) and the POST code port (0x80)."""
from __future__ import annotations

from vmboot.devices.debugcon.debugcon import DEBUGCON_READBACK, DebugCon, PostCodes


def test_debugcon_reads_0xe9_so_edk2_detects_it():
    # EDK2's PlatformDebugLibIoPort compares an IN from the port with 0xE9.
    assert DEBUGCON_READBACK == 0xE9
    con = DebugCon(lambda data: None)
    assert con.read(0, 1) == b"\xe9"
    assert con.read(0, 2) == b"\xe9\xe9"


def test_debugcon_passes_every_write_to_the_sink_unchanged():
    out: list[bytes] = []
    con = DebugCon(out.append)
    con.write(0, b"P")
    con.write(0, b"EI\n")  # a REP OUTSB arrives as one write
    assert out == [b"P", b"EI\n"]


def test_debugcon_reads_have_no_side_effect_on_the_sink():
    out: list[bytes] = []
    con = DebugCon(out.append)
    con.read(0, 1)
    assert out == []


def test_post_codes_start_at_zero():
    post = PostCodes()
    assert post.last == 0
    assert post.read(0, 1) == b"\x00"


def test_post_codes_keep_the_last_code_and_read_it_back():
    post = PostCodes()
    post.write(0, b"\x10")
    post.write(0, b"\x2a")
    assert post.last == 0x2A
    assert post.read(0, 1) == b"\x2a"
    assert post.read(0, 2) == b"\x2a\x2a"


def test_post_codes_report_each_code_in_order():
    seen: list[int] = []
    post = PostCodes(on_code=seen.append)
    post.write(0, b"\x01")
    post.write(0, b"\x02\x03")
    assert seen == [1, 2, 3]
    assert post.last == 3
