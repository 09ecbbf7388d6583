"""Every error lumibot-duckdb raises on purpose.

One root, branches that also inherit the builtin a caller would expect::

    LumibotDuckDBError
    ├── ConfigError (ValueError)            a flag or path that cannot be used
    │   └── SeriesNotFoundError (LookupError) a read names a series the store does not hold
    ├── StoreError (RuntimeError)           the store cannot be read or written
    │   ├── CorruptFileError                a file in the store failed its integrity check; set aside
    │   └── StoreLockTimeout (TimeoutError) another process holds a series for too long
    ├── BarsValidationError (ValueError)    bars handed to the store are not usable
    ├── QueryLimitError (RuntimeError)      a db-query statement hit its time or memory limit
    ├── ProviderDataError (ValueError)      a provider answered with something that is not bars
    ├── ProviderRequestError (RuntimeError) a provider kept failing (HTTP 5xx/429, timeouts) after every retry
    ├── ABRunError (RuntimeError)           an A/B backtest run did not finish
    └── ParityError (AssertionError)        legacy and DuckDB gave different fills or final value

A ``StoreError`` on the DuckDB path of a data source makes it fall back to the legacy path
(with one warning) unless strict mode is on; provider errors are never hidden that way.

Messages name options the way the caller writes them (:func:`spell`): ``timeframe='day'`` from
Python, ``--timeframe day`` on the command line (the CLI sets :func:`surface`), ``tf := 'day'`` in
the SQL macros.
"""

from __future__ import annotations

import contextlib
import contextvars
import shlex
from collections.abc import Iterator, Sequence


class LumibotDuckDBError(Exception):
    """Root of every error raised on purpose by lumibot-duckdb."""


class ConfigError(ValueError, LumibotDuckDBError):
    """A configuration value (keyword argument or environment variable) is not usable."""


class SeriesNotFoundError(LookupError, ConfigError):
    """A read names a series the store does not hold (never answered with an empty frame).

    ``wanted`` is what was asked for; ``near`` the series the store holds for that symbol (same
    symbol in another case, quote, adjustment, timeframe or source), closest first.
    """

    def __init__(self, message: str, *, wanted: object = None, near: Sequence[object] = ()) -> None:
        super().__init__(message)
        self.wanted = wanted
        self.near = list(near)


class StoreError(RuntimeError, LumibotDuckDBError):
    """The bar store could not be read or written."""


