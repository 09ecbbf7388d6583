"""What Lumibot 4.6's own caches hold, read without changing them: one :class:`Found` per cached series.

Each reader turns one vendor's files into bars in the store's columns, under the series key our
data source of that vendor reads, with the coverage the file can *prove*: the ranges the provider
was asked for and answered, nothing Lumibot merely assumes. What is left out is counted, with the
reason. Nothing here writes anywhere (:mod:`lumibot_duckdb.ingest.cache` stores what is found).

* **Polygon** ``polygon/{type}_{SYMBOL}[_{QUOTE}]_{timespan}.parquet`` (options
  ``option_{SYM}_{YYMMDD}_{strike}_{RIGHT}_{timespan}``), series ``polygon:…:split`` (Lumibot asks
  Polygon's default, split-adjusted aggregates). A session is proven by a bar of its own date (New
  York; UTC for crypto) or by Lumibot's placeholder row for it ("asked, no bars"; stamped at
  midnight local mean time, 04:56 UTC, of that date). Sessions Lumibot believes it holds only
  because after-hours bars of the evening before carry their UTC date are *not* covered (the
  known defect), nor days that had not ended when the file was last written. Non-trading days
  next to proven sessions are covered (there is nothing to ask for on them). The ``_splits``
  sidecar's day is when Lumibot last saw the split list unchanged: the bars are as of that day.
* **Yahoo** ``yahoo/{SYMBOL}_1d.pickle`` (``period="max"``: everything up to the download) and
  ``{SYMBOL}_info.pickle``. Lumibot re-stamped daily bars at 16:00 (US) / 23:59 (crypto); they are
  stored as Yahoo sent them (00:00), as our Yahoo source stores them. Intraday pickles are left out
  (Yahoo serves those for the last days only). Pickles are read with an unpickler that only builds
  pandas/numpy objects and Lumibot's ``_YahooData`` record, never anything else.
* **Alpaca** Lumibot's shared bar cache ``bars/v2/alpaca/**`` (raw bars with the exact ranges
  answered; its folders are named by a hash of symbol, bar size, request and API key, so a series
  is recognised only for symbols named by a window CSV or ``symbols=`` and the key in
  ``ALPACA_API_KEY``/``ALPACA_OAUTH_TOKEN``), then the per-window CSVs ``alpaca/{KEY}.csv``:
  only real bars, never the rows Lumibot forward-filled (volume 0); minute CSVs of stocks are left
  out (Lumibot kept only regular-session minutes of what Alpaca sent).
* **CCXT** ``{exchange_id}/{BASE}_{QUOTE}_{tf}.duckdb``: candles in ``cache_dt_ranges``. Lumibot
  declared their columns ``DECIMAL`` (DuckDB: ``DECIMAL(18,3)``), so prices and volumes are
  rounded to 3 decimals: such files are left out unless ``include_rounded``, then flagged.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import io
import json
import pickle
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

import numpy as np
import pandas as pd

from lumibot_duckdb.store.coverage import Interval, SeriesKey, normalize, utc
from lumibot_duckdb.store.interface import option_symbol

NY = "America/New_York"
SETTLE = pd.Timedelta(minutes=15)
POLYGON_ADJUSTMENT = "split"
"""Lumibot asks Polygon for its default, split-adjusted aggregates (``sources.polygon.ADJUSTMENT``)."""
YAHOO_HISTORY_START = pd.Timestamp("1900-01-01", tz="UTC")
"""Where every Yahoo series starts (``sources.yahoo.HISTORY_START``): ``period="max"`` answers for all before."""
CCXT_TIMEFRAMES = {"1m": "minute", "1h": "hour", "1d": "day"}
_STEP = {"minute": pd.Timedelta(minutes=1), "hour": pd.Timedelta(hours=1), "day": pd.Timedelta(days=1)}
_YAHOO_COLUMNS = {"Open": "open", "High": "high", "Low": "low", "Close": "close", "Volume": "volume",
                  "Adj Close": "adj_close", "Dividends": "dividend", "Stock Splits": "split_ratio"}
_ALPACA_TIMEFRAMES = {"1Day": ("1day", "day"), "1Min": ("1minute", "minute"), "1Hour": ("1hour", "hour")}


@dataclass
class Found:
    """One series found in a legacy cache: its bars, what they prove, and what was left out."""

    source: str
    path: Path
    key: SeriesKey | None = None
    bars: pd.DataFrame | None = None
    """In the store's columns (UTC index ``ts``), only bars inside :attr:`coverage`."""
    coverage: list[Interval] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    """Rows left out, by reason."""
    reason: str = ""
    """Set when the whole file is left out: why, and what to do."""
    notes: list[str] = field(default_factory=list)
    as_of: dt.date | None = None
    """The day the bars are as the provider sent them (an adjusted series re-checks after it)."""
    flags: dict[str, Any] = field(default_factory=dict)
    """Properties ``db-status`` shows for the series (``{"rounded": {...}}``)."""
    note: tuple[tuple[str, ...], dict[str, Any]] | None = None
    """A store note to keep beside the bars (Yahoo's ``info``), if the store has none yet."""

    def skip(self, reason: str, rows: int) -> None:
        if rows:
            self.skipped[reason] = self.skipped.get(reason, 0) + int(rows)


