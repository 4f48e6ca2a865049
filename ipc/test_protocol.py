"""The core <-> device message format (ipc/protocol.py) against its own schema.

What is checked against: the layout of every message written beside its type in
``Msg``, the per-field checks of ``SCHEMA`` (field widths: SEQ and OFFSET 32
bits, WINDOW 8, IRQ line 8, HELLO version 16, ACTIVATE features 64, EXITED pid
32, returncode -64..255), the limits in the module's constants, and the
msgpack specification for the exact bytes ``encode`` produces (fixarray 0x90|n,
positive fixint, nil 0xc0, fixstr 0xa0|n, bin8 0xc4, uint16 0xcd).

The promise under test is the module docstring's: every received message is
checked (size first, then type, then every field) and anything that fails
raises ProtocolError with a sentence; nothing else ever escapes ``decode``.
Each field's checks and the limits on the accepting side are in
test_protocol_fields.py.
"""
from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmboot.ipc.protocol import (
    MAX_BATCHED_BYTES, MAX_DATA_BYTES, MAX_FDS, MAX_MESSAGE_BYTES, MAX_WRITES, PROTOCOL_VERSION, SCHEMA, Msg,
    ProtocolError, decode, encode,
)
from vmboot.tests.wire import U32, U64, packed, rejected

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- constants and the message table ---------------------------------------------------------


def test_limits():
    assert PROTOCOL_VERSION == 3  # 2: the test message (15) is gone; 3: WRITES
    assert (MAX_WRITES, MAX_BATCHED_BYTES) == (1024, 8)
    # The largest batch fits in one message too.
    assert len(encode(Msg.WRITES, [[255, U32 - 1, b"\xff" * 8]] * MAX_WRITES)) <= MAX_MESSAGE_BYTES
    assert MAX_MESSAGE_BYTES == 128 * 1024
    assert MAX_DATA_BYTES == 64 * 1024
    assert MAX_FDS == 32
    # A full READ/WRITE/OUTPUT/INPUT payload must fit in one message with its header.
    assert len(encode(Msg.WRITE, 255, U32 - 1, b"\xff" * MAX_DATA_BYTES)) <= MAX_MESSAGE_BYTES


def test_message_numbers_are_the_wire_values():
    # These numbers are the wire format between processes: they must never move.
    assert {m.name: m.value for m in Msg} == {
        "HELLO": 1, "READ": 2, "WRITE": 3, "REPLY": 4, "ERROR": 5, "IRQ": 6, "RESET": 7, "SNAPSHOT": 8,
        "RESTORE": 9, "SHUTDOWN": 10, "OUTPUT": 11, "INPUT": 12, "ACTIVATE": 13, "DMA": 14,
        "SPAWN": 16, "EXITED": 17, "WRITES": 18,
    }


def test_every_message_has_a_schema():
    assert set(SCHEMA) == set(Msg)
    arity = {kind: len(fields) for kind, fields in SCHEMA.items()}
    assert arity == {
        Msg.HELLO: 3, Msg.READ: 4, Msg.WRITE: 3, Msg.REPLY: 2, Msg.ERROR: 2, Msg.IRQ: 2, Msg.RESET: 1,
        Msg.SNAPSHOT: 1, Msg.RESTORE: 2, Msg.SHUTDOWN: 0, Msg.OUTPUT: 2, Msg.INPUT: 2, Msg.ACTIVATE: 3,
        Msg.DMA: 1, Msg.SPAWN: 4, Msg.EXITED: 2, Msg.WRITES: 1,
    }


# -- encode: exact bytes ------------------------------------------------------------------------


@pytest.mark.parametrize("fields, raw", [
    ((), b"\x90"),
    ((Msg.SHUTDOWN,), b"\x91\x0a"),
    ((Msg.READ, 7, 1, 0x3F8, 1), b"\x95\x02\x07\x01\xcd\x03\xf8\x01"),
    ((Msg.WRITE, 0, 0, b"A"), b"\x94\x03\x00\x00\xc4\x01A"),  # bytes go as bin, not str
    ((Msg.ERROR, None, "no"), b"\x93\x05\xc0\xa2no"),  # str goes as str
    ((Msg.IRQ, 4, True), b"\x93\x06\x04\xc3"),
    ((Msg.EXITED, 1, -9), b"\x93\x11\x01\xf7"),  # negative fixint
])
def test_encode_exact_bytes(fields, raw):
    assert encode(*fields) == raw


def test_encode_sends_the_type_as_a_plain_integer():
    # Msg is an IntEnum: on the wire it is the bare number, the same as packing the int.
    assert encode(Msg.RESET, 3) == packed(7, 3)
    assert msgpack.unpackb(encode(Msg.RESET, 3)) == [7, 3]


