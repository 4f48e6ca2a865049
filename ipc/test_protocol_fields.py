"""Each field of each message (ipc/protocol.py's SCHEMA), and its limits.

A message whose field is of the wrong type or out of its width is refused with
a sentence naming the field, and the largest values the schema allows are
taken. The fuzzing is in test_protocol.py.
"""
from __future__ import annotations

import pytest

from vmboot.ipc.protocol import MAX_DATA_BYTES, MAX_FDS, MAX_WRITES, Msg, decode
from vmboot.tests.wire import U32, U64, packed, rejected

# (message after its type, the field that is wrong (1-based), type name in the error)
BAD_FIELDS = [
    # HELLO: the version is 16 bits.
    (Msg.HELLO, [1 << 16, "rtc", {}], 1, "int"),
    (Msg.HELLO, [-1, "rtc", {}], 1, "int"),
    (Msg.HELLO, ["1", "rtc", {}], 1, "str"),
    (Msg.HELLO, [1.0, "rtc", {}], 1, "float"),
    (Msg.HELLO, [True, {}], 1, "bool"),
    # READ: seq 32 bits, window 8, offset 32, size one of 1, 2, 4, 8.
    (Msg.READ, [U32, 0, 0, 1], 1, "int"),
    (Msg.READ, [-1, 0, 0, 1], 1, "int"),
    (Msg.READ, [None, 0, 0, 1], 1, "NoneType"),
    (Msg.READ, [True, 0, 0, 1], 1, "bool"),
    (Msg.READ, [1, 256, 0, 1], 2, "int"),
    (Msg.READ, [1, -1, 0, 1], 2, "int"),
    (Msg.READ, [1, 0.0, 0, 1], 2, "float"),
    (Msg.READ, [1, 0, U32, 1], 3, "int"),
    (Msg.READ, [1, 0, -4, 1], 3, "int"),
    (Msg.READ, [1, 0, b"\x00", 1], 3, "bytes"),
    (Msg.READ, [1, 0, 0, 0], 4, "int"),
    (Msg.READ, [1, 0, 0, 3], 4, "int"),
    (Msg.READ, [1, 0, 0, 16], 4, "int"),
    (Msg.READ, [1, 0, 0, -1], 4, "int"),
    (Msg.READ, [1, 0, 0, "4"], 4, "str"),
    (Msg.READ, [1, 0, 0, None], 4, "NoneType"),
    # WRITE: data is bin of at most MAX_DATA_BYTES, never str.
    (Msg.WRITE, [256, 0, b"x"], 1, "int"),
    (Msg.WRITE, [0, U32, b"x"], 2, "int"),
    (Msg.WRITE, [0, 0, "x"], 3, "str"),
    (Msg.WRITE, [0, 0, [120]], 3, "list"),
    (Msg.WRITE, [0, 0, 120], 3, "int"),
    (Msg.WRITE, [0, 0, b"x" * (MAX_DATA_BYTES + 1)], 3, "bytes"),
    # WRITES: 1 to MAX_WRITES writes, each [window, offset, bin of at most 8 bytes].
    (Msg.WRITES, [[]], 1, "list"),
    (Msg.WRITES, [[[0, 0, b"x"]] * (MAX_WRITES + 1)], 1, "list"),
    (Msg.WRITES, [[[0, 0, b"x" * 9]]], 1, "list"),
    (Msg.WRITES, [[[0, 0, "x"]]], 1, "list"),
    (Msg.WRITES, [[[256, 0, b"x"]]], 1, "list"),
    (Msg.WRITES, [[[0, U32, b"x"]]], 1, "list"),
    (Msg.WRITES, [[[0, 0]]], 1, "list"),
    (Msg.WRITES, [[[0, 0, b"x", 1]]], 1, "list"),
    (Msg.WRITES, [[0, 0, b"x"]], 1, "list"),
    (Msg.WRITES, [{"w": 1}], 1, "dict"),
    # REPLY: the seq is checked, the payload is anything.
    (Msg.REPLY, [U32, None], 1, "int"),
    (Msg.REPLY, ["1", None], 1, "str"),
    # ERROR: seq is None or an unsigned integer, text a str of at most 4096.
    (Msg.ERROR, [-1, "no"], 1, "int"),
    (Msg.ERROR, [False, "no"], 1, "bool"),
    (Msg.ERROR, ["1", "no"], 1, "str"),
    (Msg.ERROR, [1, b"no"], 2, "bytes"),
    (Msg.ERROR, [1, None], 2, "NoneType"),
    (Msg.ERROR, [None, 5], 2, "int"),
    # IRQ: line 8 bits, level a real bool.
    (Msg.IRQ, [256, True], 1, "int"),
    (Msg.IRQ, [-1, True], 1, "int"),
    (Msg.IRQ, [4, 1], 2, "int"),
    (Msg.IRQ, [4, 0], 2, "int"),
    (Msg.IRQ, [4, None], 2, "NoneType"),
    (Msg.IRQ, [4, "high"], 2, "str"),
    # RESET
    (Msg.RESET, [U32], 1, "int"),
    (Msg.RESET, [None], 1, "NoneType"),
    (Msg.RESET, [1.0], 1, "float"),
    # RESTORE: a map with str keys.
    (Msg.RESTORE, [U32, {}], 1, "int"),
    (Msg.RESTORE, [1, None], 2, "NoneType"),
    (Msg.RESTORE, [1, []], 2, "list"),
    (Msg.RESTORE, [1, {b"regs": 1}], 2, "dict"),
    (Msg.RESTORE, [1, {"a": 1, b"b": 2}], 2, "dict"),
    # OUTPUT
    (Msg.OUTPUT, [256, b"x"], 1, "int"),
    (Msg.OUTPUT, [0, "x"], 2, "str"),
    (Msg.OUTPUT, [0, b"x" * (MAX_DATA_BYTES + 1)], 2, "bytes"),
    # INPUT
    (Msg.INPUT, [-1, b"x"], 1, "int"),
    (Msg.INPUT, [1, "x"], 2, "str"),
    (Msg.INPUT, [1, b"x" * (MAX_DATA_BYTES + 1)], 2, "bytes"),
    # ACTIVATE: features 64 bits, at most 64 queues of five 64-bit numbers.
    (Msg.ACTIVATE, [U32, 0, []], 1, "int"),
    (Msg.ACTIVATE, [1, -1, []], 2, "int"),
    (Msg.ACTIVATE, [1, 0, None], 3, "NoneType"),
    (Msg.ACTIVATE, [1, 0, [[0, 0, 0, 0, 0]] * 65], 3, "list"),
    (Msg.ACTIVATE, [1, 0, [[0, 0, 0, 0]]], 3, "list"),
    (Msg.ACTIVATE, [1, 0, [[0, 0, 0, 0, 0, 0]]], 3, "list"),
    (Msg.ACTIVATE, [1, 0, [[0, 0, 0, 0, -1]]], 3, "list"),
    (Msg.ACTIVATE, [1, 0, [[0, 0, 0, 0, True]]], 3, "list"),
    (Msg.ACTIVATE, [1, 0, [[0, 0, 0, 0, 0.0]]], 3, "list"),
    (Msg.ACTIVATE, [1, 0, [{"size": 256}]], 3, "list"),
    # DMA: pairs of a 64-bit address and a 32-bit length.
    (Msg.DMA, [None], 1, "NoneType"),
    (Msg.DMA, [{}], 1, "dict"),
    (Msg.DMA, [[[0]]], 1, "list"),
    (Msg.DMA, [[[0, 1, 2]]], 1, "list"),
    (Msg.DMA, [[[0, U32]]], 1, "list"),
    (Msg.DMA, [[[-1, 1]]], 1, "list"),
    (Msg.DMA, [[[0, -1]]], 1, "list"),
    (Msg.DMA, [[[0, 1], 5]], 1, "list"),
    (Msg.DMA, [[[0.0, 1]]], 1, "list"),
    # SPAWN: kind text, options a map, at most MAX_FDS names of at most 64 characters.
    (Msg.SPAWN, [U32, "rtc", {}, []], 1, "int"),
    (Msg.SPAWN, [1, b"rtc", {}, []], 2, "bytes"),
    (Msg.SPAWN, [1, "rtc", [], []], 3, "list"),
    (Msg.SPAWN, [1, "rtc", {b"root": "/"}, []], 3, "dict"),
    (Msg.SPAWN, [1, "rtc", {}, None], 4, "NoneType"),
    (Msg.SPAWN, [1, "rtc", {}, {"ctl": 3}], 4, "dict"),
    (Msg.SPAWN, [1, "rtc", {}, [3]], 4, "list"),
    (Msg.SPAWN, [1, "rtc", {}, [b"ctl"]], 4, "list"),
    (Msg.SPAWN, [1, "rtc", {}, ["n"] * (MAX_FDS + 1)], 4, "list"),
    (Msg.SPAWN, [1, "rtc", {}, ["n" * 65]], 4, "list"),
    # EXITED: pid 32 bits; an exit status 0..255 or minus a signal number, down to -64.
    (Msg.EXITED, [U32, 0], 1, "int"),
    (Msg.EXITED, [-1, 0], 1, "int"),
    (Msg.EXITED, [1, 256], 2, "int"),
    (Msg.EXITED, [1, -65], 2, "int"),
    (Msg.EXITED, [1, True], 2, "bool"),
    (Msg.EXITED, [1, None], 2, "NoneType"),
    (Msg.EXITED, [1, 0.0], 2, "float"),
]