def mtime(path: Path) -> pd.Timestamp:
    return pd.Timestamp(path.stat().st_mtime, unit="s", tz="UTC")


def _day_start(day: dt.date, tz: str) -> pd.Timestamp:
    return pd.Timestamp(day).tz_localize(tz).tz_convert("UTC")


def _days(days: Iterable[dt.date], tz: str) -> list[Interval]:
    """Whole days (in ``tz``) as merged UTC intervals, one per run of consecutive days."""
    runs: list[list[dt.date]] = []
    for day in sorted(set(days)):
        if runs and (day - runs[-1][1]).days == 1:
            runs[-1][1] = day
        else:
            runs.append([day, day])
    return [Interval(_day_start(a, tz), _day_start(b + dt.timedelta(days=1), tz)) for a, b in runs]


_EPOCH = dt.date(1970, 1, 1)
_DAY_NS = 86_400 * 10**9


def day_numbers(index: pd.DatetimeIndex, tz: str) -> np.ndarray:
    """The calendar day (in ``tz``) of each instant, as days since 1970-01-01 (fast to compare, unlike dates)."""
    return np.floor_divide(index.tz_convert(tz).tz_localize(None).asi8, _DAY_NS)


def _date(number: int) -> dt.date:
    return _EPOCH + dt.timedelta(days=int(number))


def _trading_days(asset_type: str, first: dt.date, last: dt.date) -> set[dt.date]:
    """Trading dates as Lumibot's Polygon helper counts them (NYSE; CME FX for forex; every day for crypto)."""
    if asset_type == "crypto":
        return {first + dt.timedelta(days=i) for i in range((last - first).days + 1)}
    calendar = "CME_FX" if asset_type == "forex" else "NYSE"
    days: set[dt.date] = set()
    for year in range(first.year, last.year + 1):
        days |= _calendar_year(calendar, year)
    return {d for d in days if first <= d <= last}


@functools.lru_cache(maxsize=64)
def _calendar_year(calendar: str, year: int) -> frozenset[dt.date]:
    import pandas_market_calendars as mcal

    schedule = mcal.get_calendar(calendar).schedule(start_date=dt.date(year, 1, 1), end_date=dt.date(year, 12, 31))
    return frozenset(schedule.index.date)


# -- Polygon -----------------------------------------------------------------------------------------
_POLYGON_TYPES = ("stock", "option", "crypto", "index", "forex")


def polygon_key(stem: str) -> SeriesKey | None:
    """The series a Lumibot Polygon cache file name stands for (what ``polygon_series_key`` builds)."""
    parts = stem.split("_")
    if len(parts) < 3 or parts[0] not in _POLYGON_TYPES or parts[-1] not in _STEP:
        return None
    asset_type, timespan = parts[0], parts[-1]
    if asset_type == "option":
        if len(parts) != 6:
            return None
        try:
            expiration = dt.datetime.strptime(parts[2], "%y%m%d").date()
            symbol = option_symbol(parts[1], expiration, parts[4], float(parts[3]))
        except ValueError:
            return None
        return SeriesKey("polygon", symbol, timespan, "option", "USD", "", POLYGON_ADJUSTMENT)
    middle = parts[1:-1]
    if len(middle) not in (1, 2) or not all(middle):
        return None
    quote = middle[1] if len(middle) == 2 else "USD"  # no quote: the key says USD (polygon_series_key)
    return SeriesKey("polygon", middle[0], timespan, asset_type, quote, "", POLYGON_ADJUSTMENT)


def read_polygon(folder: Path, *, now: pd.Timestamp | None = None) -> Iterator[Found]:
    """Every Polygon price file under ``folder`` (``<LUMIBOT_CACHE_FOLDER>/polygon``)."""
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        if path.stem.endswith("_splits"):
            continue
        yield _polygon_file(path, now=now)


