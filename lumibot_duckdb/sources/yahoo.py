"""``YahooDataBacktesting`` on the shared store.

Lumibot's ``YahooData`` decides *what* to load (symbol variants for futures and indexes, one
frame per asset and interval, slicing by the simulated clock, ``get_last_price`` = open of the
last session before today, timeshifts in days). Its one call to the provider layer,
``YahooHelper.get_symbol_data(symbol, interval, auto_adjust=, last_needed_datetime=)``, is where
this class takes over: that helper is wrapped once, at import, by a router that passes every
call straight through unless it comes from an instance of this class with the DuckDB path on
(a context variable, so threads and other data sources are unaffected).

On the DuckDB path, daily bars are stored raw, as ``Ticker.history(auto_adjust=False)`` sent
them (00:00 exchange time, Yahoo's split-adjusted OHLC, ``Adj Close``, dividends, split ratios),
in the series ``yahoo/<symbol>/day/raw``; ``Ticker.info`` is kept in the store's ``meta/``
folder and asked for once per symbol. A cold series is asked for once with ``period="max"``,
like Lumibot does, so any lookback finds the same history; later only the missing tail is
asked for (``start=``), and if that answer shows Yahoo re-wrote history meanwhile (a split or
dividend changes the overlapping bar), the series is fetched whole again. The frame handed back
is rebuilt with Lumibot's own code path: the 16:00 (US) / 23:59 (crypto) re-stamping decided
by ``info``, ``YahooHelper.process_df`` and ``YahooHelper.format_df``; no sleeps.

Intraday (``1m``/``15m``): Yahoo serves those only for the last 7/60 days of real time, so no
stored bar could ever serve a historical backtest, and the store has no 15-minute timeframe.
Those requests go to Lumibot's helper unchanged (with its pickle cache and its sleeps).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np
import pandas as pd
from lumibot.backtesting.yahoo_backtesting import YahooDataBacktesting as _LegacyYahooDataBacktesting
from lumibot.entities import Asset
from lumibot.tools.yahoo_helper import YahooHelper

from lumibot_duckdb.errors import ProviderDataError
from lumibot_duckdb.log import get_logger
from lumibot_duckdb.sources.base import EnhancedDataSourceBacktesting, FetchTask, route
from lumibot_duckdb.sources.fill import bad_answer
from lumibot_duckdb.sources.verify import first_difference, patched_attributes
from lumibot_duckdb.store import Interval, SeriesKey
from lumibot_duckdb.store.store import SeriesWriter

log = get_logger(__name__)
T = TypeVar("T")

SOURCE = "yahoo"
ADJUSTMENT = "raw"  # as Ticker.history(auto_adjust=False) sends it (Yahoo's OHLC are split-adjusted)
NY = "America/New_York"
HISTORY_START = pd.Timestamp("1900-01-01", tz="UTC")
"""Start of every Yahoo series: ``period="max"`` answers for everything before now."""
STORE_COLUMNS = ("open", "high", "low", "close", "volume", "adj_close", "dividend", "split_ratio", "metadata")
OVERLAP = pd.Timedelta(days=7)
"""A tail request starts this long before the stored end, so it overlaps stored bars to compare."""

_YAHOO_TO_STORE = {"Open": "open", "High": "high", "Low": "low", "Close": "close", "Volume": "volume",
                   "Adj Close": "adj_close", "Dividends": "dividend", "Stock Splits": "split_ratio"}
_STORE_TO_YAHOO = {v: k for k, v in _YAHOO_TO_STORE.items()}

_ROUTE: contextvars.ContextVar[tuple[YahooDataBacktesting, Asset] | None] = contextvars.ContextVar(
    "lumibot_duckdb_yahoo", default=None)


def _now() -> pd.Timestamp:
    """The wall clock (a function so tests can stand in a fixed day, as the offline Yahoo does)."""
    return pd.Timestamp.now(tz="UTC")


class YahooDataBacktesting(EnhancedDataSourceBacktesting, _LegacyYahooDataBacktesting):
    """Lumibot's ``YahooDataBacktesting`` with the DuckDB store behind its Yahoo seam.

    Same class name and ``SOURCE`` as Lumibot's (Lumibot keys behaviour on both). Extra keyword
    arguments: ``use_duckdb``, ``cache_dir``, ``strict`` (see :class:`EnhancedDataSourceBacktesting`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yahoo_info_lock = threading.Lock()

    def _get_source_symbol_data(self, asset: Any, timestep: Any) -> Any:
        if not self.use_duckdb:
            return super()._get_source_symbol_data(asset, timestep)
        token = _ROUTE.set((self, asset if isinstance(asset, Asset) else Asset(symbol=str(asset))))
        waiting = self.duckdb_error
        try:
            data = super()._get_source_symbol_data(asset, timestep)
        finally:
            _ROUTE.reset(token)
        # Lumibot turns any error of the Yahoo helper into "no data" (a logged warning); a refused answer
        # (or, in strict mode, a store failure) must stop the backtest instead.
        self.reraise_swallowed(since=waiting)
        return data

    def _yahoo_symbol_data(self, legacy: Any, asset: Asset, symbol: str, interval: str = "1d", caching: bool = True,
                           auto_adjust: bool = False, last_needed_datetime: Any = None) -> pd.DataFrame | None:
        """Stand-in for ``YahooHelper.get_symbol_data`` (same arguments, same frame)."""

        def legacy_call() -> pd.DataFrame | None:
            return legacy(symbol, interval=interval, caching=caching, auto_adjust=auto_adjust,
                          last_needed_datetime=last_needed_datetime)

        if interval != "1d":
            return legacy_call()  # intraday: see the module docstring

        def from_store() -> pd.DataFrame | None:
            key = yahoo_series_key(symbol, asset)
            horizon = settled_until()
            need = Interval(HISTORY_START, min(horizon, needed_until(last_needed_datetime, horizon)))
            # Lumibot's frame is the whole history Yahoo sent (it slices by the simulated clock), so
            # every settled bar of the series is read back, not only the backtest's days.
            bars = self.serve(key, need, YahooFetcher(symbol, need, horizon), columns=STORE_COLUMNS,
                              read=Interval(HISTORY_START, horizon))
            if bars.empty:
                return None  # Lumibot's helper returns None when Yahoo has no bars
            return legacy_frame(bars, self._yahoo_info(symbol), auto_adjust=auto_adjust)

        check = self.verify_check(legacy_call, series=f"{symbol} day", request=f"get_symbol_data({symbol!r}, "
                                  f"auto_adjust={auto_adjust}, last_needed_datetime={last_needed_datetime})")
        return self.via_store(from_store, legacy_call, check=check)

    def _declared_difference(self, ours: Any, legacy: Any) -> str | None:
        return declared_difference(ours, legacy)

    def _legacy_cache_at(self, folder: Path) -> contextlib.AbstractContextManager[None]:
        from lumibot.tools import backtest_cache

        target = folder / "yahoo"
        target.mkdir(parents=True, exist_ok=True)
        # and never Lumibot's remote (S3) backtest cache: a throw-away run must not read or fill it
        return patched_attributes((YahooHelper, "LUMIBOT_YAHOO_CACHE_FOLDER", str(target)),
                                  (backtest_cache, "get_backtest_cache", lambda: None))

    def _yahoo_info(self, symbol: str) -> dict[str, Any] | None:
        """``Ticker(symbol).info``, from the store once asked for (it decides Lumibot's re-stamping)."""
        with self._yahoo_info_lock:
            return yahoo_info(self.store, symbol, on_request=lambda: self.duckdb_stats.add(provider_requests=1))


def yahoo_info(store: Any, symbol: str, *, on_request: Any = None) -> dict[str, Any] | None:
    """``Ticker(symbol).info`` from ``store``'s notes, asked of Yahoo (and kept) the first time.

    None when Yahoo does not answer it (then bars keep Yahoo's timestamps, as in Lumibot, and the
    next call asks again). ``on_request()`` is called when Yahoo is asked.
    """
    parts = info_note(symbol)
    record = store.read_note(*parts)
    if isinstance(record, dict) and isinstance(record.get("info"), dict):
        return record["info"]
    import yfinance as yf

    try:
        info = yf.Ticker(symbol).info
    except Exception as exc:  # noqa: BLE001 - like Lumibot: no info, no re-stamping, ask next time
        log.info("Yahoo info for %s unavailable (%s); bars keep Yahoo's timestamps.", symbol, exc)
        return None
    finally:
        if on_request is not None:
            on_request()
    if isinstance(info, dict):
        store.write_note({"symbol": symbol, "fetched": _now().isoformat(), "info": info}, *parts)
        return info
    return None


def info_note(symbol: str) -> tuple[str, str, str]:
    """Where the store keeps a symbol's ``Ticker.info``: ``meta/yahoo/info/<symbol>.json``."""
    return ("yahoo", "info", f"{quote(symbol, safe='')}.json")


FORMING_BAR = "today's bar, still forming, is not served (the store holds settled bars only)"
"""The one declared difference of this source: Lumibot's frame ends with today's session while it forms."""


def declared_difference(ours: Any, legacy: Any) -> str | None:
    """:data:`FORMING_BAR` when ``legacy`` equals ``ours`` but for bars of today's session (New York), else None.

    Lumibot's helper hands over the whole history Yahoo sent, today's forming bar included; the store
    serves settled days only (:func:`settled_until`). A backtest that ends before today never reads
    that bar (Lumibot slices the frame by the simulated clock).
    """
    if not isinstance(ours, pd.DataFrame) or not isinstance(legacy, pd.DataFrame) or legacy.empty:
        return None
    if not isinstance(legacy.index, pd.DatetimeIndex) or legacy.index.tz is None:
        return None
    forming = legacy.index >= settled_until()
    if not forming.any() or first_difference(ours, legacy[~forming]) is not None:
        return None
    return f"{FORMING_BAR}: {int(forming.sum())} bar(s) from {legacy.index[forming][0].date()}"


def yahoo_series_key(symbol: str, asset: Asset | None = None) -> SeriesKey:
    """The store series of a Yahoo symbol's daily bars (the Yahoo symbol, e.g. ``^SPX`` or ``ES=F``)."""
    asset_type = str(getattr(asset, "asset_type", None) or "stock")
    return SeriesKey(source=SOURCE, symbol=symbol, timeframe="day", asset_type=asset_type, quote="", exchange="",
                     adjustment=ADJUSTMENT)


def prefetch(symbol: str, asset_type: str, last: dt.date) -> tuple[SeriesKey, Interval, YahooFetcher]:
    """What a backtest ending on ``last`` fills for the Yahoo symbol (:mod:`lumibot_duckdb.fetch`): the whole
    daily history up to the day after ``last`` (Yahoo answers ``period="max"``), as the data source asks it."""
    horizon = settled_until()
    ending = pd.Timestamp(last).tz_localize(NY)
    need = Interval(HISTORY_START, min(horizon, needed_until(ending, horizon)))
    return yahoo_series_key(symbol, Asset(symbol=symbol, asset_type=asset_type)), need, YahooFetcher(symbol, need,
                                                                                                      horizon)


def settled_until() -> pd.Timestamp:
    """Daily bars before today (New York) are final; today's is still forming and never recorded as covered."""
    return pd.Timestamp(_now().tz_convert(NY).date()).tz_localize(NY).tz_convert("UTC")


def needed_until(last_needed: Any, horizon: pd.Timestamp) -> pd.Timestamp:
    """End of the days a backtest ending at ``last_needed`` reads: the day after its last day (New York)."""
    if last_needed is None:
        return horizon
    stamp = pd.Timestamp(last_needed)
    local = stamp.tz_localize(NY) if stamp.tzinfo is None else stamp.tz_convert(NY)
    return pd.Timestamp(local.date() + dt.timedelta(days=1)).tz_localize(NY).tz_convert("UTC")


class YahooFetcher:
    """The Yahoo side of :meth:`EnhancedDataSourceBacktesting.serve` for one symbol's daily bars."""

    name = "Yahoo"
    max_workers = 1
    name = "Yahoo"
    advice = "check the symbol on finance.yahoo.com and your yfinance version."

    def __init__(self, symbol: str, need: Interval, horizon: pd.Timestamp) -> None:
        self.symbol = symbol
        self.need = need
        self.horizon = horizon
        self._prefetched: tuple[pd.Timestamp, pd.DataFrame] | None = None

    def _history(self, start: pd.Timestamp | None) -> pd.DataFrame:
        import yfinance as yf

        ticker = yf.Ticker(self.symbol)
        if start is None:
            answer = ticker.history(interval="1d", period="max", auto_adjust=False)
            what = f"{self.symbol} daily history (period=max)"
        else:
            day = start.tz_convert(NY).date().isoformat()
            answer = ticker.history(interval="1d", start=day, auto_adjust=False)
            what = f"{self.symbol} daily history from {day}"
        return history_to_bars(answer, what=what)

    # -- plan: one request from the first missing day to now -----------------------------------
    def plan(self, key: SeriesKey, missing: list[Interval]) -> list[FetchTask]:
        if not missing:
            return []
        start = missing[0].start
        covers = Interval(start, self.horizon)
        if self._prefetched is not None and self._prefetched[0] <= start:
            return [FetchTask(covers, ("prefetched", self._prefetched[1]))]
        return [FetchTask(covers, ("history", None if start <= HISTORY_START else start))]

    def settled_until(self) -> pd.Timestamp:
        """Daily bars before today (New York) are final (:func:`settled_until`, fixed for this request)."""
        return self.horizon

    def describe(self, task: FetchTask) -> str:
        kind, value = task.request
        if kind == "prefetched" or value is not None:
            return f"{self.symbol} daily history from {task.covers.start.tz_convert(NY).date()}"
        return f"{self.symbol} daily history (period=max)"

    def fetch(self, task: FetchTask) -> pd.DataFrame:
        kind, value = task.request
        return value if kind == "prefetched" else self._history(value)

    # -- revalidate: Yahoo re-writes history after splits and dividends -------------------------
    def revalidate(self, key: SeriesKey, writer: SeriesWriter) -> None:
        """Ask for the missing tail with a few stored days in front; if those differ, start over.

        Yahoo's OHLC, volumes and dividends are split-adjusted and ``Adj Close`` dividend-adjusted
        as of the day they are fetched. When the overlapping bars of a tail answer differ from
        the stored ones, stored history is stale: the series is dropped and asked for whole. The
        tail answer is kept for :meth:`plan`, so the usual case costs one request.
        """
        gaps = [g for g in writer.missing(self.need) if g.start < self.horizon]
        if not gaps or gaps[0].start <= HISTORY_START:
            return
        start = gaps[0].start
        stored = writer.store.read(key, start - OVERLAP, start, columns=STORE_COLUMNS)
        ask_from = stored.index[0] if len(stored) else start
        fresh = self._history(ask_from)
        if len(stored) and not _same_bars(stored, fresh[fresh.index < start]):
            log.info("Yahoo re-wrote the history of %s (split or dividend); fetching it whole again.", self.symbol)
            writer.discard()
            return
        self._prefetched = (start, fresh)


def _same_bars(stored: pd.DataFrame, fresh: pd.DataFrame) -> bool:
    if len(stored) != len(fresh) or not (stored.index.as_unit("ns") == fresh.index.as_unit("ns")).all():
        return False
    for column in ("open", "high", "low", "close", "volume", "adj_close", "dividend", "split_ratio"):
        a, b = stored[column].to_numpy(dtype="float64"), fresh[column].to_numpy(dtype="float64")
        if not np.allclose(a, b, rtol=1e-9, atol=0.0, equal_nan=True):
            return False
    return True


def history_to_bars(answer: Any, *, what: str) -> pd.DataFrame:
    """Store bars (UTC index ``ts``) from what ``Ticker.history(auto_adjust=False)`` returned.

    Rows with a missing value are dropped, as Lumibot's ``process_df`` drops them. Anything that
    is not a frame of Yahoo bars is a :class:`ProviderDataError`: nothing of it is stored.
    """
    if answer is None:
        return _no_bars()
    if not isinstance(answer, pd.DataFrame):
        raise _bad_answer(what, f"a {type(answer).__name__}, not a DataFrame")
    if answer.empty:
        return _no_bars()
    if not isinstance(answer.index, pd.DatetimeIndex):
        raise _bad_answer(what, f"an index of {answer.index.dtype} instead of dates (e.g. {answer.index[0]!r})")
    missing = [c for c in ("Open", "High", "Low", "Close") if c not in answer.columns]
    if missing:
        raise _bad_answer(what, f"no {', '.join(missing)} column(s) (got {list(answer.columns)})")
    frame = answer.dropna()
    columns: dict[str, Any] = {}
    for yahoo_name, name in _YAHOO_TO_STORE.items():
        if yahoo_name in frame.columns:
            values = pd.to_numeric(frame[yahoo_name], errors="coerce")
            bad = values.isna() & frame[yahoo_name].notna()
            if bad.any():
                raise _bad_answer(what, f"{int(bad.sum())} non-numeric {yahoo_name!r} value(s), "
                                        f"e.g. {frame[yahoo_name][bad].iloc[0]!r}")
            columns[name] = values.astype("float64").to_numpy()
    extra = [c for c in frame.columns if c not in _YAHOO_TO_STORE]
    index = frame.index if frame.index.tz is not None else frame.index.tz_localize(NY)
    bars = pd.DataFrame(columns, index=pd.DatetimeIndex(index.tz_convert("UTC"), name="ts"))
    bars["metadata"] = _extra_columns(frame, extra)
    return bars


def _extra_columns(frame: pd.DataFrame, extra: list[str]) -> Any:
    """Columns Yahoo sends beyond the schema's (``Capital Gains`` for funds) as one JSON object per bar."""
    if not extra:
        return None
    return [json.dumps({c: (None if pd.isna(v) else v) for c, v in zip(extra, row)}, default=float)
            for row in frame[extra].itertuples(index=False, name=None)]


def _bad_answer(what: str, problem: str) -> ProviderDataError:
    return bad_answer("Yahoo", what, problem, advice=YahooFetcher.advice)


def _no_bars() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("open", "high", "low", "close")})
    frame.index = pd.DatetimeIndex([], tz="UTC", name="ts")
    return frame