# -- round trips: every message kind ---------------------------------------------------------------

ROUND_TRIPS = [
    pytest.param((Msg.HELLO, PROTOCOL_VERSION, "serial", {"log_level": "warn", "epoch": 12.5}), id="HELLO-core"),
    pytest.param((Msg.HELLO, PROTOCOL_VERSION, {"sandboxed": "kill", "fast": []}), id="HELLO-device"),
    pytest.param((Msg.READ, 1, 0, 0x3F8, 1), id="READ"),
    pytest.param((Msg.READ, U32 - 1, 255, U32 - 1, 8), id="READ-max"),
    pytest.param((Msg.WRITE, 0, 5, b"\x00\x01\xff"), id="WRITE"),
    pytest.param((Msg.WRITE, 255, U32 - 1, b""), id="WRITE-empty"),
    pytest.param((Msg.REPLY, 1, b"\x60"), id="REPLY"),
    pytest.param((Msg.REPLY, 2, None), id="REPLY-none"),
    pytest.param((Msg.REPLY, 3, {"nested": [1, 2.5, "x", b"y", None, True]}), id="REPLY-state"),
    pytest.param((Msg.REPLY, 4, b"\x60", [[b"\x60", [0, 2]], None]), id="REPLY-copies"),
    pytest.param((Msg.ERROR, 9, "no register window 3"), id="ERROR"),
    pytest.param((Msg.ERROR, None, "not a msgpack message (FormatError)"), id="ERROR-no-seq"),
    pytest.param((Msg.IRQ, 4, True), id="IRQ-high"),
    pytest.param((Msg.IRQ, 255, False), id="IRQ-low"),
    pytest.param((Msg.RESET, 10), id="RESET"),
    pytest.param((Msg.SNAPSHOT, 11), id="SNAPSHOT-request"),
    pytest.param((Msg.SNAPSHOT, {"regs": b"\x01\x02", "fifo": [65, 66]}), id="SNAPSHOT-event"),
    pytest.param((Msg.RESTORE, 12, {"regs": b"\x01\x02", "fifo": [65, 66]}), id="RESTORE"),
    pytest.param((Msg.SHUTDOWN,), id="SHUTDOWN"),
    pytest.param((Msg.OUTPUT, 0, b"login: "), id="OUTPUT"),
    pytest.param((Msg.INPUT, 13, b"root\n"), id="INPUT"),
    pytest.param((Msg.ACTIVATE, 14, (1 << 32) | 1, [[256, 0x1000, 0x2000, 0x3000, 1], [256, 0, 0, 0, 0]]),
                 id="ACTIVATE"),
    pytest.param((Msg.DMA, [[0x100000, 4096], [U64 - 1, U32 - 1]]), id="DMA"),
    pytest.param((Msg.DMA, []), id="DMA-empty"),
    pytest.param((Msg.SPAWN, 16, "rtc", {"root": "/run/x", "seccomp": "kill", "fsize": 0}, ["ctl", "evt"]),
                 id="SPAWN"),
    pytest.param((Msg.EXITED, 4242, 0), id="EXITED"),
    pytest.param((Msg.EXITED, U32 - 1, -9), id="EXITED-signal"),
    pytest.param((Msg.WRITES, [[0, 0, b"h"], [0, 0, b"i"], [255, U32 - 1, b"\x00" * 8]]), id="WRITES"),
]


@pytest.mark.parametrize("fields", ROUND_TRIPS)
def test_round_trip(fields):
    msg = decode(encode(*fields))
    assert msg == list(fields)
    assert msg[0] is fields[0]  # the type comes back as the enum member itself
    # Bytes stay bytes and text stays text (use_bin_type / raw=False).
    assert [type(f) for f in msg[1:]] == [type(f) for f in fields[1:]]


def test_round_trips_cover_every_message_kind():
    kinds = {p.values[0][0] for p in ROUND_TRIPS}
    assert kinds == set(Msg)


def test_decode_returns_a_list_even_for_a_type_only_message():
    msg = decode(b"\x91\x0a")
    assert type(msg) is list and msg == [Msg.SHUTDOWN]


# -- the envelope: size, msgpack, array, type --------------------------------------------------------


def test_largest_message_is_accepted():
    # fixarray(3) + REPLY + seq 1 + bin32 header (5 bytes) + payload = exactly the limit.
    payload = b"\xab" * (MAX_MESSAGE_BYTES - 8)
    raw = packed(Msg.REPLY, 1, payload)
    assert len(raw) == MAX_MESSAGE_BYTES
    assert decode(raw) == [Msg.REPLY, 1, payload]


