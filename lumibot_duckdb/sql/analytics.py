"""Technical indicators and cross-asset alignment in SQL, over the store, without look-ahead.

Two ways in, one implementation (DuckDB table macros, registered by :func:`register` on every
connection :mod:`lumibot_duckdb.sql.query` makes):

* SQL, e.g. in ``lumibot-duckdb db-query``::

      SELECT * FROM rsi('SPY', 14, tf := 'minute', as_of := TIMESTAMPTZ '2024-03-01 15:00+00')

* Python, a pandas DataFrame indexed by UTC ``ts``::

      rsi(store, "SPY", 14, timeframe="minute", as_of=strategy.get_datetime())

  A symbol (with ``timeframe``/``source``) the store does not hold is a
  :class:`~lumibot_duckdb.errors.SeriesNotFoundError` saying what it holds for that symbol, from
  Python and from SQL alike; an empty frame means the series has no bar in the range asked.
  Naive ``as_of``/``start`` are in Lumibot's default time zone (New York).

  Each call on a store opens a read-only connection (~50 ms: views and macros); for many calls,
  open one with :func:`lumibot_duckdb.sql.query.connect` and pass it instead of the store.

**No look-ahead.** Every macro and function takes ``as_of`` and uses only bars with
``ts <= as_of`` (``ts`` is the bar's start; pass ``as_of = now - one bar`` for completed bars
only). Every window is trailing, so a value at ``t`` never changes when later bars are added
(tested). ``since`` (``start``) drops earlier bars before computing: the recursive indicators
(EMA, RSI) then seed at ``since``.

Conventions (all match an independent pandas computation; ``tests/test_analytics.py`` reports the
max absolute difference on real data):

========================  ===================================================================
``sma(sym, n)``           ``close.rolling(n).mean()`` (null until n bars)
``ema(sym, n)``           ``close.ewm(span=n, adjust=False).mean()`` (seeded with the first
                          close); ``sma_seed := true``: pandas-ta-classic / TA-Lib, seeded with
                          the SMA of the first n closes, null before
``bollinger(sym, n, k)``  mid = SMA(n), upper/lower = mid ± k·σ with ``σ = rolling(n).std(ddof=0)``
                          (pandas-ta-classic's default; ``ddof := 1`` for the sample σ)
``rsi(sym, n)``           Wilder: gains/losses of ``close.diff()``, each smoothed with
                          ``ewm(alpha=1/n, adjust=False)`` seeded with the mean of the first n
                          (pandas-ta-classic ``rsi``, TA-Lib, Wilder 1978); null for the first n bars
``vwap(sym)``             per session day: ``cumsum(hlc3·volume) / cumsum(volume)``, the day taken
                          in ``tz`` (default America/New_York; UTC for crypto) — pandas-ta ``vwap``
``volatility(sym, n)``    ``log(close).diff().rolling(n).std(ddof=1)``, × √``annualize`` if given
``rolling_corr(a, b, n)`` ``ra.rolling(n).corr(rb)``: log returns of a and b on the timestamps both have
``asof_align(syms)``      one row per (timestamp of any symbol, symbol): the symbol's last bar at or
                          before it (ASOF JOIN), with ``bar_ts`` and ``staleness_seconds``
========================  ===================================================================

The SQL itself is in :mod:`lumibot_duckdb.sql.macros`, the per-series computations in
:mod:`lumibot_duckdb.sql.kernels`. A missing close (NULL) makes every window holding it NULL; EMA
and RSI carry their average over it, as pandas' ``ewm`` does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import duckdb
import pandas as pd

from lumibot_duckdb.errors import ConfigError
from lumibot_duckdb.sql.macros import KEY_COLUMNS_SQL as _KEY
from lumibot_duckdb.sql.macros import held_series, our_message
from lumibot_duckdb.sql.query import connection
from lumibot_duckdb.store.coverage import canonical_timeframe
from lumibot_duckdb.store.naming import SeriesName, matching, parse_time
from lumibot_duckdb.store.store import DuckDBDataStorage

Target = DuckDBDataStorage | duckdb.DuckDBPyConnection
"""A store (a connection is opened and closed per call, ~50 ms) or a connection from
:func:`lumibot_duckdb.sql.query.connect` reused across calls (it sees the files of the store as they
were when it was made: reconnect to see bars written since)."""

# -- Python API --------------------------------------------------------------------------------------
def sma(store: Target, symbol: str, n: int, /, **options: Any) -> pd.DataFrame:
    """Simple moving average of ``close`` over ``n`` bars: columns ``close, sma``.

    Options of every function here: ``timeframe`` (default ``'day'``), ``source``, ``as_of``
    (only bars with ``ts <= as_of`` are used) and ``start`` (bars before it are ignored).
    """
    return _series(store, "sma", [symbol, _n(n)], {}, options)


def ema(store: Target, symbol: str, n: int, /, *, sma_seed: bool = False, **options: Any) -> pd.DataFrame:
    """Exponential moving average: ``ewm(span=n, adjust=False)``, or seeded with an SMA (pandas-ta) with
    ``sma_seed=True``. Columns ``close, ema``."""
    return _series(store, "ema", [symbol, _n(n)], {"sma_seed": bool(sma_seed)}, options)


def bollinger(store: Target, symbol: str, n: int = 20, /, *, k: float = 2.0, ddof: int = 0,
              **options: Any) -> pd.DataFrame:
    """Bollinger bands: columns ``close, lower, mid, upper, stddev`` (σ with ``ddof``, 0 as pandas-ta)."""
    if ddof not in (0, 1):
        raise ConfigError(f"ddof={ddof} must be 0 (population σ) or 1 (sample σ).")
    return _series(store, "bollinger", [symbol, _n(n)], {"k": float(k), "ddof": int(ddof)}, options)


def rsi(store: Target, symbol: str, n: int = 14, /, **options: Any) -> pd.DataFrame:
    """Wilder's RSI (0–100): columns ``close, avg_gain, avg_loss, rsi``."""
    return _series(store, "rsi", [symbol, _n(n)], {}, options)