class CorruptFileError(StoreError):
    """A file in the store failed its integrity check (unreadable, wrong checksum, foreign schema, another
    series, bars outside its range, duplicates...); it was set aside in ``.quarantine/``, not deleted.

    ``intervals`` are the ranges of the files set aside (no longer covered: a data source fetches them
    again), ``reasons`` why each was.
    """

    def __init__(self, message: str, *, path: str, quarantined_to: str | None = None,
                 intervals: list[object] | None = None, reasons: list[str] | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.quarantined_to = quarantined_to
        self.intervals = list(intervals or [])
        self.reasons = list(reasons or [])


class StoreLockTimeout(TimeoutError, StoreError):
    """Another process kept a series locked for longer than the configured timeout."""


class BarsValidationError(ValueError, LumibotDuckDBError):
    """A frame of bars cannot be stored: a column is missing, of the wrong type, or empty where it may not be."""


class QueryLimitError(RuntimeError, LumibotDuckDBError):
    """A read-only SQL statement was stopped at its time or memory limit (``db-query --timeout`` and
    ``--memory-limit`` raise them); nothing else was affected."""


class ProviderDataError(ValueError, LumibotDuckDBError):
    """A data provider answered with something that is not a usable set of bars.

    Nothing from that answer is stored, so the same range is fetched again next time. ``source``,
    ``series`` and ``interval`` say whose answer it was and for which range, once known (the fetch
    path fills them in, see :func:`lumibot_duckdb.sources.base.bad_answer`).
    """

    def __init__(self, message: str, *, source: str | None = None, series: object = None,
                 interval: object = None) -> None:
        super().__init__(message)
        self.message = message
        self.source = source
        self.series = series
        self.interval = interval

    def locate(self, *, series: object, interval: object) -> ProviderDataError:
        """Record the series and range the answer was for (kept if already known); returns ``self``."""
        self.series = self.series if self.series is not None else series
        self.interval = self.interval if self.interval is not None else interval
        return self

    def __str__(self) -> str:
        where = [f"series {self.series}" if self.series is not None else "",
                 f"range {self.interval}" if self.interval is not None else ""]
        located = ", ".join(w for w in where if w)
        return f"{self.message} ({located})" if located else self.message


class ProviderRequestError(RuntimeError, LumibotDuckDBError):
    """A provider request kept failing in a way worth retrying (HTTP 5xx or 429, a timeout, a dropped
    connection) for every attempt allowed (``LUMIBOT_DUCKDB_RETRIES``).

    Nothing was stored for the range, so a rerun asks for it again. ``source``, ``series`` and
    ``interval`` say whose request it was and for which range; ``attempts`` how many were made; the
    last provider error is the ``__cause__``.
    """

    def __init__(self, message: str, *, source: str | None = None, series: object = None,
                 interval: object = None, attempts: int = 0) -> None:
        super().__init__(message)
        self.source = source
        self.series = series
        self.interval = interval
        self.attempts = attempts
class ABRunError(RuntimeError, LumibotDuckDBError):
    """A backtest run of the A/B harness did not finish; the message ends with the run's last output."""


class ParityError(AssertionError, LumibotDuckDBError):
    """Lumibot's legacy path and the DuckDB path gave different fills or final value, and no declared
    legacy defect explains it (raised by :func:`lumibot_duckdb.ab.assert_parity`, with the first differing fill)."""


# -- how a message names an option ----------------------------------------------------------------
SURFACES = ("python", "cli", "sql")
_SURFACE: contextvars.ContextVar[str] = contextvars.ContextVar("lumibot_duckdb_surface", default="python")
_CLI_FLAGS = {"timezone": "--tz", "cache_dir": "--store", "store": "--store", "columns": "--column",
              "fmt": "--format", "output": "--output"}
_SQL_NAMES = {"timeframe": "tf", "source": "src", "start": "since", "symbol": "sym"}
_NO_VALUE = object()


@contextlib.contextmanager
def surface(name: str) -> Iterator[None]:
    """Inside the block, :func:`spell` names options for ``name`` (``"python"``, ``"cli"`` or ``"sql"``)."""
    if name not in SURFACES:
        raise ValueError(f"surface {name!r}: use one of {', '.join(SURFACES)}")
    token = _SURFACE.set(name)
    try:
        yield
    finally:
        _SURFACE.reset(token)


def current_surface() -> str:
    return _SURFACE.get()


def spell(name: str, value: object = _NO_VALUE, *, on: str | None = None) -> str:
    """Option ``name`` (a Python keyword, e.g. ``"time_column"``) as the user of ``on`` (default: the
    current :func:`surface`) writes it, with ``value`` if given.

    >>> spell("time_column", "Date"), spell("time_column", "Date", on="cli"), spell("timeframe", "day", on="sql")
    ("time_column='Date'", '--time-column Date', "tf := 'day'")
    """
    where = on or _SURFACE.get()
    if where == "cli":
        if name == "on_invalid" and value == "repair":
            return "--repair"
        flag = _CLI_FLAGS.get(name, "--" + name.replace("_", "-"))
        return flag if value is _NO_VALUE else f"{flag} {shlex.quote(str(value))}"
    if where == "sql" and name in _SQL_NAMES:
        word = _SQL_NAMES[name]
        return word if value is _NO_VALUE else f"{word} := {_sql_literal(value)}"
    return f"{name}=" if value is _NO_VALUE else f"{name}={value!r}"


def _sql_literal(value: object) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"
