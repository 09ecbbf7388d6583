"""``PolygonDataBacktesting`` on the shared store.

Lumibot's class decides *what* to load (``_update_pandas_data``: lookback, buffer, preferring
finer data); the single call it makes to the provider layer,
``polygon_helper.get_price_data_from_polygon(api_key, asset, start, end, timespan, quote_asset)``,
is where this class takes over. That helper is wrapped once, at import, by a router that
passes every call straight through unless it comes from an instance of this class with the
DuckDB path on (a context variable, so threads and other data sources are unaffected).

On the DuckDB path the range is served by :meth:`EnhancedDataSourceBacktesting.serve` and handed
back in exactly the frame the legacy helper returns on a cold cache: UTC index ``datetime``,
Polygon's raw columns, no placeholder rows, filtered the same way.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import functools
import json
import threading
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
from lumibot.backtesting.polygon_backtesting import START_BUFFER
from lumibot.backtesting.polygon_backtesting import PolygonDataBacktesting as _LegacyPolygonDataBacktesting
from lumibot.constants import LUMIBOT_DEFAULT_PYTZ
from lumibot.entities import Asset
from lumibot.tools import polygon_helper
from lumibot.tools.helpers import parse_timestep_qty_and_unit
from polygon.exceptions import BadResponse
from polygon.rest.base import BaseClient

from lumibot_duckdb.errors import CorruptFileError, ProviderDataError
from lumibot_duckdb.log import get_logger
from lumibot_duckdb.sources.base import EnhancedDataSourceBacktesting, FetchTask, route
from lumibot_duckdb.sources.fill import bad_answer
from lumibot_duckdb.sources.lumibot_data import WindowData, data_bytes, prepare
from lumibot_duckdb.sources.verify import between, patched_attributes
from lumibot_duckdb.store import Interval, SeriesKey, series_key
from lumibot_duckdb.store.schema import empty_bars
from lumibot_duckdb.store.store import SeriesWriter

log = get_logger(__name__)

SOURCE = "polygon"
SETTLE = pd.Timedelta(minutes=15)
ADJUSTMENT = "split"  # Polygon aggregates are split-adjusted unless adjusted=false is asked for
POLYGON_COLUMNS = ("open", "high", "low", "close", "volume", "vwap", "trade_count", "metadata")

_ROUTE: contextvars.ContextVar[PolygonDataBacktesting | None] = contextvars.ContextVar("lumibot_duckdb_polygon",
                                                                                          default=None)
_WINDOWED: contextvars.ContextVar[bool | None] = contextvars.ContextVar("lumibot_duckdb_polygon_window",
                                                                      default=None)
"""True inside a backtest's request (the seam returns a window); False for a range asked whole."""


