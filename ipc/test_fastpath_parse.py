"""Fast-register declarations and mirror copies a device sends (ipc/fastpath.py), parsed.

Checked against the module's own definition of parse_fast_registers and
parse_copies. A declaration and the copies a reply carries come from the device,
so every malformed or out-of-range one must be a ProtocolError with the module's
sentence, never another exception; one bad entry refuses the whole. Good ones
come back as the Counters, Mirrors and Copies they describe, through msgpack as
the core gets them. (What the registers read: test_fastpath.py.)
"""
from __future__ import annotations

import math

import pytest

from vmboot.ipc.fastpath import (
    MAX_COUNTER_FREQUENCY, MAX_FAST_REGISTERS, Copy, Counter, Mirror, byte_copy, parse_copies, parse_fast_registers,
)
from vmboot.ipc.protocol import Msg, ProtocolError, decode, encode
from vmboot.tests.fastpath_rig import LSR, PM

MALFORMED = "malformed fast register declaration"
OUT_OF_RANGE = "fast register declaration out of range"
BAD_COPY = "malformed mirror copy"


def counter_item(**overrides) -> dict:
    return {**PM.describe(), **overrides}


def mirror_item(**overrides) -> dict:
    return {**LSR.describe(), **overrides}


def refused(items) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_fast_registers(items)
    return str(info.value)


def refused_copies(mirrors, items) -> str:
    with pytest.raises(ProtocolError) as info:
        parse_copies(mirrors, items)
    return str(info.value)


# -- parse_fast_registers: what it accepts -------------------------------------------------------


def test_empty_declaration():
    assert parse_fast_registers([]) == ([], [])


def test_counters_and_mirrors_come_back_apart_in_order():
    second = Counter(3, 0, 8, 10**9, 0.5, 64)
    other = Mirror(255, 0xFFFF_FFFF, 8)
    counters, mirrors = parse_fast_registers(
        [mirror_item(), PM.describe(), other.describe(), second.describe()])
    assert counters == [PM, second]
    assert mirrors == [LSR, other]
    assert type(counters) is list and type(mirrors) is list


def test_describe_then_parse_is_the_identity():
    assert parse_fast_registers([PM.describe(), LSR.describe()]) == ([PM], [LSR])


def test_declaration_through_the_wire():
    # As the core gets it: inside the device's HELLO info, through msgpack.
    msg = decode(encode(Msg.HELLO, 1, {"fast": [PM.describe(), LSR.describe()]}))
    assert parse_fast_registers(msg[2]["fast"]) == ([PM], [LSR])


def test_epoch_comes_back_a_float():
    (c,), _ = parse_fast_registers([counter_item(epoch=12)])
    assert c.epoch == 12.0 and type(c.epoch) is float


def test_exactly_max_registers():
    items = [mirror_item(offset=i) for i in range(MAX_FAST_REGISTERS)]
    counters, mirrors = parse_fast_registers(items)
    assert counters == [] and [m.offset for m in mirrors] == list(range(16))


@pytest.mark.parametrize("item", [
    counter_item(size=1, width=8),
    counter_item(size=2, width=16),
    counter_item(size=8, width=64),
    counter_item(width=1),
    counter_item(frequency=1),
    counter_item(frequency=MAX_COUNTER_FREQUENCY),
    counter_item(window=255),
    counter_item(offset=0),
    counter_item(epoch=-5.0),
    mirror_item(size=2),
    mirror_item(size=4),
    mirror_item(size=8),
    mirror_item(window=0, offset=0),
    mirror_item(window=255),
])
def test_in_range(item):
    counters, mirrors = parse_fast_registers([item])
    assert len(counters) + len(mirrors) == 1
    parsed = (counters + mirrors)[0]
    expected = {**item, "epoch": float(item["epoch"])} if item["kind"] == "counter" else item
    assert parsed.describe() == expected


def test_extra_keys_are_refused():  # a declaration says exactly what it means, or nothing
    assert refused([mirror_item(note="LSR")]) == MALFORMED


# -- parse_fast_registers: what it refuses -------------------------------------------------------


