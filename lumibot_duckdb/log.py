"""Our log records, through Lumibot's logging setup.

Every logger of this package is a child of Lumibot's ``lumibot`` logger (``lumibot.lumibot_duckdb.<module>``),
so Lumibot's handler, format and levels govern them: ``LUMIBOT_LOG_LEVEL`` sets the level, and in a
backtest with ``BACKTESTING_QUIET_LOGS`` on (Lumibot's default) only errors are shown, as for
Lumibot's own records. (Lumibot's ``get_logger`` keeps names starting with ``lumibot`` as they are,
so ``get_logger("lumibot_duckdb")`` would *not* be under its logger: hence the explicit prefix.)

Lumibot's setup is applied on the first record, not at import: importing this package never
imports Lumibot, and a command that logs nothing never pays for it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:  # LoggerAdapter is subscriptable from Python 3.11 only
    _Adapter = logging.LoggerAdapter

PREFIX = "lumibot."
_configured = False
_lock = threading.Lock()


def _configure() -> None:
    """Apply Lumibot's handler and levels (``lumibot.tools.lumibot_logger``), once per process."""
    global _configured
    if _configured:
        return
    with _lock:
        if _configured:
            return
        try:
            from lumibot.tools.lumibot_logger import get_logger as lumibot_logger

            lumibot_logger("lumibot.lumibot_duckdb")
        except ImportError:  # pragma: no cover - Lumibot is a dependency; without it records go to the root logger
            pass
        _configured = True


class _Logger(_Adapter):
    """A logger that sets up Lumibot's logging before its first level check (only that method is ours,
    so a record's file and line stay the caller's)."""

    def isEnabledFor(self, level: int) -> bool:
        _configure()
        return self.logger.isEnabledFor(level)


def get_logger(module: str) -> _Adapter:
    """The logger of ``module`` (its ``__name__``), under Lumibot's ``lumibot`` logger."""
    return _Logger(logging.getLogger(PREFIX + module), {})


def package_logger() -> logging.Logger:
    """The parent of every logger of the package (``lumibot.lumibot_duckdb``), for a handler that shows all
    of their records (the command line prints them above its progress bars)."""
    _configure()
    return logging.getLogger(PREFIX + "lumibot_duckdb")
