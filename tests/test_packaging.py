"""What users install: typed, licensed, one version, and an sdist whose tests can run.

Invariant: the wheel carries ``py.typed`` (so downstream type checkers see the annotations instead of
``Any``) and the licence; the version is written once; the sdist ships the test suite whole (conftest and
helpers included) or not at all. (Building and installing the wheel is checked by hand at release:
``python -m build``, then ``lumibot-duckdb --help`` and a downstream ``mypy`` run in a fresh venv.)
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
from pathlib import Path

import lumibot_duckdb

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, which pytest itself depends on there
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_package_is_marked_typed_and_ships_the_marker() -> None:
    assert (REPO / "lumibot_duckdb" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["lumibot_duckdb"]
    assert "Typing :: Typed" in PYPROJECT["project"]["classifiers"]


def test_the_licence_file_exists_and_is_declared() -> None:
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text
    assert PYPROJECT["project"]["license"] == "MIT" and PYPROJECT["project"]["license-files"] == ["LICENSE"]
    assert re.search(r"^include .*\bLICENSE\b", (REPO / "MANIFEST.in").read_text(), re.M)


def test_the_version_is_written_once() -> None:
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lumibot_duckdb.__version__"}
    tree = ast.parse((REPO / "lumibot_duckdb" / "__init__.py").read_text())
    literal = [n.value.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
               and any(getattr(t, "id", None) == "__version__" for t in n.targets)]
    assert literal == [lumibot_duckdb.__version__]  # a literal, so setuptools reads it without importing
    try:
        installed = importlib.metadata.version("lumibot-duckdb")
    except importlib.metadata.PackageNotFoundError:
        return  # run from a plain checkout
    assert installed == lumibot_duckdb.__version__


def test_classifiers_and_project_urls() -> None:
    project = PYPROJECT["project"]
    assert {"Development Status :: 3 - Alpha", "Topic :: Office/Business :: Financial :: Investment",
            "Programming Language :: Python :: 3.10", "Operating System :: OS Independent"} <= set(
        project["classifiers"])
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # the SPDX expression says it
    assert all(url.startswith("https://") for url in project["urls"].values())


def test_the_sdist_ships_the_test_suite_whole() -> None:
    manifest = (REPO / "MANIFEST.in").read_text()
    assert re.search(r"^graft tests$", manifest, re.M)
    helpers = {p.name for p in (REPO / "tests").glob("*.py") if not p.name.startswith("test_")}
    assert {"conftest.py", "factories.py"} <= helpers  # what the test modules import, shipped with them
    for name in ("README.md", "migration_guide.md", "dev.py", "tox.ini"):
        assert name in manifest, name


def test_names_imported_on_first_access_are_typed_for_type_checkers() -> None:
    """``from lumibot_duckdb import DuckDBDataStorage`` must not be ``Any`` downstream: each name the package
    imports lazily (module ``__getattr__``) is also imported under ``TYPE_CHECKING``."""
    tree = ast.parse((REPO / "lumibot_duckdb" / "__init__.py").read_text())
    typed = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.If)
             and getattr(node.test, "id", None) == "TYPE_CHECKING"
             for child in node.body if isinstance(child, ast.ImportFrom) for alias in child.names}
    lazy = set(getattr(lumibot_duckdb, "_LAZY", {}))
    assert lazy <= typed, f"add under TYPE_CHECKING: {sorted(lazy - typed)}"
    assert lazy | typed <= set(lumibot_duckdb.__all__)
