"""Modules imported on first use.

A backtest on the DuckDB path reads bars with pyarrow (:mod:`lumibot_duckdb.store.reader`) and never needs
DuckDB itself unless it runs SQL; importing DuckDB costs a process ~0.15 s and ~14 MB, starting its engine
~0.1 s and ~27 MB more (measured here). ``duckdb = lazy_module("duckdb")`` reads like the module and imports
it at the first attribute read (an ``except duckdb.Error:`` clause reads it only when an exception is
being matched).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands for the module ``name`` and imports it when one of its attributes is first read."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.load(), attribute)

    def load(self) -> ModuleType:
        return importlib.import_module(self._name)  # thread-safe; a dict lookup once imported

    def __repr__(self) -> str:
        return f"<module {self._name!r}, imported on first use>"


def lazy_module(name: str) -> Any:
    return LazyModule(name)