def _polygon_file(path: Path, *, now: pd.Timestamp | None) -> Found:
    found = Found("polygon", path, polygon_key(path.stem))
    if found.key is None:
        found.reason = "not a Lumibot Polygon cache name ({type}_{SYMBOL}_{QUOTE}_{timespan}.parquet)"
        return found
    key = found.key
    try:
        written = mtime(path)
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - a file being rewritten by a running backtest, or damaged
        found.reason = f"could not be read ({type(exc).__name__}: {exc}); if a backtest was writing it, run again"
        return found
    if "datetime" not in frame.columns:
        found.reason = f"no datetime column (got {list(frame.columns)})"
        return found
    cut = min(written, now) if now is not None else written
    day_tz = "UTC" if key.asset_type == "crypto" else NY
    index = pd.DatetimeIndex(pd.to_datetime(frame["datetime"], utc=True))
    placeholder = (frame["missing"].fillna(False).astype(bool).to_numpy() if "missing" in frame.columns
                   else np.zeros(len(frame), dtype=bool))
    if {"open", "high", "low", "close"} <= set(frame.columns):
        prices = frame[["open", "high", "low", "close"]].apply(pd.to_numeric, errors="coerce").to_numpy()
        priced = np.isfinite(prices).all(axis=1) & ~placeholder
    else:  # only placeholder rows were ever written
        priced = np.zeros(len(frame), dtype=bool)
    found.skip("rows without prices that are not placeholders", int((~priced & ~placeholder).sum()))
    local_day = day_numbers(index, day_tz)
    bar_days = {_date(d) for d in np.unique(local_day[priced])}
    # Lumibot stamps a placeholder at midnight of its date in local mean time (04:56 UTC): the UTC date is its date
    utc_day = day_numbers(index, "UTC")
    placeholder_days = {_date(d) for d in np.unique(utc_day[placeholder])}
    if not bar_days and not placeholder_days:
        found.reason = "no bars and no placeholder rows"
        return found
    # A day proves its bars only if it had ended (and settled) when the file was last written
    settle = SETTLE if key.timeframe != "day" else pd.Timedelta(0)
    ended = {d for d in bar_days | placeholder_days if _day_start(d + dt.timedelta(days=1), day_tz) + settle <= cut}
    unfinished = [(d - _EPOCH).days for d in bar_days - ended]
    found.skip(f"bars of days not over when Lumibot last wrote the file ({written:%Y-%m-%d %H:%M} UTC)",
               int((priced & np.isin(local_day, unfinished)).sum()))
    first, last = min(bar_days | placeholder_days), max(bar_days | placeholder_days)
    trading = _trading_days(key.asset_type, first - dt.timedelta(days=10), last + dt.timedelta(days=10))
    proven = ended
    believed = {_date(d) for d in np.unique(utc_day)}  # what Lumibot's get_missing_dates takes as held
    hidden = sorted(d for d in believed - proven - placeholder_days
                    if d in trading and d not in bar_days and key.asset_type != "crypto")
    if hidden:
        shown = ", ".join(map(str, hidden[:4])) + (", …" if len(hidden) > 4 else "")
        found.notes.append(f"{len(hidden)} session(s) Lumibot believes it holds only because after-hours bars of "
                           f"the evening before carry their UTC date, never downloaded: not covered ({shown})")
    if placeholder_days:
        found.notes.append(f"{len(placeholder_days & proven)} placeholder day(s): covered, no bars")
    found.coverage = _days(_with_closed_days(proven, trading, first, last, cut, day_tz), day_tz)
    keep = priced & np.isin(local_day, [(d - _EPOCH).days for d in proven])
    found.bars = _polygon_bars(frame[keep], index[keep])
    found.as_of = _polygon_as_of(path, written, key)
    return found


def _with_closed_days(proven: set[dt.date], trading: set[dt.date], first: dt.date, last: dt.date,
                      cut: pd.Timestamp, tz: str) -> set[dt.date]:
    """``proven`` plus the non-trading days touching a run of proven days (nothing to ask for on them)."""
    days = set(proven)
    span = [first - dt.timedelta(days=7) + dt.timedelta(days=i) for i in range((last - first).days + 15)]
    for i, day in enumerate(span):
        if day in trading or day in days or _day_start(day + dt.timedelta(days=1), tz) > cut:
            continue
        before = next((d for d in reversed(span[:i]) if d in trading or d in proven), None)
        after = next((d for d in span[i + 1:] if d in trading or d in proven), None)
        if (before is not None and before in proven) or (after is not None and after in proven):
            days.add(day)
    return days


def _polygon_bars(frame: pd.DataFrame, index: pd.DatetimeIndex) -> pd.DataFrame:
    """Lumibot's Polygon rows → store bars, as ``sources.polygon.aggs_to_bars`` stores Polygon's answer."""
    def column(name: str) -> np.ndarray:
        return (pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype="float64") if name in frame.columns
                else np.full(len(frame), np.nan))

    trades = pd.to_numeric(frame["transactions"], errors="coerce") if "transactions" in frame.columns else None
    metadata = np.full(len(frame), None, dtype=object)
    if "otc" in frame.columns:
        otc = frame["otc"].to_numpy(dtype=object)
        present = pd.notna(otc)
        if present.any():
            flags = otc[present].astype(bool)
            metadata[present] = np.where(flags, json.dumps({"otc": True}), json.dumps({"otc": False}))
    return pd.DataFrame(
        {
            "open": column("open"), "high": column("high"), "low": column("low"), "close": column("close"),
            "volume": column("volume"), "vwap": column("vwap"),
            "trade_count": (pd.array(trades.round(), dtype="Int64") if trades is not None
                            else pd.array([pd.NA] * len(frame), dtype="Int64")),
            "metadata": metadata,
        },
        index=pd.DatetimeIndex(index, name="ts").tz_convert("UTC"),
    )


def _polygon_as_of(path: Path, written: pd.Timestamp, key: SeriesKey) -> dt.date | None:
    """The day Lumibot's bars are split-adjusted as of: the sidecar's day (Lumibot touches it when it finds
    the split list unchanged, and deletes the prices when it changed), else the day the file was written."""
    if key.asset_type not in ("stock", "option"):
        return None
    sidecar = path.with_name(path.stem + "_splits.parquet")
    seen = mtime(sidecar) if sidecar.exists() else written
    return min(seen, written).tz_convert(NY).date()


