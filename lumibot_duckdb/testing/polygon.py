"""An offline Polygon.io: answers the REST calls the ``polygon`` client makes, from a market.

It replaces the urllib3 pool inside ``polygon.rest.base.BaseClient`` (``self.client``), one
level below ``get_aggs``/``list_splits``, so the client's own URL building, status handling and
JSON parsing still run. Every request is recorded, and faults can be injected.

>>> from lumibot_duckdb.testing.market import SyntheticMarket
>>> with serve_polygon(SyntheticMarket()) as polygon:              # doctest: +SKIP
...     run_my_backtest()
...     polygon.count("aggs")
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlparse

import pandas as pd

from lumibot_duckdb.testing.kits import VALUE_FAULTS, Faults, SourceKit, patched, spoil

NY = "America/New_York"


class Market(Protocol):
    def bars(self, symbol: str, timeframe: str, start: object, end: object, *,
             asset_type: str = "stock") -> pd.DataFrame:
        ...


@dataclass
class FakeResponse:
    """What ``BaseClient._get`` reads from a urllib3 response."""

    status: int
    data: bytes
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})

    @classmethod
    def json(cls, document: Any, status: int = 200) -> FakeResponse:
        return cls(status, json.dumps(document).encode())


@dataclass(frozen=True)
class FakeRequest:
    kind: str            # "aggs", "splits", "contracts" or "other"
    path: str
    params: dict[str, str]
    ticker: str | None = None
    timespan: str | None = None
    start: str | None = None
    end: str | None = None


Interceptor = Callable[[FakeRequest], "FakeResponse | None"]


class FakePolygonHTTP:
    """Stands in for ``urllib3.PoolManager`` inside the polygon client."""

    def __init__(
        self,
        market: Market,
        *,
        splits: dict[str, list[dict[str, Any]]] | None = None,
        latency: float = 0.0,
    ) -> None:
        self.market = market
        self.splits = dict(splits or {})
        self.latency = latency
        self.requests: list[FakeRequest] = []
        self.interceptors: list[Interceptor] = []
        self.faults = Faults()
        self._lock = threading.Lock()

    # -- what tests look at --------------------------------------------------------------------
    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if kind is None or r.kind == kind)

    def requested_days(self) -> int:
        """Calendar days spanned by all aggregate requests (a re-download shows up here)."""
        with self._lock:
            return sum(_span_days(r.start, r.end) for r in self.requests if r.kind == "aggs")

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def fail(self, mode: str, *, symbol: str | None = None, times: int | None = None) -> None:
        """Answer aggregate requests (for ``symbol``, or all; the next ``times`` only) with ``empty``,
        ``malformed``, ``error`` (HTTP 500) or ``transient`` (the connection reset by the server)."""
        self.faults.set(mode, symbol, times)

    def heal(self) -> None:
        self.faults.clear()

    def intercept(self, interceptor: Interceptor) -> None:
        """Answer requests with ``interceptor(request)`` whenever it returns a response."""
        self.interceptors.append(interceptor)

    # -- urllib3.PoolManager surface -----------------------------------------------------------
    def request(self, method: str, url: str, fields: dict[str, Any] | None = None, headers: Any = None,
                **_: Any) -> FakeResponse:
        parsed = urlparse(url)
        params = {k: str(v) for k, v in (fields or {}).items()}
        params.update(dict(parse_qsl(parsed.query)))
        request = _classify(parsed.path, params)
        with self._lock:
            self.requests.append(request)
        if self.latency:
            time.sleep(self.latency)
        for interceptor in list(self.interceptors):
            answer = interceptor(request)
            if answer is not None:
                return answer
        if request.kind == "aggs":
            fault = self.faults.take(request.ticker)
            if fault is not None and fault not in VALUE_FAULTS:
                return _fault(fault, request)
            return self._aggs(request, spoiled=fault)
        if request.kind == "splits":
            ticker = params.get("ticker", "")
            return FakeResponse.json({"status": "OK", "results": self.splits.get(ticker, [])})
        if request.kind == "contracts":
            return self._contracts(params)
        return FakeResponse.json({"status": "NOT_FOUND", "message": f"no route {parsed.path}"}, status=404)

    def clear(self) -> None:  # PoolManager API
        pass

    # -- routes ----------------------------------------------------------------------------------
    def _aggs(self, request: FakeRequest, *, spoiled: str | None = None) -> FakeResponse:
        ticker = request.ticker or ""
        symbol, asset_type, day_tz = _parse_ticker(ticker)
        start, end = _day_bound(request.start, day_tz, False), _day_bound(request.end, day_tz, True)
        bars = self.market.bars(symbol, request.timespan or "minute", start, end, asset_type=asset_type)
        if spoiled is not None:
            bars = spoil(bars, spoiled)
        results = [
            {"v": _json_number(v), "vw": vw, "o": o, "c": c, "h": h, "l": lo, "t": int(t.value // 1_000_000),
             "n": int(n)}
            for t, o, h, lo, c, v, vw, n in zip(
                bars.index, bars["open"], bars["high"], bars["low"], bars["close"], bars["volume"],
                bars["vwap"].fillna(0.0), bars["trade_count"],
            )
        ]
        document: dict[str, Any] = {"ticker": ticker, "queryCount": len(results), "resultsCount": len(results),
                                    "adjusted": True, "status": "OK", "request_id": "offline"}
        if results:
            document["results"] = results
            document["count"] = len(results)
        return FakeResponse.json(document)

    def _contracts(self, params: dict[str, str]) -> FakeResponse:
        underlying = params.get("underlying_ticker", "")
        expiration = params.get("expiration_date", "")
        right = params.get("contract_type", "call")
        strike = float(params.get("strike_price", "0") or 0)
        if not underlying or not expiration:
            return FakeResponse.json({"status": "OK", "results": []})
        ticker = f"O:{underlying}{dt.date.fromisoformat(expiration):%y%m%d}{right[0].upper()}{round(strike * 1000):08d}"
        contract = {"ticker": ticker, "underlying_ticker": underlying, "expiration_date": expiration,
                    "strike_price": strike, "contract_type": right, "shares_per_contract": 100,
                    "primary_exchange": "BATO", "exercise_style": "american"}
        return FakeResponse.json({"status": "OK", "results": [contract]})


def _fault(mode: str, request: FakeRequest) -> FakeResponse:
    if mode == "transient":  # what urllib3 raises when the server drops the connection mid-request
        from urllib3.exceptions import ProtocolError

        raise ProtocolError("Connection aborted.", ConnectionResetError(104, "Connection reset by peer"))
    if mode == "empty":
        return FakeResponse.json({"ticker": request.ticker, "queryCount": 0, "resultsCount": 0, "adjusted": True,
                                  "status": "OK", "request_id": "offline"})
    if mode == "malformed":
        return FakeResponse.json({"ticker": request.ticker, "status": "OK", "request_id": "offline",
                                  "results": [{"t": "soon", "o": "n/a", "v": -1}]})
    return FakeResponse.json({"status": "ERROR", "request_id": "offline", "error": "internal error"}, status=500)


def _json_number(value: float) -> float | int:
    """Whole numbers as JSON integers, as Polygon sends stock volumes."""
    return int(value) if float(value).is_integer() else float(value)


def _classify(path: str, params: dict[str, str]) -> FakeRequest:
    parts = path.strip("/").split("/")
    if len(parts) >= 8 and parts[:3] == ["v2", "aggs", "ticker"]:
        return FakeRequest("aggs", path, params, ticker=parts[3], timespan=parts[6], start=parts[7],
                           end=parts[8] if len(parts) > 8 else parts[7])
    if path.startswith("/v3/reference/splits"):
        return FakeRequest("splits", path, params, ticker=params.get("ticker"))
    if path.startswith("/v3/reference/options/contracts"):
        return FakeRequest("contracts", path, params, ticker=params.get("underlying_ticker"))
    return FakeRequest("other", path, params)


def _parse_ticker(ticker: str) -> tuple[str, str, str]:
    """Polygon ticker → (symbol for the market, asset type, timezone its dates are in)."""
    if ticker.startswith("X:"):
        pair = ticker[2:]
        for quote in ("USDT", "USDC", "USD", "EUR", "BTC"):
            if pair.endswith(quote) and len(pair) > len(quote):
                return f"{pair[: -len(quote)]}", "crypto", "UTC"
        return pair, "crypto", "UTC"
    if ticker.startswith(("I:", "C:")):
        return ticker[2:], "stock", NY
    return ticker, "stock", NY


def _span_days(start: str | None, end: str | None) -> int:
    if not start or not end:
        return 0
    if start.isdigit() and end.isdigit():
        return max(1, round((int(end) - int(start)) / 86_400_000))
    return (dt.date.fromisoformat(end) - dt.date.fromisoformat(start)).days + 1


def _day_bound(value: str | None, tz: str, end_of_day: bool) -> pd.Timestamp:
    """A ``from``/``to`` path value (YYYY-MM-DD or epoch ms) as a UTC bound; dates are whole days in ``tz``."""
    if value is None:
        raise ValueError("aggs request without a date range")
    if value.isdigit():
        stamp = pd.Timestamp(int(value), unit="ms", tz="UTC")
        return stamp + pd.Timedelta(milliseconds=1) if end_of_day else stamp
    day = pd.Timestamp(value).tz_localize(tz)
    return (day + pd.Timedelta(days=1) if end_of_day else day).tz_convert("UTC")


@contextlib.contextmanager
def serve_polygon(market: Market, **options: Any) -> Iterator[FakePolygonHTTP]:
    """Route every polygon client created inside the block to a :class:`FakePolygonHTTP`."""
    from polygon.rest import base

    http = FakePolygonHTTP(market, **options)
    original = base.BaseClient.__init__

    def offline_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.client = http

    base.BaseClient.__init__ = offline_init
    try:
        yield http
    finally:
        base.BaseClient.__init__ = original


class PolygonKit(SourceKit):
    """Polygon: Lumibot's ``PolygonDataBacktesting`` and ours, against :class:`FakePolygonHTTP`."""

    name = "polygon"
    asset_types = ("stock", "crypto")
    timeframes = ("day", "minute")
    request_kinds = ("aggs", "splits", "contracts")
    bar_request_kinds = ("aggs",)
    legacy_differs_in = ("cold", "warm", "shifted")  # (placeholder rows show within a first run)


    def serve(self, market: Any, *, fast: bool = False) -> contextlib.AbstractContextManager[FakePolygonHTTP]:
        return serve_polygon(market)

    def source_options(self) -> dict[str, Any]:
        return {"api_key": "offline-key"}

    def backtest_kwargs(self, variant: str, scenario: Any = None) -> dict[str, Any]:
        return {"polygon_api_key": "offline-key"}

    def data_layer(self) -> list[tuple[Any, str]]:
        from lumibot.tools import polygon_helper

        return [(polygon_helper, "get_price_data_from_polygon")]

    def legacy_cache(self, cache_folder: Path) -> tuple[int, int]:
        import pyarrow.parquet as pq

        folder = cache_folder / "polygon"
        size = bars = 0
        for path in folder.glob("*.parquet") if folder.exists() else []:
            size += path.stat().st_size
            if not path.name.endswith("_splits.parquet"):
                table = pq.read_table(path)
                missing = table.column("missing").to_pylist() if "missing" in table.column_names else []
                bars += table.num_rows - sum(1 for m in missing if m)
        return size, bars

    def legacy_defects(self) -> dict[str, Any]:
        return dict(LEGACY_DEFECTS)

    def describe_defects(self, workdir: Path, window: tuple[Any, Any]) -> str:
        return legacy_cache_defects(workdir, window)

    @contextlib.contextmanager
    def legacy_cache_folder(self, folder: Path) -> Iterator[None]:
        from lumibot.tools import polygon_helper

        with patched(polygon_helper, "LUMIBOT_CACHE_FOLDER", str(folder)):
            yield