def test_one_byte_over_the_limit_is_refused():
    raw = packed(Msg.REPLY, 1, b"\xab" * (MAX_MESSAGE_BYTES - 7))
    assert len(raw) == MAX_MESSAGE_BYTES + 1
    assert rejected(raw) == "message of 131073 bytes is over the 131072-byte limit"


def test_size_is_checked_before_decoding():
    # Garbage over the limit is refused for its size: msgpack never sees it.
    assert rejected(b"\xc1" * (MAX_MESSAGE_BYTES + 5)) == "message of 131077 bytes is over the 131072-byte limit"


@pytest.mark.parametrize("raw", [
    pytest.param(b"", id="empty"),
    pytest.param(b"\xc1", id="reserved-byte"),
    pytest.param(b"\x95\x02", id="truncated-array"),
    pytest.param(b"\x93\x03\x00\xc4\x05ab", id="truncated-bin"),
    pytest.param(b"\xa5ab", id="truncated-str"),
    pytest.param(b"\x92\x01\x02\x03", id="trailing-bytes"),
    pytest.param(b"\x91\x0a\x91\x0a", id="two-messages"),
    pytest.param(b"\x93\x0f\x01\xa2\xff\xfe", id="invalid-utf8"),
    pytest.param(b"\x92\x04\xd4\x01\x00", id="ext-type"),
    pytest.param(b"\x92\x04\xd6\xff\x00\x00\x00\x00", id="timestamp-ext"),
    pytest.param(b"\xc6\xff\xff\xff\xff", id="bin-claims-4GiB"),
    pytest.param(b"\xdd\xff\xff\xff\xff", id="array-claims-4G-entries"),
    pytest.param(b"\xdf\xff\xff\xff\xff", id="map-claims-4G-entries"),
    pytest.param(b"\x91" * 100_000 + b"\x01", id="deep-nesting"),
    pytest.param(packed(Msg.REPLY, 1, {1: 2}), id="int-map-key"),
    pytest.param(packed(Msg.REPLY, 1, {None: 2}), id="nil-map-key"),
    pytest.param(packed(Msg.REPLY, 1, list(range(4097))), id="array-over-4096"),
    pytest.param(packed(Msg.RESTORE, 1, {str(i): i for i in range(257)}), id="map-over-256"),
    pytest.param(packed(Msg.ERROR, 1, "x" * 4097), id="str-over-4096-bytes"),
    pytest.param(packed(Msg.ERROR, 1, "\u00e9" * 2049), id="str-over-4096-utf8-bytes"),
])
def test_malformed_msgpack_is_a_protocol_error(raw):
    assert rejected(raw).startswith("not a msgpack message (")


@pytest.mark.parametrize("value", [
    None, 0, 7, -1, 2.0, True, "READ", b"\x02", {"type": 2}, {},
])
def test_a_message_must_be_an_array(value):
    assert rejected(msgpack.packb(value, use_bin_type=True)) == "a message must be an array starting with its type"


@pytest.mark.parametrize("head", [None, "READ", b"\x02", 2.0, True, False, [2], {"t": 2}])
def test_the_type_must_be_an_integer(head):
    # True would otherwise pass for HELLO (1) and 2.0 for READ.
    assert rejected(packed(head, 1, 0, 0, 1)) == "a message must be an array starting with its type"


def test_an_empty_array_is_not_a_message():
    assert rejected(b"\x90") == "a message must be an array starting with its type"


@pytest.mark.parametrize("number", [0, 15, 19, 99, 255, -1, -32, U32, U64 - 1, -(1 << 63)])
def test_unknown_type(number):
    assert rejected(packed(number, 1)) == f"unknown message type {number}"


# -- arity ----------------------------------------------------------------------------------------------

# One valid message per kind (the core's HELLO; REPLY without copies).
VALID = {
    Msg.HELLO: [1, "rtc", {}],
    Msg.READ: [1, 0, 0, 1],
    Msg.WRITE: [0, 0, b"x"],
    Msg.REPLY: [1, None],
    Msg.ERROR: [1, "no"],
    Msg.IRQ: [0, True],
    Msg.RESET: [1],
    Msg.SNAPSHOT: [1],
    Msg.RESTORE: [1, {}],
    Msg.SHUTDOWN: [],
    Msg.OUTPUT: [0, b"x"],
    Msg.INPUT: [1, b"x"],
    Msg.ACTIVATE: [1, 0, []],
    Msg.DMA: [[]],
    Msg.WRITES: [[[0, 0, b"x"]]],
    Msg.SPAWN: [1, "rtc", {}, []],
    Msg.EXITED: [1, 0],
}