# -- Yahoo ------------------------------------------------------------------------------------------
class _YahooData:
    """Stands in for ``lumibot.tools.yahoo_helper._YahooData`` when a pickle is read."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


_SAFE_MODULES = ("pandas", "numpy", "datetime", "pytz", "dateutil", "zoneinfo", "_codecs", "copyreg", "collections")
_SAFE_BUILTINS = frozenset({"object", "dict", "list", "tuple", "set", "frozenset", "slice", "range", "complex",
                            "float", "int", "str", "bytes", "bytearray", "bool", "NoneType"})


class _Unpickler(pickle.Unpickler):
    """Builds pandas, numpy and datetime objects and Lumibot's ``_YahooData`` record; refuses everything else."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "lumibot.tools.yahoo_helper" and name == "_YahooData":
            return _YahooData
        if module == "builtins" and name in _SAFE_BUILTINS:
            return super().find_class(module, name)
        if module.split(".")[0] in _SAFE_MODULES:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to build {module}.{name} from a cache pickle")


def load_pickle(path: Path) -> Any:
    return _Unpickler(io.BytesIO(path.read_bytes())).load()


def yahoo_asset_type(symbol: str, info: dict[str, Any] | None) -> str:
    """The asset type a Lumibot strategy asks Yahoo for ``symbol`` with (it is part of the series key)."""
    kind = str((info or {}).get("quoteType", "")).upper()
    if symbol.startswith("^") or kind == "INDEX":
        return "index"
    if symbol.endswith("=F") or kind == "FUTURE":
        return "future"
    return "stock"


def read_yahoo(folder: Path, *, now: pd.Timestamp | None = None) -> Iterator[Found]:
    """Every daily pickle under ``folder`` (``<LUMIBOT_CACHE_FOLDER>/yahoo``), with its ``_info`` pickle."""
    if not folder.is_dir():
        return
    infos: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*_info.pickle")):
        try:
            data = getattr(load_pickle(path), "data", None)
        except Exception:  # noqa: BLE001 - an unreadable info pickle only costs one info request later
            continue
        if isinstance(data, dict) and not data.get("error") and isinstance(data.get("info"), dict):
            infos[path.name[: -len("_info.pickle")]] = data
    for path in sorted(folder.glob("*.pickle")):
        if path.name.endswith("_info.pickle"):
            continue
        symbol, _, interval = path.stem.rpartition("_")
        if interval != "1d":
            found = Found("yahoo", path)
            found.reason = (f"{interval} bars: Yahoo serves them for the last days of real time only, so "
                            "lumibot-duckdb leaves intraday Yahoo requests to Lumibot's own path")
            yield found
            continue
        yield _yahoo_file(path, symbol, infos.get(symbol), now=now)


def _yahoo_file(path: Path, symbol: str, info_record: dict[str, Any] | None, *,
                now: pd.Timestamp | None) -> Found:
    info = info_record.get("info") if info_record else None
    key = SeriesKey("yahoo", symbol, "day", yahoo_asset_type(symbol, info), "", "", "raw")
    found = Found("yahoo", path, key)
    try:
        written = mtime(path)
        frame = getattr(load_pickle(path), "data", None)
    except Exception as exc:  # noqa: BLE001 - damaged, half-written, or not Lumibot's
        found.reason = f"could not be read ({type(exc).__name__}: {exc})"
        return found
    if not isinstance(frame, pd.DataFrame) or not isinstance(frame.index, pd.DatetimeIndex):
        found.reason = "not a Lumibot Yahoo pickle (no frame of daily bars inside)"
        return found
    if frame.empty:
        found.reason = "no bars"
        return found
    stamps, zone = _yahoo_stamps(frame.index, info)
    if stamps is None:
        found.reason = ("daily bars at times Lumibot does not write (neither 16:00 New York, 23:59 UTC nor "
                        "midnight); not imported")
        return found
    cut_at = min(written, now) if now is not None else written
    cut = _day_start(cut_at.tz_convert(zone).date(), zone)   # today's bar may still have been forming
    last_day = stamps[-1].tz_convert(zone).date()
    end = min(cut, _day_start(last_day + dt.timedelta(days=1), zone))
    keep = np.asarray(stamps < end)
    found.skip(f"the bar of a day not over when Lumibot wrote the file ({written:%Y-%m-%d %H:%M} UTC)",
               int((~keep).sum()))
    rows = frame[keep].dropna()
    found.skip("rows with a missing value (Lumibot drops them too)", int(keep.sum()) - len(rows))
    found.bars = _yahoo_bars(rows, stamps[keep][frame[keep].notna().all(axis=1).to_numpy()])
    found.coverage = [Interval(YAHOO_HISTORY_START, end)]
    if info_record:
        last_update = info_record.get("last_update")
        fetched = pd.Timestamp(last_update).isoformat() if last_update is not None else written.isoformat()
        found.note = (("yahoo", "info", f"{url_quote(symbol, safe='')}.json"),
                      {"symbol": symbol, "fetched": fetched, "info": info})
    else:
        found.notes.append("no info pickle: the first use asks Yahoo for Ticker.info once")
    return found


