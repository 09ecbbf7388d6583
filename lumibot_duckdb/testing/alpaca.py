"""An offline Alpaca market-data API: answers alpaca-py's bar calls from a market.

It replaces ``StockHistoricalDataClient.get_stock_bars``, ``CryptoHistoricalDataClient.get_crypto_bars``
and ``OptionHistoricalDataClient.get_option_bars`` and answers with real ``alpaca.data.models.BarSet``
objects built from the raw JSON rows Alpaca sends (``{"SPY": [{"t", "o", "h", "l", "c", "v", "n",
"vw"}]}``), so alpaca-py's own parsing (pydantic ``Bar`` models, ``BarSet.df``) still runs. Every
request is recorded, and faults can be injected.

>>> from lumibot_duckdb.testing.market import SyntheticMarket
>>> with serve_alpaca(SyntheticMarket()) as alpaca:                # doctest: +SKIP
...     run_my_backtest()
...     alpaca.count("stock_bars")
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import pandas as pd

from lumibot_duckdb.testing.kits import VALUE_FAULTS, Faults, SourceKit, patched, spoil

KINDS = ("stock_bars", "crypto_bars", "option_bars")


class Market(Protocol):
    def bars(self, symbol: str, timeframe: str, start: object, end: object, *,
             asset_type: str = "stock") -> pd.DataFrame:
        ...


@dataclass(frozen=True)
class AlpacaRequest:
    """One bars request as alpaca-py would send it (``start``/``end`` UTC, ``end`` inclusive)."""

    kind: str                 # "stock_bars", "crypto_bars" or "option_bars"
    symbols: tuple[str, ...]
    timeframe: str            # alpaca-py's text, e.g. "1Day", "1Min", "5Min", "1Hour"
    start: pd.Timestamp
    end: pd.Timestamp
    adjustment: str | None = None

    @property
    def days(self) -> int:
        """Calendar days the request spans (at least one)."""
        return max(1, math.ceil((self.end - self.start) / pd.Timedelta(days=1)))


class FakeAlpaca:
    """Answers alpaca-py bar requests from ``market``; see :func:`serve_alpaca`."""

    def __init__(self, market: Market, *, latency: float = 0.0) -> None:
        self.market = market
        self.latency = latency
        self.requests: list[AlpacaRequest] = []
        self.faults = Faults()
        self._lock = threading.Lock()

    # -- what tests look at --------------------------------------------------------------------
    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if kind is None or r.kind == kind)

    def requested_days(self) -> int:
        """Calendar days spanned by all bar requests (a re-download shows up here)."""
        with self._lock:
            return sum(r.days for r in self.requests)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()

    def fail(self, mode: str, *, symbol: str | None = None, times: int | None = None) -> None:
        """Answer bar requests (for ``symbol``, or all; the next ``times`` only) with a fault.

        ``empty`` is a BarSet without bars (Alpaca's answer for a range with no trades),
        ``malformed`` a BarSet whose bars break the OHLCV contract (NaN and negative prices,
        high below low, negative volume), ``error`` alpaca-py's ``APIError`` for an HTTP 500,
        ``transient`` the ``requests`` error for a connection reset by the server.
        """
        self.faults.set(mode, symbol, times)

    def heal(self) -> None:
        self.faults.clear()

    # -- the client methods --------------------------------------------------------------------
    def answer(self, kind: str, request: Any) -> Any:
        from alpaca.data.models import BarSet

        recorded = _record(kind, request)
        with self._lock:
            self.requests.append(recorded)
        if self.latency:
            time.sleep(self.latency)
        raw: dict[str, list[dict[str, Any]]] = {}
        for symbol in recorded.symbols:
            base = symbol.split("/", 1)[0]  # fail("error", symbol="BTC") also hits "BTC/USD"
            fault = self.faults.take(symbol, base)
            if fault == "error":
                raise api_error(500, "internal server error")
            if fault == "transient":
                import requests

                raise requests.exceptions.ConnectionError(
                    "('Connection aborted.', ConnectionResetError(104, 'Connection reset by peer'))")
            if fault == "empty":
                continue
            if fault == "malformed":
                raw[symbol] = [{"t": recorded.start.isoformat(), "o": float("nan"), "h": -1.0, "l": 5.0,
                                "c": 0.0, "v": -3.0, "n": 1, "vw": 1.0}]
                continue
            rows = self._rows(kind, symbol, recorded, spoiled=fault)
            if rows:
                raw[symbol] = rows
        return BarSet(raw)

    def _rows(self, kind: str, symbol: str, request: AlpacaRequest, *,
              spoiled: str | None = None) -> list[dict[str, Any]]:
        asset_type = "crypto" if kind == "crypto_bars" else "stock"
        base = symbol.split("/", 1)[0] if asset_type == "crypto" else symbol
        amount, unit = _parse_timeframe(request.timeframe)
        timeframe = {"Min": "minute", "Hour": "hour", "Day": "day"}[unit]
        end = request.end + pd.Timedelta(microseconds=1)  # Alpaca's end is inclusive, the market's exclusive
        frame = self.market.bars(base, "minute" if amount > 1 else timeframe, request.start, end,
                                 asset_type=asset_type)
        if amount > 1:
            frame = _aggregate(frame, f"{amount}{'min' if unit == 'Min' else 'h'}")
        if spoiled in VALUE_FAULTS:
            frame = spoil(frame, spoiled)
        return [
            {"t": t.isoformat().replace("+00:00", "Z"), "o": o, "h": h, "l": lo, "c": c, "v": v, "n": int(n),
             "vw": None if pd.isna(vw) else float(vw)}
            for t, o, h, lo, c, v, n, vw in zip(
                frame.index.tz_convert("UTC"), frame["open"], frame["high"], frame["low"], frame["close"],
                frame["volume"], frame["trade_count"], frame["vwap"],
            )
        ]


def api_error(status: int, message: str) -> Exception:
    """alpaca-py's ``APIError`` as its REST client raises it for an HTTP error answer."""
    from alpaca.common.exceptions import APIError

    response = SimpleNamespace(status_code=status, headers={}, text=message)
    http_error = SimpleNamespace(response=response, request=None)
    return APIError(json.dumps({"code": status * 100000, "message": message}), http_error)


def _record(kind: str, request: Any) -> AlpacaRequest:
    raw_symbols = request.symbol_or_symbols
    symbols = (raw_symbols,) if isinstance(raw_symbols, str) else tuple(raw_symbols)
    adjustment = getattr(request, "adjustment", None)
    return AlpacaRequest(kind, symbols, str(request.timeframe), _utc(request.start), _utc(request.end),
                         getattr(adjustment, "value", adjustment))


def _utc(value: Any) -> pd.Timestamp:
    if value is None:
        raise ValueError("the offline Alpaca answers bar requests with a start and an end only")
    stamp = pd.Timestamp(value)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _parse_timeframe(text: str) -> tuple[int, str]:
    digits = "".join(ch for ch in text if ch.isdigit())
    unit = text[len(digits):]
    if unit not in ("Min", "Hour", "Day"):
        raise ValueError(f"the offline Alpaca serves minute, hour and day bars, not {text!r}")
    return int(digits or 1), unit


def _aggregate(frame: pd.DataFrame, rule: str) -> pd.DataFrame:
    if frame.empty:
        return frame
    grouped = frame.groupby(frame.index.floor(rule))
    out = pd.DataFrame({"open": grouped["open"].first(), "high": grouped["high"].max(),
                        "low": grouped["low"].min(), "close": grouped["close"].last(),
                        "volume": grouped["volume"].sum(), "trade_count": grouped["trade_count"].sum()})
    notional = (frame["vwap"] * frame["volume"]).groupby(frame.index.floor(rule)).sum()
    out["vwap"] = notional / out["volume"].where(out["volume"] > 0)
    return out


@contextlib.contextmanager
def serve_alpaca(market: Market, *, fast: bool = False, latency: float = 0.0) -> Iterator[FakeAlpaca]:
    """Answer every alpaca-py bars call made inside the block from ``market``.

    ``fast=True`` also turns Lumibot's Alpaca request pacing (``AlpacaBacktesting._sleep_seconds``:
    the 180-requests-a-minute throttle and the HTTP 429 back-off) into no-ops, for tests.
    """
    from alpaca.data.historical import CryptoHistoricalDataClient, OptionHistoricalDataClient, StockHistoricalDataClient

    fake = FakeAlpaca(market, latency=latency)

    def method(kind: str) -> Callable[[Any, Any], Any]:
        def get_bars(client: Any, request_params: Any) -> Any:
            return fake.answer(kind, request_params)

        return get_bars

    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(StockHistoricalDataClient, "get_stock_bars", method("stock_bars")))
        stack.enter_context(patched(CryptoHistoricalDataClient, "get_crypto_bars", method("crypto_bars")))
        stack.enter_context(patched(OptionHistoricalDataClient, "get_option_bars", method("option_bars")))
        if fast:
            from lumibot.backtesting.alpaca_backtesting import AlpacaBacktesting

            stack.enter_context(patched(AlpacaBacktesting, "_sleep_seconds", lambda self, seconds: None))
        yield fake