def _fix_placeholder_rows() -> Any:
    """Lumibot's warm path returns placeholder rows (dates without bars) with NaN prices; its cold path drops them."""
    from lumibot.tools import polygon_helper

    original = polygon_helper.get_price_data_from_polygon

    def without_placeholders(*args: Any, **kwargs: Any) -> Any:
        frame = original(*args, **kwargs)
        if frame is not None and "missing" in frame.columns:
            frame = frame[~frame["missing"].fillna(False).astype(bool)]
        return frame

    polygon_helper.get_price_data_from_polygon = without_placeholders
    return lambda: setattr(polygon_helper, "get_price_data_from_polygon", original)


def _fix_utc_date_cache() -> Any:
    """Lumibot decides which dates it holds by the UTC date of cached bars; use the exchange's date instead.

    (Placeholder rows keep their UTC date: Lumibot stamps them at midnight local mean time, 04:56 UTC.)
    """
    import numpy as np
    import pandas as pd
    from lumibot.entities import Asset
    from lumibot.tools import polygon_helper

    original = polygon_helper.get_missing_dates

    def get_missing_dates(df_all: Any, asset: Any, start: Any, end: Any) -> Any:
        if df_all is None or df_all.empty or asset.asset_type == Asset.AssetType.CRYPTO:
            return original(df_all, asset, start, end)
        index = pd.DatetimeIndex(df_all.index)
        placeholder = (df_all["missing"].fillna(False).astype(bool).to_numpy() if "missing" in df_all.columns
                       else np.zeros(len(index), dtype=bool))
        local = np.where(placeholder, index.tz_convert("UTC").date, index.tz_convert("America/New_York").date)
        dates = pd.DatetimeIndex(pd.to_datetime(local)).tz_localize("UTC")
        by_exchange_date = pd.DataFrame({"held": True}, index=dates)  # (a frame without columns is "empty")
        return original(by_exchange_date, asset, start, end)

    polygon_helper.get_missing_dates = get_missing_dates
    return lambda: setattr(polygon_helper, "get_missing_dates", original)


