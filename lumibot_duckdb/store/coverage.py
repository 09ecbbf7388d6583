"""Coverage as data: which time ranges of which series the store holds.

A *series* is one stream of bars from one provider (:class:`SeriesKey`). Its *coverage* is the set
of half-open UTC intervals ``[start, end)`` the store has asked the provider for and holds the
answer to — including answers with no bars at all. Coverage never mentions a backtest window.

Times are kept in UTC. Naive times given to an :class:`Interval` (or anywhere in the package) are
in Lumibot's default time zone, America/New_York (:func:`parse_time`); :func:`utc` (naive = UTC) is
for the store's own stamps only (file names, partitions).

Everything in this module is pure: no I/O, no clock, no Lumibot.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lumibot_duckdb.config import default_timezone
from lumibot_duckdb.errors import ConfigError

TIMEFRAMES = ("minute", "hour", "day")
_TIMEFRAME_ALIASES = {
    **dict.fromkeys(("1m", "1min", "min", "minute", "minutes", "1minute", "1t", "t", "m1"), "minute"),
    **dict.fromkeys(("1h", "h", "hour", "hours", "1hour", "hourly", "60m", "60min", "60minutes", "h1"), "hour"),
    **dict.fromkeys(("1d", "d", "day", "days", "1day", "daily", "24h", "d1"), "day"),
}
_UNSUPPORTED = {
    **dict.fromkeys(("1w", "w", "1wk", "wk", "week", "weeks", "1week", "weekly", "w1"), "weekly"),
    **dict.fromkeys(("1mo", "mo", "1mth", "month", "months", "1month", "monthly", "mn1"), "monthly"),
    **dict.fromkeys(("1q", "q", "quarter", "quarterly", "1y", "y", "year", "yearly", "annual"), "quarterly or yearly"),
}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_UTC_DATE = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})\s*(?:Z|UTC)\s*$", re.IGNORECASE)


def unsupported_timeframe_message(kind: str) -> str:
    """Why weekly/monthly bars are not a timeframe of the store, and what to do instead."""
    return (f"{kind.capitalize()} bars are not stored: the store keeps minute, hour and day bars, the timesteps "
            "Lumibot backtests on. Store daily bars and build longer bars from them where you need them "
            "(Lumibot's get_historical_prices(asset, n, 'day'), then pandas .resample('W') or 'ME').")


def canonical_timeframe(value: str) -> str:
    """``'1m'``, ``'minute'``, ``'1Day'``, ``'daily'``, ``'1h'``… → ``'minute'`` / ``'hour'`` / ``'day'``.

    Case, spaces, dashes and underscores do not matter (``'1 Day'``, ``'1-min'``). Weekly, monthly and
    longer names are refused with what to do instead (:func:`unsupported_timeframe_message`).
    """
    if re.fullmatch(r"\s*1?\s*M\s*", str(value)):
        raise ConfigError(f"Timeframe {value!r} is ambiguous: '1M' is one month in ccxt and pandas. Write 1m or "
                          "minute for minute bars; " + unsupported_timeframe_message("monthly")[0].lower()
                          + unsupported_timeframe_message("monthly")[1:])
    key = re.sub(r"[\s_\-]+", "", str(value).strip().lower())
    if key in _TIMEFRAME_ALIASES:
        return _TIMEFRAME_ALIASES[key]
    if key in _UNSUPPORTED:
        raise ConfigError(unsupported_timeframe_message(_UNSUPPORTED[key]))
    raise ConfigError(f"Unknown timeframe {value!r}; use one of {', '.join(TIMEFRAMES)} "
                      "(or 1m, 1h, 1d, minute, hour, day, daily).")


def unsupported_timeframe(value: str) -> str | None:
    """``'weekly'``/``'monthly'``/… when ``value`` names one of those (e.g. in a file name ``SPY_1wk.csv``)."""
    if re.fullmatch(r"\s*1?\s*M\s*", str(value)):
        return "monthly"
    return _UNSUPPORTED.get(re.sub(r"[\s_\-]+", "", str(value).strip().lower()))


@dataclass(frozen=True, order=True)
class SeriesKey:
    """Identity of one stored series. Every field is part of the key; none is a backtest window.

    ``quote`` is the quote currency of the asset (``'USD'`` for US stocks, ``'USDT'`` for
    ``BTC/USDT``); ``exchange`` is the venue where prices differ by venue (a CCXT exchange id),
    empty otherwise; ``adjustment`` says how prices were adjusted by the provider
    (``'raw'``, ``'split'``, ``'all'``).
    """

    source: str
    symbol: str
    timeframe: str
    asset_type: str = "stock"
    quote: str = ""
    exchange: str = ""
    adjustment: str = "raw"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "source", str(self.source).strip().lower())
        set_(self, "symbol", str(self.symbol).strip())
        set_(self, "timeframe", canonical_timeframe(self.timeframe))
        set_(self, "asset_type", str(self.asset_type or "stock").strip().lower())
        set_(self, "quote", str(self.quote or "").strip().upper())
        set_(self, "exchange", str(self.exchange or "").strip().lower())
        set_(self, "adjustment", str(self.adjustment or "raw").strip().lower())
        for field in ("source", "asset_type", "adjustment"):
            if not _NAME.match(getattr(self, field)):
                raise ConfigError(
                    f"SeriesKey.{field}={getattr(self, field)!r} must be a lower-case name "
                    "(letters, digits, underscores)."
                )
        if not self.symbol:
            raise ConfigError("SeriesKey.symbol must not be empty.")

    def as_dict(self) -> dict[str, str]:
        return {
            "source": self.source,
            "symbol": self.symbol,
            "asset_type": self.asset_type,
            "quote": self.quote,
            "exchange": self.exchange,
            "timeframe": self.timeframe,
            "adjustment": self.adjustment,
        }

    @property
    def label(self) -> str:
        """The series in words, as ``db-status``, ``fetch`` and ``import-cache`` list it:
        ``polygon AAA minute (split)``, ``ccxt BTC/USDT@binance day``."""
        pair = f"{self.symbol}/{self.quote}" if self.asset_type in ("crypto", "forex") and self.quote else self.symbol
        venue = f"@{self.exchange}" if self.exchange else ""
        adjustment = f" ({self.adjustment})" if self.adjustment != "raw" else ""
        return f"{self.source} {pair}{venue} {self.timeframe}{adjustment}"

    def __str__(self) -> str:
        pair = f"{self.symbol}/{self.quote}" if self.quote and "/" not in self.symbol else self.symbol
        venue = f"@{self.exchange}" if self.exchange else ""
        return f"{self.source}:{self.asset_type}:{pair}{venue}:{self.timeframe}:{self.adjustment}"


def parse_time(value: Any, /, *, tz: str | None = None) -> pd.Timestamp:
    """A time as a user writes it (datetime, date, string, Timestamp), as a UTC :class:`pandas.Timestamp`.

    Aware values are converted; naive values and plain dates are taken in ``tz`` (default: Lumibot's
    default time zone, America/New_York), as Lumibot takes them.

    >>> str(parse_time("2024-03-01 09:30"))
    '2024-03-01 14:30:00+00:00'
    """
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    if isinstance(value, str):  # "2024-01-02Z", "2024-01-02 UTC": a UTC date (pandas reads neither)
        value = _UTC_DATE.sub(r"\1T00:00+00:00", value)
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{value!r} is not a date or a time.") from exc
    if ts is pd.NaT:
        raise ConfigError("A missing time (NaT) cannot bound a range.")
    if ts.tzinfo is not None:
        return ts.tz_convert("UTC")
    zone = tz or default_timezone()
    try:
        return ts.tz_localize(zone, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")
    except (KeyError, ValueError) as exc:  # an unknown zone name (pytz and zoneinfo raise KeyErrors)
        raise ConfigError(f"{zone!r} is not a time zone name; use e.g. America/New_York or UTC.") from exc


def utc(value: Any) -> pd.Timestamp:
    """A UTC :class:`pandas.Timestamp` from a datetime, date, string or timestamp, **naive values and plain
    dates taken as UTC** (aware values are converted): for the store's own UTC stamps (file names,
    partition bounds). What users write goes through :func:`parse_time`.
    """
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day)
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{value!r} is not a date or a time.") from exc
    if ts is pd.NaT:
        raise ConfigError("A missing time (NaT) cannot bound a range.")
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass(frozen=True, order=True)
class Interval:
    """A half-open time range ``[start, end)``, kept in UTC; empty when ``end <= start``. Naive bounds are in
    Lumibot's default time zone (:func:`parse_time`)."""

    start: pd.Timestamp
    end: pd.Timestamp

    def __post_init__(self) -> None:
        object.__setattr__(self, "start", parse_time(self.start))
        object.__setattr__(self, "end", parse_time(self.end))

    @property
    def empty(self) -> bool:
        return self.end <= self.start

    def overlaps(self, other: Interval) -> bool:
        return self.start < other.end and other.start < self.end

    def intersection(self, other: Interval) -> Interval | None:
        start, end = max(self.start, other.start), min(self.end, other.end)
        return Interval(start, end) if start < end else None

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def normalize(intervals: Iterable[Interval]) -> list[Interval]:
    """Sort and merge overlapping or touching intervals; drop empty ones."""
    ordered = sorted(i for i in intervals if not i.empty)
    merged: list[Interval] = []
    for item in ordered:
        if merged and item.start <= merged[-1].end:
            if item.end > merged[-1].end:
                merged[-1] = Interval(merged[-1].start, item.end)
        else:
            merged.append(item)
    return merged