def _yahoo_stamps(index: pd.DatetimeIndex, info: dict[str, Any] | None) -> tuple[pd.DatetimeIndex | None, str]:
    """Yahoo's own timestamps of Lumibot's daily bars (00:00 exchange time), and that time zone."""
    index = index if index.tz is not None else index.tz_localize(NY)
    zone = str((info or {}).get("exchangeTimezoneName") or NY)
    for tz, hour, minute in ((NY, 16, 0), (zone, 16, 0), ("UTC", 23, 59), (zone, 23, 59), (NY, 0, 0),
                             ("UTC", 0, 0), (zone, 0, 0)):
        try:
            local = index.tz_convert(tz)
        except Exception:  # noqa: BLE001 - an unknown zone name in info
            continue
        if ((local.hour == hour) & (local.minute == minute) & (local.second == 0)).all():
            return pd.DatetimeIndex(local.normalize()).tz_convert("UTC"), tz
    return None, NY


def _yahoo_bars(rows: pd.DataFrame, stamps: pd.DatetimeIndex) -> pd.DataFrame:
    """Lumibot's Yahoo frame → store bars, as ``sources.yahoo.history_to_bars`` stores Yahoo's answer."""
    data: dict[str, Any] = {}
    for name, column in _YAHOO_COLUMNS.items():
        if name in rows.columns:
            data[column] = pd.to_numeric(rows[name], errors="coerce").to_numpy(dtype="float64")
    extra = [c for c in rows.columns if c not in _YAHOO_COLUMNS]
    bars = pd.DataFrame(data, index=pd.DatetimeIndex(stamps, name="ts"))
    bars["metadata"] = ([json.dumps({c: (None if pd.isna(v) else v) for c, v in zip(extra, row)}, default=float)
                         for row in rows[extra].itertuples(index=False, name=None)] if extra else None)
    return bars


# -- Alpaca -----------------------------------------------------------------------------------------
_CSV_KEY = re.compile(r"^(?P<pair>.+?)_(?P<market>[A-Z0-9-]+)_(?P<timestep>DAY|MINUTE|HOUR|\d+[A-Z]+)_"
                      r"(?P<tz>[A-Z][A-Z0-9+-]*(?:-[A-Z0-9+-]+)*?)(?:_(?P<aa>AA))?_(?P<start>\d{4}-\d{2}-\d{2})_"
                      r"(?P<end>\d{4}-\d{2}-\d{2})(?P<history>_HISTORY)?$")


@dataclass(frozen=True)
class AlpacaWindow:
    """What the name of one of Lumibot's per-window CSVs says (``AlpacaBacktesting._get_asset_key``)."""

    symbol: str
    asset_type: str
    quote: str
    timestep: str
    tz: str
    adjustment: str
    start: dt.date
    end: dt.date
    history: bool
    option: tuple[float, str, dt.date] | None = None

    @property
    def request_symbol(self) -> str:
        """The symbol of the Alpaca request: ``SPY``, ``BTC/USD``, or the OCC contract."""
        if self.option is not None:
            strike, right, expiration = self.option
            return option_symbol(self.symbol, expiration, right, strike)
        return f"{self.symbol}/{self.quote}" if self.asset_type == "crypto" else self.symbol

    def key(self) -> SeriesKey:
        symbol = self.request_symbol if self.option is not None else self.symbol
        return SeriesKey("alpaca", symbol, self.timestep, self.asset_type, self.quote, "", self.adjustment)


def alpaca_window(stem: str) -> AlpacaWindow | None:
    match = _CSV_KEY.match(stem)
    if match is None or match["timestep"] not in ("DAY", "MINUTE", "HOUR"):
        return None
    pair = match["pair"].split("_")
    option = None
    if len(pair) == 6 and pair[-1] == "TRADES":
        try:
            option = (float(pair[2]), pair[3], dt.date.fromisoformat(pair[4]))
        except ValueError:
            return None
        pair = pair[:2]
    if len(pair) != 2 or "-" not in pair[0] or "-" not in pair[1]:
        return None
    symbol, asset_type = pair[0].rsplit("-", 1)
    quote = pair[1].rsplit("-", 1)[0]
    asset_type = asset_type.lower()
    tz = _zone(match["tz"])
    if tz is None:
        return None
    adjustment = ("all" if match["aa"] else "split") if asset_type == "stock" else "raw"
    return AlpacaWindow(symbol, asset_type, quote, match["timestep"].lower(), tz, adjustment,
                        dt.date.fromisoformat(match["start"]), dt.date.fromisoformat(match["end"]),
                        bool(match["history"]), option)


def _zone(text: str) -> str | None:
    """``AMERICA-NEW-YORK`` back to ``America/New_York`` (Lumibot wrote ``str(tz)``, ``_``→``-``, upper case)."""
    import pytz

    wanted = text.upper()
    for zone in pytz.all_timezones:
        if zone.replace("_", "-").upper().replace("/", "-") == wanted:
            return zone
    return None


def shared_bars_digest(symbol: str, timeframe: str, request_type: str, adjustment: str | None,
                       scope: str) -> str:
    """The folder name Lumibot's shared bar cache gives a series (``shared_bar_cache.BarSeries.digest``)."""
    timestep = _ALPACA_TIMEFRAMES[timeframe][0]
    contract = {"requestType": request_type, "timeframe": timeframe, "feed": None, "adjustment": adjustment,
                "asof": None, "currency": None}
    items = {k: json.dumps(v, sort_keys=True, default=str) for k, v in sorted(contract.items())}
    identity = {"schema": 2, "provider": "alpaca", "symbol": symbol, "timestep": timestep, "contract": items,
                "scope": scope}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def credential_scope(credential: str) -> str:
    """``shared_bar_cache.credential_scope("alpaca", credential)``: a one-way hash of the API key."""
    return hashlib.sha256("\x1f".join(["alpaca", credential]).encode()).hexdigest()


