"""The build cache (assets/cache.py): KIND/KEY directories, built once, atomically."""
from __future__ import annotations

from pathlib import Path

import pytest

from vmboot.assets.cache import cached


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VMBOOT_CACHE", str(tmp_path))
    return tmp_path


def test_a_directory_is_built_once_and_then_found(cache):
    builds: list[Path] = []

    def build(tmp: Path) -> None:
        builds.append(tmp)
        (tmp / "made").write_text("yes")
    first = cached("thing", "thing-1", build)
    assert first == cache / "thing" / "thing-1" and (first / "made").read_text() == "yes"
    assert cached("thing", "thing-1", build) == first
    assert len(builds) == 1 and builds[0] != first  # built aside, then renamed into place


def test_without_fill_it_says_where_and_builds_nothing(cache):
    def build(tmp: Path) -> None:
        raise AssertionError("built")
    assert cached("thing", "thing-2", build, fill=False) == cache / "thing" / "thing-2"
    assert not (cache / "thing" / "thing-2").exists()


def test_a_failed_build_leaves_nothing_behind(cache):
    def build(tmp: Path) -> None:
        (tmp / "half").write_text("x")
        raise RuntimeError("broke")
    with pytest.raises(RuntimeError, match="broke"):
        cached("thing", "thing-3", build)
    assert [p.name for p in (cache / "thing").iterdir() if not p.name.endswith(".lock")] == []
