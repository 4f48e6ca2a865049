"""Fixtures the system tests share."""
from __future__ import annotations

import pytest

from vmboot.devices import registry
from vmboot.tests import fake_device


@pytest.fixture
def misbehave():
    """The tests' own device kind (tests/fake_device.py), registered for one test."""
    kind = registry.register(fake_device.KIND, fake_device.__name__)
    yield kind
    registry.unregister(kind.name)