@pytest.mark.parametrize("kind, fields, index, type_name", BAD_FIELDS,
                         ids=[f"{k.name}-{i}-{t}-{n}" for n, (k, _, i, t) in enumerate(BAD_FIELDS)])
def test_bad_field(kind, fields, index, type_name):
    assert rejected(packed(kind, *fields)) == f"{kind.name} field {index} is invalid ({type_name})"


def test_bad_fields_cover_every_kind_with_fields():
    assert {kind for kind, *_ in BAD_FIELDS} | {Msg.SNAPSHOT, Msg.SHUTDOWN} == set(Msg)


def test_first_bad_field_is_reported():
    assert rejected(packed(Msg.READ, -1, 256, -1, 3)) == "READ field 1 is invalid (int)"
    assert rejected(packed(Msg.READ, 1, 0, -1, 3)) == "READ field 3 is invalid (int)"


@pytest.mark.parametrize("size", [True, 4.0, 1.0])
def test_read_size_must_be_an_integer(size):
    # Every other integer field is checked with `type(v) is int`; the size must be too,
    # or a bool or float reaches the device model's read(offset, size).
    assert rejected(packed(Msg.READ, 1, 0, 0, size)) == f"READ field 4 is invalid ({type(size).__name__})"


# -- field limits, on the accepting side -------------------------------------------------------


