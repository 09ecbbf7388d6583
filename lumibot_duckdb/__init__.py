"""lumibot-duckdb: one DuckDB + Parquet bar store behind Lumibot's backtesting data sources.

>>> from lumibot_duckdb import PolygonDataBacktesting              # doctest: +SKIP
>>> MyStrategy.backtest(PolygonDataBacktesting, start, end, use_duckdb=True)  # doctest: +SKIP

``YahooDataBacktesting``, ``AlpacaBacktesting`` and ``CcxtBacktesting`` work the same way, on the
same store.

Importing this package is cheap: the data-source classes (Lumibot) and the store (pyarrow) are imported on
first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lumibot_duckdb import _moved
from lumibot_duckdb.config import Settings
from lumibot_duckdb.errors import (
    BarsValidationError,
    ConfigError,
    CorruptFileError,
    LumibotDuckDBError,
    ProviderDataError,
    ProviderRequestError,
    SeriesNotFoundError,
    StoreError,
    StoreLockTimeout,
)
from lumibot_duckdb.registry import SOURCES
from lumibot_duckdb.sources.install import install, uninstall

if TYPE_CHECKING:  # what __getattr__ imports on first access, for type checkers (py.typed): real types, not Any
    from lumibot_duckdb.sources.alpaca import AlpacaBacktesting
    from lumibot_duckdb.sources.base import EnhancedDataSourceBacktesting
    from lumibot_duckdb.sources.ccxt import CcxtBacktesting
    from lumibot_duckdb.sources.polygon import PolygonDataBacktesting
    from lumibot_duckdb.sources.yahoo import YahooDataBacktesting
    from lumibot_duckdb.store import DataStorageInterface, DuckDBDataStorage, Interval, SeriesKey, SeriesName

__version__ = "0.1.0"

# The public surface (tests/test_public_api.py checks it): the drop-in class of every source of
# lumibot_duckdb.registry.SOURCES, the store and how series are named, the settings, the errors and
# install()/uninstall().
__all__ = [
    "AlpacaBacktesting",
    "BarsValidationError",
    "CcxtBacktesting",
    "ConfigError",
    "CorruptFileError",
    "DataStorageInterface",
    "DuckDBDataStorage",
    "EnhancedDataSourceBacktesting",
    "Interval",
    "LumibotDuckDBError",
    "PolygonDataBacktesting",
    "ProviderDataError",
    "ProviderRequestError",
    "SeriesKey",
    "SeriesName",
    "SeriesNotFoundError",
    "Settings",
    "StoreError",
    "StoreLockTimeout",
    "YahooDataBacktesting",
    "__version__",
    "install",
    "uninstall",
]

_moved.install()

_LAZY = {
    **{spec.class_name: spec.module for spec in SOURCES.values()},
    "EnhancedDataSourceBacktesting": "lumibot_duckdb.sources.base",
    # the store (pyarrow) too: a process that only runs Lumibot's own classes never loads it
    **dict.fromkeys(("DataStorageInterface", "DuckDBDataStorage", "Interval", "SeriesKey", "SeriesName"),
                   "lumibot_duckdb.store"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lumibot_duckdb' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