LEGACY_DEFECTS = {
    "placeholder rows returned with NaN prices": _fix_placeholder_rows,
    "cached dates judged by UTC date": _fix_utc_date_cache,
}
"""Known defects of Lumibot 4.6.30's Polygon cache, each with the smallest patch that removes it
(:meth:`PolygonKit.legacy_defects <lumibot_duckdb.testing.polygon.PolygonKit.legacy_defects>`)."""


def legacy_cache_defects(workdir: Path, window: tuple[dt.date, dt.date]) -> str:
    """Name the known defects of Lumibot's Polygon cache that show in ``workdir`` for ``window``.

    * Dates Lumibot believes it holds because after-hours bars of the previous evening carry
      their UTC date, although it never downloaded their session (``get_missing_dates`` keys on
      the UTC date of the cached index).
    * Placeholder rows (dates the provider had no bars for), which Lumibot's warm path returns
      with NaN prices while its cold path drops them.
    """
    import pandas as pd
    import pandas_market_calendars as mcal

    folder = workdir / "lumibot-cache" / "polygon"
    sessions = mcal.get_calendar("NYSE").schedule(window[0], window[1])
    notes = []
    for path in sorted(folder.glob("*_minute.parquet")) if folder.exists() else []:
        frame = pd.read_parquet(path)
        if "missing" in frame.columns:
            frame = frame[~frame["missing"].fillna(False).astype(bool)]  # placeholders are the other defect
        index = pd.DatetimeIndex(frame["datetime"]).tz_convert("UTC")
        local = index.tz_convert("America/New_York")
        held = set(index.date)
        regular = set(local[local.indexer_between_time("09:30", "15:59")].date)
        hidden = [d for d in sessions.index.date if d in held and d not in regular]
        if hidden:
            notes.append(f"{path.stem}: {len(hidden)} session(s) never downloaded because earlier after-hours bars "
                         f"carry their UTC date ({', '.join(map(str, hidden[:4]))})")
    for path in sorted(folder.glob("*.parquet")) if folder.exists() else []:
        frame = pd.read_parquet(path) if not path.name.endswith("_splits.parquet") else None
        if frame is not None and "missing" in frame and frame["missing"].fillna(False).astype(bool).any():
            notes.append(f"{path.stem}: {int(frame['missing'].fillna(False).astype(bool).sum())} placeholder row(s) "
                         "returned with NaN prices on warm runs")
    return "; ".join(notes) or "no known cache defect detected"