def vwap(store: Target, symbol: str, /, *, tz: str | None = None, **options: Any) -> pd.DataFrame:
    """Session VWAP (reset each day in ``tz``): columns ``close, volume, session, vwap``."""
    return _series(store, "vwap", [symbol], {"tz": tz}, options)


def volatility(store: Target, symbol: str, n: int, /, *, annualize: float | None = None,
               **options: Any) -> pd.DataFrame:
    """Rolling σ of log returns over ``n`` bars (× √annualize): columns ``close, log_return, volatility``."""
    return _series(store, "volatility", [symbol, _n(n)], {"annualize": annualize}, options)


def rolling_corr(store: Target, symbol_a: str, symbol_b: str, n: int, /, **options: Any) -> pd.DataFrame:
    """Rolling correlation of the two symbols' log returns over ``n`` common bars:
    columns ``close_a, close_b, return_a, return_b, corr``."""
    if _n(n) < 2:
        raise ConfigError("n must be 2 or more for a correlation.")
    return _frame(store, "rolling_corr", [symbol_a, symbol_b, n], {}, options)


def asof_align(store: Target, symbols: Sequence[str], /, *, column: str = "close",
               base: str | None = None, **options: Any) -> pd.DataFrame:
    """Several symbols on one timeline (every timestamp any of them has, or ``base``'s): a wide frame,
    one column per symbol holding ``column`` of its last bar at or before each timestamp."""
    names = [str(s) for s in symbols]
    if not names:
        raise ConfigError("asof_align needs at least one symbol.")
    if column not in ("open", "high", "low", "close", "volume", "bar_ts", "staleness_seconds"):
        raise ConfigError(f"column={column!r}: use open, high, low, close, volume, bar_ts or staleness_seconds.")
    long = _frame(store, "asof_align", [names], {"base": base}, options, keep_key=True)
    wide = long.pivot(columns="symbol", values=column) if len(long) else pd.DataFrame(index=long.index)
    return wide.reindex(columns=names)


def _n(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n={n!r} must be a whole number of bars, 1 or more.")
    return n


def _series(store: Target, macro: str, args: list[Any], named: dict[str, Any],
            options: dict[str, Any]) -> pd.DataFrame:
    frame = _frame(store, macro, args, named, options, keep_key=True)
    series = frame[["source", "adjustment", "asset_type", "quote", "exchange"]].drop_duplicates()
    if len(series) > 1:
        listed = ", ".join(f"{r.source}/{r.adjustment}" for r in series.itertuples())
        raise ConfigError(f"{args[0]!r} is held by several series ({listed}); pass source=.")
    return frame.drop(columns=[c for c in _KEY.split(", ") if c in frame.columns])


def _frame(store: Target, macro: str, args: list[Any], named: dict[str, Any], options: dict[str, Any],
           *, keep_key: bool = False) -> pd.DataFrame:
    unknown = set(options) - {"timeframe", "source", "as_of", "start"}
    if unknown:
        raise ConfigError(f"Unknown option(s) {sorted(unknown)}; use timeframe, source, as_of, start.")
    named = {**named,
             "tf": canonical_timeframe(options.get("timeframe", "day")),
             "src": None if options.get("source") is None else str(options["source"]).strip().lower(),
             "as_of": None if options.get("as_of") is None else parse_time(options["as_of"]).to_pydatetime(),
             "since": None if options.get("start") is None else parse_time(options["start"]).to_pydatetime()}
    placeholders = ", ".join(["?"] * len(args) + [f"{name} := ?" for name in named])
    sql = f"SELECT * FROM {macro}({placeholders}) ORDER BY ts"
    symbols = [a for a in args if isinstance(a, str)] + [s for a in args if isinstance(a, list) for s in a]
    with contextlib.ExitStack() as stack:
        con = store if isinstance(store, duckdb.DuckDBPyConnection) else stack.enter_context(connection(store))
        held = held_series(con)
        where = store.describe() if isinstance(store, DuckDBDataStorage) else "the store"
        for symbol in symbols:  # checked here, to name the Python options (the macros would say tf :=, src :=)
            matching(SeriesName(symbol, source=named["src"], timeframe=named["tf"]), held, where=where)
        try:
            frame = con.execute(sql, [*args, *named.values()]).df()
        except duckdb.Error as exc:
            message = str(exc).strip().splitlines()[0]
            raise ConfigError(our_message(exc) or f"{macro}: {message}") from exc
    frame = frame.drop(columns=[c for c in ("_ambiguous",) if c in frame.columns])
    if "ts" in frame.columns:
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        frame = frame.set_index("ts")
    if not keep_key:
        frame = frame.drop(columns=[c for c in _KEY.split(", ") if c in frame.columns])
    return frame
