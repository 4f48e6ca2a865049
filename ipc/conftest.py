"""Fixtures shared by the ipc tests."""
from __future__ import annotations

import pytest

from vmboot.ipc.channel import Channel, channel_pair


@pytest.fixture
def pair():
    """(the core's channel, the device's channel) on one socketpair."""
    core, theirs = channel_pair()
    device = Channel(theirs)
    yield core, device
    core.close()
    device.close()
