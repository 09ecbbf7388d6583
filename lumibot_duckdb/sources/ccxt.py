"""``CcxtBacktesting`` on the shared store.

Lumibot's class decides *what* to load (the whole backtest window plus 300 bars, once per symbol
and timeframe) and asks its cache, ``CcxtCacheDB.download_ohlcv(symbol, timeframe, start, end)``,
for a frame. That method is where this class takes over: it is wrapped once, at import, by a
router that passes every call straight through unless the cache belongs to an instance of this
class with the DuckDB path on.

On the DuckDB path:

* the constructor does not call ``load_markets()`` (a network call in Lumibot's constructor);
  markets are needed only to fetch, and the market entries used are kept in the store's
  metadata, so a warm run never asks for them;
* only the UTC days the store lacks are fetched, page by page at the exchange's own page size
  (binance 1000), with no sleeps between pages; candles still forming are fetched when asked
  for but never stored;
* candles are stored as the exchange sent them, float64: Lumibot's cache keeps them in
  ``DECIMAL(18,3)`` columns, which round every price and volume to 3 decimals (a coin at
  0.0000123 becomes 0). That is the one intended difference from Lumibot's path;
* the frame handed back is the one ``download_ohlcv`` returns: index ``datetime`` (UTC, naive),
  ``open high low close volume missing``, the bars with ``start <= datetime <= end``.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lumibot.backtesting.ccxt_backtesting import CcxtBacktesting as _LegacyCcxtBacktesting
from lumibot.constants import LUMIBOT_DEFAULT_PYTZ
from lumibot.tools import ccxt_data_store
from lumibot.tools.ccxt_data_store import CcxtCacheDB
from lumibot.tools.symbol_normalization import (
    build_ccxt_crypto_symbol,
    crypto_ccxt_symbol_candidates,
    resolve_ccxt_market_symbol,
)

from lumibot_duckdb.errors import CorruptFileError, ProviderDataError, StoreError
from lumibot_duckdb.log import get_logger
from lumibot_duckdb.sources.base import EnhancedDataSourceBacktesting, FetchTask, legacy_function, route
from lumibot_duckdb.sources.fill import bad_answer
from lumibot_duckdb.sources.retry import RetryPolicy
from lumibot_duckdb.sources.verify import between, patched_attributes
from lumibot_duckdb.sources.window import ROW_MARGIN, WindowPolicy, frame_bytes
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey
from lumibot_duckdb.store.store import SeriesWriter

SOURCE = "ccxt"
SETTLE = pd.Timedelta(minutes=15)
STEPS = {"1m": pd.Timedelta(minutes=1), "1h": pd.Timedelta(hours=1), "1d": pd.Timedelta(days=1)}
TIMEFRAMES = {"1m": "minute", "1h": "hour", "1d": "day"}
AHEAD = {"minute": pd.Timedelta(days=3), "hour": pd.Timedelta(days=90)}
"""How far past the clock a CCXT window is read (daily candles: to the end). Short, because every call
checks its window (a roll is due only when a request reaches past it) and a roll reads a DataFrame,
with no Lumibot ``Data`` to build. On the 50-symbol minute scan over two months (n=2 each), 3 days held
about half what 40 days held (data-held 0.44x of legacy's, against 0.82x) for a little more wall time
(0.91x of legacy's, against 0.86x; ``benchmarks/universe.py``)."""
CANDLES = ("open", "high", "low", "close", "volume")
DEFAULT_PAGE = 300
"""Candles per ``fetch_ohlcv`` call when the exchange does not say (Lumibot's own page size)."""
PAGES_PER_TASK = 10
"""Pages fetched one after the other by one fetch task (and stored as one file)."""
MARKETS_META = ("ccxt", "markets")

_BUILDING: contextvars.ContextVar[CcxtBacktesting | None] = contextvars.ContextVar("lumibot_duckdb_ccxt",
                                                                                     default=None)
_MARKETS_LOCK = threading.RLock()
log = get_logger(__name__)


class CcxtBacktesting(EnhancedDataSourceBacktesting, _LegacyCcxtBacktesting):
    """Lumibot's ``CcxtBacktesting`` with the DuckDB store behind its candle cache.

    Same class name and ``SOURCE`` ("CCXT") as Lumibot's. Extra keyword arguments:
    ``use_duckdb``, ``cache_dir``, ``strict`` (see :class:`EnhancedDataSourceBacktesting`);
    ``exchange_id`` and ``max_data_download_limit`` as in Lumibot.
    """

    WINDOW_POLICY = WindowPolicy(margin=pd.Timedelta(0), guard=pd.Timedelta(0), ahead=AHEAD)
    """A request reaches back an exact number of bars (and ``ROW_MARGIN`` more): no margin in time.
    Every call checks its window, so a window rolls only when a request reaches past its end."""

    def __init__(self, datetime_start: Any, datetime_end: Any, **kwargs: Any) -> None:
        self._served: dict[SeriesKey, tuple[Interval, pd.Timestamp]] = {}
        token = _BUILDING.set(self)  # Lumibot's constructor builds the CcxtCacheDB: see _init_router
        try:
            super().__init__(datetime_start, datetime_end, **kwargs)
        finally:
            _BUILDING.reset(token)

    def _ccxt_ohlcv(self, cache_db: CcxtCacheDB, legacy: Callable[..., pd.DataFrame], symbol: str,
                    timeframe: str, start: dt.datetime, end: dt.datetime | None,
                    limit: int | None = None) -> pd.DataFrame:
        """Stand-in for ``CcxtCacheDB.download_ohlcv`` (same arguments, same frame)."""

        def from_store() -> pd.DataFrame:
            return self._from_store(cache_db, symbol, timeframe, start, end)

        def legacy_call() -> pd.DataFrame:
            ensure_markets(cache_db)
            return legacy(cache_db, symbol, timeframe, start, end, limit)

        check = self.verify_check(legacy_call, series=f"{symbol} {timeframe}", request=f"{start} .. {end}",
                                  reuse=(symbol, timeframe, start, end), hold=(symbol, timeframe))
        return self.via_store(from_store, legacy_call, check=check)

    # -- the window of each series (bounded memory) ---------------------------------------------
    def _pull_source_symbol_bars(self, asset: Any, length: int | None = None, timestep: str = "minute",
                                 timeshift: Any = None, quote: Any = None, exchange: Any = None,
                                 include_after_hours: bool = True) -> pd.DataFrame | None:
        """Lumibot's slice (``index + bar <= now - timeshift``, last ``length`` bars) of a window of the series.

        Lumibot holds the whole backtest (plus 300 bars) of every symbol and masks it on every call;
        here the series is held from the longest lookback seen to a chunk ahead of the clock, and
        sliced by binary search. ``length=None`` (everything so far) keeps Lumibot's path.
        """
        if not self.use_duckdb or length is None:
            return super()._pull_source_symbol_bars(asset, length, timestep, timeshift, quote, exchange,
                                                    include_after_hours)
        if exchange is not None:
            log.warning("the exchange parameter is not implemented for CcxtData, but %s was passed", exchange)
        if isinstance(asset, tuple):
            symbol = f"{asset[0].symbol.upper()}/{asset[1].symbol.upper()}"
        elif quote is not None:
            symbol = f"{asset.symbol.upper()}/{quote.symbol.upper()}"
        else:
            symbol = asset
        timeframe = self._parse_source_timestep(timestep, reverse=True)
        key = f"{symbol}_{timeframe}"
        end = self.get_datetime()
        if timeshift:
            end = end - timeshift
        end = self.to_default_timezone(end)
        bar, _ = self.convert_timestep_str_to_timedelta(timestep)
        limit = pd.Timestamp(end - bar)
        window = self.duckdb_windows.need(key, bar * (int(length) + ROW_MARGIN), int(length) + 1)
        data = self._data_store.get(key)
        if data is None:
            if not (window.bare and window.held and not window.due(limit)):  # (an empty window still current:
                data = self._read_window(key, symbol, timeframe, limit)      # reading it again finds nothing)
        elif window.due(limit) or self._too_short(data, window, limit):
            data = self._read_window(key, symbol, timeframe, limit)
        if data is None:
            log.error("%s did not return data for asset %s. Make sure this symbol is valid.", self.SOURCE, symbol)
            return None
        stop = int(data.index.searchsorted(limit, side="right"))
        return data.iloc[max(0, stop - int(length)):stop].copy()

    @staticmethod
    def _too_short(data: pd.DataFrame, window: Any, limit: pd.Timestamp) -> bool:
        if window.start is None or window.first is None or window.start <= window.first:
            return False
        return int(data.index.searchsorted(limit, side="right")) < window.rows + ROW_MARGIN

    def _read_window(self, key: str, symbol: str, timeframe: str, limit: pd.Timestamp) -> pd.DataFrame | None:
        """Read (or roll) the window of ``key`` around ``limit`` from the store; None if the series has no bars."""
        with self.data_layer(seam=False):
            return self._read_window_now(key, symbol, timeframe, limit)

    def _read_window_now(self, key: str, symbol: str, timeframe: str, limit: pd.Timestamp) -> pd.DataFrame | None:
        window = self.duckdb_windows.window(key)
        first = self._to_utc_timezone(self.datetime_start) - self._prebuffer(timeframe)
        last = self._to_utc_timezone(self.datetime_end)
        window.place(_utc(first), _utc(last), TIMEFRAMES[timeframe])
        start, stop = window.bounds(limit)
        def read(since: pd.Timestamp) -> pd.DataFrame:
            until = stop + pd.Timedelta(microseconds=1)
            check = self.verify_check(self._legacy_download(symbol, timeframe, first, last),
                                      series=f"{symbol} {timeframe}", request=f"window {since} .. {stop}",
                                      select=lambda whole: between(whole, since, until),
                                      reuse=(symbol, timeframe, first, last), hold=(symbol, timeframe))
            frame = self.via_store(
                lambda: self._from_store(self.cache_db, symbol, timeframe, first, last, read=Interval(since, until)),
                lambda: self.cache_db.download_ohlcv(symbol, timeframe, first, last), check=check)
            if frame is not None and not frame.empty:
                frame.index = frame.index.tz_localize("UTC").tz_convert(LUMIBOT_DEFAULT_PYTZ)
            return frame if frame is not None else pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC"))

        frame, start = window.read(start, limit, read)
        if frame.empty:  # an empty window is a window: held (no candles) until the clock reaches its end
            self._data_store.pop(key, None)
            for other in self.duckdb_windows.loaded(key, start, stop, 0):
                self._data_store.pop(other, None)
            window.bare = self.use_duckdb
            return None
        data = self._append_data(key, frame)
        if not self.use_duckdb:  # fell back to Lumibot's cache: it returned the whole range
            start, stop = window.first, window.last
        for other in self.duckdb_windows.loaded(key, start, stop, frame_bytes(data)):
            self._data_store.pop(other, None)
        return data

    # -- verify mode -------------------------------------------------------------------------------
    def _legacy_download(self, symbol: str, timeframe: str, start: dt.datetime,
                         end: dt.datetime) -> Callable[[], pd.DataFrame]:
        """Lumibot's own ``download_ohlcv`` for this request (below the router), markets loaded as it needs."""
        original = legacy_function(CcxtCacheDB, "download_ohlcv")

        def call() -> pd.DataFrame:
            ensure_markets(self.cache_db)
            return original(self.cache_db, symbol, timeframe, start, end)

        return call

    def _legacy_cache_at(self, folder: Path) -> contextlib.AbstractContextManager[None]:
        return patched_attributes((ccxt_data_store, "LUMIBOT_CACHE_FOLDER", str(folder)))

    def _declared_difference(self, ours: Any, legacy: Any) -> str | None:
        return declared_difference(ours, legacy)

    def _prebuffer(self, timeframe: str) -> dt.timedelta:
        unit = {"1d": "days", "1h": "hours"}.get(timeframe, "minutes")
        return dt.timedelta(**{unit: self._download_start_dt_prebuffer})

    # -- the seam ------------------------------------------------------------------------------------
    def _from_store(self, cache_db: CcxtCacheDB, symbol: str, timeframe: str, start: dt.datetime,
                    end: dt.datetime | None, read: Interval | None = None) -> pd.DataFrame:
        if timeframe not in STEPS:
            raise ValueError(f"Unsupported CCXT timeframe {timeframe!r}; expected one of {sorted(STEPS)}")
        exchange_id = cache_db.exchange_id
        symbol = build_ccxt_crypto_symbol(symbol, exchange_id=exchange_id) or symbol
        first_day, last_instant = cache_db._normalize_download_window(start, end)
        if first_day > last_instant:  # the window starts after the exchange's present
            return _empty_legacy_frame(cache_db)
        key = ccxt_series_key(symbol, timeframe, exchange_id)
        wanted = Interval(_utc(first_day), _utc(last_instant) + pd.Timedelta(microseconds=1))
        legacy_range = cache_db._to_utc_naive(start), cache_db._to_utc_naive(end or last_instant)
        served = self._served.get(key)
        if read is not None and served is not None and served[0].start <= wanted.start \
                and wanted.end <= min(served[0].end, served[1]):
            try:  # a window roll: this process already made the whole range present (and all of it final)
                bars = self.store.read(key, read.start, read.end, columns=CANDLES)
                self.duckdb_stats.add(bars_served=len(bars))
                return legacy_frame(bars, *legacy_range, cache_db)
            except CorruptFileError:  # set aside by the read: fill that range again below
                self._served.pop(key, None)
        provider = CcxtFetcher(cache_db, symbol, timeframe, markets=MarketBook(self.store, exchange_id))
        bars = self.serve(key, wanted, provider, columns=CANDLES, read=read)
        horizon = provider.horizon
        self._served[key] = (wanted, horizon)
        if wanted.end > horizon:  # candles still forming: fetched every time, never stored
            task = provider.task(Interval(max(horizon, wanted.start), wanted.end))
            tail = self.duckdb_retry.call(lambda: provider.fetch(task), source=provider.name,
                                          what=provider.describe(task), series=key, interval=task.covers)
            tail = tail[(tail.index >= horizon) & (tail.index < wanted.end)]
            bars = pd.concat([bars[bars.index < horizon], tail[list(bars.columns)]])
        return legacy_frame(bars, *legacy_range, cache_db)


def prefetch(store: DuckDBDataStorage, symbol: str, timeframe: str, first: dt.date, last: dt.date, *,
             exchange_id: str = "binance") -> tuple[SeriesKey, Interval, CcxtFetcher]:
    """What a backtest over ``first``..``last`` fills for ``BASE/QUOTE`` candles (:mod:`lumibot_duckdb.fetch`):
    the series, the whole UTC days, and the provider on a market-less exchange object (markets are loaded
    only if the store has not kept the pair's entry), as :meth:`CcxtBacktesting._from_store` builds them.
    Candles are public: no key is needed, as in Lumibot's backtests."""
    if timeframe not in STEPS:
        raise ValueError(f"Unsupported CCXT timeframe {timeframe!r}; expected one of {sorted(STEPS)}")
    cache_db = CcxtCacheDB.__new__(CcxtCacheDB)
    _init_without_markets(cache_db, exchange_id, None, None)
    symbol = build_ccxt_crypto_symbol(symbol, exchange_id=exchange_id) or symbol
    wanted = Interval(pd.Timestamp(first, tz="UTC"), pd.Timestamp(last + dt.timedelta(days=1), tz="UTC"))
    provider = CcxtFetcher(cache_db, symbol, timeframe, markets=MarketBook(store, exchange_id))
    return ccxt_series_key(symbol, timeframe, exchange_id), wanted, provider
DECIMAL_DEFECT = "prices and volumes stored as DECIMAL(18,3)"
DUPLICATE_DEFECT = "candles identical to an earlier one dropped"
"""The two known defects of Lumibot 4.6.30's CCXT cache, the declared differences of this source."""


def declared_difference(ours: Any, legacy: Any) -> str | None:
    """Which declared legacy defect(s) explain why ``legacy`` (a ``download_ohlcv`` frame) differs from ``ours``.

    * :data:`DECIMAL_DEFECT`: every legacy value is the store's rounded to 3 decimals (Lumibot's cache
      keeps ``DECIMAL`` columns, DECIMAL(18,3) in DuckDB);
    * :data:`DUPLICATE_DEFECT`: the rows legacy lacks each repeat the values of an earlier candle
      (Lumibot's download ends with ``drop_duplicates()`` on a frame indexed by time).

    None when the difference is anything else (another index, dtype, column, or value).
    """
    if not isinstance(ours, pd.DataFrame) or not isinstance(legacy, pd.DataFrame):
        return None
    if list(ours.columns) != list(legacy.columns) or ours.index.dtype != legacy.index.dtype \
            or list(ours.dtypes) != list(legacy.dtypes):
        return None
    found = []
    if not ours.index.equals(legacy.index):
        extra = ours.index.difference(legacy.index)
        if len(legacy.index.difference(ours.index)) or not len(extra):
            return None
        values = ours[list(CANDLES)]
        repeated = values.round(3).duplicated(keep="first") | values.duplicated(keep="first")
        if not repeated[ours.index.isin(extra)].all():
            return None
        ours = ours.loc[legacy.index]
        found.append(f"{DUPLICATE_DEFECT} ({len(extra)})")
    mine = ours[list(CANDLES)].to_numpy(dtype="float64")
    theirs = legacy[list(CANDLES)].to_numpy(dtype="float64")
    if not np.array_equal(mine, theirs, equal_nan=True):
        whole = np.isclose(theirs * 1000, np.round(theirs * 1000), rtol=0, atol=1e-6) | np.isnan(theirs)
        near = (np.abs(mine - theirs) <= 0.0005 + 1e-9 * np.abs(mine)) | (np.isnan(mine) & np.isnan(theirs))
        if not (whole.all() and near.all()):
            return None
        found.append(DECIMAL_DEFECT)
    if "missing" in ours.columns and not np.array_equal(ours["missing"].to_numpy(), legacy["missing"].to_numpy()):
        return None
    return "; ".join(found) or None


def ccxt_series_key(symbol: str, timeframe: str, exchange_id: str) -> SeriesKey:
    """The store's key of ``BASE/QUOTE`` candles of one exchange (``timeframe`` in ccxt's ``1m``/``1h``/``1d``)."""
    base, _, quote = symbol.partition("/")
    return SeriesKey(source=SOURCE, symbol=base, timeframe=TIMEFRAMES.get(timeframe, timeframe),
                     asset_type="crypto", quote=quote, exchange=exchange_id)


class MarketBook:
    """The exchange's market entries this store has used, so that resolving a symbol needs no network.

    ``load_markets()`` downloads every market of an exchange (thousands on binance); only the
    entries of symbols actually fetched are kept, in the store's metadata folder. A symbol not
    kept yet loads the markets once, like Lumibot's constructor does on every run.
    """

    def __init__(self, store: DuckDBDataStorage, exchange_id: str) -> None:
        self.store = store
        self.exchange_id = exchange_id
        self.parts = (*MARKETS_META, f"{exchange_id}.json")

    def kept(self) -> dict[str, dict[str, Any]]:
        try:
            document = self.store.read_note(*self.parts)
        except StoreError:
            return {}
        markets = document.get("markets") if isinstance(document, dict) else None
        return markets if isinstance(markets, dict) else {}

    def keep(self, symbol: str, entry: dict[str, Any]) -> None:
        """Add one market entry (a failure costs one more ``load_markets()`` later, nothing else)."""
        markets = self.kept()
        markets[symbol] = entry
        try:
            self.store.write_note({"exchange": self.exchange_id, "markets": markets}, *self.parts)
        except (StoreError, TypeError, ValueError) as exc:
            log.warning("Could not keep the %s market entry of %s: %s", self.exchange_id, symbol, exc)

    def resolve(self, cache_db: CcxtCacheDB, symbol: str) -> str:
        """The exchange's unified symbol for ``symbol``; the exchange object can then fetch it.

        Raises ``ValueError`` (Lumibot's error) when the exchange has no such market.
        """
        with _MARKETS_LOCK:  # Lumibot fetches several symbols at once (get_bars' thread pool)
            return self._resolve(cache_db, symbol)

    def _resolve(self, cache_db: CcxtCacheDB, symbol: str) -> str:
        api = cache_db.api
        kept = self.kept()
        resolved = resolve_ccxt_market_symbol(kept, symbol, exchange_id=self.exchange_id)
        if getattr(cache_db, "_lumibot_duckdb_markets_loaded", False):
            resolved = None  # every market is at hand: resolve against all of them
        elif resolved is not None:
            markets = dict(getattr(api, "markets", None) or {})
            if resolved not in markets:
                markets.update(kept)
                try:
                    api.set_markets(markets)
                except Exception:  # noqa: BLE001 - an entry ccxt cannot use: load the real ones
                    resolved = None
            if resolved is not None:
                return resolved
        ensure_markets(cache_db)
        resolved = _resolve_or_raise(api.markets, symbol, self.exchange_id)
        entry = api.markets.get(resolved)
        if isinstance(entry, dict) and resolved not in kept:
            self.keep(resolved, entry)
        return resolved


def ensure_markets(cache_db: CcxtCacheDB, policy: RetryPolicy | None = None) -> None:
    """``load_markets()`` as Lumibot's constructor does it, once per cache; retried like every request.

    (Lumibot tries any error three times; here a network failure is retried by ``policy`` and an
    exchange's refusal is raised at once.)
    """
    if getattr(cache_db, "_lumibot_duckdb_markets_loaded", True):
        return
    source = getattr(cache_db, "_lumibot_duckdb_source", None)
    policy = policy or getattr(source, "duckdb_retry", None) or RetryPolicy.from_settings()
    policy.call(lambda: cache_db.api.load_markets(reload=True), source=cache_db.exchange_id,
                what=f"the {cache_db.exchange_id} market list (load_markets)")
    cache_db._lumibot_duckdb_markets_loaded = True


def _resolve_or_raise(markets: Any, symbol: str, exchange_id: str) -> str:
    resolved = resolve_ccxt_market_symbol(markets, symbol, exchange_id=exchange_id)
    if resolved is None:
        tried = crypto_ccxt_symbol_candidates(symbol, exchange_id=exchange_id)
        raise ValueError(
            f"CCXT market not found for {symbol!r} on {exchange_id}. "
            f"Tried {tried}. Use BASE/QUOTE (e.g. BTC/USD) rather than BTC-USD or BTC-USD/USD."
        )
    return resolved


class CcxtFetcher:
    """The CCXT side of :meth:`EnhancedDataSourceBacktesting.serve` for one symbol and timeframe."""

    max_workers = 4
    advice = "check the symbol, the timeframe and the exchange's status."

    def __init__(self, cache_db: CcxtCacheDB, symbol: str, timeframe: str, *, markets: MarketBook) -> None:
        self.cache_db = cache_db
        self.symbol = symbol
        self.timeframe = timeframe
        self.step = STEPS[timeframe]
        self.markets = markets
        self.page = page_limit(cache_db.api)
        self.horizon = _floor(pd.Timestamp.now(tz="UTC") - SETTLE, self.step)
        """Fixed for this fetcher's life, so the stored part and the forming tail meet exactly."""
        self._market_symbol: str | None = None
        self._lock = threading.Lock()
        self.calls = 0
        """``fetch_ohlcv`` calls made so far (a fetch task is up to ``PAGES_PER_TASK`` of them)."""

    @property
    def market_symbol(self) -> str:
        with self._lock:
            if self._market_symbol is None:
                self._market_symbol = self.markets.resolve(self.cache_db, self.symbol)
            return self._market_symbol

    # -- plan: the missing settled ranges, in tasks of PAGES_PER_TASK pages --------------------------
    def plan(self, key: SeriesKey, missing: list[Interval]) -> list[FetchTask]:
        span = self.step * self.page * PAGES_PER_TASK
        tasks = []
        for gap in missing:
            cursor = gap.start
            while cursor < gap.end:
                stop = min(gap.end, cursor + span)
                tasks.append(self.task(Interval(cursor, stop)))
                cursor = stop
        if tasks:
            _ = self.market_symbol  # resolve once, before the pages are fetched in parallel
        return tasks

    def task(self, covers: Interval) -> FetchTask:
        first = _ceil(covers.start, self.step)
        return FetchTask(covers, (first, covers.end))

    def settled_until(self) -> pd.Timestamp:
        """Candles that start before this are final: closed for at least 15 minutes (:attr:`horizon`).

        Nothing later is recorded as covered, so a backtest reaching today asks the exchange
        again for what was still forming (Lumibot's shared bar cache uses the same 15 minutes).
        """
        return self.horizon

    @property
    def name(self) -> str:
        """The exchange, as users know it (``binance``)."""
        return str(self.cache_db.exchange_id)

    def describe(self, task: FetchTask) -> str:
        first, stop = task.request
        return f"{self.symbol} {self.timeframe} candles {_when(first)}..{_when(stop)}"

    # -- fetch: fetch_ohlcv page after page, no sleeps -------------------------------------------
    def fetch(self, task: FetchTask) -> pd.DataFrame:
        first, stop = task.request
        api = self.cache_db.api
        step_ms = int(self.step / pd.Timedelta(milliseconds=1))
        since, end_ms = _ms(first), _ms(stop)
        pages: list[pd.DataFrame] = []
        while since < end_ms:
            count = min(self.page, math.ceil((end_ms - since) / step_ms))
            with self._lock:
                self.calls += 1
            rows = api.fetch_ohlcv(self.market_symbol, self.timeframe, since=since, limit=count, params={})
            what = (f"{self.market_symbol} {self.timeframe} candles from "
                    f"{pd.Timestamp(since, unit='ms', tz='UTC')} (limit {count})")
            bars = ohlcv_to_bars(rows, what=what)
            if bars.empty:
                since += count * step_ms
                continue
            pages.append(bars)
            since = max(_ms(bars.index[-1]) + step_ms, since + step_ms)
        if not pages:
            return ohlcv_to_bars([], what="")
        frame = pd.concat(pages) if len(pages) > 1 else pages[0]
        return frame[~frame.index.duplicated(keep="last")].sort_index()

    def revalidate(self, key: SeriesKey, writer: SeriesWriter) -> None:
        """Exchange candles are never re-adjusted: stored ones stay valid."""


def page_limit(api: Any) -> int:
    """The most candles one ``fetch_ohlcv`` call of this exchange returns (ccxt's ``features``)."""
    features = getattr(api, "features", None) or {}
    for market_type in ("spot", "swap", "future"):
        section = features.get(market_type) if isinstance(features, dict) else None
        if isinstance(section, dict):
            section = section.get("linear", section) if "fetchOHLCV" not in section else section
            ohlcv = section.get("fetchOHLCV") if isinstance(section, dict) else None
            limit = ohlcv.get("limit") if isinstance(ohlcv, dict) else None
            if isinstance(limit, int) and limit > 0:
                return limit
    return DEFAULT_PAGE


def ohlcv_to_bars(rows: Any, *, what: str) -> pd.DataFrame:
    """Bars (UTC index ``ts``, float64 as sent) from what ``fetch_ohlcv`` returned.

    A list of ``[timestamp_ms, open, high, low, close, volume]`` rows is expected; a missing
    volume counts as 0 (as Lumibot's cache does). Anything else is a :class:`ProviderDataError`:
    nothing of it is stored.
    """
    if not isinstance(rows, (list, tuple)):
        raise _bad_answer(what, f"a {type(rows).__name__}, not a list of candles")
    stamps = np.empty(len(rows), dtype="int64")
    values = np.empty((len(rows), 5), dtype="float64")
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) < 6:
            raise _bad_answer(what, f"candle #{i} {row!r}: not [timestamp, open, high, low, close, volume]")
        stamp, *numbers = row[:6]
        if isinstance(stamp, bool) or (not isinstance(stamp, (int, np.integer)) and not (
                isinstance(stamp, float) and stamp.is_integer())):
            raise _bad_answer(what, f"candle #{i} {row!r}: the timestamp is not whole milliseconds")
        if numbers[4] is None:
            numbers[4] = 0.0
        if not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in numbers):
            raise _bad_answer(what, f"candle #{i} {row!r}: a price or volume is not a number")
        stamps[i] = int(stamp)
        values[i] = numbers
    if not np.isfinite(values[:, :4]).all():
        bad = int((~np.isfinite(values[:, :4])).any(axis=1).sum())
        raise _bad_answer(what, f"{bad} candle(s) without a finite open/high/low/close")
    index = pd.DatetimeIndex(pd.to_datetime(stamps, unit="ms", utc=True), name="ts")
    frame = pd.DataFrame(values, columns=["open", "high", "low", "close", "volume"], index=index)
    if not (index.is_monotonic_increasing and index.is_unique):
        frame = frame.sort_index(kind="stable")
        frame = frame[~frame.index.duplicated(keep="last")]
    return frame