def missing_ranges(covered: Iterable[Interval], wanted: Interval) -> list[Interval]:
    """The parts of ``wanted`` that ``covered`` does not hold, in time order.

    >>> gaps = missing_ranges([Interval("2024-01-03Z", "2024-01-05Z")], Interval("2024-01-01Z", "2024-01-10Z"))
    >>> [str(g) for g in gaps]
    ['[2024-01-01T00:00:00+00:00, 2024-01-03T00:00:00+00:00)', '[2024-01-05T00:00:00+00:00, 2024-01-10T00:00:00+00:00)']
    """
    if wanted.empty:
        return []
    gaps: list[Interval] = []
    cursor = wanted.start
    for block in normalize(covered):
        if block.end <= cursor:
            continue
        if block.start >= wanted.end:
            break
        if block.start > cursor:
            gaps.append(Interval(cursor, min(block.start, wanted.end)))
        cursor = max(cursor, block.end)
        if cursor >= wanted.end:
            break
    if cursor < wanted.end:
        gaps.append(Interval(cursor, wanted.end))
    return gaps


def has_overlaps(intervals: Iterable[Interval]) -> bool:
    """True when two of the intervals share some time (touching does not count)."""
    ordered = sorted(i for i in intervals if not i.empty)
    return any(b.start < a.end for a, b in itertools.pairwise(ordered))
