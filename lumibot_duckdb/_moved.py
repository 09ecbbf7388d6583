"""Old import paths of modules that moved when the package was regrouped into layers (0.2).

``import lumibot_duckdb.query`` (and the others in :data:`MOVED`) still works for one release: it
returns the module at its new path and warns with a ``DeprecationWarning`` naming that path.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import FrameType, ModuleType

MOVED = {
    "lumibot_duckdb.analytics": "lumibot_duckdb.sql.analytics",
    "lumibot_duckdb.query": "lumibot_duckdb.sql.query",
    "lumibot_duckdb.export": "lumibot_duckdb.sql.export",
    "lumibot_duckdb.maintenance": "lumibot_duckdb.store.maintenance",
    "lumibot_duckdb.offline_data": "lumibot_duckdb.sources.pandas_data",
    "lumibot_duckdb.ingest_formats": "lumibot_duckdb.ingest.formats",
    "lumibot_duckdb.store.layout": "lumibot_duckdb.store.local",
    "lumibot_duckdb.sample": "lumibot_duckdb.testing",
}
"""Old module path -> new module path (``lumibot_duckdb.sample.<x>`` -> ``lumibot_duckdb.testing.<x>`` too)."""


def new_name(old: str) -> str | None:
    """Where the module once imported as ``old`` lives now (None: it did not move)."""
    if old in MOVED:
        return MOVED[old]
    parent, _, child = old.rpartition(".")
    return f"{MOVED[parent]}.{child}" if parent in MOVED else None


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if new_name(fullname) else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = new_name(spec.name)
        assert new is not None
        warnings.warn(f"{spec.name} moved to {new}; import it from there (the old path goes away in the next "
                      "release).", DeprecationWarning, stacklevel=_caller_level())
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The module at the new path is already executed."""


def _caller_level() -> int:
    """The stack level of the first frame outside the import machinery (who wrote the import)."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and (frame.f_code.co_filename.startswith("<frozen importlib")
                                 or frame.f_code.co_filename == __file__):
        frame, level = frame.f_back, level + 1
    return level


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules())  # first: a moved package's children must not load twice
