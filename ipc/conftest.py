"""Fixtures shared by the ipc tests."""
from __future__ import annotations

import pytest

from vmboot.ipc import proxy as proxy_module
from vmboot.ipc.channel import Channel, channel_pair
from vmboot.tests.device_link import LSR, ProxyLink


@pytest.fixture
def pair():
    """(the core's channel, the device's channel) on one socketpair."""
    core, theirs = channel_pair()
    device = Channel(theirs)
    yield core, device
    core.close()
    device.close()


@pytest.fixture
def link():
    link = ProxyLink()
    yield link
    link.close()


@pytest.fixture
def mirrored():
    """A device with one mirror: LSR at window 0, offset 5."""
    link = ProxyLink(mirrors=[LSR])
    yield link
    link.close()


@pytest.fixture
def prompt(monkeypatch):
    """A scripted device that says nothing fails a test in about a second, not 20."""
    monkeypatch.setattr(proxy_module, "CALL_TIMEOUT", 1.0)
    monkeypatch.setattr(proxy_module, "RESTART_WAIT", 1.0)


@pytest.fixture
def patient(monkeypatch):
    """The proxy's own restart wait, 10 s: long enough that no test passes by waiting it out."""
    monkeypatch.setattr(proxy_module, "RESTART_WAIT", 10.0)


@pytest.fixture
def quick(monkeypatch):
    """A device that hangs or dies is given up on in 50 ms, not 10 s."""
    monkeypatch.setattr(proxy_module, "CALL_TIMEOUT", 0.05)
    monkeypatch.setattr(proxy_module, "RESTART_WAIT", 0.05)