def read_alpaca(cache: Path, *, symbols: Iterable[str] = (), credentials: Iterable[str] = (),
                now: pd.Timestamp | None = None) -> Iterator[Found]:
    """Lumibot's shared Alpaca bars (series recognised from ``symbols``, the window CSVs' symbols and
    ``credentials``), then its per-window CSVs under ``cache/alpaca``."""
    folder = cache / "alpaca"
    windows = [(path, alpaca_window(path.stem)) for path in sorted(folder.glob("*.csv"))] if folder.is_dir() else []
    named = {w.request_symbol: w for _, w in windows if w is not None}
    wanted = set(symbols) | set(named)
    scopes = ["provider", *(credential_scope(c) for c in credentials if c)]
    known: dict[str, tuple[str, str, str, str | None]] = {}
    for symbol in sorted(wanted):
        for timeframe in _ALPACA_TIMEFRAMES:
            for request_type, adjustments in (("StockBarsRequest", ("split", "all", "raw")),
                                              ("CryptoBarsRequest", (None,)), ("OptionBarsRequest", (None,))):
                for adjustment in adjustments:
                    for scope in scopes:
                        digest = shared_bars_digest(symbol, timeframe, request_type, adjustment, scope)
                        known[digest] = (symbol, timeframe, request_type, adjustment)
    shared = cache / "bars" / "v2" / "alpaca"
    for series_dir in sorted(p for p in shared.glob("*/*") if p.is_dir()) if shared.is_dir() else []:
        identity = known.get(series_dir.name)
        if identity is None:
            found = Found("alpaca", series_dir)
            found.reason = ("a shared-bar series Lumibot names only by a hash of symbol, bar size, request and "
                            "API key: not recognised; name its symbol with --symbols and set ALPACA_API_KEY (or "
                            "ALPACA_OAUTH_TOKEN) to the key it was fetched with")
            yield found
            continue
        yield _shared_series(series_dir, *identity, windows=named, now=now)
    for path, window in windows:
        yield _alpaca_csv(path, window, now=now)


def _alpaca_key(symbol: str, timeframe: str, request_type: str, adjustment: str | None,
                windows: dict[str, AlpacaWindow]) -> SeriesKey:
    """The series ``sources.alpaca.alpaca_series_key`` reads for this shared-bar identity."""
    timestep = _ALPACA_TIMEFRAMES[timeframe][1]
    if request_type == "CryptoBarsRequest":
        base, _, quote = symbol.partition("/")
        return SeriesKey("alpaca", base, timestep, "crypto", quote or "USD", "", "raw")
    if request_type == "OptionBarsRequest":
        return SeriesKey("alpaca", symbol, timestep, "option", "USD", "", "raw")
    window = windows.get(symbol)
    quote = window.quote if window is not None else "USD"
    return SeriesKey("alpaca", symbol, timestep, "stock", quote, "", adjustment or "raw")


def _shared_series(folder: Path, symbol: str, timeframe: str, request_type: str, adjustment: str | None, *,
                   windows: dict[str, AlpacaWindow], now: pd.Timestamp | None) -> Found:
    found = Found("alpaca", folder, _alpaca_key(symbol, timeframe, request_type, adjustment, windows))
    try:
        manifest = json.loads((folder / "series.json").read_text()) if (folder / "series.json").exists() else {}
    except ValueError:
        manifest = {}
    epoch = int(manifest.get("epoch") or 0)
    pieces: list[pd.DataFrame] = []
    coverage: list[Interval] = []
    for path in sorted(folder.glob("*.parquet")):
        try:
            rows = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - being written by a running backtest, or damaged
            found.notes.append(f"{path.name} could not be read ({type(exc).__name__}); run again to import it")
            continue
        meta = rows.attrs.get("sharedBars") or {}
        if meta.get("series") != folder.name or int(meta.get("epoch") or 0) != epoch:
            found.skip("bars of an older generation (Alpaca re-adjusted them since)", len(rows))
            continue
        intervals = [Interval(utc(s), utc(e)) for s, e in meta.get("coverage") or []]  # Lumibot's UTC stamps
        index = pd.DatetimeIndex(pd.to_datetime(rows.index, utc=True))
        inside = np.zeros(len(rows), dtype=bool)
        for interval in intervals:
            inside |= np.asarray((index >= interval.start) & (index < interval.end))
        found.skip("bars outside the ranges Lumibot recorded as answered", int((~inside).sum()))
        coverage.extend(intervals)
        chosen = rows[inside]
        trades = pd.to_numeric(chosen["trade_count"], errors="coerce") if "trade_count" in chosen else None
        pieces.append(pd.DataFrame(
            {**{c: pd.to_numeric(chosen[c], errors="coerce").to_numpy(dtype="float64")
                for c in ("open", "high", "low", "close", "volume") if c in chosen},
             "vwap": (pd.to_numeric(chosen["vwap"], errors="coerce").to_numpy(dtype="float64") if "vwap" in chosen
                      else np.full(len(chosen), np.nan)),
             "trade_count": (pd.array(trades.round(), dtype="Int64") if trades is not None
                             else pd.array([pd.NA] * len(chosen), dtype="Int64"))},
            index=pd.DatetimeIndex(index[inside], name="ts")))
    horizon = (now if now is not None else pd.Timestamp.now(tz="UTC")) - SETTLE
    found.coverage = [Interval(i.start, min(i.end, horizon)) for i in normalize(coverage) if i.start < horizon]
    bars = pd.concat(pieces).sort_index() if pieces else None
    if bars is not None:
        bars = bars[~bars.index.duplicated(keep="last")]
    found.bars = bars
    if not found.coverage:
        found.reason = "no answered range recorded"
    verified = manifest.get("verifiedAt")
    if adjustment in ("split", "all"):
        stamp = pd.Timestamp(verified) if verified else min((mtime(p) for p in folder.glob("*.parquet")),
                                                             default=None)
        found.as_of = stamp.tz_convert(NY).date() if stamp is not None else None
    return found