def _bad_answer(what: str, problem: str) -> ProviderDataError:
    return bad_answer("The exchange", what, problem, advice=CcxtFetcher.advice)


def legacy_frame(bars: pd.DataFrame, start: dt.datetime, end: dt.datetime, cache_db: CcxtCacheDB) -> pd.DataFrame:
    """Store bars → the frame ``CcxtCacheDB.download_ohlcv`` returns for ``start``..``end`` (naive UTC, inclusive).

    Index ``datetime`` (naive UTC, DuckDB's timestamp unit), columns ``open high low close
    volume`` (float64) and ``missing`` (int64, always 0).
    """
    index = bars.index.tz_convert("UTC").tz_localize(None)
    inside = (index >= pd.Timestamp(start)) & (index <= pd.Timestamp(end))
    if not inside.any():
        return _empty_legacy_frame(cache_db)
    chosen = bars[inside]
    frame = pd.DataFrame(
        {name: chosen[name].to_numpy(dtype="float64") for name in ("open", "high", "low", "close")}
        | {"volume": np.nan_to_num(chosen["volume"].to_numpy(dtype="float64"), nan=0.0),
           "missing": np.zeros(len(chosen), dtype="int64")},
        index=pd.DatetimeIndex(index[inside]).as_unit(_duckdb_timestamp_unit()).rename("datetime"),
    )
    return frame