@pytest.mark.parametrize("items", [
    None, {}, {"kind": "mirror"}, (mirror_item(),), "mirror", 3, b"", [mirror_item()] * 17,
], ids=["none", "dict", "item-dict", "tuple", "str", "int", "bytes", "17-entries"])
def test_not_a_list_of_at_most_sixteen(items):
    assert refused(items) == "fast registers must be a list of at most 16 entries"


def _without(item: dict, key: str) -> dict:
    return {k: v for k, v in item.items() if k != key}


@pytest.mark.parametrize("item", [
    None, 3, "mirror", b"counter", ["mirror", 1, 5, 1], [],
    {},
    _without(counter_item(), "kind"),
    *[_without(counter_item(), k) for k in ("window", "offset", "size", "frequency", "epoch", "width")],
    *[_without(mirror_item(), k) for k in ("window", "offset", "size")],
    counter_item(window=None),
    counter_item(frequency="fast"),
    counter_item(epoch="now"),
    counter_item(epoch=None),
    counter_item(width=[24]),
    counter_item(size={}),
    mirror_item(offset="0x10"),
    mirror_item(window=b"\x01"),
    mirror_item(size=float("nan")),
])
def test_malformed(item):
    assert refused([item]) == MALFORMED


@pytest.mark.parametrize("kind", ["timer", "Counter", "", None, 1, b"mirror"])
def test_unknown_kind(kind):
    assert refused([{"kind": kind, "window": 0, "offset": 0, "size": 1}]) == f"unknown fast register kind {kind!r}"


@pytest.mark.parametrize("item", [
    counter_item(frequency=0),
    counter_item(frequency=-1),
    counter_item(frequency=MAX_COUNTER_FREQUENCY + 1),
    counter_item(width=0),
    counter_item(width=-8),
    counter_item(width=33),  # wider than its 4 bytes
    counter_item(size=1, width=9),
    counter_item(size=3, width=24),
    counter_item(size=0, width=1),
    counter_item(size=16, width=64),
    counter_item(size=-4),
    counter_item(offset=-1),
    counter_item(window=-1),
    counter_item(window=256),
    mirror_item(size=0),
    mirror_item(size=3),
    mirror_item(size=16),
    mirror_item(offset=-1),
    mirror_item(window=-1),
    mirror_item(window=256),
])
def test_out_of_range(item):
    assert refused([item]) == OUT_OF_RANGE


def test_one_bad_entry_refuses_the_whole_declaration():
    assert refused([PM.describe(), LSR.describe(), mirror_item(size=3)]) == OUT_OF_RANGE


@pytest.mark.parametrize("item", [
    mirror_item(window=math.inf),
    mirror_item(offset=-math.inf),
    mirror_item(size=math.inf),
    counter_item(frequency=math.inf),
    counter_item(width=math.inf),
], ids=["mirror-window", "mirror-offset", "mirror-size", "counter-frequency", "counter-width"])
def test_infinite_numbers_are_a_protocol_error(item):
    # msgpack carries float64 infinities; int(inf) raises OverflowError, which is not a ValueError.
    assert refused([item]) == MALFORMED


@pytest.mark.parametrize("epoch", [math.nan, math.inf, -math.inf])
def test_counter_epoch_must_be_finite(epoch):
    # Accepted, such a counter fails later, on the guest's read: int(nan) or int(inf) raises in Counter.read.
    with pytest.raises(ProtocolError):
        parse_fast_registers([counter_item(epoch=epoch)])


# -- parse_copies ----------------------------------------------------------------------------------

MIRRORS = [LSR, Mirror(1, 6, 2)]


def test_copies():
    assert parse_copies(MIRRORS, [[b"\x60", [0, 2, 4]], [b"\xb0\x00", []]]) == [
        Copy(b"\x60", frozenset({0, 2, 4})), Copy(b"\xb0\x00", frozenset()),
    ]


def test_none_means_read_it_from_the_device():
    assert parse_copies(MIRRORS, [None, None]) == [None, None]
    assert parse_copies(MIRRORS, [None, [b"\x01\x02", [6]]]) == [None, Copy(b"\x01\x02", frozenset({6}))]


