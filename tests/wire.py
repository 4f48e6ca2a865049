"""Raw protocol messages, packed and decoded without the channel, for the ipc tests."""
from __future__ import annotations

import msgpack
import pytest

from vmboot.ipc.protocol import ProtocolError, decode

U32, U64 = 1 << 32, 1 << 64


def packed(*fields) -> bytes:
    """A message packed without encode(), so that decode is tested on its own."""
    return msgpack.packb(list(fields), use_bin_type=True)


def rejected(raw: bytes) -> str:
    """decode's refusal of ``raw``, which must be a ProtocolError."""
    with pytest.raises(ProtocolError) as info:
        decode(raw)
    return str(info.value)