def _empty_legacy_frame(cache_db: CcxtCacheDB) -> pd.DataFrame:
    return cache_db._empty_ohlcv_frame().set_index("datetime")


@functools.lru_cache(maxsize=1)
def _duckdb_timestamp_unit() -> str:
    """The unit of a TIMESTAMP column in DuckDB's ``fetch_df`` (Lumibot's cache reads through it): us or ns."""
    import duckdb

    con = duckdb.connect(":memory:")
    try:
        frame = con.execute("SELECT TIMESTAMP '2024-01-01 00:00:00' AS t").fetch_df()
    finally:
        con.close()
    return str(np.datetime_data(frame["t"].dtype)[0])


def _when(stamp: pd.Timestamp) -> str:
    """A UTC instant, short: ``2024-01-21`` at midnight, else ``2024-01-21 13:05``."""
    stamp = pd.Timestamp(stamp).tz_convert("UTC")
    return str(stamp.date()) if stamp == stamp.normalize() else stamp.strftime("%Y-%m-%d %H:%M")


def _utc(value: dt.datetime) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _floor(stamp: pd.Timestamp, step: pd.Timedelta) -> pd.Timestamp:
    epoch = pd.Timestamp(0, tz="UTC")
    return epoch + ((stamp - epoch) // step) * step


def _ceil(stamp: pd.Timestamp, step: pd.Timedelta) -> pd.Timestamp:
    floor = _floor(stamp, step)
    return floor if floor == stamp else floor + step


def _ms(stamp: pd.Timestamp) -> int:
    return int(stamp.value // 1_000_000)


# -- the routes ------------------------------------------------------------------------------------
def _init_without_markets(cache_db: CcxtCacheDB, exchange_id: str, max_download_limit: int | None,
                          source: CcxtBacktesting | None) -> None:
    """``CcxtCacheDB.__init__`` without its ``load_markets()``: markets are loaded when first needed."""
    import ccxt
    from lumibot.tools.ccxt_partner_ids import apply_partner_config
    from lumibot.tools.lumibot_logger import get_logger

    cache_db.logger = get_logger(CcxtCacheDB.__name__)
    exchange_class = getattr(ccxt, exchange_id, None)
    if not isinstance(exchange_class, type):
        raise Exception(  # Lumibot's error, word for word
            f"Could not find exchange named '{exchange_id}'. Are you sure you are spelling the exchange_id correctly?")
    cache_db.exchange_id = exchange_id
    cache_db.api = exchange_class()
    apply_partner_config(cache_db.api)
    cache_db.api.enableRateLimit = True  # the exchange's own pace when the store has to fetch
    cache_db.max_download_limit = 50000 if max_download_limit is None else max_download_limit
    cache_db._lumibot_duckdb_markets_loaded = False
    cache_db._lumibot_duckdb_source = source


def _init_router(current: Any) -> Any:
    def __init__(self: CcxtCacheDB, exchange_id: str, max_download_limit: int | None = None) -> None:
        source = _BUILDING.get()
        if source is None or not source.use_duckdb:
            current(self, exchange_id, max_download_limit)
        else:
            _init_without_markets(self, exchange_id, max_download_limit, source)

    return __init__


def _download_router(current: Any) -> Any:
    def download_ohlcv(self: CcxtCacheDB, symbol: str, timeframe: str, start: dt.datetime,
                       end: dt.datetime, limit: int | None = None) -> pd.DataFrame:
        source = getattr(self, "_lumibot_duckdb_source", None)
        if source is None:
            return current(self, symbol, timeframe, start, end, limit)
        if not source.use_duckdb:  # fell back to the legacy path
            ensure_markets(self)
            return current(self, symbol, timeframe, start, end, limit)
        return source._ccxt_ohlcv(self, current, symbol, timeframe, start, end, limit)

    return download_ohlcv


route(CcxtCacheDB, "__init__", _init_router)
route(CcxtCacheDB, "download_ohlcv", _download_router)