def test_no_mirrors_no_copies():
    assert parse_copies([], []) == []


def test_duplicate_offsets_collapse():
    (copy,) = parse_copies([LSR], [[b"\x60", [2, 2, 4, 2]]])
    assert copy.invalidated_by == frozenset({2, 4})
    assert copy.ended_by(2, 1) and copy.ended_by(4, 1) and not copy.ended_by(3, 1)


def test_offset_limits_accepted():
    (copy,) = parse_copies([LSR], [[b"\x60", [0, (1 << 32) - 1] + list(range(1, 255))]])
    assert len(copy.invalidated_by) == 256
    assert copy.ended_by((1 << 32) - 1, 1)


def test_copies_through_the_wire():
    msg = decode(encode(Msg.REPLY, 7, b"\x00", [[b"\x60", [0, 2]], None]))
    assert parse_copies(MIRRORS, msg[3]) == [Copy(b"\x60", frozenset({0, 2})), None]


@pytest.mark.parametrize("items", [
    None, [], [None], [None, None, None], (None, None), {0: None, 1: None}, "ab", b"ab",
], ids=["none", "empty", "one", "three", "tuple", "dict", "str", "bytes"])
def test_wrong_number_of_copies(items):
    assert refused_copies(MIRRORS, items) == "a reply must carry 2 mirror copies"


def test_wrong_number_of_copies_with_no_mirrors():
    assert refused_copies([], [None]) == "a reply must carry 0 mirror copies"
    assert refused_copies([], None) == "a reply must carry 0 mirror copies"


@pytest.mark.parametrize("item", [
    pytest.param((b"\x60", [0]), id="tuple"),
    pytest.param({"data": b"\x60", "ends": [0]}, id="dict"),
    pytest.param(b"\x60", id="bare-bytes"),
    pytest.param(0x60, id="int"),
    pytest.param([b"\x60"], id="one-element"),
    pytest.param([b"\x60", [0], None], id="three-elements"),
    pytest.param([], id="empty"),
    pytest.param(["\x60", [0]], id="data-str"),
    pytest.param([bytearray(b"\x60"), [0]], id="data-bytearray"),
    pytest.param([[0x60], [0]], id="data-list"),
    pytest.param([None, [0]], id="data-none"),
    pytest.param([b"", [0]], id="data-short"),
    pytest.param([b"\x60\x00", [0]], id="data-long"),
    pytest.param([b"\x60", None], id="offsets-none"),
    pytest.param([b"\x60", (0, 2)], id="offsets-tuple"),
    pytest.param([b"\x60", 2], id="offsets-int"),
    pytest.param([b"\x60", {2}], id="offsets-set"),
    pytest.param([b"\x60", list(range(257))], id="offsets-257"),
    pytest.param([b"\x60", [-1]], id="offset-negative"),
    pytest.param([b"\x60", [1 << 32]], id="offset-33-bits"),
    pytest.param([b"\x60", [True]], id="offset-bool"),
    pytest.param([b"\x60", [2.0]], id="offset-float"),
    pytest.param([b"\x60", ["2"]], id="offset-str"),
    pytest.param([b"\x60", [None]], id="offset-none"),
    pytest.param([b"\x60", [0, 2, -4]], id="one-offset-bad"),
])
def test_malformed_copy(item):
    assert refused_copies([LSR], [item]) == BAD_COPY


def test_one_malformed_copy_refuses_the_reply():
    # No partial result: the good first copy is not returned either.
    assert refused_copies(MIRRORS, [[b"\x60", [0]], [b"\x00", []]]) == BAD_COPY


def test_copy_size_is_the_mirror_of_its_position():
    # Sizes are checked against the mirror in the same position, not any mirror.
    assert refused_copies(MIRRORS, [[b"\x00\x00", []], [b"\x00", []]]) == BAD_COPY


def test_a_one_byte_copy_is_encoded_as_parse_copies_reads_it():
    mirrors = [Mirror(0, 5, 1), Mirror(0, 1, 1)]
    assert parse_copies(mirrors, [byte_copy(0x60, (2, 4)), byte_copy(None, ())]) == [
        Copy(b"\x60", frozenset({2, 4})), None]
