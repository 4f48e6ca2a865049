"""The messages between the core and a device process (msgpack arrays).

Every message is ``[type, fields...]``. Requests carry a sequence number that
the reply echoes. Reads are synchronous; writes, interrupts and console output
are posted (no reply). Two channels per device keep directions apart: the
control channel (core -> device requests, device -> core replies) and the event
channel (device -> core, posted only). Each is a SOCK_SEQPACKET socketpair (see
ipc/channel.py), so a message is one packet.

Every message is checked on receipt against the schema below: its size before
decoding, then its type and every field. A message that fails is rejected with
an ERROR reply and a log line; it never reaches a device model and never
crashes the receiver.
"""
from __future__ import annotations

import enum
from typing import Any

import msgpack

PROTOCOL_VERSION = 3  # 2: TEST (15) is gone; 3: WRITES (18)
MAX_MESSAGE_BYTES = 1 << 17  # 128 KiB: far above any legitimate message, below the socket buffers
MAX_DATA_BYTES = 1 << 16  # bytes in one READ/WRITE/OUTPUT/INPUT
MAX_FDS = 32  # descriptors passed with one message (SPAWN)
MAX_WRITES, MAX_BATCHED_BYTES = 1024, 8  # writes in one WRITES message, and bytes in each (a bus access)


class Msg(enum.IntEnum):
    HELLO = 1  # core -> device: [HELLO, version, name, params]; device -> core: [HELLO, version, info]
    READ = 2  # [READ, seq, window, offset, size]            -> REPLY data
    WRITE = 3  # [WRITE, window, offset, data]                  posted
    REPLY = 4  # [REPLY, seq, payload] or, from a device with mirrors (ipc/fastpath.py), [REPLY, seq, payload, copies]
    ERROR = 5  # [ERROR, seq or None, text]
    IRQ = 6  # device -> core (event): [IRQ, line, level]     posted
    RESET = 7  # [RESET, seq]                                  -> REPLY None
    SNAPSHOT = 8  # core -> device: [SNAPSHOT, seq] -> REPLY state; device -> core (event): [SNAPSHOT, state]
    RESTORE = 9  # [RESTORE, seq, state]                       -> REPLY None
    SHUTDOWN = 10  # [SHUTDOWN]                                  posted; the device exits
    OUTPUT = 11  # device -> core (event): [OUTPUT, window, data] posted
    INPUT = 12  # [INPUT, seq, data]                           -> REPLY bytes accepted
    ACTIVATE = 13  # virtio: [ACTIVATE, seq, features, queues]  -> REPLY None
    DMA = 14  # device -> core (event): [DMA, [[gpa, length], ...]] posted
    # 15 is retired (a test-only message of protocol 1); wire values are never reused.
    # Between the core and its device zygote (devices/process/zygote.py):
    SPAWN = 16  # core -> zygote: [SPAWN, seq, kind, options, fd names] + the fds  -> REPLY pid
    EXITED = 17  # zygote -> core: [EXITED, pid, returncode]      posted; returncode -N: killed by signal N
    WRITES = 18  # [WRITES, [[window, offset, data], ...]]         posted; WRITEs in order (ipc/batch.py)


class ProtocolError(Exception):
    """A message that does not follow the protocol; the text says how."""


def _uint(bits: int):
    limit = 1 << bits

    def check(v: Any) -> bool:
        return type(v) is int and 0 <= v < limit
    return check


def _bytes(limit: int):
    def check(v: Any) -> bool:
        return type(v) is bytes and len(v) <= limit
    return check


def _any(v: Any) -> bool:
    return True


def _optional_uint(v: Any) -> bool:
    return v is None or _uint(64)(v)


def _text(v: Any) -> bool:
    return type(v) is str and len(v) <= 4096


def _size(v: Any) -> bool:
    return type(v) is int and v in (1, 2, 4, 8)


def _bool(v: Any) -> bool:
    return type(v) is bool


def _dma_list(v: Any) -> bool:
    return (type(v) is list and len(v) <= 4096 and
            all(type(p) is list and len(p) == 2 and _uint(64)(p[0]) and _uint(32)(p[1]) for p in v))


