"""The device registry (devices/registry.py): each kind declared once, and complete; nothing else names one."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from vmboot.devices import registry
from vmboot.devices.registry import Attach, DeviceKind, Restart, Window
from vmboot.policies.compiler import device_names, load_policy, policy_problems

ROOT = Path(__file__).resolve().parent.parent
DEVICES = Path(__file__).resolve().parent
KINDS = registry.kinds()
PRODUCTION = ("abi", "core", "devices", "ipc", "policies", "launcher", "assets")


def test_the_kinds_and_their_restart_policies():
    assert {k.name: k.restart for k in KINDS} == {
        "debugcon": Restart.STATELESS, "pmtimer": Restart.STATELESS, "rtc": Restart.SNAPSHOT,
        "serial": Restart.SNAPSHOT, "virtio_blk": Restart.NEVER,
    }
    assert [k.name for k in registry.kinds(Attach.DISK)] == ["virtio_blk"]
    assert all(k.module == f"vmboot.devices.{k.name}.kind" for k in KINDS)


def test_an_unknown_kind_is_refused():
    with pytest.raises(registry.UnknownKind, match=r"^unknown device kind 'floppy' \(known: debugcon, pmtimer, rtc, "):
        registry.get("floppy")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_every_kind_has_a_policy_a_test_file_and_a_restart_policy(kind):
    assert isinstance(kind.restart, Restart)
    assert kind.policy == ROOT / "policies" / f"{kind.name}.policy"
    assert policy_problems(kind.name) == []
    assert load_policy(kind.name).rules
    folder = DEVICES / kind.name
    assert list(folder.glob("test_*.py")), f"devices/{kind.name}/ has no tests"
    assert kind.windows or kind.virtio, "a kind is reached through ports or a virtio transport"


def test_every_policy_is_a_kind_s():
    assert device_names() == sorted(k.name for k in KINDS)


def test_no_two_windows_overlap():
    taken: list[tuple[int, int, str]] = []
    for kind in registry.kinds(Attach.PLATFORM):
        for w in kind.windows:
            for base, end, owner in taken:
                assert w.base + w.size <= base or end <= w.base, f"{kind.name} {w.label} overlaps {owner}"
            taken.append((w.base, w.base + w.size, f"{kind.name} {w.label}"))
        assert len({w.number for w in kind.windows}) == len(kind.windows)


def test_a_kind_is_registered_once():
    rtc = registry.get("rtc")
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(DeviceKind("rtc", Restart.NEVER, rtc.build), "somewhere.else")
    assert registry.get("rtc") is rtc
    registry.register(rtc, rtc.module)  # the same module again (a re-import): nothing changes
    assert registry.get("rtc").module == rtc.module


def test_a_kind_from_outside_devices_is_listed_for_the_zygote_to_import():
    kind = registry.register(DeviceKind("outsider", Restart.STATELESS, lambda p, f, h: None,
                                        windows=(Window(0, 0x7F0, 1, "outsider"),)), "vmboot.tests.outsider")
    try:
        assert registry.outside_modules() == ["vmboot.tests.outsider"]
        assert registry.get("outsider") is kind and kind in registry.kinds(Attach.PLATFORM)
    finally:
        registry.unregister("outsider")
    assert registry.outside_modules() == []


def _named(tree: ast.AST, names: set[str], strings: bool) -> list[tuple[int, str]]:
    """Where a module names a kind: an import of its folder, or (with ``strings``) the name as a string
    that is not a dict key."""
    keys = {id(k) for node in ast.walk(tree) if isinstance(node, ast.Dict) for k in node.keys if k is not None}
    found = []
    for node in ast.walk(tree):
        if strings and isinstance(node, ast.Constant) and node.value in names and id(node) not in keys:
            found.append((node.lineno, repr(node.value)))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                parts = module.split(".")
                if parts[:2] == ["vmboot", "devices"] and len(parts) > 2 and parts[2] in names:
                    found.append((node.lineno, f"import {module}"))
    return found


def test_no_module_but_its_own_folder_names_a_kind():
    names = {k.name for k in KINDS}
    offenders = []
    for package in PRODUCTION:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if path.name.startswith("test_") or (rel.parts[0] == "devices" and rel.parts[1] in names):
                continue
            # Only core/ and devices/ can reach the registry: elsewhere "serial" or "virtio_blk" is a
            # setting's or a Linux module's name, not a kind's.
            strings = package in ("core", "devices")
            offenders += [f"{rel}:{line}: {what}" for line, what in _named(ast.parse(path.read_text()), names, strings)]
    assert offenders == []
