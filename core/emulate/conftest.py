"""Fixtures the emulated local APIC's tests share: tests/lapic_rig.py's Apic, enabled or as reset leaves it."""
from __future__ import annotations

import pytest

from vmboot.core.emulate.lapic import APIC_SVR
from vmboot.tests.lapic_rig import SVR_ENABLED, Apic


@pytest.fixture
def apic():
    a = Apic()
    a.put(APIC_SVR, SVR_ENABLED)
    return a


@pytest.fixture
def disabled():
    return Apic()
