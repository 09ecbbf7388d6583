"""An offline Yahoo Finance: answers ``yfinance.Ticker.history`` and ``Ticker.info`` from a market.

yfinance talks to Yahoo through curl_cffi, below anything a socket guard sees, so the fake sits
one level above the wire: it replaces ``yf.Ticker.history`` (the method) and ``yf.Ticker.info``
(the property) and answers in yfinance's own shape: an ``America/New_York`` index named
``Date`` (daily, 00:00) or ``Datetime`` (intraday), columns ``Open High Low Close Adj Close
Volume Dividends Stock Splits``, ``Volume`` as int64. Everything Lumibot does with that answer
(re-stamping, ``process_df``, ``format_df``, ``_append_data``) runs unchanged.

Corporate actions behave as on Yahoo: prices, volumes and dividends are split-adjusted as of the
fake's ``now`` (so a split between two requests re-writes the history the second one sees), and
``Adj Close`` is back-adjusted for every dividend paid up to ``now``. By default every symbol
pays a small quarterly dividend; pass ``actions`` for explicit dividends and splits.

>>> from lumibot_duckdb.testing.market import SyntheticMarket
>>> with serve_yahoo(SyntheticMarket(), fast=True) as yahoo:      # doctest: +SKIP
...     run_my_backtest()
...     yahoo.count("history"), yahoo.count("info")
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from lumibot_duckdb.testing.kits import VALUE_FAULTS, Faults, SourceKit, patched, spoil

NY = "America/New_York"
YAHOO_COLUMNS = ("Open", "High", "Low", "Close", "Adj Close", "Volume", "Dividends", "Stock Splits")
INTRADAY_DAYS = {"1m": 30, "15m": 60}
"""How far back Yahoo serves intraday bars (days before now); older requests get nothing."""


class Market(Protocol):
    def bars(self, symbol: str, timeframe: str, start: object, end: object, *,
             asset_type: str = "stock") -> pd.DataFrame:
        ...


@dataclass(frozen=True)
class YahooRequest:
    kind: str                 # "history" or "info"
    symbol: str
    interval: str | None = None
    start: pd.Timestamp | None = None   # resolved bounds of a history request (UTC)
    end: pd.Timestamp | None = None
    period: str | None = None


class FakeYahoo:
    """The Yahoo Finance that ``yf.Ticker`` talks to inside :func:`serve_yahoo`.

    ``now``: Yahoo's clock (a timestamp or a callable; default the real time): history ends there.
    ``listed``: first day of every symbol's history (``period="max"`` starts here; default: the
    first bar of a frame-backed market, else 2020-01-02).
    ``actions``: ``{symbol: {date: {"dividend": amount, "split": ratio}}}``, amounts in today's
    (post-split) terms. ``quarterly_dividends``: add a small dividend on the first session on or
    after the 15th of March, June, September and December, for every symbol.
    """

    def __init__(self, market: Market, *, now: pd.Timestamp | str | Callable[[], pd.Timestamp] | None = None,
                 listed: dt.date | str | None = None,
                 actions: dict[str, dict[Any, dict[str, float]]] | None = None,
                 quarterly_dividends: bool = True, info: dict[str, dict[str, Any]] | None = None) -> None:
        self.market = market
        self._now = now
        self.listed = pd.Timestamp(listed if listed is not None else _first_day(market)).date()
        self.actions = {s: {pd.Timestamp(d).date(): dict(a) for d, a in acts.items()}
                        for s, acts in (actions or {}).items()}
        self.quarterly_dividends = quarterly_dividends
        self.info_overrides = dict(info or {})
        self.requests: list[YahooRequest] = []
        self.faults = Faults()
        self.info_faults: set[str | None] = set()
        self._lock = threading.Lock()
        self._history_cache: dict[tuple[str, str, pd.Timestamp], pd.DataFrame] = {}

    # -- what tests look at --------------------------------------------------------------------
    def now(self) -> pd.Timestamp:
        value = self._now() if callable(self._now) else self._now
        stamp = pd.Timestamp.now(tz="UTC") if value is None else pd.Timestamp(value)
        return stamp.tz_localize(NY).tz_convert("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if kind is None or r.kind == kind)

    def requested_days(self) -> int:
        """Calendar days spanned by all history requests (``period="max"`` spans the whole listing)."""
        with self._lock:
            return sum(max(1, (r.end - r.start).days) for r in self.requests
                       if r.kind == "history" and r.start is not None and r.end is not None)

    def history_requests(self, symbol: str | None = None) -> list[YahooRequest]:
        with self._lock:
            return [r for r in self.requests if r.kind == "history" and symbol in (None, r.symbol)]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def fail(self, mode: str, *, symbol: str | None = None, times: int | None = None) -> None:
        """Answer history requests (for ``symbol``, or all; the next ``times`` only) with ``empty``,
        ``malformed``, ``error`` (yfinance's rate-limit error) or ``transient`` (a timed-out transfer)."""
        self.faults.set(mode, symbol, times)

    def fail_info(self, *, symbol: str | None = None) -> None:
        """Make ``Ticker.info`` raise (for ``symbol``, or all), as it does when Yahoo refuses the quote summary."""
        self.info_faults.add(symbol)

    def heal(self) -> None:
        self.faults.clear()
        self.info_faults.clear()

    # -- yfinance surface ------------------------------------------------------------------------
    def info(self, symbol: str) -> dict[str, Any]:
        with self._lock:
            self.requests.append(YahooRequest("info", symbol))
        if symbol in self.info_faults or None in self.info_faults:
            from yfinance.exceptions import YFRateLimitError

            raise YFRateLimitError()
        crypto = symbol.endswith(("-USD", "-USDT", "-EUR"))
        document: dict[str, Any] = {
            "symbol": symbol, "shortName": f"{symbol} (offline)", "currency": "USD",
            "quoteType": "CRYPTOCURRENCY" if crypto else "EQUITY",
            "market": "ccc_market" if crypto else "us_market",
            "exchange": "CCC" if crypto else "NYQ",
            "exchangeTimezoneName": "UTC" if crypto else NY,
            "exchangeTimezoneShortName": "UTC" if crypto else "EST",
        }
        document.update(self.info_overrides.get(symbol, {}))
        return document

    def history(self, symbol: str, period: str | None = None, interval: str = "1d", start: Any = None,
                end: Any = None, auto_adjust: bool = True, actions: bool = True, prepost: bool = False,
                **_: Any) -> pd.DataFrame:
        now = self.now()
        if start is None and end is None and period in (None, "max"):
            lo = pd.Timestamp(self.listed).tz_localize(NY).tz_convert("UTC")
        elif start is None and period is not None and period != "max":
            lo = now - _PERIODS.get(period, pd.Timedelta(days=30))
        else:
            lo = _bound(start) if start is not None else pd.Timestamp(self.listed).tz_localize(NY).tz_convert("UTC")
        hi = min(_bound(end), now) if end is not None else now
        with self._lock:
            self.requests.append(YahooRequest("history", symbol, interval, lo, hi,
                                              period if start is None else None))
        fault = self.faults.take(symbol)
        if fault is not None and fault not in VALUE_FAULTS:
            return _fault(fault, symbol)
        if interval in INTRADAY_DAYS:
            lo = max(lo, now - pd.Timedelta(days=INTRADAY_DAYS[interval]))
        elif interval != "1d":
            raise ValueError(f"the offline Yahoo serves 1d, 15m and 1m bars, not {interval!r}")
        full = self._full_history(symbol, interval, now)
        frame = full[(full.index >= lo) & (full.index < hi)]
        if fault is not None:
            frame = spoil(frame, fault, capitalized=True)
        if auto_adjust:
            factor = frame["Adj Close"] / frame["Close"]
            frame = frame.drop(columns=["Adj Close"])
            for column in ("Open", "High", "Low", "Close"):
                frame[column] = frame[column] * factor
        if not actions:
            frame = frame.drop(columns=["Dividends", "Stock Splits"])
        frame = frame.copy()
        frame.index = frame.index.tz_convert(NY).rename("Date" if interval == "1d" else "Datetime")
        return frame

    # -- building answers ----------------------------------------------------------------------
    def _full_history(self, symbol: str, interval: str, now: pd.Timestamp) -> pd.DataFrame:
        """Everything Yahoo shows for ``symbol`` as of ``now``, adjusted as of ``now`` (UTC index)."""
        key = (symbol, interval, now.floor("min"))
        with self._lock:
            cached = self._history_cache.get(key)
        if cached is not None:
            return cached
        asset_type = "crypto" if symbol.endswith(("-USD", "-USDT", "-EUR")) else "stock"
        market_symbol = symbol.split("-")[0] if asset_type == "crypto" else symbol
        lo = pd.Timestamp(self.listed).tz_localize(NY).tz_convert("UTC")
        if interval == "1d":
            bars = self.market.bars(market_symbol, "day", lo, now, asset_type=asset_type)
        else:
            lo = max(lo, now - pd.Timedelta(days=INTRADAY_DAYS[interval] + 1))
            bars = self.market.bars(market_symbol, "minute", lo, now, asset_type=asset_type)
            if asset_type == "stock":
                local = bars.index.tz_convert(NY)
                bars = bars[(local.time >= dt.time(9, 30)) & (local.time < dt.time(16, 0))]
            if interval == "15m":
                bars = _aggregate_15m(bars)
        frame = self._adjusted(symbol, bars, now)
        with self._lock:
            self._history_cache = {k: v for k, v in self._history_cache.items() if k[2] == key[2]}
            self._history_cache[key] = frame
        return frame

    def _events(self, symbol: str, bars: pd.DataFrame, local_dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dividends = np.zeros(len(bars))
        splits = np.zeros(len(bars))
        if self.quarterly_dividends and len(bars):
            months = pd.DatetimeIndex(local_dates).month.to_numpy()
            days = pd.DatetimeIndex(local_dates).day.to_numpy()
            quarter_end = np.isin(months, (3, 6, 9, 12)) & (days >= 15)
            first = quarter_end & ~np.r_[False, quarter_end[:-1] & (months[1:] == months[:-1])]
            dividends[first] = np.round(bars["close"].to_numpy()[first] * 0.003, 4)
        for day, action in self.actions.get(symbol, {}).items():
            rows = np.flatnonzero(local_dates == np.datetime64(day))
            if rows.size:
                dividends[rows] = float(action.get("dividend", 0.0))
                splits[rows] = float(action.get("split", 0.0))
        return dividends, splits

    def _adjusted(self, symbol: str, bars: pd.DataFrame, now: pd.Timestamp) -> pd.DataFrame:
        """Market bars as Yahoo shows them on ``now``: split-adjusted OHLCV and dividends, back-adjusted Adj Close."""
        day_tz = "UTC" if symbol.endswith(("-USD", "-USDT", "-EUR")) else NY
        local_dates = bars.index.tz_convert(day_tz).tz_localize(None).normalize().to_numpy().astype("datetime64[D]")
        dividends, splits = self._events(symbol, bars, local_dates)
        today = np.datetime64(now.tz_convert(day_tz).date())
        later = [(day, float(a["split"])) for day, a in self.actions.get(symbol, {}).items()
                 if a.get("split") and np.datetime64(day) > today]
        factor = float(np.prod([ratio for _, ratio in later])) if later else 1.0   # splits Yahoo has not seen yet
        close = bars["close"].to_numpy() * factor
        dividends = dividends * factor
        ratios = np.ones(len(bars))
        paid = np.flatnonzero(dividends > 0)
        paid = paid[paid > 0]
        ratios[paid] = 1.0 - dividends[paid] / close[paid - 1]
        # Adj Close of a bar carries every dividend paid after it: the product of later ratios.
        after = np.r_[np.cumprod(ratios[::-1])[::-1][1:], 1.0] if len(bars) else ratios
        frame = pd.DataFrame(
            {
                "Open": bars["open"].to_numpy() * factor,
                "High": bars["high"].to_numpy() * factor,
                "Low": bars["low"].to_numpy() * factor,
                "Close": close,
                "Adj Close": close * after,
                "Volume": np.round(bars["volume"].to_numpy() / factor).astype("int64"),
                "Dividends": dividends,
                "Stock Splits": splits,
            },
            index=bars.index,
        )
        return frame


def _first_day(market: Market) -> dt.date:
    """Where ``period="max"`` starts: the first bar a frame-backed market holds, else 2020-01-02
    (synthetic markets have bars for any day; a shorter history keeps tests fast)."""
    frames = getattr(market, "frames", None)
    if isinstance(frames, dict) and frames:
        first = min(frame.index[0] for frame in frames.values() if len(frame))
        return pd.Timestamp(first).tz_convert(NY).date()
    return dt.date(2020, 1, 2)


_PERIODS = {"1d": pd.Timedelta(days=1), "5d": pd.Timedelta(days=5), "7d": pd.Timedelta(days=7),
            "1mo": pd.Timedelta(days=31), "3mo": pd.Timedelta(days=92), "1y": pd.Timedelta(days=366)}


def _bound(value: Any) -> pd.Timestamp:
    """A yfinance ``start``/``end`` (date string, date, datetime) as UTC; dates are New York midnights."""
    stamp = pd.Timestamp(value)
    return stamp.tz_localize(NY).tz_convert("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _aggregate_15m(bars: pd.DataFrame) -> pd.DataFrame:
    labels = bars.index.floor("15min")
    grouped = bars.groupby(labels)
    frame = pd.DataFrame({"open": grouped["open"].first(), "high": grouped["high"].max(),
                          "low": grouped["low"].min(), "close": grouped["close"].last(),
                          "volume": grouped["volume"].sum()})
    frame.index = pd.DatetimeIndex(frame.index).rename("ts")
    return frame


def _fault(mode: str, symbol: str) -> pd.DataFrame:
    if mode == "empty":  # what yfinance hands back for a symbol without prices ("possibly delisted")
        frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in YAHOO_COLUMNS})
        frame.index = pd.DatetimeIndex([], tz=NY, name="Date")
        return frame
    if mode == "malformed":  # a scrambled answer: no datetime index, prices that are not numbers
        return pd.DataFrame({"Open": ["n/a"], "High": ["n/a"], "Low": ["n/a"], "Close": ["n/a"], "Volume": [-1]},
                            index=pd.Index(["soon"], name="Date"))
    if mode == "transient":  # what yfinance lets through when the transfer times out
        from curl_cffi.requests.exceptions import Timeout

        raise Timeout("Failed to perform, curl: (28) Operation timed out after 10000 milliseconds")
    from yfinance.exceptions import YFRateLimitError

    raise YFRateLimitError()


@contextlib.contextmanager
def serve_yahoo(market: Market, *, fast: bool = False, **options: Any) -> Iterator[FakeYahoo]:
    """Answer every ``yf.Ticker(...).history(...)`` and ``.info`` inside the block from ``market``.

    ``fast=True`` also removes Lumibot's deliberate Yahoo sleeps (2-5 s before every download and
    the 1 s / 2 s retry back-off): for tests. Options go to :class:`FakeYahoo`.
    """
    import yfinance as yf
    from lumibot.tools import yahoo_helper

    yahoo = FakeYahoo(market, **options)

    def history(self: Any, *args: Any, **kwargs: Any) -> pd.DataFrame:
        return yahoo.history(self.ticker, *args, **kwargs)

    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(yf.Ticker, "history", history))
        stack.enter_context(patched(yf.Ticker, "info", property(lambda self: yahoo.info(self.ticker))))
        if fast:
            stack.enter_context(patched(yahoo_helper.YahooHelper, "sleep_and_get_proxy",
                                        staticmethod(lambda: None)))
            stack.enter_context(patched(yahoo_helper, "time", types.SimpleNamespace(sleep=lambda seconds: None)))
        yield yahoo


