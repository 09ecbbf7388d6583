"""The package reads top-down: every import points down a floor, there is no circle, and the store has one door.

Floors, lowest first (a module may import its own folder and any lower floor, nothing else):

    0  errors, _moved, log               what everything may use
    1  registry                          the list of sources (pure data)
    2  config                            settings
    3  store/                            the store contract, its folder backend, views, maintenance
    4  sources/ | sql/ | ingest/         three peers on the store, none importing another
    5  fetch                             prefetch a universe through the sources' providers
    6  testing/                          emulated providers, kits, market, strategies (never imported below)
    7  ab/                               the A/B harness
    8  cli                               the command line
    9  __main__, the package             the front doors
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lumibot_duckdb"
FLOORS = {"errors": 0, "_moved": 0, "log": 0, "registry": 1, "config": 2, "store": 3, "sources": 4, "sql": 4,
          "ingest": 4, "fetch": 5, "testing": 6, "ab": 7, "cli": 8, "__main__": 9, "": 9}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(module: str) -> set[str]:
    """Modules of the package that ``module`` imports (anywhere in it, at run time or not)."""
    path = MODULES[module]
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from pkg import sub`` imports the submodule; ``from pkg import name`` the package itself
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("lumibot_duckdb"):
                found.add(name)
    return found


EDGES = {module: _imports(module) for module in MODULES}


def test_every_module_has_a_floor() -> None:
    assert {_group(m) for m in MODULES} <= set(FLOORS), "a new folder needs a floor in this test (and in the README)"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down_a_floor(module: str) -> None:
    group = _group(module)
    for target in EDGES[module]:
        other = _group(target)
        if other == group or module == "lumibot_duckdb":
            continue
        assert FLOORS[other] < FLOORS[group], \
            f"{module} (floor {FLOORS[group]}) imports {target} (floor {FLOORS[other]})"


def test_no_import_circle() -> None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in EDGES[module]:
            if module.startswith(target + ".") and MODULES[target].name == "__init__.py":
                continue  # a child importing its own package's __init__, which re-exports it
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path[path.index(target):], target]))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)


DOOR_EXEMPT = {"lumibot_duckdb.testing.damage": "damages published files on purpose, byte by byte, for the tests"}


def test_only_the_store_knows_where_bytes_live() -> None:
    """One door: outside ``store/`` nothing imports the folder backend or touches a store's ``backend``."""
    offenders = []
    for module, path in MODULES.items():
        if _group(module) == "store" or module in DOOR_EXEMPT:
            continue
        if "lumibot_duckdb.store.local" in EDGES[module]:
            offenders.append(f"{module} imports lumibot_duckdb.store.local")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "backend":
                offenders.append(f"{module}:{node.lineno} reads .backend")
    assert not offenders, offenders
