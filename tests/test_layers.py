"""The direction of imports: launcher, core > policies' tool > devices > policies, ipc > abi.

Read from the source (every import statement, at any depth in a module, is an
edge), so an import inside a function counts as much as one at the top.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("abi", "core", "devices", "ipc", "policies", "launcher", "assets")

# What each package may import of the project, besides itself.
ALLOWED = {
    "abi": set(),
    "ipc": {"abi"},
    "policies": {"abi"},
    "devices": {"abi", "ipc", "policies"},
    "assets": {"abi"},
    "launcher": {"abi"},
    "core": {"abi", "ipc", "policies", "devices", "assets"},
}


def imports(path: Path) -> set[str]:
    """The vmboot modules ``path`` imports (relative imports resolved)."""
    package = ["vmboot", *path.relative_to(ROOT).with_suffix("").parts[:-1]]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("vmboot.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif (node.module or "").startswith("vmboot."):
                out.add(node.module)
    return out


def edges() -> dict[str, set[str]]:
    """package -> the packages its production modules import (tests may reach across)."""
    graph = defaultdict(set)
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name.startswith("test_") or path.name == "conftest.py":
                continue
            for module in imports(path):
                target = module.split(".")[1]
                if target != package:
                    graph[package].add(target)
    return graph


def test_each_package_imports_only_the_layers_below_it():
    graph = edges()
    wrong = {package: sorted(graph[package] - ALLOWED[package]) for package in PACKAGES
             if graph[package] - ALLOWED[package]}
    assert wrong == {}


def test_the_bottom_layer_imports_nothing_of_the_project():
    assert edges()["abi"] == set()


def test_no_package_below_core_imports_core():
    graph = edges()
    assert [p for p in ("abi", "devices", "ipc", "policies", "launcher", "assets") if "core" in graph[p]] == []


def test_no_production_module_imports_test_code_or_the_benchmarks():
    bad = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name.startswith("test_") or path.name == "conftest.py":
                continue
            bad += [f"{path.relative_to(ROOT)}: {m}" for m in imports(path)
                    if m.startswith(("vmboot.tests", "vmboot.bench"))]
    assert bad == []


def test_the_virtqueue_driver_is_reached_only_by_exercises_benchmarks_and_tests():
    """devices/virtio/driver.py plays a guest's driver: no device process or core path imports it."""
    users = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            test_code = path.name.startswith("test_") or path.name == "conftest.py"
            if "vmboot.devices.virtio.driver" in imports(path) and not test_code:
                users.append(str(path.relative_to(ROOT)))
    assert users == ["devices/virtio_blk/exercise.py"]


def test_the_layers_have_no_cycle():
    graph = edges()
    order = ["abi", "ipc", "policies", "devices", "assets", "launcher", "core"]
    for package, targets in graph.items():
        assert all(order.index(t) < order.index(package) for t in targets), (package, targets)