def legacy_cache_layers(cache_folder: Path) -> dict[str, tuple[int, int]]:
    """Lumibot's two Alpaca caches under ``cache_folder``: ``{layer: (bytes, rows)}``.

    * ``"window csv"``: ``alpaca/*.csv``, one reindexed and forward-filled frame per backtest
      window (rows include the filled ones), plus option-chain JSON files (bytes only).
    * ``"shared bars"``: ``bars/v2/alpaca/**``, Lumibot's shared bar cache: raw provider bars in
      monthly/yearly Parquet partitions plus ``series.json`` manifests and lock files (bytes).
    """
    import pyarrow.parquet as pq

    csv_bytes = csv_rows = 0
    folder = cache_folder / "alpaca"
    for path in folder.rglob("*") if folder.exists() else []:
        if not path.is_file():
            continue
        csv_bytes += path.stat().st_size
        if path.suffix == ".csv":
            with path.open("rb") as handle:
                csv_rows += max(0, sum(1 for _ in handle) - 1)
    shared_bytes = shared_rows = 0
    shared = cache_folder / "bars" / "v2" / "alpaca"
    for path in shared.rglob("*") if shared.exists() else []:
        if not path.is_file():
            continue
        shared_bytes += path.stat().st_size
        if path.suffix == ".parquet":
            shared_rows += pq.ParquetFile(path).metadata.num_rows
    return {"window csv": (csv_bytes, csv_rows), "shared bars": (shared_bytes, shared_rows)}


