"""Stand-ins that tests across the packages share."""
from __future__ import annotations


class Clock:
    """A clock that moves only when a test sets ``t``: pass it where a model takes ``now``/``clock``."""

    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t