@pytest.mark.parametrize("kind, fields", [
    (Msg.HELLO, [(1 << 16) - 1, "rtc", {}]),
    (Msg.HELLO, [0, {}]),
    (Msg.HELLO, [1, None, None]),  # the core's name and params are checked by the device, not here
    (Msg.READ, [0, 0, 0, 1]),
    (Msg.READ, [0, 0, 0, 2]),
    (Msg.READ, [0, 0, 0, 4]),
    (Msg.READ, [0, 0, 0, 8]),
    (Msg.WRITE, [0, 0, b"\x00" * MAX_DATA_BYTES]),
    (Msg.WRITES, [[[255, U32 - 1, b"\x00" * 8]] * MAX_WRITES]),
    (Msg.OUTPUT, [0, b"\x00" * MAX_DATA_BYTES]),
    (Msg.INPUT, [0, b"\x00" * MAX_DATA_BYTES]),
    (Msg.ERROR, [U64 - 1, "x" * 4096]),
    (Msg.ERROR, [0, ""]),
    (Msg.RESTORE, [0, {str(i): i for i in range(256)}]),
    (Msg.RESTORE, [0, {"": {"nested": [b"any", None, 1.5]}}]),
    (Msg.ACTIVATE, [0, U64 - 1, [[U64 - 1] * 5] * 64]),
    (Msg.DMA, [[[U64 - 1, U32 - 1]] * 4096]),
    (Msg.SPAWN, [U32 - 1, "", {}, ["n" * 64] * MAX_FDS]),
    (Msg.EXITED, [0, -64]),
    (Msg.EXITED, [0, 255]),
    (Msg.SNAPSHOT, [None]),
    (Msg.SNAPSHOT, [[1, "two", b"3"]]),
])
def test_field_limits_accepted(kind, fields):
    assert decode(packed(kind, *fields)) == [kind, *fields]