def test_valid_table_is_valid():
    assert set(VALID) == set(Msg)
    for kind, fields in VALID.items():
        assert decode(packed(kind, *fields)) == [kind, *fields]


# Kinds whose arity is fixed: one field fewer and one more are both wrong.
FIXED = [k for k in Msg if k not in (Msg.HELLO, Msg.REPLY)]


@pytest.mark.parametrize("kind", [k for k in FIXED if VALID[k]], ids=lambda k: k.name)
def test_one_field_too_few(kind):
    fields = VALID[kind][:-1]
    n = len(VALID[kind])
    assert rejected(packed(kind, *fields)) == f"{kind.name} has {n - 1} fields, expected {n}"


@pytest.mark.parametrize("kind", FIXED, ids=lambda k: k.name)
def test_one_field_too_many(kind):
    fields = VALID[kind] + [0]
    n = len(VALID[kind])
    assert rejected(packed(kind, *fields)) == f"{kind.name} has {n + 1} fields, expected {n}"


@pytest.mark.parametrize("fields, error", [
    ([], "HELLO has 0 fields, expected 3"),
    ([1], "HELLO has 1 fields, expected 3"),
    ([1, "rtc", {}, 0], "HELLO has 4 fields, expected 3"),
    # Two fields is the device's hello, whose second field must be its info map.
    ([1, "rtc"], "HELLO field 2 is invalid (str)"),
    ([1, None], "HELLO field 2 is invalid (NoneType)"),
    ([1, [1, 2]], "HELLO field 2 is invalid (list)"),
])
def test_hello_arity(fields, error):
    assert rejected(packed(Msg.HELLO, *fields)) == error


@pytest.mark.parametrize("fields, error", [
    ([], "REPLY has 0 fields, expected 2"),
    ([1], "REPLY has 1 fields, expected 2"),
    ([1, None, [], 0], "REPLY has 4 fields, expected 2"),
    # Three fields: the third is the mirrors' copies, a list of at most 16.
    ([1, None, None], "REPLY field 3 is invalid (NoneType)"),
    ([1, None, {}], "REPLY field 3 is invalid (dict)"),
    ([1, None, [None] * 17], "REPLY field 3 is invalid (list)"),
])
def test_reply_arity(fields, error):
    assert rejected(packed(Msg.REPLY, *fields)) == error


def test_reply_copies_up_to_sixteen():
    copies = [None] * 16
    assert decode(packed(Msg.REPLY, 1, None, copies)) == [Msg.REPLY, 1, None, copies]
    assert decode(packed(Msg.REPLY, 1, None, [])) == [Msg.REPLY, 1, None, []]


# -- field checks ---------------------------------------------------------------------------------


# -- fuzzing: nothing but ProtocolError ever escapes ------------------------------------------------

def _values(leaf):
    return st.recursive(leaf, lambda inner: st.lists(inner, max_size=6)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


LEAVES = (st.none() | st.booleans() | st.integers(-(1 << 63), U64 - 1) | st.floats()
          | st.text(max_size=16) | st.binary(max_size=16))


def _check_outcome(raw: bytes) -> None:
    try:
        msg = decode(raw)
    except ProtocolError:
        return
    kind, fields = msg[0], msg[1:]
    assert type(kind) is Msg
    # Whatever gets through passes its schema (with the two documented variants).
    schema = SCHEMA[kind]
    if kind is Msg.HELLO and len(fields) == 2:
        assert type(fields[1]) is dict and all(type(k) is str for k in fields[1])
        fields = fields[:1]
        schema = schema[:1]
    if kind is Msg.REPLY and len(fields) == 3:
        assert type(fields[2]) is list and len(fields[2]) <= 16
        fields = fields[:2]
    assert len(fields) == len(schema)
    assert all(check(v) for v, check in zip(fields, schema))


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_random_bytes(raw):
    _check_outcome(raw)


@settings(FUZZ, max_examples=150)
@given(st.sampled_from(list(Msg)) | st.integers(-40, 40), st.lists(_values(LEAVES), max_size=6))
def test_fuzz_random_messages(kind, fields):
    _check_outcome(packed(kind, *fields))


@FUZZ
@given(st.sampled_from([p.values[0] for p in ROUND_TRIPS]), st.data())
def test_fuzz_damaged_valid_messages(fields, data):
    raw = bytearray(encode(*fields))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if action == "flip" and raw:
            raw[at] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    _check_outcome(bytes(raw))
