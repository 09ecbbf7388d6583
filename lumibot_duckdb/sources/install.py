"""One call to make Lumibot build the DuckDB-backed classes wherever it builds its own.

After :func:`install`, ``BACKTESTING_DATA_SOURCE=polygon`` (``yahoo``, ``alpaca``, ``ccxt``) builds
:class:`lumibot_duckdb.PolygonDataBacktesting` (``YahooDataBacktesting``, ``AlpacaBacktesting``,
``CcxtBacktesting``), and so does ``from lumibot.backtesting import PolygonDataBacktesting``.
Lumibot picks the class by name from ``lumibot.strategies._strategy`` (and compares
``type(data_source)`` with that same name for its benchmark), so both names are pointed at our class.
:func:`uninstall` puts Lumibot's back.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from lumibot_duckdb.registry import SOURCES, source

_saved: dict[tuple[str, str], Any] = {}
_lock = threading.Lock()
_MISSING = object()


def install(*sources: str) -> list[str]:
    """Point Lumibot at our classes for ``sources`` (default: every source we provide).

    Returns the class names now served by lumibot-duckdb. Calling it twice is harmless.
    """
    import lumibot.backtesting as backtesting
    import lumibot.strategies._strategy as strategy_module

    specs = [source(name) for name in sources] if sources else list(SOURCES.values())
    installed = []
    with _lock:
        for spec in specs:
            class_name, ours = spec.class_name, spec.load()
            for module in (strategy_module, backtesting):
                slot = (module.__name__, class_name)
                if slot not in _saved:
                    _saved[slot] = module.__dict__.get(class_name, _MISSING)
                setattr(module, class_name, ours)
            installed.append(class_name)
    return installed


def uninstall() -> None:
    """Give Lumibot its own classes back."""
    with _lock:
        for (module_name, class_name), previous in _saved.items():
            module = importlib.import_module(module_name)
            if previous is _MISSING:
                module.__dict__.pop(class_name, None)
            else:
                setattr(module, class_name, previous)
        _saved.clear()