def _queues(v: Any) -> bool:
    return (type(v) is list and len(v) <= 64 and
            all(type(q) is list and len(q) == 5 and all(_uint(64)(x) for x in q) for q in v))


def _map(v: Any) -> bool:
    return type(v) is dict and len(v) <= 256 and all(type(k) is str for k in v)


def _copies(v: Any) -> bool:
    return type(v) is list and len(v) <= 16


def _names(v: Any) -> bool:
    return type(v) is list and len(v) <= MAX_FDS and all(type(n) is str and len(n) <= 64 for n in v)


def _returncode(v: Any) -> bool:
    return type(v) is int and -64 <= v <= 255  # an exit status, or minus a signal number


SEQ, WINDOW, OFFSET = _uint(32), _uint(8), _uint(32)


BATCHED_DATA = _bytes(MAX_BATCHED_BYTES)


def _writes(v: Any) -> bool:
    return (type(v) is list and 0 < len(v) <= MAX_WRITES and
            all(type(w) is list and len(w) == 3 and WINDOW(w[0]) and OFFSET(w[1]) and BATCHED_DATA(w[2]) for w in v))


# What each message type must hold after its type tag, by direction.
SCHEMA: dict[Msg, tuple] = {
    Msg.HELLO: (_uint(16), _any, _any),  # core: version, name, params; device: version, info (2 fields)
    Msg.READ: (SEQ, WINDOW, OFFSET, _size),
    Msg.WRITE: (WINDOW, OFFSET, _bytes(MAX_DATA_BYTES)),
    Msg.REPLY: (SEQ, _any),
    Msg.ERROR: (_optional_uint, _text),
    Msg.IRQ: (_uint(8), _bool),
    Msg.RESET: (SEQ,),
    Msg.SNAPSHOT: (_any,),  # core: [seq]; device event: [state]
    Msg.RESTORE: (SEQ, _map),
    Msg.SHUTDOWN: (),
    Msg.OUTPUT: (WINDOW, _bytes(MAX_DATA_BYTES)),
    Msg.INPUT: (SEQ, _bytes(MAX_DATA_BYTES)),
    Msg.ACTIVATE: (SEQ, _uint(64), _queues),
    Msg.DMA: (_dma_list,),
    Msg.SPAWN: (SEQ, _text, _map, _names),
    Msg.EXITED: (_uint(32), _returncode),
    Msg.WRITES: (_writes,),
}


def encode(*fields: Any) -> bytes:
    return msgpack.packb(list(fields), use_bin_type=True)


def decode(raw: bytes) -> list:
    """Decode and check one message; raises ProtocolError with a sentence."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(raw)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        msg = msgpack.unpackb(raw, raw=False, use_list=True, strict_map_key=True,
                              max_bin_len=MAX_MESSAGE_BYTES, max_str_len=4096, max_array_len=4096,
                              max_map_len=256, max_ext_len=0)
    except Exception as err:  # msgpack raises several types for bad input
        raise ProtocolError(f"not a msgpack message ({type(err).__name__})") from None
    if type(msg) is not list or not msg or type(msg[0]) is not int:
        raise ProtocolError("a message must be an array starting with its type")
    try:
        kind = Msg(msg[0])
    except ValueError:
        raise ProtocolError(f"unknown message type {msg[0]}") from None
    fields = msg[1:]
    schema = SCHEMA[kind]
    if kind is Msg.HELLO and len(fields) == 2:
        schema = schema[:1] + (_map,)  # the device's hello: version, info
    if kind is Msg.REPLY and len(fields) == 3:
        schema = schema + (_copies,)  # its mirrors' copies, checked against them by the proxy
    if len(fields) != len(schema):
        raise ProtocolError(f"{kind.name} has {len(fields)} fields, expected {len(schema)}")
    for i, (value, check) in enumerate(zip(fields, schema)):
        if not check(value):
            raise ProtocolError(f"{kind.name} field {i + 1} is invalid ({type(value).__name__})")
    msg[0] = kind
    return msg
