"""Fixtures shared by every test directory."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def firmware() -> Path:
    """CLOUDHV.fd, RELEASE flavour, built (and cached) by vmboot-assets if missing."""
    from vmboot.assets.firmware import firmware_path
    return firmware_path("release")


@pytest.fixture(scope="session")
def debug_firmware() -> Path:
    from vmboot.assets.firmware import firmware_path
    return firmware_path("debug")
