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

import contextvars
import datetime as dt
import functools
import json
import threading
from typing import Any

import numpy as np
import pandas as pd
from lumibot.backtesting.polygon_backtesting import PolygonDataBacktesting as _LegacyPolygonDataBacktesting
from lumibot.constants import LUMIBOT_DEFAULT_PYTZ
from lumibot.entities import Asset
from lumibot.tools import polygon_helper

from lumibot_duckdb.errors import ProviderDataError
from lumibot_duckdb.sources.base import EnhancedDataSourceBacktesting, FetchTask
from lumibot_duckdb.store import Interval, SeriesKey, series_key
from lumibot_duckdb.store.store import SeriesWriter

SOURCE = "polygon"
SETTLE = pd.Timedelta(minutes=15)
ADJUSTMENT = "split"  # Polygon aggregates are split-adjusted unless adjusted=false is asked for
POLYGON_COLUMNS = ("open", "high", "low", "close", "volume", "vwap", "trade_count", "metadata")

_ROUTE: contextvars.ContextVar[PolygonDataBacktesting | None] = contextvars.ContextVar("lumibot_duckdb_polygon",
                                                                                          default=None)
_ROUTE_LOCK = threading.Lock()


class PolygonDataBacktesting(EnhancedDataSourceBacktesting, _LegacyPolygonDataBacktesting):
    """Lumibot's ``PolygonDataBacktesting`` with the DuckDB store behind its Polygon seam.

    Same class name and ``SOURCE`` as Lumibot's (Lumibot keys behaviour on both). Extra keyword
    arguments: ``use_duckdb``, ``cache_dir``, ``strict`` (see :class:`EnhancedDataSourceBacktesting`).
    """

    def _update_pandas_data(self, *args: Any, **kwargs: Any) -> Any:
        if not self.use_duckdb:
            return super()._update_pandas_data(*args, **kwargs)
        token = _ROUTE.set(self)
        try:
            return super()._update_pandas_data(*args, **kwargs)
        finally:
            _ROUTE.reset(token)

    def _polygon_prices(self, legacy: Any, api_key: str, asset: Asset, start: dt.datetime, end: dt.datetime,
                        timespan: str = "minute", quote_asset: Asset | None = None,
                        force_cache_update: bool = False, max_workers: int = 10) -> pd.DataFrame | None:
        """Stand-in for ``polygon_helper.get_price_data_from_polygon`` (same arguments, same frame)."""

        def from_store() -> pd.DataFrame:
            key = polygon_series_key(asset, quote_asset, timespan)
            day_tz = _day_timezone(asset)
            wanted = Interval(_day_start(start.date(), day_tz), _day_start(end.date() + dt.timedelta(days=1), day_tz))
            provider = PolygonFetcher(api_key, asset, quote_asset, timespan, max_workers=max_workers)
            bars = self.serve(key, wanted, provider, refresh=force_cache_update, columns=POLYGON_COLUMNS)
            return legacy_filter(legacy_frame(bars), start, end, timespan)

        def legacy_call() -> pd.DataFrame | None:
            return legacy(api_key, asset, start, end, timespan=timespan, quote_asset=quote_asset,
                          force_cache_update=force_cache_update, max_workers=max_workers)

        return self.via_store(from_store, legacy_call)


def polygon_series_key(asset: Asset, quote: Asset | None, timespan: str) -> SeriesKey:
    quote_symbol = quote.symbol if quote is not None else "USD"
    return series_key(asset, SOURCE, timespan, quote=quote_symbol, adjustment=ADJUSTMENT)


class PolygonFetcher:
    """The Polygon side of :meth:`EnhancedDataSourceBacktesting.serve` for one asset and timespan."""

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
            self._client = polygon_helper.PolygonClient.create(api_key=self.api_key)
        return self._client

    # -- plan: trading dates of the missing ranges, in Lumibot's 31-day chunks -------------------
    def plan(self, key: SeriesKey, missing: list[Interval]) -> list[FetchTask]:
        tasks: list[FetchTask] = []
        horizon = self.settled_until()
        for gap in missing:
            gap = Interval(gap.start, min(gap.end, horizon))
            if gap.empty:
                continue
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
        files = writer.store.files(key)
        if not files:
            return
        meta = ("polygon", "splits-checked", f"{key.symbol}.{key.timeframe}.json".replace("/", "_"))
        today = dt.date.today()
        record = writer.store.layout.read_json(*meta)
        if isinstance(record, dict) and record.get("checked") == today.isoformat():
            return
        try:
            splits = list(self.client.list_splits(ticker=self.asset.symbol, sort="execution_date", order="asc"))
        except Exception:  # noqa: BLE001 - like Lumibot: a failed check keeps the stored bars
            return
        written = min(f.published for f in files).tz_convert("America/New_York").date()
        executed = [_execution_date(s) for s in splits]
        if any(day is not None and written < day <= today for day in executed):
            writer.discard()
        writer.store.layout.write_json({"series": key.as_dict(), "checked": today.isoformat()}, *meta)


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
    return ProviderDataError(f"Polygon answered {what} with {problem}; nothing was stored, so the range is asked "
                             "for again next time. If it persists, check the symbol and your Polygon plan.")


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
    """Store bars → the frame ``polygon_helper`` builds: index ``datetime`` (UTC, ns), raw Agg columns."""
    index = pd.DatetimeIndex(bars.index).as_unit("ns").rename("datetime")
    trades = bars["trade_count"]
    metadata = bars["metadata"]
    otc = np.full(len(bars), None, dtype=object)
    present = metadata.notna().to_numpy()
    if present.any():
        otc[present] = [json.loads(m).get("otc") for m in metadata[present]]
    frame = pd.DataFrame(
        {
            "open": bars["open"].to_numpy(),
            "high": bars["high"].to_numpy(),
            "low": bars["low"].to_numpy(),
            "close": bars["close"].to_numpy(),
            "volume": _volume_as_polygon_sent_it(bars["volume"]),
            "vwap": bars["vwap"].to_numpy(),
            "timestamp": index.asi8 // 1_000_000,
            "transactions": trades.astype("int64").to_numpy() if not trades.isna().any()
            else trades.astype("float64").to_numpy(),
            "otc": otc,
        },
        index=index,
    )
    return frame


def _volume_as_polygon_sent_it(volume: pd.Series) -> Any:
    """Polygon sends stock volumes as JSON integers, so Lumibot's frame holds int64; crypto volumes are fractional.

    The store keeps float64 (exact for integers below 2**53); whole-number volumes go back as int64.
    """
    values = volume.to_numpy(dtype="float64")
    if len(values) and not pd.isna(values).any() and (values == values.round()).all():
        return values.astype("int64")
    return values


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


def _install_route() -> None:
    """Wrap ``polygon_helper.get_price_data_from_polygon`` once with the pass-through router."""
    with _ROUTE_LOCK:
        current = polygon_helper.get_price_data_from_polygon
        if getattr(current, "_lumibot_duckdb_router", False):
            return

        @functools.wraps(current)
        def get_price_data_from_polygon(*args: Any, **kwargs: Any) -> Any:
            source = _ROUTE.get()
            if source is None or not source.use_duckdb:
                return current(*args, **kwargs)
            return source._polygon_prices(current, *args, **kwargs)

        get_price_data_from_polygon._lumibot_duckdb_router = True  # type: ignore[attr-defined]
        polygon_helper.get_price_data_from_polygon = get_price_data_from_polygon


_install_route()
