"""``AlpacaBacktesting`` on the shared store.

Lumibot's class keeps everything above its provider seam: the explicit-config end-of-window rule,
the in-memory ``_data_store`` keyed by ``_get_asset_key`` (asset, timestep, window dates),
``get_historical_prices`` and its bar positions, the reach back before the start. What changes
is below that key, where Lumibot would read or write one CSV per backtest window
(``alpaca/{KEY}.csv``) and otherwise download the whole window through
``tools/alpaca_history.fetch_alpaca_bars``:

* ``_download_and_cache_ohlcv_data`` builds the same Alpaca request (``_history_request``), asks
  the store for the raw bars of that range, fetching only what the store lacks of the *series*
  (source ``alpaca``, symbol, timeframe, adjustment ``split``/``all``, quote for crypto), then
  applies Lumibot's own trading-time reindex and forward fill (``_reindex_and_fill``) and window
  filter to them. The in-memory frame is the one the legacy path builds on a cold cache.
* ``_load_ohlcv_into_data_store`` never reads a per-window CSV for the series the store serves,
  and no CSV is written.
* ``_history_segment`` (history before the start) is served from the same series.

Provider requests still go through Lumibot's ``_alpaca_request`` (its 180-a-minute pacing and
HTTP 429 back-off), so a backtest the store answers makes no request and never waits.
Native multi-minute timesteps (``"5minute"``…) are not a store timeframe and stay on the legacy path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from alpaca.data.requests import CryptoBarsRequest, OptionBarsRequest
from lumibot.backtesting.alpaca_backtesting import AlpacaBacktesting as _LegacyAlpacaBacktesting
from lumibot.backtesting.alpaca_backtesting import AlpacaOptionHistoryUnavailable
from lumibot.entities import Asset, Bars

from lumibot_duckdb.errors import ProviderDataError
from lumibot_duckdb.sources.base import EnhancedDataSourceBacktesting, FetchTask
from lumibot_duckdb.sources.fill import bad_answer
from lumibot_duckdb.sources.verify import patched_attributes
from lumibot_duckdb.sources.window import WindowPolicy, frame_bytes
from lumibot_duckdb.store import Interval, SeriesKey, series_key
from lumibot_duckdb.store.store import SeriesWriter
from lumibot_duckdb.store.validate import bar_problems

SOURCE = "alpaca"
SETTLE = pd.Timedelta(minutes=15)
"""Bars are recorded once they ended this long ago (Lumibot's shared bar cache uses the same margin)."""
SERVED_TIMESTEPS = ("day", "minute", "hour")
OHLCV = ("open", "high", "low", "close", "volume")
STORED = (*OHLCV, "vwap", "trade_count")
OVERLAP_BARS = 3
_DURATION = {"day": pd.Timedelta(days=1), "hour": pd.Timedelta(hours=1), "minute": pd.Timedelta(minutes=1)}
_INCLUSIVE = pd.Timedelta(microseconds=1)
_BAR_HOURS = pd.Timedelta(hours=20)  # stock bars of a session date start before 20:00 New York
WINDOW_AHEAD = {"minute": pd.Timedelta(days=5)}
"""How far past the clock a window of minute rows reaches (then it is rebuilt from the store)."""


class AlpacaBacktesting(EnhancedDataSourceBacktesting, _LegacyAlpacaBacktesting):
    """Lumibot's ``AlpacaBacktesting`` with the DuckDB store behind its Alpaca seam.

    Same class name and ``SOURCE`` as Lumibot's (Lumibot keys fills and benchmarks on both).
    Extra keyword arguments: ``use_duckdb``, ``cache_dir``, ``strict`` (see
    :class:`EnhancedDataSourceBacktesting`).
    """

    WINDOW_POLICY = WindowPolicy(margin=pd.Timedelta(0), guard=pd.Timedelta(0), ahead=WINDOW_AHEAD)
    """Minute series are held as windows of rows of Lumibot's frame (see :meth:`get_historical_prices`): exact
    in bars behind the clock, a few sessions ahead, checked at every call (no guard needed)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._minute_frames: dict[str, _MinuteWindow] = {}
        self._minute_series: dict[str, _MinuteSeries] = {}
        self._trading_minutes: pd.DatetimeIndex | None = None
        self._window_lock = threading.RLock()
        super().__init__(*args, **kwargs)

    def _stores(self, timestep: str | None) -> bool:
        return self.use_duckdb and timestep in SERVED_TIMESTEPS

    # -- minute series held as windows -----------------------------------------------------------
    def get_historical_prices(self, asset: Asset, length: int, timestep: str | None = None,
                              timeshift: dt.timedelta | None = None, quote: Asset | None = None,
                              exchange: str | None = None, include_after_hours: bool = True,
                              return_polars: bool = False, remove_incomplete_current_bar: bool | None = None,
                              _extend_history: bool = True) -> Any:
        """Lumibot's ``get_historical_prices``; on the DuckDB path, minute bars come from a window of the frame.

        Lumibot holds every minute of the backtest of every asset (its frame: the trading minutes of the
        calendar, forward-filled) and slices it. Here the same rows are held only around the clock (the
        bars the request reaches back to, a few sessions ahead) and rebuilt from the store when the clock
        moves on: the rows of the window are those of Lumibot's frame, forward fill across the window's
        edge included (the last bar before the window seeds it), and the "not enough historical data"
        rule counts the rows of the whole frame, as Lumibot does. Other requests (daily bars, options,
        multi-minute resampling, ``history_before_start``) take Lumibot's path.
        """
        legacy = functools.partial(_LegacyAlpacaBacktesting.get_historical_prices, self, asset, length, timestep,
                                   timeshift, quote, exchange, include_after_hours, return_polars,
                                   remove_incomplete_current_bar, _extend_history)
        source_timestep, resample_rule = self._normalize_timestep_for_source(timestep or self._timestep)
        if not self.use_duckdb or source_timestep != "minute" or resample_rule is not None or length <= 0 \
                or self._is_option(asset) or (_extend_history and self._history_before_start):
            return legacy()
        if remove_incomplete_current_bar is None:
            remove_incomplete_current_bar = self._remove_incomplete_current_bar
        quote = quote if quote is not None else self.LUMIBOT_DEFAULT_QUOTE_ASSET
        search_datetime = self._datetime - timeshift if timeshift else self._datetime
        times = self._minutes()
        cutoff = search_datetime - dt.timedelta(minutes=1) if remove_incomplete_current_bar else search_datetime
        current = int(times.searchsorted(pd.Timestamp(cutoff), side="right")) - 1
        if length > len(times):
            raise ValueError(f"Not enough historical data. Requested {length} bars but only {len(times)} available.")
        if current < 0:
            if remove_incomplete_current_bar:
                return None
            raise ValueError(f"Datetime {search_datetime} not found in the dataset.")
        first = max(0, current - length + 1)
        try:
            frame, offset = self._minute_rows(asset, quote, first, current, length)
        except Exception as e:  # (as Lumibot reports a failed load of its frame)
            raise RuntimeError(f"Unable to fetch historical prices during backtest: {e}") from e
        rows = frame.iloc[[current - offset]] if length == 1 else frame.iloc[first - offset: current - offset + 1]
        return Bars(rows, self.SOURCE, asset=asset, quote=quote, return_polars=return_polars, tzinfo=self.tzinfo)

    def _minutes(self) -> pd.DatetimeIndex:
        """The index of Lumibot's minute frame: the calendar's trading minutes from the data start to its end."""
        times = self._trading_minutes
        if times is None:
            every = pd.DatetimeIndex(self._get_trading_times_for_timestep(pcal=self._trading_days, timestep="minute"))
            start, end = pd.Timestamp(self._data_datetime_start), pd.Timestamp(self._data_datetime_end)
            times = self._trading_minutes = every[(every >= start) & (every <= end)]
        return times

    def _minute_rows(self, asset: Asset, quote: Asset, first: int, current: int, length: int) -> tuple[Any, int]:
        """The held rows of the asset's frame covering positions ``first..current``, and where they start."""
        key = self._get_asset_key(base_asset=asset, quote_asset=quote, timestep="minute")
        times = self._minutes()
        with self._window_lock:
            window = self.duckdb_windows.need(key, pd.Timedelta(0), length)
            held = self._minute_frames.get(key)
            if held is not None and window.held and held.first <= first and current < held.stop:
                return held.frame, held.first
            ahead = self.WINDOW_POLICY.ahead["minute"]
            start = max(0, current - max(length, window.rows) + 1)
            stop = max(current + 1, int(times.searchsorted(times[current] + ahead, side="right")))
            frame = self.via_store(lambda: self._minute_window(asset, quote, key, start, stop),
                                   lambda: None, seam=False)
            if frame is None:  # the store failed: Lumibot's own frame from here on
                self._minute_frames.pop(key, None)
                full = self.get_historical_prices_between_dates(base_asset=asset, quote_asset=quote,
                                                                timestep="minute")
                return full, 0
            self._minute_frames[key] = _MinuteWindow(start, stop, frame)
            for other in self.duckdb_windows.loaded(key, times[start], times[stop - 1], frame_bytes(frame)):
                self._minute_frames.pop(str(other), None)
            return frame, start

    def _minute_window(self, asset: Asset, quote: Asset, key: str, start: int, stop: int) -> pd.DataFrame:
        """Rows ``start..stop-1`` of Lumibot's minute frame of ``asset``, built from the store.

        Lumibot's frame is the trading minutes reindexed over the bars of the whole range, then filled:
        volume 0, close forward, open/high/low from close, open backward, high/low/close from open. Here
        the rows come with the last bar at a trading minute before them (the forward fill's seed) and,
        when none of them has a bar, the first one after (the backward fill's), so every row is the one
        Lumibot computes.
        """
        times = self._minutes()
        series = self._series(asset, quote, key)
        inside = self._trading_bars(series, times[start], times[stop - 1])
        seed, lo = self._bar_before(series, start) if start > 0 else (inside.iloc[0:0], start)
        if seed.empty:
            lo = start
            if inside.empty:  # no bar to fill forward from: every row is the next bar's open (the backward fill)
                return self._filled_from_later(series, times[start:stop])
        bars = pd.concat([seed, inside]) if len(seed) else inside
        frame = self._reindex_and_fill(df=legacy_rows(bars, self.tzinfo), trading_times=times[lo:stop],
                                       timestep="minute")
        frame = frame.iloc[start - lo:]
        frame.set_index("timestamp", inplace=True)
        return frame

    def _series(self, asset: Asset, quote: Asset, key: str) -> _MinuteSeries:
        """The store series of the asset's minute bars, made present for the whole range once."""
        found = self._minute_series.get(key)
        if found is None:
            client, request = self._history_request(base_asset=asset, quote_asset=quote, timestep="minute",
                                                    data_datetime_start=self._data_datetime_start,
                                                    data_datetime_end=self._data_datetime_end,
                                                    auto_adjust=self._auto_adjust)
            series = alpaca_series_key(asset, quote, "minute", request)
            wanted = Interval(request.start, _utc(request.end) + _INCLUSIVE)
            fetcher = AlpacaFetcher(self._alpaca_request, client, request, timestep="minute",
                                    asset_type=series.asset_type, what=key)
            # the whole range made present, none of it read: the windows read their few days (_trading_bars)
            self.serve(series, wanted, fetcher, refresh=bool(getattr(self, "_refresh_cache", False)),
                       columns=("close",), read=Interval(wanted.start, wanted.start))
            if not self.store.has_bars(series, wanted.start, wanted.end):
                raise RuntimeError(f"No data fetched for {key}.")  # Lumibot's words when its frame would be empty
            found = self._minute_series[key] = _MinuteSeries(series, wanted, fetcher)
        return found

    def _trading_bars(self, series: _MinuteSeries, first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
        """Stored bars of ``series`` at trading minutes in ``[first, last]`` (the bars Lumibot's reindex keeps)."""
        lo, hi = max(series.wanted.start, _utc(first)), min(series.wanted.end, _utc(last) + _INCLUSIVE)
        # (through serve: a file found damaged here is set aside and its range fetched again, as on a first read)
        bars = self.serve(series.key, Interval(lo, max(lo, hi)), series.fetcher, columns=OHLCV)
        if not len(bars):
            return bars
        minutes = self._minutes().asi8
        stamps = pd.DatetimeIndex(bars.index).as_unit("ns").asi8
        found = np.minimum(np.searchsorted(minutes, stamps), len(minutes) - 1)
        return bars[minutes[found] == stamps]

    def _bar_before(self, series: _MinuteSeries, start: int) -> tuple[pd.DataFrame, int]:
        """The last bar at a trading minute before row ``start`` (within the range), and its row; none: (empty, 0)."""
        times = self._minutes()
        reach = 1_000
        while True:
            lo = max(0, start - reach)
            bars = self._trading_bars(series, times[lo], times[start - 1])
            if len(bars):
                last = bars.iloc[-1:]
                return last, int(times.searchsorted(pd.Timestamp(last.index[0]).tz_convert(self.tzinfo)))
            if lo == 0:
                return bars, 0
            reach *= 4

    def _filled_from_later(self, series: _MinuteSeries, rows: pd.DatetimeIndex) -> pd.DataFrame:
        """Rows before any bar of the range: Lumibot fills them backward with the open of the first bar after."""
        every = pd.DatetimeIndex(self._get_trading_times_for_timestep(pcal=self._trading_days, timestep="minute"))
        later = self.store.read(series.key, _utc(rows[-1]) + _INCLUSIVE, series.wanted.end, columns=("open",))
        stamps = pd.DatetimeIndex(later.index).as_unit("ns")
        opens = later["open"].to_numpy()[stamps.isin(every)]
        value = float(opens[0]) if len(opens) else np.nan
        frame = pd.DataFrame({"timestamp": rows, **{c: np.full(len(rows), value) for c in ("open", "high", "low",
                                                                                           "close")},
                              "volume": np.zeros(len(rows))})
        return frame.set_index("timestamp")

    # -- the window frame ------------------------------------------------------------------------
    def _download_and_cache_ohlcv_data(self, *, base_asset: Asset | None = None, quote_asset: Asset | None = None,
                                       timestep: str | None = None, market: str | None = None, tzinfo: Any = None,
                                       data_datetime_start: dt.datetime | None = None,
                                       data_datetime_end: dt.datetime | None = None,
                                       auto_adjust: bool | None = None) -> pd.DataFrame:
        arguments = {"base_asset": base_asset, "quote_asset": quote_asset, "timestep": timestep, "market": market,
                     "tzinfo": tzinfo, "data_datetime_start": data_datetime_start,
                     "data_datetime_end": data_datetime_end, "auto_adjust": auto_adjust}

        def legacy_call() -> pd.DataFrame:
            return _LegacyAlpacaBacktesting._download_and_cache_ohlcv_data(self, **arguments)

        if not self._stores(timestep) or None in arguments.values():
            return legacy_call()  # (Lumibot's own argument checks raise there)
        window_key = self._get_asset_key(**arguments) if self.duckdb_verifier is not None else None
        check = self.verify_check(self._aside(legacy_call, None), series=f"{base_asset} {timestep}",
                                  request=f"{data_datetime_start} .. {data_datetime_end}", reuse=window_key,
                                  hold=window_key)
        return self.via_store(lambda: self._window_from_store(**arguments), legacy_call, check=check)

    def _window_from_store(self, *, base_asset: Asset, quote_asset: Asset, timestep: str, market: str, tzinfo: Any,
                           data_datetime_start: dt.datetime, data_datetime_end: dt.datetime,
                           auto_adjust: bool) -> pd.DataFrame:
        """What Lumibot's ``_download_and_cache_ohlcv_data`` builds, from the store, without a CSV."""
        key = self._get_asset_key(base_asset=base_asset, quote_asset=quote_asset, timestep=timestep, market=market,
                                  tzinfo=tzinfo, data_datetime_start=data_datetime_start,
                                  data_datetime_end=data_datetime_end, auto_adjust=auto_adjust)
        client, request = self._history_request(base_asset=base_asset, quote_asset=quote_asset, timestep=timestep,
                                                data_datetime_start=data_datetime_start,
                                                data_datetime_end=data_datetime_end, auto_adjust=auto_adjust)
        bars = self._serve_request(base_asset, quote_asset, timestep, client, request, what=key,
                                   refresh=bool(getattr(self, "_refresh_cache", False)))
        is_option = self._is_option(base_asset)
        if bars.empty:
            if is_option:
                raise AlpacaOptionHistoryUnavailable(
                    f"Alpaca returned no option bars for {self._occ_symbol(base_asset)} between "
                    f"{data_datetime_start.date()} and {data_datetime_end.date()}. "
                    f"{self.OPTION_HISTORY_START_HINT}, and a contract that never traded in the window "
                    "has no bars. Its price is None for this backtest."
                )
            raise RuntimeError(f"No data fetched for {key}.")

        df = legacy_rows(bars, tzinfo)
        if is_option:
            df = df.sort_values("timestamp")
        elif timestep in ("day", "minute"):
            trading_times = self._get_trading_times_for_timestep(pcal=self._trading_days, timestep=timestep)
            df = self._reindex_and_fill(df=df, trading_times=trading_times, timestep=timestep)
        else:
            df.sort_values("timestamp", inplace=True)
        df = df[(df["timestamp"] >= data_datetime_start) & (df["timestamp"] <= data_datetime_end)]
        df.set_index("timestamp", inplace=True)
        self._data_store[key] = df
        return df

    def _load_ohlcv_into_data_store(self, key: str) -> bool:
        """Legacy: read ``alpaca/{key}.csv``. Here the store answers instead, so no per-window CSV is read."""
        if self.use_duckdb and _key_timestep(key) in SERVED_TIMESTEPS:
            return False
        return bool(_LegacyAlpacaBacktesting._load_ohlcv_into_data_store(self, key))

    # -- history before the window (history_before_start) ----------------------------------------
    def _history_segment(self, asset: Asset, quote: Asset, source_timestep: str, segment_start: dt.datetime,
                         segment_end: dt.datetime) -> pd.DataFrame:
        def legacy_call() -> pd.DataFrame:
            return _LegacyAlpacaBacktesting._history_segment(self, asset, quote, source_timestep, segment_start,
                                                             segment_end)

        if not self._stores(source_timestep):
            return legacy_call()
        history_key = None
        if self.duckdb_verifier is not None:  # the key _history_from_store keeps its answer under
            history_key = self._get_asset_key(base_asset=asset, quote_asset=quote, timestep=source_timestep,
                                              data_datetime_start=segment_start,
                                              data_datetime_end=segment_end - dt.timedelta(seconds=1)) + "_HISTORY"
        check = self.verify_check(self._aside(legacy_call, history_key), series=f"{asset} {source_timestep}",
                                  request=f"history {segment_start} .. {segment_end}", reuse=history_key,
                                  hold=history_key)
        return self.via_store(
            lambda: self._history_from_store(asset, quote, source_timestep, segment_start, segment_end), legacy_call,
            check=check)

    # -- verify mode ---------------------------------------------------------------------------------
    def _aside(self, legacy_call: Callable[[], pd.DataFrame], hidden: str | None) -> Callable[[], pd.DataFrame]:
        """``legacy_call`` for verify mode: Lumibot's method keeps what it builds in ``_data_store``; the
        store's answer stays there instead (``hidden``, the key the store's answer is kept under, is
        hidden from the legacy method, which would otherwise return it)."""

        def call() -> pd.DataFrame:
            kept = {name: dict(self._state(name, dict)) for name in ("_data_store", "_refreshed_keys")}
            if hidden is not None:
                self._state("_data_store", dict).pop(hidden, None)
            try:
                return legacy_call()
            finally:
                for name, entries in kept.items():
                    state = self._state(name, dict)
                    state.clear()
                    state.update(entries)

        return call

    def _legacy_cache_at(self, folder: Path) -> contextlib.AbstractContextManager[None]:
        from lumibot import constants
        from lumibot.backtesting import alpaca_backtesting
        from lumibot.tools import shared_bar_cache

        # the per-window CSVs, Lumibot's shared bar cache below them, and never its remote (S3) copy
        return patched_attributes((alpaca_backtesting, "LUMIBOT_CACHE_FOLDER", str(folder)),
                                  (constants, "LUMIBOT_CACHE_FOLDER", str(folder)),
                                  (shared_bar_cache, "_remote", lambda: (None, None)))

    def _history_from_store(self, asset: Asset, quote: Asset, source_timestep: str, segment_start: dt.datetime,
                            segment_end: dt.datetime) -> pd.DataFrame:
        """Lumibot's ``_history_segment`` (real bars in ``[segment_start, segment_end)``), from the store."""
        from types import SimpleNamespace

        from lumibot.tools.helpers import get_trading_days

        last_included = segment_end - dt.timedelta(seconds=1)
        key = self._get_asset_key(base_asset=asset, quote_asset=quote, timestep=source_timestep,
                                  data_datetime_start=segment_start, data_datetime_end=last_included) + "_HISTORY"
        store = self._state("_data_store", dict)
        refreshed = self._state("_refreshed_keys", dict)
        refresh = bool(getattr(self, "_refresh_cache", False)) and key not in refreshed
        if not refresh and key in store:
            return store[key]
        client, request = self._history_request(base_asset=asset, quote_asset=quote, timestep=source_timestep,
                                                data_datetime_start=segment_start, data_datetime_end=last_included,
                                                auto_adjust=self._auto_adjust, request_end=last_included)
        bars = self._serve_request(asset, quote, source_timestep, client, request, what=key, refresh=refresh)
        frame = bars.rename_axis("timestamp")
        df = self._bars_to_frame(SimpleNamespace(df=frame) if not bars.empty else None)
        if not df.empty and not self._is_option(asset) and source_timestep == "minute":
            calendar = get_trading_days(self.market, segment_start, segment_end + dt.timedelta(days=1),
                                        tzinfo=self.tzinfo)
            session_minutes = self._get_trading_times_for_timestep(pcal=calendar, timestep="minute")
            df = df[df["timestamp"].isin(session_minutes)]
        df = df[(df["timestamp"] >= segment_start) & (df["timestamp"] < segment_end)].sort_values("timestamp")
        df = df.set_index("timestamp")
        store[key] = df
        if refresh:
            refreshed[key] = True
        return df

    # -- the store ---------------------------------------------------------------------------------
    def _serve_request(self, asset: Asset, quote: Asset, timestep: str, client: Any, request: Any, *, what: str,
                       refresh: bool) -> pd.DataFrame:
        """Raw bars answering ``request`` (start and end inclusive, as Alpaca reads them), via the store."""
        key = alpaca_series_key(asset, quote, timestep, request)
        wanted = Interval(_utc(request.start), _utc(request.end) + _INCLUSIVE)  # naive: UTC, as Alpaca reads it
        fetcher = AlpacaFetcher(self._alpaca_request, client, request, timestep=timestep,
                                asset_type=key.asset_type, what=what)
        return self.serve(key, wanted, fetcher, refresh=refresh, columns=OHLCV)


@dataclass(frozen=True)
class _MinuteWindow:
    """Rows ``first..stop-1`` of Lumibot's minute frame of one asset."""

    first: int
    stop: int
    frame: pd.DataFrame


@dataclass(frozen=True)
class _MinuteSeries:
    """The store series an asset's minute frame is built from, the range made present in it, and its provider."""

    key: SeriesKey
    wanted: Interval
    fetcher: AlpacaFetcher


def alpaca_series_key(asset: Asset, quote: Asset | None, timestep: str, request: Any) -> SeriesKey:
    """The store series an Alpaca bars request reads: adjustment as asked for (stocks), quote for crypto."""
    adjustment = getattr(request, "adjustment", None)
    adjustment = str(getattr(adjustment, "value", adjustment) or "raw")
    quote_symbol = quote.symbol if quote is not None else "USD"
    return series_key(asset, SOURCE, timestep, quote=quote_symbol, adjustment=adjustment)


def prefetch(asset: Asset, quote: Asset | None, timestep: str, first: dt.date, last: dt.date, *,
             adjustment: str = "split", credentials: dict[str, Any] | None = None,
             ) -> tuple[SeriesKey, Interval, AlpacaFetcher]:
    """What a backtest over ``first``..``last`` fills for ``asset`` (:mod:`lumibot_duckdb.fetch`): the
    request Lumibot's ``_history_request`` builds for that window (it reads a day past the window's
    end), its series, and the provider, paced by Lumibot's own ``_alpaca_request`` (180 requests a
    minute, HTTP 429 back-off).

    ``adjustment``: ``split`` (what ``run_backtest`` asks for) or ``all`` (``auto_adjust=True``);
    stocks only. ``credentials``: Lumibot's ``ALPACA_CONFIG`` keys (``API_KEY``/``API_SECRET`` or
    ``OAUTH_TOKEN``); default Lumibot's own (environment or ``.env``).
    """
    from alpaca.data.historical import (
        CryptoHistoricalDataClient,
        OptionHistoricalDataClient,
        StockHistoricalDataClient,
    )

    if credentials is None:
        from lumibot.credentials import ALPACA_CONFIG

        credentials = dict(ALPACA_CONFIG)
    key, secret, token = (credentials.get(n) for n in ("API_KEY", "API_SECRET", "OAUTH_TOKEN"))
    if key and secret:
        auth: dict[str, Any] = {"api_key": key, "secret_key": secret}
    elif token:
        auth = {"oauth_token": token}
    else:
        from lumibot_duckdb.errors import ConfigError

        raise ConfigError("No Alpaca credentials: set ALPACA_API_KEY and ALPACA_API_SECRET (or ALPACA_OAUTH_TOKEN) "
                          "in the environment or in a .env file, as for Lumibot's backtests.")
    if adjustment not in ("split", "all"):
        from lumibot_duckdb.errors import ConfigError

        raise ConfigError(f"adjustment={adjustment!r}: Alpaca backtests ask for 'split' (default) or 'all'.")
    pacer = _LegacyAlpacaBacktesting.__new__(_LegacyAlpacaBacktesting)  # Lumibot's request helpers, no backtest
    pacer._stock_client = StockHistoricalDataClient(**auth)
    pacer._crypto_client = CryptoHistoricalDataClient(**auth)
    pacer._option_client = OptionHistoricalDataClient(**auth)
    quote = quote or Asset("USD", "forex")
    start = pd.Timestamp(first).tz_localize("America/New_York").to_pydatetime()
    end = pd.Timestamp(last + dt.timedelta(days=1)).tz_localize("America/New_York").to_pydatetime()
    client, request = pacer._history_request(base_asset=asset, quote_asset=quote, timestep=timestep,
                                             data_datetime_start=start, data_datetime_end=end,
                                             auto_adjust=adjustment == "all")
    series = alpaca_series_key(asset, quote, timestep, request)
    what = f"{asset.symbol} {timestep} bars {first}..{last}"
    provider = AlpacaFetcher(pacer._alpaca_request, client, request, timestep=timestep,
                             asset_type=series.asset_type, what=what)
    return series, Interval(_utc(request.start), _utc(request.end) + _INCLUSIVE), provider  # naive: UTC (Alpaca)


def legacy_rows(bars: pd.DataFrame, tzinfo: Any) -> pd.DataFrame:
    """Store bars → the rows Lumibot takes from a ``BarSet``: ``timestamp`` (ns, ``tzinfo``) and OHLCV."""
    frame = pd.DataFrame({column: bars[column].to_numpy(dtype="float64") for column in OHLCV})
    frame.insert(0, "timestamp", pd.DatetimeIndex(bars.index).as_unit("ns").tz_convert(tzinfo))
    return frame


class AlpacaFetcher:
    """The Alpaca side of :meth:`EnhancedDataSourceBacktesting.serve` for one request template."""

    name = "Alpaca"
    max_workers = 4
    name = "Alpaca"
    advice = "check the symbol, the feed your key may use, and Alpaca's status page."

    def __init__(self, call: Callable[..., Any], client: Any, request: Any, *, timestep: str, asset_type: str,
                 what: str) -> None:
        self.call = call            # Lumibot's _alpaca_request: pacing and 429 back-off, as on the legacy path
        self.client = client
        self.request = request
        self.timestep = timestep
        self.asset_type = asset_type
        self.what = what
        raw = request.symbol_or_symbols
        self.symbol = raw if isinstance(raw, str) else next(iter(raw))

    # -- plan ------------------------------------------------------------------------------------
    def plan(self, key: SeriesKey, missing: list[Interval]) -> list[FetchTask]:
        tasks = []
        for gap in missing:
            if self.asset_type != "crypto" and not _has_session(gap):
                tasks.append(FetchTask(gap))  # a weekend or a holiday: no bars, no request
                continue
            tasks.append(FetchTask(gap, self._request(gap.start, gap.end - _INCLUSIVE)))
        return tasks

    def settled_until(self) -> pd.Timestamp:
        """Bars starting before this are final (they ended 15 minutes ago); nothing later is recorded."""
        return pd.Timestamp.now(tz="UTC") - _DURATION[self.timestep] - SETTLE

    def _request(self, first: pd.Timestamp, last: pd.Timestamp) -> Any:
        return self.request.model_copy(update={"start": first.to_pydatetime(), "end": last.to_pydatetime()})

    # -- fetch -----------------------------------------------------------------------------------
    def describe(self, task: FetchTask) -> str:
        request = task.request
        return f"{self.symbol} {request.timeframe} bars {request.start}..{request.end}"

    def fetch(self, task: FetchTask) -> pd.DataFrame:
        request = task.request
        if isinstance(request, CryptoBarsRequest):
            method = self.client.get_crypto_bars
        elif isinstance(request, OptionBarsRequest):
            method = self.client.get_option_bars
        else:
            method = self.client.get_stock_bars
        try:
            answer = self.call(method, request, what=self.what)
        except Exception as exc:
            raise RuntimeError(f"Failed to fetch data for {self.what}: {exc}") from exc
        return barset_to_bars(answer, self.symbol,
                              what=f"{self.symbol} {request.timeframe} bars {request.start}..{request.end}")

    # -- revalidate: adjusted history can be re-written after a split or a dividend ----------------
    def revalidate(self, key: SeriesKey, writer: SeriesWriter) -> None:
        """Before adding bars to an adjusted series, check (once a day) that Alpaca did not re-adjust it.

        Alpaca adjusts stock bars as of the day they are asked for. If the last stored bars no
        longer match what Alpaca answers for them, stored and new bars would not line up: the
        series is dropped and the wanted range fetched again (Lumibot's shared bar cache does the
        same with a 3-bar overlap). Files written today cannot be stale, so they need no request.
        """
        if key.adjustment not in ("split", "all"):
            return
        files = writer.files()
        if not files:
            return
        today = pd.Timestamp.now(tz="America/New_York").date()
        as_of = writer.as_of("America/New_York")  # (imported bars: as of when Lumibot fetched them)
        if as_of is not None and as_of >= today:
            return
        if writer.checked_on("verified") == today:
            return
        last = writer.coverage()[-1]
        stored = writer.store.read(key, max(last.start, last.end - pd.Timedelta(days=10)), last.end,
                                   columns=("open", "high", "low", "close")).tail(OVERLAP_BARS)
        if not stored.empty:
            fresh = self.fetch(FetchTask(Interval(stored.index[0], stored.index[-1] + _INCLUSIVE),
                                         self._request(stored.index[0], stored.index[-1])))
            if not _same_prices(stored, fresh):
                writer.discard()
        writer.mark_checked("verified", today)


def barset_to_bars(answer: Any, symbol: str, *, what: str) -> pd.DataFrame:
    """Bars (UTC index ``ts``, the store's columns) of ``symbol`` from what alpaca-py returned.

    Accepts a ``BarSet`` (``.data``: symbol → ``Bar`` models) or the raw mapping a client made with
    ``raw_data=True`` returns. Bars without a readable timestamp, or with a repeated one, are a
    :class:`ProviderDataError`; so are bars that break the store's rules (missing, non-finite or
    non-positive prices, high below low, negative volume: :mod:`lumibot_duckdb.store.validate`, checked
    here for the whole answer), the answers Lumibot's own Alpaca path rejects as ``InvalidBars``.
    """
    if isinstance(answer, dict):
        rows = [_raw_row(bar) for bar in (answer.get(symbol) or [])]
    elif isinstance(getattr(answer, "data", None), dict):
        rows = [_model_row(bar) for bar in (answer.data.get(symbol) or [])]
    else:
        raise _bad_answer(what, f"a {type(answer).__name__}, not a BarSet")
    columns = ("ts", *STORED)
    raw = pd.DataFrame.from_records(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    stamps = pd.to_datetime(raw["ts"], utc=True, errors="coerce")
    values = {c: pd.to_numeric(raw[c], errors="coerce").astype("float64") for c in STORED}
    frame = pd.DataFrame(
        {
            **{c: values[c].to_numpy() for c in (*OHLCV, "vwap")},
            "trade_count": pd.array(values["trade_count"].round(), dtype="Int64"),
        },
        index=pd.DatetimeIndex(stamps, name="ts"),
    )
    problem = _ohlcv_problem(frame)
    if problem:
        raise _bad_answer(what, problem)
    return frame.sort_index()


def _model_row(bar: Any) -> tuple[Any, ...]:
    return (getattr(bar, "timestamp", None), *(getattr(bar, c, None) for c in STORED))


def _raw_row(bar: Any) -> tuple[Any, ...]:
    if not isinstance(bar, dict):
        return (None,) * (1 + len(STORED))
    return (bar.get("t"), bar.get("o"), bar.get("h"), bar.get("l"), bar.get("c"), bar.get("v"), bar.get("vw"),
            bar.get("n"))


def _ohlcv_problem(frame: pd.DataFrame) -> str:
    if frame.empty:
        return ""
    checks = [
        (np.asarray(frame.index.isna()), "a missing or unreadable timestamp"),
        (np.asarray(frame.index.duplicated()), "a repeated timestamp"),
    ]
    for bad, words in checks:
        if bad.any():
            position = int(np.flatnonzero(bad)[0])
            example = {"t": str(frame.index[position]), **frame.iloc[position][list(OHLCV)].to_dict()}
            return f"{int(bad.sum())} bar(s) with {words} (e.g. {example})"
    return bar_problems(frame)  # (every Alpaca asset type, stocks, options and crypto, has positive prices)


def _bad_answer(what: str, problem: str) -> ProviderDataError:
    return bad_answer("Alpaca", what, problem, advice=AlpacaFetcher.advice)


def _same_prices(stored: pd.DataFrame, fresh: pd.DataFrame) -> bool:
    common = stored.index.intersection(fresh.index)
    if common.empty:
        return len(fresh) == 0
    columns = ["open", "high", "low", "close"]
    return bool(np.allclose(stored.loc[common, columns].to_numpy(), fresh.loc[common, columns].to_numpy(),
                            rtol=1e-6, atol=0.0))


def _key_timestep(key: str) -> str | None:
    """The timestep part of a ``_get_asset_key`` string (``…_NASDAQ_MINUTE_AMERICA-NEW-YORK_…``)."""
    for part in key.split("_"):
        if part.lower() in SERVED_TIMESTEPS:
            return part.lower()
    return None


def _utc(value: Any) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


SATURDAYS_UNTIL = dt.date(1952, 9, 29)
"""The NYSE traded on Saturdays until then: dates before it take the calendar's whole schedule."""


@functools.lru_cache(maxsize=1)
def _nyse() -> Any:
    import pandas_market_calendars as mcal

    return mcal.get_calendar("NYSE")


@functools.lru_cache(maxsize=1)
def _nyse_adhoc_closures() -> np.ndarray:
    return pd.DatetimeIndex(_nyse().adhoc_holidays).tz_convert(None).to_numpy().astype("datetime64[D]")


def _sessions(first: dt.date, last: dt.date) -> pd.DatetimeIndex:
    """NYSE session dates from ``first`` to ``last``: the weekdays that are neither a holiday nor a closure.

    The same dates as ``pandas_market_calendars``' ``schedule``, whose first call on a calendar works out every
    holiday from 1885 to 2200 (~0.1 s, which a backtest's first fill paid and Lumibot's legacy path does not);
    here only the holiday rules of the range are evaluated, and a range without a weekday needs none.
    """
    if first < SATURDAYS_UNTIL:
        return pd.DatetimeIndex(_nyse().schedule(start_date=first, end_date=last).index)
    days = np.arange(np.datetime64(first, "D"), np.datetime64(last, "D") + 1)
    days = days[np.is_busday(days)]
    if len(days):
        closed = [_holidays_of(year) for year in range(first.year, last.year + 1)]
        days = days[~np.isin(days, np.concatenate([*closed, _nyse_adhoc_closures()]))]
    return pd.DatetimeIndex(days.astype("datetime64[ns]"))


@functools.lru_cache(maxsize=256)
def _holidays_of(year: int) -> np.ndarray:
    """The NYSE's holidays by its rules that fall in ``year`` (``datetime64[D]``), worked out once per year:
    pandas evaluates every rule at each call, ~65 ms whatever the range (a backtest's fills asked it once per
    series, where Lumibot's legacy path asks nothing)."""
    found = _nyse().regular_holidays.holidays(pd.Timestamp(year, 1, 1), pd.Timestamp(year, 12, 31))
    return pd.DatetimeIndex(found).to_numpy().astype("datetime64[D]")


LONGEST_CLOSURE = 4
"""The most weekdays in a row the NYSE has been closed since it stopped trading on Saturdays (11-14 September
2001; test_alpaca checks the calendar): a range holding more whole weekdays than this holds a session."""


def _has_session(gap: Interval) -> bool:
    """Whether ``gap`` can hold stock bars: Alpaca has them on NYSE session dates, from the daily bar at
    00:00 New York to the last extended-hours minute before 20:00."""
    first = gap.start.tz_convert("America/New_York").date()
    last = (gap.end - _INCLUSIVE).tz_convert("America/New_York").date()
    if first >= SATURDAYS_UNTIL and np.busday_count(first + dt.timedelta(days=1), last) > LONGEST_CLOSURE:
        return True  # (whole weekdays inside the range, more than any closure: a session's bars are inside it)
    dates = _sessions(first, last)
    if dates.empty:
        return False
    day_start = dates.tz_localize("America/New_York").tz_convert("UTC")
    return bool(((day_start < gap.end) & (day_start + _BAR_HOURS > gap.start)).any())