def legacy_frame(bars: pd.DataFrame, info: dict[str, Any] | None, *, auto_adjust: bool) -> pd.DataFrame:
    """Store bars → the frame ``YahooHelper.get_symbol_data`` hands Lumibot after a download."""
    frame = yahoo_history_frame(bars)
    frame = restamp(frame, info)
    frame = YahooHelper.process_df(frame, asset_info=info)
    return YahooHelper.format_df(frame, auto_adjust)


def yahoo_history_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """Store bars → the frame ``Ticker.history(interval="1d", auto_adjust=False)`` returned."""
    index = pd.DatetimeIndex(bars.index).as_unit("ns").tz_convert(NY).rename("Date")
    data: dict[str, Any] = {}
    for name in ("open", "high", "low", "close", "adj_close", "volume", "dividend", "split_ratio"):
        if name not in bars.columns or bars[name].isna().all():
            continue  # Yahoo did not send it
        values = bars[name].to_numpy(dtype="float64")
        if name == "volume" and not np.isnan(values).any() and (values == np.round(values)).all():
            data[_STORE_TO_YAHOO[name]] = values.astype("int64")  # yfinance's Volume is int64
        else:
            data[_STORE_TO_YAHOO[name]] = values
    frame = pd.DataFrame(data, index=index)
    metadata = bars["metadata"] if "metadata" in bars.columns else None
    if metadata is not None and metadata.notna().any():
        extra = pd.DataFrame([json.loads(m) if isinstance(m, str) else {} for m in metadata], index=index)
        for column in extra.columns:
            frame[column] = extra[column].astype("float64")
    return frame


