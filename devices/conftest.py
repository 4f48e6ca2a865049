"""Fixtures the device tests share."""
from __future__ import annotations

import pytest


class Posted(list):
    """The events a device posts, as the tuples of fields it passes."""

    def __call__(self, *fields) -> None:
        self.append(fields)


@pytest.fixture
def posted():
    return Posted()