def _fix_csv_float_parsing() -> Callable[[], None]:
    """Lumibot re-reads its per-window CSV with pandas' default float parser, which is not round-trip exact.

    About a quarter of the prices written by ``to_csv`` come back one unit in the last place off,
    so a warm run prices and fills a few orders at 390.92821626769035 where the cold run had
    390.9282162676904. The fix reads the CSV with ``float_precision="round_trip"``; everything
    else is Lumibot's ``_load_ohlcv_into_data_store`` as it is.
    """
    import os

    from lumibot.backtesting import alpaca_backtesting

    cls = alpaca_backtesting.AlpacaBacktesting
    original = cls.__dict__["_load_ohlcv_into_data_store"]

    def _load_ohlcv_into_data_store(self: Any, key: str) -> bool:
        path = os.path.join(alpaca_backtesting.LUMIBOT_CACHE_FOLDER, self.CACHE_SUBFOLDER, f"{key}.csv")
        if not os.path.exists(path):
            return False
        try:
            df = pd.read_csv(path, parse_dates=["timestamp"], float_precision="round_trip")
            df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True).dt.tz_convert(self.tzinfo)
            df.set_index("timestamp", inplace=True)
            self._data_store[key] = df
            return True
        except Exception:  # noqa: BLE001 - as Lumibot: an unreadable CSV means "not cached"
            return False

    cls._load_ohlcv_into_data_store = _load_ohlcv_into_data_store
    return lambda: setattr(cls, "_load_ohlcv_into_data_store", original)


LEGACY_DEFECTS = {"per-window CSV re-read 1 ulp off (pandas' default float parser)": _fix_csv_float_parsing}
"""Known defects of Lumibot 4.6.30's Alpaca cache, each with the smallest patch that removes it."""