def restamp(frame: pd.DataFrame, info: dict[str, Any] | None) -> pd.DataFrame:
    """The time-stamping ``YahooHelper.download_symbol_data`` applies after asking ``info``.

    US listings: every daily bar moves to 16:00 exchange time (the close); crypto: to 23:59.
    """
    if not info or not isinstance(info, dict):
        return frame
    market = info.get("market", "")
    tz_name = info.get("exchangeTimezoneName", None)
    if market not in ("us_market", "ccc_market") or not tz_name:
        return frame
    hour, minute = (16, 0) if market == "us_market" else (23, 59)
    if frame.index.tzinfo is None:
        frame.index = frame.index.tz_localize(tz_name)
    else:
        frame.index = frame.index.tz_convert(tz_name)
    # Lumibot maps ``t.replace(hour=hour, minute=minute)`` over the index, one Timestamp at a time;
    # the same wall-clock arithmetic, vectorised (seconds and below are kept, as replace keeps them).
    index = pd.DatetimeIndex(frame.index)
    wall = index.tz_localize(None)
    wall = wall - pd.to_timedelta(wall.hour * 60 + wall.minute, unit="min") + pd.Timedelta(hours=hour, minutes=minute)
    frame.index = pd.DatetimeIndex(wall.tz_localize(tz_name), name=index.name)
    return frame


def _router(current: Any) -> Any:
    def get_symbol_data(symbol: str, *args: Any, **kwargs: Any) -> Any:
        found = _ROUTE.get()
        if found is None or not found[0].use_duckdb:
            return current(symbol, *args, **kwargs)
        source, asset = found
        return source._yahoo_symbol_data(current, asset, symbol, *args, **kwargs)

    return get_symbol_data


route(YahooHelper, "get_symbol_data", _router, static=True)
