"""A deterministic synthetic market: realistic-looking bars for any symbol, any range, offline.

Every value is a pure function of ``(seed, symbol, timestamp)``: two requests for overlapping
ranges, split into any chunks, in any order, get identical bars. That is what a provider fake
needs for cold/warm and shifted-window comparisons.

* US stocks follow the real NYSE calendar (pandas_market_calendars, early closes included);
  minute bars cover 04:00–20:00 New York time, every regular-session minute present and about a
  third of the extended-hours minutes (quiet minutes have no trades, as in Polygon's data).
  Daily bars aggregate the regular session and are stamped 00:00 New York time.
* Crypto trades 24/7: every UTC minute, daily bars are UTC days.

Prices follow a geometric random walk per symbol (a daily walk plus a Brownian bridge inside
each session), with volumes, VWAP and trade counts to match.
"""

from __future__ import annotations

import datetime as dt
import functools
import zlib

import numpy as np
import pandas as pd

NY = "America/New_York"
_EPOCH = dt.date(1990, 1, 1)
_LAST = dt.date(2040, 12, 31)
_ANCHOR_DAY = (dt.date(2020, 1, 1) - _EPOCH).days
_GRID_START = pd.Timedelta(hours=4)      # extended session 04:00-20:00 New York
_GRID_MINUTES = 16 * 60
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, vectorised: a well-spread 64-bit hash of each value."""
    z = values.astype(np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _uniform(seed: int, keys: np.ndarray, salt: int) -> np.ndarray:
    """Uniform [0, 1) numbers, one per key, reproducible from (seed, salt, key)."""
    mixed = _mix(keys.astype(np.uint64) ^ _mix(np.array([seed * 1_000_003 + salt], dtype=np.uint64)))
    return (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _symbol_seed(seed: int, symbol: str) -> int:
    return (zlib.crc32(symbol.encode()) ^ (seed * 0x5BD1E995)) & 0x7FFFFFFF


@functools.lru_cache(maxsize=512)
def _daily_log_close(symbol_seed: int) -> np.ndarray:
    """Log close for every calendar day from 1990 to 2040 (index = days since 1990-01-01)."""
    days = (_LAST - _EPOCH).days + 1
    rng = np.random.default_rng(symbol_seed)
    base = np.log(20.0 + 480.0 * rng.random())
    drift = 0.0001 + 0.0003 * rng.random()
    vol = 0.008 + 0.012 * rng.random()
    walk = np.cumsum(rng.normal(drift, vol, days))
    return base + walk - walk[_ANCHOR_DAY]  # the base price is the price on 2020-01-01


@functools.lru_cache(maxsize=64)
def _nyse_sessions(year: int) -> pd.DataFrame:
    import pandas_market_calendars as mcal

    schedule = mcal.get_calendar("NYSE").schedule(start_date=f"{year}-01-01", end_date=f"{year}-12-31")
    return schedule[["market_open", "market_close"]]


def sessions(asset_type: str, first: dt.date, last: dt.date) -> pd.DataFrame:
    """Trading sessions with ``market_open``/``market_close`` (UTC) for each date in [first, last]."""
    if last < first:
        return pd.DataFrame(columns=["market_open", "market_close"])
    if asset_type == "crypto":
        days = pd.date_range(first, last, freq="D")
        opens = days.tz_localize("UTC")
        return pd.DataFrame({"market_open": opens, "market_close": opens + pd.Timedelta(days=1)}, index=days)
    frames = [_nyse_sessions(y) for y in range(first.year, last.year + 1)]
    schedule = pd.concat(frames)
    mask = (schedule.index.date >= first) & (schedule.index.date <= last)
    return schedule[mask]


class SyntheticMarket:
    """Deterministic bars for any symbol (see the module docstring).

    >>> market = SyntheticMarket(seed=7)
    >>> bars = market.bars("SPY", "day", "2024-01-01", "2024-02-01")
    >>> len(bars), list(bars.columns)
    (21, ['open', 'high', 'low', 'close', 'volume', 'vwap', 'trade_count'])
    """

    def __init__(self, seed: int = 0, *, extended_hours: bool = True, extended_fill: float = 0.35) -> None:
        self.seed = seed
        self.extended_hours = extended_hours
        self.extended_fill = extended_fill

    def __repr__(self) -> str:
        return f"SyntheticMarket(seed={self.seed})"

    # -- public --------------------------------------------------------------------------------
    def bars(self, symbol: str, timeframe: str, start: object, end: object, *,
             asset_type: str = "stock") -> pd.DataFrame:
        """Bars of ``symbol`` whose start lies in ``[start, end)`` (naive = UTC), UTC index ``ts``."""
        lo, hi = _to_utc(start), _to_utc(end)
        if hi <= lo:
            return _empty()
        day_tz = "UTC" if asset_type == "crypto" else NY
        first = lo.tz_convert(day_tz).date() - dt.timedelta(days=1)
        last = hi.tz_convert(day_tz).date()
        first, last = max(first, _EPOCH + dt.timedelta(days=1)), min(last, _LAST)
        if timeframe == "day":
            frame = self._daily(symbol, asset_type, first, last)
        else:
            frame = self._minutes(symbol, asset_type, first, last, regular_only=False)
            if timeframe == "hour":
                frame = _aggregate(frame, frame.index.floor("h"))
            elif timeframe != "minute":
                raise ValueError(f"timeframe must be minute, hour or day, not {timeframe!r}")
        return frame[(frame.index >= lo) & (frame.index < hi)]

    # -- generation ----------------------------------------------------------------------------
    def _minutes(self, symbol: str, asset_type: str, first: dt.date, last: dt.date, *,
                 regular_only: bool) -> pd.DataFrame:
        schedule = sessions(asset_type, first, last)
        if schedule.empty:
            return _empty()
        seed = _symbol_seed(self.seed, symbol)
        log_close = _daily_log_close(seed)
        day_numbers = np.array([(d.date() - _EPOCH).days for d in schedule.index])
        close_today = log_close[day_numbers]
        gap = (_uniform(seed, day_numbers, 1) - 0.5) * 0.004
        open_today = log_close[day_numbers - 1] + gap

        market_open = _naive_utc(schedule["market_open"])
        market_close = _naive_utc(schedule["market_close"])
        if asset_type == "crypto":
            grid_start = market_open
            n_grid = 1440
        else:
            midnight = pd.DatetimeIndex(schedule.index).tz_localize(NY)
            grid_start = _naive_utc(midnight + _GRID_START)
            n_grid = _GRID_MINUTES
        offsets = np.arange(n_grid, dtype="timedelta64[m]").astype("timedelta64[ns]")
        stamps = grid_start[:, None] + offsets[None, :]
        keys = stamps.astype("int64") // 60_000_000_000

        reg_open = ((market_open - grid_start) // np.timedelta64(1, "m")).astype(int)
        reg_close = ((market_close - grid_start) // np.timedelta64(1, "m")).astype(int)
        col = np.arange(n_grid)[None, :]
        regular = (col >= reg_open[:, None]) & (col < reg_close[:, None])

        sigma = 0.0009
        steps = (_uniform(seed, keys, 2) - 0.5) * (sigma * np.sqrt(12.0))
        walk = np.cumsum(steps, axis=1)
        rows = np.arange(len(schedule))
        w_open = walk[rows, reg_open][:, None]
        w_close = walk[rows, np.maximum(reg_close - 1, reg_open)][:, None]
        span = np.maximum(reg_close - 1 - reg_open, 1)[:, None]
        frac = np.clip((col - reg_open[:, None]) / span, 0.0, 1.0)
        level = open_today[:, None] + (close_today - open_today)[:, None] * frac
        path = level + (walk - w_open) - frac * (w_close - w_open)

        opens = np.exp(path)
        closes = np.exp(np.concatenate([path[:, 1:], path[:, -1:] + steps[:, -1:]], axis=1))
        wick_hi = _uniform(seed, keys, 3) * sigma
        wick_lo = _uniform(seed, keys, 4) * sigma
        highs = np.maximum(opens, closes) * (1.0 + wick_hi)
        lows = np.minimum(opens, closes) * (1.0 - wick_lo)
        activity = _uniform(seed, keys, 5)
        volume = np.where(regular, np.floor(200 + 9800 * activity) * 10, np.floor(10 + 90 * activity) * 10)
        if asset_type == "crypto":
            volume = np.round(0.01 + 4.0 * activity, 6)  # fractional coin volume
            present = np.ones_like(regular)
        elif regular_only or not self.extended_hours:
            present = regular
        else:
            present = regular | (_uniform(seed, keys, 6) < self.extended_fill)

        mask = present.ravel()
        frame = pd.DataFrame(
            {
                "open": opens.ravel()[mask],
                "high": highs.ravel()[mask],
                "low": lows.ravel()[mask],
                "close": closes.ravel()[mask],
                "volume": volume.ravel()[mask],
            },
            index=pd.DatetimeIndex(stamps.ravel()[mask]).tz_localize("UTC").rename("ts"),
        )
        frame["vwap"] = (frame["high"] + frame["low"] + 2.0 * frame["close"]) / 4.0
        frame["trade_count"] = (frame["volume"] // 50 + 1).astype("int64") if asset_type != "crypto" \
            else (activity.ravel()[mask] * 400 + 1).astype("int64")
        return frame

    def _daily(self, symbol: str, asset_type: str, first: dt.date, last: dt.date) -> pd.DataFrame:
        minutes = self._minutes(symbol, asset_type, first, last, regular_only=True)
        if minutes.empty:
            return _empty()
        if asset_type == "crypto":
            labels = minutes.index.floor("D")
        else:
            labels = minutes.index.tz_convert(NY).normalize().tz_convert("UTC")
        return _aggregate(minutes, labels)


def _aggregate(minutes: pd.DataFrame, labels: pd.DatetimeIndex) -> pd.DataFrame:
    grouped = minutes.groupby(labels)
    frame = pd.DataFrame(
        {
            "open": grouped["open"].first(),
            "high": grouped["high"].max(),
            "low": grouped["low"].min(),
            "close": grouped["close"].last(),
            "volume": grouped["volume"].sum(),
        }
    )
    notional = (minutes["vwap"] * minutes["volume"]).groupby(labels).sum()
    frame["vwap"] = notional / frame["volume"].where(frame["volume"] > 0)
    frame["trade_count"] = grouped["trade_count"].sum().astype("int64")
    frame.index = pd.DatetimeIndex(frame.index).rename("ts")
    return frame


def _naive_utc(values: pd.Series | pd.DatetimeIndex) -> np.ndarray:
    index = pd.DatetimeIndex(values)
    return index.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[ns]")


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("open", "high", "low", "close", "volume", "vwap")})
    frame["trade_count"] = pd.Series(dtype="int64")
    frame.index = pd.DatetimeIndex([], tz="UTC", name="ts")
    return frame


def _to_utc(value: object) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


class PartialMarket:
    """``market`` with only some of its bars, like a provider plan that has a symbol's daily bars but no minute bars.

    ``timeframes`` maps a symbol to the timeframes it has (``default`` for symbols not listed); a
    timeframe it lacks is answered with no bars, as Polygon answers a symbol it has no minute bars for.

    >>> PartialMarket(SyntheticMarket(), {"SPY": ("day",)}).bars("SPY", "minute", "2024-01-02", "2024-01-03").empty
    True
    """

    def __init__(self, market: object, timeframes: dict[str, tuple[str, ...]] | None = None, *,
                 default: tuple[str, ...] = ("minute", "hour", "day")) -> None:
        self.market = market
        self.timeframes = dict(timeframes or {})
        self.default = default

    def __repr__(self) -> str:
        return f"PartialMarket({self.market!r}, {self.timeframes!r}, default={self.default!r})"

    def bars(self, symbol: str, timeframe: str, start: object, end: object, *,
             asset_type: str = "stock") -> pd.DataFrame:
        if timeframe not in self.timeframes.get(symbol, self.default):
            return _empty()
        return self.market.bars(symbol, timeframe, start, end, asset_type=asset_type)  # type: ignore[attr-defined]


def daily_bars_only() -> PartialMarket:
    """The synthetic market (seed 1) with daily bars only: every minute request is answered with no bars
    (``Scenario(market="lumibot_duckdb.testing.market:daily_bars_only")``)."""
    return PartialMarket(SyntheticMarket(1), default=("day",))


class FrameMarket:
    """Serves bars from frames you already have (e.g. CSV exports), one per (symbol, timeframe).

    Frames need a datetime index (naive = ``timezone``) and open/high/low/close/volume columns;
    ``vwap`` and ``trade_count`` are filled in when absent. Symbols or timeframes it does not
    hold answer with no bars, like a provider with no data for them.
    """

    def __init__(self, frames: dict[tuple[str, str], pd.DataFrame], *, timezone: str = NY) -> None:
        self.frames = {k: self._prepare(v, timezone) for k, v in frames.items()}

    @staticmethod
    def _prepare(frame: pd.DataFrame, timezone: str) -> pd.DataFrame:
        data = frame.rename(columns=str.lower).copy()
        index = pd.DatetimeIndex(data.index)
        index = index.tz_localize(timezone) if index.tz is None else index
        data.index = index.tz_convert("UTC").rename("ts")
        data = data.sort_index()
        if "vwap" not in data.columns:
            data["vwap"] = (data["high"] + data["low"] + data["close"]) / 3.0
        if "trade_count" not in data.columns:
            data["trade_count"] = (data["volume"] // 100 + 1).astype("int64")
        return data[["open", "high", "low", "close", "volume", "vwap", "trade_count"]]

    def bars(self, symbol: str, timeframe: str, start: object, end: object, *,
             asset_type: str = "stock") -> pd.DataFrame:
        frame = self.frames.get((symbol, timeframe))
        if frame is None:
            return _empty()
        lo, hi = _to_utc(start), _to_utc(end)
        return frame[(frame.index >= lo) & (frame.index < hi)]
