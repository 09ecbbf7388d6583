"""The one list of data sources lumibot-duckdb serves: names, classes, offline kits, descriptions.

Pure data (module paths as strings, nothing imported), so every floor can read it: the package's
lazy exports and :func:`~lumibot_duckdb.sources.install.install` (the classes), the store's
``data_sources`` view (the descriptions), and :mod:`lumibot_duckdb.testing` and the conformance
suite (the kits). A fifth vendor is one entry here, its module in ``sources/`` and its emulator and
kit in ``testing/``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Source:
    """One backtesting data source."""

    name: str
    """The name Lumibot uses for it (``BACKTESTING_DATA_SOURCE``) and the ``source`` of its series."""
    class_name: str
    """Lumibot's class name, which ours keeps (Lumibot keys behaviour on it)."""
    module: str
    """Our drop-in class's module."""
    legacy: str
    """Lumibot's own class, as ``module:Class``."""
    kit: str
    """Its offline kit (emulated provider), as ``module:Class``."""
    description: str
    """What its series hold, for the ``data_sources`` view."""

    def load(self) -> type:
        """Our class (imports Lumibot)."""
        return load(f"{self.module}:{self.class_name}")

    def load_legacy(self) -> type:
        """Lumibot's own class."""
        return load(self.legacy)


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("polygon", "PolygonDataBacktesting", "lumibot_duckdb.sources.polygon",
           "lumibot.backtesting.polygon_backtesting:PolygonDataBacktesting",
           "lumibot_duckdb.testing.polygon:PolygonKit",
           "Polygon.io aggregates (polygon-api-client get_aggs), split-adjusted"),
    Source("yahoo", "YahooDataBacktesting", "lumibot_duckdb.sources.yahoo",
           "lumibot.backtesting.yahoo_backtesting:YahooDataBacktesting", "lumibot_duckdb.testing.yahoo:YahooKit",
           "Yahoo Finance (yfinance Ticker.history), raw OHLC with Adj Close, dividends and splits"),
    Source("alpaca", "AlpacaBacktesting", "lumibot_duckdb.sources.alpaca",
           "lumibot.backtesting.alpaca_backtesting:AlpacaBacktesting", "lumibot_duckdb.testing.alpaca:AlpacaKit",
           "Alpaca market data (alpaca-py get_stock_bars / get_crypto_bars)"),
    Source("ccxt", "CcxtBacktesting", "lumibot_duckdb.sources.ccxt",
           "lumibot.backtesting.ccxt_backtesting:CcxtBacktesting", "lumibot_duckdb.testing.ccxt:CcxtKit",
           "Crypto exchanges through CCXT (fetch_ohlcv), per exchange"),
)}
"""Backtesting sources by name."""

STORE_SOURCES: dict[str, str] = {**{s.name: s.description for s in SOURCES.values()},
                                 "ingest": "Files loaded with lumibot-duckdb ingest"}
"""Every ``source`` a series in the store can have, with its description."""


def source(name: str) -> Source:
    """The source called ``name``; a :class:`~lumibot_duckdb.errors.ConfigError` listing the known ones if none is."""
    found = SOURCES.get(str(name).strip().lower())
    if found is None:
        from lumibot_duckdb.errors import ConfigError

        raise ConfigError(f"Unknown source {name!r}; lumibot-duckdb provides {', '.join(SOURCES)}.")
    return found


def load(path: str) -> Any:
    """The object at ``module:attribute``."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)