def _alpaca_csv(path: Path, window: AlpacaWindow | None, *, now: pd.Timestamp | None) -> Found:
    found = Found("alpaca", path, window.key() if window is not None else None)
    if window is None:
        found.reason = "not a Lumibot Alpaca window name (SYMBOL-TYPE_QUOTE-TYPE_MARKET_TIMESTEP_TZ_START_END.csv)"
        return found
    reindexed = window.option is None and not window.history   # Lumibot forward-filled these rows
    if window.timestep != "day" and window.asset_type == "stock":
        found.reason = ("minute bars of a stock: Lumibot kept only the regular-session minutes of Alpaca's answer "
                        "(pre- and after-market bars dropped), so the file cannot stand for it; Lumibot's shared "
                        "bar cache holds the bars Alpaca sent (imported from there when it was on)")
        return found
    try:
        frame = pd.read_csv(path, float_precision="round_trip")
        written = mtime(path)
    except Exception as exc:  # noqa: BLE001 - being written, or damaged
        found.reason = f"could not be read ({type(exc).__name__}: {exc}); if a backtest was writing it, run again"
        return found
    if not {"timestamp", "open", "high", "low", "close", "volume"} <= set(frame.columns):
        found.reason = f"no timestamp/open/high/low/close/volume columns (got {list(frame.columns)})"
        return found
    index = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], utc=True))
    start = _day_start(window.start, window.tz)
    if window.timestep == "day":
        end = _day_start(window.end + dt.timedelta(days=1), window.tz)
    elif window.asset_type == "crypto" and len(index):   # every minute reindexed, to the window's end
        end = index.max() + _STEP[window.timestep]
    else:                                                # option trade prints: whole days before the end day
        end = _day_start(window.end, window.tz)
    cut = min(written, now) if now is not None else written
    end = min(end, cut - SETTLE)
    real = np.ones(len(frame), dtype=bool)
    if reindexed:
        real = pd.to_numeric(frame["volume"], errors="coerce").fillna(0).to_numpy() > 0
        found.skip("rows Lumibot forward-filled (no trade: volume 0)", int((~real).sum()))
    inside = np.asarray((index >= start) & (index < end))
    found.skip("bars after what the file proves (the window's last day, or a day not over when written)",
               int((real & ~inside).sum()))
    keep = real & inside
    found.bars = pd.DataFrame({c: pd.to_numeric(frame[c], errors="coerce").to_numpy(dtype="float64")[keep]
                               for c in ("open", "high", "low", "close", "volume")},
                              index=pd.DatetimeIndex(index[keep], name="ts"))
    found.coverage = [Interval(start, end)] if end > start else []
    if not found.coverage:
        found.reason = "the window proves no whole day"
    if window.adjustment in ("split", "all"):
        found.as_of = written.tz_convert(NY).date()
    return found


# -- CCXT -------------------------------------------------------------------------------------------
_CCXT_NAME = re.compile(r"^(?P<base>.+)_(?P<quote>[^_]+)_(?P<tf>1m|1h|1d)$")


def ccxt_key(exchange: str, stem: str) -> SeriesKey | None:
    """The series a Lumibot CCXT cache file stands for (what ``sources.ccxt.ccxt_series_key`` builds)."""
    match = _CCXT_NAME.match(stem)
    if match is None:
        return None
    return SeriesKey("ccxt", match["base"], CCXT_TIMEFRAMES[match["tf"]], "crypto", match["quote"], exchange)


def ccxt_files(cache: Path, *, skip: Iterable[Path] = ()) -> list[tuple[str, Path]]:
    """``(exchange_id, file)`` of every ``{exchange}/{BASE}_{QUOTE}_{tf}.duckdb`` under ``cache``."""
    avoid = {p.resolve() for p in skip}
    found = []
    for folder in sorted(p for p in cache.iterdir() if p.is_dir()) if cache.is_dir() else []:
        if folder.resolve() in avoid or folder.name in ("polygon", "yahoo", "alpaca", "bars"):
            continue
        for path in sorted(folder.glob("*.duckdb")):
            found.append((folder.name, path))
    return found