class PolygonDataBacktesting(EnhancedDataSourceBacktesting, _LegacyPolygonDataBacktesting):
    """Lumibot's ``PolygonDataBacktesting`` with the DuckDB store behind its Polygon seam.

    Same class name and ``SOURCE`` as Lumibot's (Lumibot keys behaviour on both). Extra keyword
    arguments: ``use_duckdb``, ``cache_dir``, ``strict`` (see :class:`EnhancedDataSourceBacktesting`).

    On the DuckDB path each series is held as a window of bars around the clock (a Lumibot ``Data``
    over that window, rolled as the clock advances; :mod:`lumibot_duckdb.sources.window`), not as
    the whole range. ``max_memory`` (Lumibot's keyword, also filled from ``POLYGON_MAX_MEMORY_BYTES``
    by Lumibot's ``run_backtest``) is the budget of those windows; on the legacy path it is handed
    to Lumibot's class unchanged.
    """

    LEGACY_TAKES_MAX_MEMORY = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lookbacks: dict[tuple[int, str], tuple[pd.Timedelta, int]] = {}
        self._units: dict[tuple[int, str], str] = {}
        self._next_roll: pd.Timestamp | None = None
        self._widened: set[Any] = set()
        self._clock: tuple[Any, pd.Timestamp] | None = None
        self._seams = 0
        """Calls of the seam (``_polygon_prices``) so far: after one, Lumibot builds a new ``Data``."""
        super().__init__(*args, **kwargs)

    # -- the window of each series -----------------------------------------------------------------
    def _update_pandas_data(self, asset: Any, quote: Any, length: Any, timestep: Any, start_dt: Any = None) -> Any:
        if not self.use_duckdb:
            return super()._update_pandas_data(asset, quote, length, timestep, start_dt)
        key = _data_key(asset, quote)
        now = self._now()
        span, rows = self._lookback(length, timestep)
        kind = (length, timestep)
        window = self.duckdb_windows.need(key, span, rows, kind=kind)
        base = self._base_ns(start_dt)
        if window.data_id and window.reach is None and not window.due(now):
            enough = window.enough.get(kind)
            if enough is not None and base >= enough:
                return None  # Lumibot's check below found this Data enough, from an earlier clock: it still is
        if window.bare and window.reach is None and self._still_bare(key, window, kind, now, base - span.value):
            return None  # Lumibot would ask the seam for the series, which answers "no bars" from the empty window
        token = _ROUTE.set(self)
        windowed = _WINDOWED.set(True) if _WINDOWED.get() is None else None
        seams = self._seams
        try:
            # (a window no longer held was dropped by the budget: read again)
            if window.first is not None and (window.due(now) or not window.held):
                self._read_window(key, now)
            waiting = self.duckdb_error
            try:
                result = super()._update_pandas_data(asset, quote, length, timestep, start_dt)
            except Exception:
                self.reraise_swallowed(since=waiting)  # ours, not Lumibot's "Error getting data from Polygon"
                raise
            known = window.enough.get(kind)
            if self._seams == seams and window.data_id and (known is None or base < known):
                # Lumibot kept the Data it holds (its check: the Data starts early enough for this
                # request, which only gets easier as ``start_dt`` advances); it will again from here on
                window.enough[kind] = base
            return result
        finally:
            if window.reach is not None:  # served a request asked for the first time: shrink after it
                self._widened.add(key)
                window.reach = None
            if windowed is not None:
                _WINDOWED.reset(windowed)
            _ROUTE.reset(token)
            if self._seams != seams:  # Lumibot loaded through the seam: it built a new Data
                self._adopt(key, window)

    def _pull_source_symbol_bars(self, asset: Any, length: Any, timestep: Any = "day", timeshift: Any = None,
                                 quote: Any = None, exchange: Any = None, include_after_hours: bool = True) -> Any:
        bars = super()._pull_source_symbol_bars(asset, length, timestep, timeshift, quote, exchange,
                                                include_after_hours)
        if self._widened and self.use_duckdb:  # a request asked for the first time may have widened the window
            key = _data_key(asset, quote)
            if key in self._widened:
                self._widened.discard(key)
                window = self.duckdb_windows.windows.get(key)
                now = self._now()
                if window is not None and key in self.pandas_data and window.oversized(now):
                    self._read_window(key, now)  # shrink it back
        return bars

    def _still_bare(self, key: Any, window: Any, kind: Any, now: pd.Timestamp, request_ns: int) -> bool:
        """True when a request of ``kind`` reaching back to ``request_ns`` would get "no bars" from the seam: the
        series' window is empty and current, Lumibot holds nothing for it and would ask in the window's bars,
        and the store was already filled that far back (the seam's own check, without building its arguments)."""
        return (window.held and key not in self.pandas_data and window.timestep == self._units.get(kind)
                and not window.due(now) and window.filled is not None
                and window.filled[0].value <= request_ns - _DAY_NS and window.start <= window.bounds(now)[0])

    def _base_ns(self, start_dt: Any) -> int:
        """Where Lumibot's ``get_start_datetime_and_ts_unit`` counts a request's lookback back from, in ns."""
        if start_dt is None:
            start_dt = self.datetime_start
        clock = self._clock
        if clock is not None and start_dt is clock[0]:
            return clock[1].value
        return _ts(start_dt).value

    def _now(self) -> pd.Timestamp:
        """The clock as a zoned ``Timestamp`` (made once per clock step: requests ask for it many times)."""
        current = self.get_datetime()
        cached = self._clock
        if cached is None or cached[0] is not current:
            cached = self._clock = (current, _ts(current))
        return cached[1]

    def _lookback(self, length: Any, timestep: Any) -> tuple[pd.Timedelta, int]:
        """How far back (time, and bars of a minute series) a request reaches, as Lumibot computes it."""
        memo = (length, timestep)
        found = self._lookbacks.get(memo)
        if found is None:
            anchor = self.datetime_start
            try:
                start, unit = self.get_start_datetime_and_ts_unit(length, timestep, anchor, start_buffer=START_BUFFER)
                quantity, _ = parse_timestep_qty_and_unit(timestep)
                # bars of the series the request slices: minute bars for minute and hour requests (hours
                # are resampled from minutes); day requests reach back in time (``span`` covers them)
                per_bar = 60 if unit == "hour" else 1
                found = (pd.Timedelta(anchor - start), int(length or 1) * int(quantity) * per_bar)
                self._units[memo] = unit
            except Exception:  # noqa: BLE001 - Lumibot raises its own error for this request just after
                found = (pd.Timedelta(0), 0)
            self._lookbacks[memo] = found
        return found

    def _adopt(self, key: Any, window: Any) -> None:
        """After Lumibot (re)built the ``Data`` of ``key`` from the seam: account for it, drop others if over budget."""
        data = self.pandas_data.get(key)
        if data is None or window.data_id == id(data):
            return
        window.holds(id(data))
        if window.first is None or window.start is None:  # not from the store (e.g. pandas_data=): left alone
            return
        self._held(key, data, window)

    def _held(self, key: Any, data: Any, window: Any) -> None:
        prepare(data)
        assert window.start is not None and window.end is not None
        for other in self.duckdb_windows.loaded(key, window.start, window.end, data_bytes(data)):
            self.pandas_data.pop(other, None)
        self._next_roll = self.duckdb_windows.next_roll()

    def _read_window(self, key: Any, now: pd.Timestamp) -> None:
        """(Re)build the ``Data`` of ``key`` over the window around ``now``, from the store."""
        def legacy_call() -> None:  # the store failed: Lumibot loads the series its own way from here on
            self.pandas_data.pop(key, None)
            self.duckdb_windows.dropped(key)

        self.via_store(lambda: self._read_window_now(key, now), legacy_call, seam=False)

    def _read_window_now(self, key: Any, now: pd.Timestamp) -> None:
        asset, quote = key
        window = self.duckdb_windows.window(key)
        start, end = window.bounds(now)
        series = polygon_series_key(asset, quote, window.timestep)
        bars_read = 0

        def read(since: pd.Timestamp) -> pd.DataFrame:
            nonlocal bars_read
            until = end + pd.Timedelta(microseconds=1)
            try:
                bars = self.store.read(series, since, until, columns=POLYGON_COLUMNS)
                self.duckdb_stats.add(bars_served=len(bars))
            except CorruptFileError as exc:  # set aside by the read: fetch its range again, then read
                log.warning("%s Fetching that range again.", exc)
                ranges = [iv for iv in exc.intervals if isinstance(iv, Interval)]
                refill = Interval(min(iv.start for iv in ranges), max(iv.end for iv in ranges)) if ranges else \
                    Interval(since, since)
                api_key = cast(str, getattr(self, "_api_key", None))  # (what Lumibot hands the seam)
                provider = PolygonFetcher(api_key, asset, quote, window.timestep)
                bars = self.serve(series, refill, provider, columns=POLYGON_COLUMNS, read=Interval(since, until))
            bars_read = len(bars)
            return legacy_filter(legacy_frame(bars), window.request_start, self.datetime_end, window.timestep)

        frame, start = window.read(start, now, read)
        if self.duckdb_verifier is not None:  # a roll: the slice of the legacy answer it stands for
            self.duckdb_verifier.check_held(
                frame, hold=(key, window.timestep), series=f"{asset} {window.timestep}",
                request=f"window {start} .. {end}",
                select=lambda whole: between(whole, start, end + pd.Timedelta(microseconds=1)))
        window.cover(start, end)
        if frame.empty:
            self._bare(key, window, start, end, bars_read == 0)
            return
        data = WindowData(asset, frame, timestep=window.timestep, quote=quote)
        self.pandas_data[key] = data
        window.holds(id(data))
        self._held(key, data, window)

    def _bare(self, key: Any, window: Any, start: pd.Timestamp, end: pd.Timestamp, no_bars: bool) -> None:
        """The window around the clock has no bars: Lumibot holds no ``Data`` of this series (as on the legacy
        path, where an empty answer leaves ``pandas_data`` as it was), and the window is held empty until due.

        ``no_bars``: the store has no bar at all in ``[start, end]`` (not only none the range filter kept), so
        a request inside the window can be answered "no bars" without reading it again.
        """
        for other in self.duckdb_windows.loaded(key, start, end, 0):
            self.pandas_data.pop(other, None)
        window.holds(0)
        window.bare = no_bars
        self._next_roll = self.duckdb_windows.next_roll()

    def _update_datetime(self, new_datetime: Any, *args: Any, **kwargs: Any) -> Any:
        result = super()._update_datetime(new_datetime, *args, **kwargs)
        if self._next_roll is not None and self.use_duckdb and _ts(new_datetime) >= self._next_roll:
            now = _ts(new_datetime)
            for key, window in list(self.duckdb_windows.windows.items()):
                if window.held and window.due(now) and key in self.pandas_data:
                    self._read_window(key, now)
            self._next_roll = self.duckdb_windows.next_roll()
        return result

    # -- corporate actions -----------------------------------------------------------------------------
    def get_yesterday_dividends(self, assets: Any, quote: Any = None) -> Any:
        self._no_corporate_actions(assets, quote, "dividend", self._dividend_cache)
        return super().get_yesterday_dividends(assets, quote=quote)

    def get_yesterday_stock_splits(self, assets: Any, quote: Any = None) -> Any:
        self._no_corporate_actions(assets, quote, "stock_splits", self._stock_split_cache)
        return super().get_yesterday_stock_splits(assets, quote=quote)

    def _no_corporate_actions(self, assets: Any, quote: Any, column: str, cache: dict[Any, Any]) -> None:
        """Record "none" for assets whose bars cannot carry ``column``, before Lumibot asks for a year of them.

        Lumibot fills these caches on an asset's first day with ``get_bars(<backtest length>, "day")``
        and reads only the ``dividend`` / ``stock_splits`` column of the answer. Polygon's bars (ours
        and Lumibot's) have no such column, so the answer is always "none"; but on this source the
        request is served from minute bars once the asset has them, a year and a half of them, which
        the legacy path then keeps. The DuckDB path records the same "none" without the request.
        Assets whose data was given with that column (``pandas_data=``) keep Lumibot's path.
        """
        if not self.use_duckdb or not getattr(self, "_datetime", None):
            return
        for asset in assets:
            data = self.pandas_data.get(_data_key(asset, quote)) if self.pandas_data else None
            if asset not in cache and (data is None or column not in data.df.columns):
                cache[asset] = {}

    def get_quote(self, asset: Any, quote: Any = None, exchange: Any = None) -> Any:
        if self.use_duckdb:
            key = _data_key(asset, quote)
            window = self.duckdb_windows.windows.get(key)
            if window is not None and window.first is not None and not window.held:
                self._read_window(key, self._now())  # dropped by the budget: read it again
        return super().get_quote(asset, quote=quote, exchange=exchange)

    def get_historical_prices_between_dates(self, asset: Any, timestep: str = "minute", quote: Any = None,
                                            exchange: Any = None, include_after_hours: bool = True,
                                            start_date: Any = None, end_date: Any = None) -> Any:
        """A range, not a window: the series is read whole for this call (and then held like any window)."""
        if not self.use_duckdb:
            return super().get_historical_prices_between_dates(asset, timestep, quote, exchange, include_after_hours,
                                                               start_date, end_date)
        key = _data_key(asset, quote)
        whole = _WINDOWED.set(False)
        seams = self._seams
        try:
            window = self.duckdb_windows.windows.get(key)
            if window is not None and window.start is not None and not (
                    window.first is not None and window.start <= window.first and window.complete()):
                self.pandas_data.pop(key, None)  # Lumibot reads the range again through the seam, whole
                self.duckdb_windows.dropped(key)
            return super().get_historical_prices_between_dates(asset, timestep, quote, exchange, include_after_hours,
                                                               start_date, end_date)
        finally:
            _WINDOWED.reset(whole)
            if self._seams != seams:
                self._adopt(key, self.duckdb_windows.window(key))

    # -- the seam ------------------------------------------------------------------------------------
    def _polygon_prices(self, legacy: Any, api_key: str, asset: Asset, start: dt.datetime, end: dt.datetime,
                        timespan: str = "minute", quote_asset: Asset | None = None,
                        force_cache_update: bool = False, max_workers: int = 10) -> pd.DataFrame | None:
        """Stand-in for ``polygon_helper.get_price_data_from_polygon`` (same arguments, same frame).

        The whole range is made present in the store (only what it lacks is fetched); what is
        returned is the window of it around the clock.
        """

        self._seams += 1

        def from_store() -> pd.DataFrame:
            key = polygon_series_key(asset, quote_asset, timespan)
            day_tz = _day_timezone(asset)
            wanted = Interval(_day_start(start.date(), day_tz), _day_start(end.date() + dt.timedelta(days=1), day_tz))
            provider = PolygonFetcher(api_key, asset, quote_asset, timespan, max_workers=max_workers)
            data_key = _data_key(asset, quote_asset)
            window = self.duckdb_windows.window(data_key)
            window.place(wanted.start, wanted.end, timespan, request_start=start)
            now = self._now()
            windowed = bool(_WINDOWED.get())
            read_start, read_end = window.bounds(now) if windowed else (wanted.start, wanted.end)
            if windowed and window.bare and window.held and not force_cache_update and not window.due(now) \
                    and window.start <= read_start and window.has_filled(wanted.start, wanted.end):
                return _no_polygon_bars()  # an empty window, still current: what reading it again would give
            filled = False
            bars_read = 0

            def read(since: pd.Timestamp) -> pd.DataFrame:
                nonlocal filled, bars_read  # the whole range is filled by the first read; later ones read further back
                fill = Interval(wanted.start, wanted.start) if filled else wanted
                until = read_end + pd.Timedelta(microseconds=1)
                bars = self.serve(key, fill, provider, refresh=force_cache_update and not filled,
                                  columns=POLYGON_COLUMNS, read=Interval(since, until))
                if not filled:
                    window.fill(wanted.start, wanted.end)
                filled = True
                bars_read = len(bars)
                return legacy_filter(legacy_frame(bars), start, end, timespan)

            frame, read_start = window.read(read_start, now, read)
            window.cover(read_start, read_end)
            served[:] = [read_start, read_end + pd.Timedelta(microseconds=1)]
            if frame.empty and windowed:
                self._bare(data_key, window, read_start, read_end, bars_read == 0)
            return frame

        def legacy_call() -> pd.DataFrame | None:
            return legacy(api_key, asset, start, end, timespan=timespan, quote_asset=quote_asset,
                          force_cache_update=force_cache_update, max_workers=max_workers)

        served: list[pd.Timestamp] = []  # the part of the range the answer holds (a window, or all of it)
        check = self.verify_check(legacy_call, series=f"{asset} {timespan}", request=f"{start} .. {end}",
                                  select=lambda whole: between(whole, *served),
                                  reuse=(asset, quote_asset, start, end, timespan),
                                  hold=(_data_key(asset, quote_asset), timespan))
        return self.via_store(from_store, legacy_call, check=check)

    def _legacy_cache_at(self, folder: Path) -> contextlib.AbstractContextManager[None]:
        return patched_attributes((polygon_helper, "LUMIBOT_CACHE_FOLDER", str(folder)))