def csv_precision_report(cache_folder: Path, window: tuple[Any, Any]) -> str:
    """How many prices of the per-window CSVs for ``window`` Lumibot re-reads differently from what it wrote."""
    import numpy as np

    folder = cache_folder / "alpaca"
    tag = f"_{window[0]}_{window[1]}".upper()
    notes = []
    for path in sorted(folder.glob("*.csv")) if folder.exists() else []:
        if not path.stem.upper().endswith(tag):
            continue
        default = pd.read_csv(path)
        exact = pd.read_csv(path, float_precision="round_trip")
        columns = [c for c in ("open", "high", "low", "close") if c in default.columns]
        differ = int((default[columns].to_numpy() != exact[columns].to_numpy()).sum())
        if differ:
            biggest = float(np.nanmax(np.abs(default[columns].to_numpy() - exact[columns].to_numpy())))
            notes.append(f"{path.stem}: {differ} of {default[columns].size} prices re-read up to {biggest:.1e} off")
    return "; ".join(notes) or "no per-window CSV re-read differently"


class AlpacaKit(SourceKit):
    """Alpaca: Lumibot's ``AlpacaBacktesting`` and ours, against :class:`FakeAlpaca`.

    Backtests run with an explicit paper config (what ``run_backtest`` users pass), so Lumibot's
    explicit-config rules apply on both paths: day bars by default (a strategy's explicit
    ``"minute"`` history requests still load minute bars), the backtest ends at the open of the
    third-to-last trading day, no history before the start.
    """

    name = "alpaca"
    asset_types = ("stock", "crypto")
    timeframes = ("day", "minute")
    request_kinds = KINDS
    bar_request_kinds = KINDS
    legacy_differs_in = ("warm",)  # the per-window CSV is re-read on a rerun of the same window
    default_quote = None
    config = {"API_KEY": "offline-key", "API_SECRET": "offline-secret", "PAPER": True}

    timestep: str | None = None
    """``timestep`` passed to the data source when the scenario does not name one (None: Lumibot's
    explicit-config default, "day")."""


    def serve(self, market: Any, *, fast: bool = False) -> contextlib.AbstractContextManager[FakeAlpaca]:
        return serve_alpaca(market, fast=fast)

    def source_options(self) -> dict[str, Any]:
        return {"config": dict(self.config)}

    def backtest_kwargs(self, variant: str, scenario: Any = None) -> dict[str, Any]:
        options: dict[str, Any] = {"config": dict(self.config)}
        timestep = getattr(scenario, "timestep", "") or self.timestep
        if timestep:
            options["timestep"] = timestep
        return options

    def data_layer(self) -> list[tuple[Any, str]]:
        from lumibot.backtesting.alpaca_backtesting import AlpacaBacktesting

        # Both paths enter here (ours replaces what happens below it); a reach back before the
        # window (history_before_start) goes through the second.
        return [(AlpacaBacktesting, "get_historical_prices_between_dates"),
                (AlpacaBacktesting, "_reach_back_for_history")]

    def legacy_cache(self, cache_folder: Path) -> tuple[int, int]:
        """Both legacy layers added up: the per-window CSVs and Lumibot's shared bar cache Parquet."""
        layers = legacy_cache_layers(cache_folder)
        return sum(b for b, _ in layers.values()), sum(r for _, r in layers.values())

    def legacy_defects(self) -> dict[str, Any]:
        return dict(LEGACY_DEFECTS)

    def describe_defects(self, workdir: Path, window: tuple[Any, Any]) -> str:
        return csv_precision_report(workdir / "lumibot-cache", window)

    @contextlib.contextmanager
    def legacy_cache_folder(self, folder: Path) -> Iterator[None]:
        from lumibot import constants
        from lumibot.backtesting import alpaca_backtesting

        # alpaca_backtesting copied LUMIBOT_CACHE_FOLDER at import (the CSVs); the shared bar
        # cache reads lumibot.constants at call time (the Parquet partitions).
        with patched(alpaca_backtesting, "LUMIBOT_CACHE_FOLDER", str(folder)), \
                patched(constants, "LUMIBOT_CACHE_FOLDER", str(folder)):
            yield