def read_ccxt(cache: Path, *, include_rounded: bool = False, now: pd.Timestamp | None = None,
              skip: Iterable[Path] = ()) -> Iterator[Found]:
    for exchange, path in ccxt_files(cache, skip=skip):
        yield _ccxt_file(exchange, path, include_rounded=include_rounded, now=now)


def _ccxt_file(exchange: str, path: Path, *, include_rounded: bool, now: pd.Timestamp | None) -> Found:
    import duckdb

    found = Found("ccxt", path, ccxt_key(exchange, path.stem))
    if found.key is None:
        found.reason = "not a Lumibot CCXT cache name ({BASE}_{QUOTE}_{1m|1h|1d}.duckdb)"
        return found
    import tenacity

    try:  # Lumibot holds the file only while it writes a download: wait a moment for it
        con = tenacity.Retrying(stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_incrementing(0.2, 0.2),
                                retry=tenacity.retry_if_exception_type(duckdb.Error), reraise=True)(
            duckdb.connect, str(path), read_only=True)
    except duckdb.Error as exc:
        found.reason = f"could not be opened ({exc}); if a backtest is using it, run again when it is done"
        return found
    try:
        tables = {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if not {"candles", "cache_dt_ranges"} <= tables:
            found.reason = "no candles/cache_dt_ranges tables"
            return found
        types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                 "WHERE table_name = 'candles'").fetchall())
        rows = con.execute(
            "SELECT datetime AS ts, CAST(open AS DOUBLE) AS open, CAST(high AS DOUBLE) AS high, "
            "CAST(low AS DOUBLE) AS low, CAST(close AS DOUBLE) AS close, "
            "CAST(coalesce(volume, 0) AS DOUBLE) AS volume FROM candles "
            "WHERE coalesce(missing, 0) = 0 AND open IS NOT NULL AND high IS NOT NULL AND low IS NOT NULL "
            "AND close IS NOT NULL ORDER BY datetime").fetchnumpy()
        ranges = con.execute("SELECT start_dt, end_dt FROM cache_dt_ranges ORDER BY start_dt").fetchall()
        skipped = con.execute("SELECT count(*) FROM candles WHERE NOT (coalesce(missing, 0) = 0 AND open IS NOT NULL "
                              "AND high IS NOT NULL AND low IS NOT NULL AND close IS NOT NULL)").fetchone()
    finally:
        con.close()
    found.skip("placeholder or incomplete candles", int(skipped[0]) if skipped else 0)
    index = pd.DatetimeIndex(pd.to_datetime(rows["ts"]), name="ts").tz_localize("UTC")
    bars = pd.DataFrame({name: np.asarray(rows[name], dtype="float64")
                         for name in ("open", "high", "low", "close", "volume")}, index=index)
    before = len(bars)
    bars = bars[~bars.index.duplicated(keep="first")]
    found.skip("repeated candles (the same time stored twice)", before - len(bars))
    step = _STEP[found.key.timeframe]
    written = mtime(path)
    horizon = min(written, now if now is not None else written) - SETTLE - step   # the last candle may be forming
    coverage = normalize(Interval(pd.Timestamp(s).tz_localize("UTC"), pd.Timestamp(e).tz_localize("UTC")
                                  + pd.Timedelta(microseconds=1)) for s, e in ranges if s is not None and e is not None)
    found.coverage = [Interval(i.start, min(i.end, horizon)) for i in coverage if i.start < horizon]
    inside = np.zeros(len(bars), dtype=bool)
    for interval in found.coverage:
        inside |= np.asarray((bars.index >= interval.start) & (bars.index < interval.end))
    found.skip("candles outside the ranges Lumibot recorded (or still forming when written)", int((~inside).sum()))
    bars = bars[inside]
    expected = sum(int((i.end - i.start) / step) for i in found.coverage)
    if expected > len(bars):
        found.notes.append(f"{expected - len(bars):,} candle time(s) inside the recorded ranges have no candle (the "
                           "exchange had none, or Lumibot dropped one equal to an earlier candle)")
    rounded = sorted(c for c in ("open", "high", "low", "close", "volume")
                     if str(types.get(c, "")).upper().startswith("DECIMAL"))
    if rounded:
        kind = types[rounded[0]]
        zero = int((bars["close"] == 0).sum())
        what = (f"prices and volumes stored by Lumibot as {kind}: {len(bars):,} bars rounded to 3 decimals"
                + (f", {zero:,} closes rounded to 0" if zero else ""))
        if not include_rounded:
            found.reason = (f"{what}. Not imported (the exchange's own prices would be fetched instead); pass "
                            "--include-rounded to import them anyway, marked as rounded in db-status")
            found.skip("rounded to 3 decimals by Lumibot's DECIMAL(18,3) columns", len(bars))
            found.bars = None
            return found
        found.flags["rounded"] = {"decimals": 3, "bars": len(bars), "column_type": kind, "from": str(path),
                                  "ranges": [[i.start.isoformat(), i.end.isoformat()] for i in found.coverage]}
        found.notes.append(what + "; imported on request, flagged in db-status")
    found.bars = bars
    return found