@functools.lru_cache(maxsize=1)
def _empty_frame() -> pd.DataFrame:
    return legacy_frame(empty_bars()[list(POLYGON_COLUMNS)])


def _no_polygon_bars() -> pd.DataFrame:
    """The frame the seam returns for a range without bars (Lumibot then leaves ``pandas_data`` as it was)."""
    return _empty_frame().copy(deep=False)


def _data_key(asset: Any, quote: Any) -> tuple[Any, Any]:
    """The key of ``pandas_data`` for a request, as Lumibot's ``_update_pandas_data`` builds it."""
    if isinstance(asset, tuple):
        return asset[0], asset[1]
    return asset, quote if quote is not None else _USD


_USD = Asset("USD", "forex")
_DAY_NS = 86_400 * 10**9


def _ts(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize(LUMIBOT_DEFAULT_PYTZ) if stamp.tzinfo is None else stamp


def polygon_series_key(asset: Asset, quote: Asset | None, timespan: str) -> SeriesKey:
    quote_symbol = quote.symbol if quote is not None else "USD"
    return series_key(asset, SOURCE, timespan, quote=quote_symbol, adjustment=ADJUSTMENT)


class PolygonClient(polygon_helper.PolygonClient):
    """Lumibot's Polygon client, for our requests: bounded retries, and HTTP errors that keep their status.

    Lumibot's ``PolygonClient._get`` sleeps 60 s and tries again, forever by default, whenever the
    HTTP layer gives up (``MaxRetryError``: a 5xx or 429 after urllib3's own three quick retries, a
    timeout, a refused connection); the shared fill retries those instead, a bounded number of times
    (:mod:`lumibot_duckdb.sources.retry`), so a backtest or a ``fetch`` ends with a clear error
    rather than hanging. polygon-api-client raises ``BadResponse`` with the body only: the status is
    added to it (``.status``, ``.headers``) so that a 500 is retried and a 403 is not.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.client = _StatusKeeper(self.client)

    def _get(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return BaseClient._get(self, *args, **kwargs)
        except BadResponse as exc:
            keeper = self.client
            if isinstance(keeper, _StatusKeeper):
                exc.status, exc.headers = keeper.last()  # type: ignore[attr-defined]
            raise


class _StatusKeeper:
    """Stands in for the client's urllib3 pool and remembers, per thread, the last response's status."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._local = threading.local()

    def request(self, *args: Any, **kwargs: Any) -> Any:
        response = self._pool.request(*args, **kwargs)
        self._local.last = (getattr(response, "status", None), getattr(response, "headers", None))
        return response

    def last(self) -> tuple[int | None, Any]:
        return getattr(self._local, "last", (None, None))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


class PolygonFetcher:
    """The Polygon side of :meth:`EnhancedDataSourceBacktesting.serve` for one asset and timespan."""

    name = "Polygon"
    advice = "check the symbol and your Polygon plan."

    def __init__(self, api_key: str, asset: Asset, quote: Asset | None, timespan: str, *,
                 max_workers: int = 10) -> None:
        self.api_key = api_key
        self.asset = asset
        self.quote = quote
        self.timespan = timespan
        self.max_workers = max_workers
        self.day_tz = _day_timezone(asset)
        self._client: Any = None
        self._symbol: str | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = PolygonClient.create(api_key=self.api_key)
        return self._client

    # -- plan: trading dates of the missing ranges, in Lumibot's 31-day chunks -------------------
    def plan(self, key: SeriesKey, missing: list[Interval]) -> list[FetchTask]:
        tasks: list[FetchTask] = []
        for gap in missing:
            first = gap.start.tz_convert(self.day_tz).date()
            last = (gap.end - pd.Timedelta(1, "us")).tz_convert(self.day_tz).date()
            dates = polygon_helper.get_trading_dates(self.asset, _as_datetime(first), _as_datetime(last))
            if self.asset.asset_type == Asset.AssetType.OPTION and self.asset.expiration is not None:
                dates = [d for d in dates if d <= self.asset.expiration]
            dates = [d for d in dates if first <= d <= last]
            if not dates or self._polygon_symbol() is None:
                tasks.append(FetchTask(gap))
                continue
            chunks = _legacy_chunks(dates[0], dates[-1])
            bounds = [gap.start, *(_day_start(s, self.day_tz) for s, _ in chunks[1:]), gap.end]
            tasks.extend(FetchTask(Interval(lo, hi), chunk) for (lo, hi, chunk) in zip(bounds, bounds[1:], chunks))
        return tasks

    def settled_until(self) -> pd.Timestamp:
        """Bars before this are final: intraday bars 15 minutes after they start, daily bars once the day is over.

        Nothing later is asked for or recorded as covered, so a backtest reaching today asks again
        for what was still forming (Lumibot's shared bar cache uses the same 15-minute rule).
        """
        now = pd.Timestamp.now(tz="UTC")
        if self.timespan == "day":
            return _day_start(now.tz_convert(self.day_tz).date(), self.day_tz)
        return now - SETTLE

    def _polygon_symbol(self) -> str | None:
        if self._symbol is None:
            self._symbol = polygon_helper.get_polygon_symbol(self.asset, self.client, self.quote) or ""
        return self._symbol or None

    # -- fetch: one get_aggs call --------------------------------------------------------------
    def describe(self, task: FetchTask) -> str:
        first, last = task.request
        return f"{self.asset} {self.timespan} bars {first}..{last}"

    def fetch(self, task: FetchTask) -> pd.DataFrame:
        first, last = task.request
        answer = self.client.get_aggs(ticker=self._polygon_symbol(), multiplier=1, timespan=self.timespan,
                                      from_=first, to=last, limit=50000, raw=True)
        return aggs_to_bars(answer, what=f"{self.asset} {self.timespan} bars {first}..{last}")

    # -- revalidate: Polygon re-adjusts history after a split ------------------------------------
    def revalidate(self, key: SeriesKey, writer: SeriesWriter) -> None:
        """Before adding bars to a stock series, check (once a day) that no split made it stale.

        Polygon's bars are split-adjusted as of the day they are fetched. If a split executed
        after the oldest stored file of the series was written, stored bars would not line up
        with new ones: the series is dropped and fetched again. Lumibot's cache does the same
        with a daily ``list_splits`` snapshot (``polygon_helper.validate_cache``); here the file
        names already say when each file was written, so no snapshot is needed.
        """
        if self.asset.asset_type not in (Asset.AssetType.STOCK, Asset.AssetType.OPTION):
            return
        files = writer.files()
        if not files:
            return
        today = dt.date.today()
        if writer.checked_on("splits-checked") == today:
            return
        try:
            splits = list(self.client.list_splits(ticker=self.asset.symbol, sort="execution_date", order="asc"))
        except Exception:  # noqa: BLE001 - like Lumibot: a failed check keeps the stored bars
            return
        written = writer.as_of("America/New_York")  # (imported bars: as of when Lumibot fetched them)
        executed = [_execution_date(s) for s in splits]
        if any(day is not None and written < day <= today for day in executed):
            writer.discard()
        writer.mark_checked("splits-checked", today)


def prefetch(asset: Asset, quote: Asset | None, timespan: str, first: dt.date, last: dt.date, *,
             api_key: str | None = None) -> tuple[SeriesKey, Interval, PolygonFetcher]:
    """What a backtest over ``first``..``last`` fills for ``asset`` (:mod:`lumibot_duckdb.fetch`): its series,
    the whole days it asks for (New York; UTC for crypto) and the provider, as :meth:`_polygon_prices` builds them.

    ``api_key``: default Lumibot's ``POLYGON_API_KEY`` (environment or ``.env``).
    """
    if not api_key:
        from lumibot.credentials import POLYGON_API_KEY

        api_key = POLYGON_API_KEY
    if not api_key:
        from lumibot_duckdb.errors import ConfigError

        raise ConfigError("No Polygon API key: set POLYGON_API_KEY in the environment or in a .env file "
                          "(as for Lumibot's backtests).")
    day_tz = _day_timezone(asset)
    wanted = Interval(_day_start(first, day_tz), _day_start(last + dt.timedelta(days=1), day_tz))
    return polygon_series_key(asset, quote, timespan), wanted, PolygonFetcher(api_key, asset, quote, timespan)


def aggs_to_bars(answer: Any, *, what: str) -> pd.DataFrame:
    """Bars (UTC index ``ts``) from what ``get_aggs(..., raw=True)`` returned.

    Accepts the raw HTTP response (the client's normal return with ``raw=True``) or a list of
    ``Agg`` objects (when ``get_aggs`` is replaced by a fake that ignores ``raw``). Anything that
    is not a list of complete aggregates is a :class:`ProviderDataError`: nothing of it is stored.
    """
    if hasattr(answer, "data") and hasattr(answer, "status"):
        try:
            document = json.loads(answer.data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise _bad_answer(what, f"something that is not JSON ({exc})") from exc
        if not isinstance(document, dict):
            raise _bad_answer(what, f"a JSON {type(document).__name__}, not an object")
        rows = document.get("results") or []
    else:
        rows = [{"t": a.timestamp, "o": a.open, "h": a.high, "l": a.low, "c": a.close, "v": a.volume,
                 "vw": a.vwap, "n": a.transactions, "otc": a.otc} for a in (answer or [])]
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise _bad_answer(what, "results that are not a list of aggregates")
    if not rows:
        return _bars_frame(pd.DataFrame(columns=["t", "o", "h", "l", "c", "v", "vw", "n", "otc"]))
    return _bars_frame(pd.DataFrame.from_records(rows), what=what)


def _bad_answer(what: str, problem: str) -> ProviderDataError:
    return bad_answer("Polygon", what, problem, advice=PolygonFetcher.advice)


def _bars_frame(raw: pd.DataFrame, *, what: str = "") -> pd.DataFrame:
    for column in ("t", "o", "h", "l", "c", "v", "vw", "n", "otc"):
        if column not in raw.columns:
            raw[column] = None
    numeric = {}
    for column in ("t", "o", "h", "l", "c", "v", "vw", "n"):
        numeric[column] = pd.to_numeric(raw[column], errors="coerce")
    required = pd.concat([numeric[c] for c in ("t", "o", "h", "l", "c")], axis=1)
    bad = required.isna().any(axis=1) | (raw["t"].isna())
    if bad.any():
        example = raw[bad].iloc[0].to_dict()
        raise _bad_answer(what, f"{int(bad.sum())} malformed aggregate(s) (missing or non-numeric t/o/h/l/c, "
                                f"e.g. {example})")
    frame = pd.DataFrame(
        {
            "open": numeric["o"].astype("float64").to_numpy(),
            "high": numeric["h"].astype("float64").to_numpy(),
            "low": numeric["l"].astype("float64").to_numpy(),
            "close": numeric["c"].astype("float64").to_numpy(),
            "volume": numeric["v"].astype("float64").to_numpy(),
            "vwap": numeric["vw"].astype("float64").to_numpy(),
            "trade_count": numeric["n"].astype("Int64").to_numpy(),
            "metadata": [None if v is None or v != v else json.dumps({"otc": bool(v)}) for v in raw["otc"]],
        },
        index=pd.DatetimeIndex(pd.to_datetime(numeric["t"].astype("int64"), unit="ms", utc=True), name="ts"),
    )
    return frame


def legacy_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """Store bars → the frame ``polygon_helper`` builds: index ``datetime`` (UTC, ns), raw Agg columns.

    Each column is made in one pass over the bars, without copying what needs no change (a backtest's bulk
    read of millions of bars goes through here; ``benchmarks/test_range_query.py::test_bulk_read``).
    """
    index = _nanosecond_index(pd.DatetimeIndex(bars.index))
    trades = bars["trade_count"]
    metadata = bars["metadata"].to_numpy()
    present = pd.notna(metadata)  # (store metadata is a JSON string or None)
    if present.any():
        otc = np.full(len(bars), None, dtype=object)
        otc[present] = [json.loads(m).get("otc") for m in metadata[present]]
    else:
        otc = metadata if metadata.dtype == object else np.full(len(bars), None, dtype=object)
    frame = pd.DataFrame(
        {
            "open": bars["open"].to_numpy(),
            "high": bars["high"].to_numpy(),
            "low": bars["low"].to_numpy(),
            "close": bars["close"].to_numpy(),
            "volume": _volume_as_polygon_sent_it(bars["volume"]),
            "vwap": bars["vwap"].to_numpy(),
            "timestamp": index.asi8 // 1_000_000,
            "transactions": trades.to_numpy(dtype="float64", na_value=np.nan) if trades.hasnans
            else trades.to_numpy(dtype="int64"),
            "otc": pd.Series(otc, index=index, dtype=object, copy=False),  # (typed: pandas would scan it)
        },
        index=index,
        copy=False,  # (its own arrays already: consolidating them would copy every bar once more)
    )
    return frame


_NS_LIMIT_US = np.iinfo(np.int64).max // 1000


def _nanosecond_index(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    """``index`` (UTC) in nanoseconds, named ``datetime``: a multiply of its microseconds once they are known to
    fit (pandas' ``as_unit`` checks every bar for overflow, ~20x slower); ``as_unit`` otherwise, which raises."""
    if index.unit == "us" and str(index.tz) == "UTC":
        micros = index.asi8
        if not len(micros) or (micros.min() > -_NS_LIMIT_US and micros.max() < _NS_LIMIT_US):
            nanos = (micros * 1000).view("datetime64[ns]")
            return pd.DatetimeIndex(nanos, name="datetime").tz_localize("UTC")
    return index.as_unit("ns").rename("datetime")


def _volume_as_polygon_sent_it(volume: pd.Series) -> Any:
    """Polygon sends stock volumes as JSON integers, so Lumibot's frame holds int64; crypto volumes are fractional.

    The store keeps float64 (exact for integers below 2**53); whole-number volumes go back as int64.
    """
    values = volume.to_numpy(dtype="float64")
    if len(values) and _whole_numbers(values):
        return values.astype("int64")
    return values


def _whole_numbers(values: np.ndarray, step: int = 65_536) -> bool:
    """Whether every value is a whole number (no NaN), checked a slice at a time: a fractional (crypto) volume is
    found in the first slice, and no temporary the size of the column is made."""
    for at in range(0, len(values), step):
        part = values[at:at + step]
        if not bool((part == np.round(part)).all()):  # (NaN != NaN: a missing volume is no whole number)
            return False
    return True


def legacy_filter(frame: pd.DataFrame, start: Any, end: Any, timespan: str) -> pd.DataFrame:
    """The range filter ``get_price_data_from_polygon`` applies before returning (its download path)."""
    if frame.empty:
        return frame
    if timespan == "day":
        dates = pd.to_datetime(frame.index).date
        start_date = start.date() if hasattr(start, "date") else start
        end_date = end.date() if hasattr(end, "date") else end
        return frame[(dates >= start_date) & (dates <= end_date)]
    if isinstance(start, dt.date) and not isinstance(start, dt.datetime):
        start = dt.datetime.combine(start, dt.time.min)
    if isinstance(end, dt.date) and not isinstance(end, dt.datetime):
        end = dt.datetime.combine(end, dt.time.max)
    if isinstance(end, dt.datetime) and end.time() == dt.time.min:
        end = dt.datetime.combine(end.date(), dt.time.max, tzinfo=end.tzinfo)
    if start.tzinfo is None:
        start = LUMIBOT_DEFAULT_PYTZ.localize(start).astimezone(dt.timezone.utc)
    if end.tzinfo is None:
        end = LUMIBOT_DEFAULT_PYTZ.localize(end).astimezone(dt.timezone.utc)
    return frame[(frame.index >= start) & (frame.index <= end)]


def _legacy_chunks(first: dt.date, last: dt.date) -> list[tuple[dt.date, dt.date]]:
    """The date chunks Lumibot asks Polygon for: ``MAX_POLYGON_DAYS``+1 calendar days each."""
    step = dt.timedelta(days=polygon_helper.MAX_POLYGON_DAYS)
    chunks, cursor = [], first
    while cursor <= last:
        stop = min(last, cursor + step)
        chunks.append((cursor, stop))
        cursor = stop + dt.timedelta(days=1)
    return chunks


def _day_timezone(asset: Asset) -> str:
    return "UTC" if asset.asset_type == Asset.AssetType.CRYPTO else "America/New_York"


def _day_start(day: dt.date, tz: str) -> pd.Timestamp:
    return pd.Timestamp(day).tz_localize(tz).tz_convert("UTC")


def _as_datetime(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day)


def _execution_date(split: Any) -> dt.date | None:
    value = split.get("execution_date") if isinstance(split, dict) else getattr(split, "execution_date", None)
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def _router(current: Any) -> Any:
    def get_price_data_from_polygon(*args: Any, **kwargs: Any) -> Any:
        source = _ROUTE.get()
        if source is None or not source.use_duckdb:
            return current(*args, **kwargs)
        return source._polygon_prices(current, *args, **kwargs)

    return get_price_data_from_polygon


route(polygon_helper, "get_price_data_from_polygon", _router)