class YahooKit(SourceKit):
    """Yahoo: Lumibot's ``YahooDataBacktesting`` and ours, against :class:`FakeYahoo`.

    Daily bars only: Yahoo serves minute (15-minute) bars for the last 7 (60) days of real time,
    so no historical intraday backtest is possible with it on either path.
    """

    name = "yahoo"
    asset_types = ("stock",)
    timeframes = ("day",)
    request_kinds = ("history", "info")
    bar_request_kinds = ("history",)


    def serve(self, market: Any, *, fast: bool = False) -> contextlib.AbstractContextManager[FakeYahoo]:
        return serve_yahoo(market, fast=fast)

    def data_layer(self) -> list[tuple[Any, str]]:
        from lumibot.tools.yahoo_helper import YahooHelper

        return [(YahooHelper, "get_symbol_data")]

    def legacy_cache(self, cache_folder: Path) -> tuple[int, int]:
        import pickle

        folder = cache_folder / "yahoo"
        size = bars = 0
        for path in sorted(folder.glob("*.pickle")) if folder.exists() else []:
            size += path.stat().st_size
            if not path.name.endswith("_info.pickle"):
                with path.open("rb") as handle:
                    data = getattr(pickle.load(handle), "data", None)  # our own test cache
                bars += len(data) if data is not None else 0
        return size, bars

    @contextlib.contextmanager
    def legacy_cache_folder(self, folder: Path) -> Iterator[None]:
        from lumibot.tools.yahoo_helper import YahooHelper

        target = folder / "yahoo"
        target.mkdir(parents=True, exist_ok=True)
        with patched(YahooHelper, "LUMIBOT_YAHOO_CACHE_FOLDER", str(target)), \
                patched(YahooHelper, "CACHING_ENABLED", True):
            yield
