"""An offline CCXT exchange: answers ``load_markets`` and ``fetch_ohlcv`` from a market.

It replaces those two methods on a ccxt exchange class (``ccxt.binance`` by default), the lowest
seam Lumibot's CCXT cache and ours share: everything above them (Lumibot's paging loop, its
DuckDB cache, our store) runs as it would against the real exchange. Answers follow the
exchange's rules: candles ``[open_ms, o, h, l, c, v]`` starting at ``since``, at most
``limit`` of them (capped at the exchange's maximum), none that has not started yet. Every call
is recorded, and faults can be injected.

>>> from lumibot_duckdb.testing.market import SyntheticMarket
>>> with serve_ccxt(SyntheticMarket()) as exchange:                  # doctest: +SKIP
...     run_my_backtest()
...     exchange.count("fetch_ohlcv")
"""

from __future__ import annotations

import contextlib
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from lumibot_duckdb.testing.kits import FAULTS, VALUE_FAULTS, Faults, SourceKit, patched, spoil

STEP_MS = {"1m": 60_000, "1h": 3_600_000, "1d": 86_400_000}
TIMEFRAMES = {"1m": "minute", "1h": "hour", "1d": "day"}
QUOTES = ("USDT", "USDC", "USD", "BTC", "EUR")
BASES = ("BTC", "ETH", "SOL", "XRP", "ADA", "DOGE", "SHIB", "PEPE", "AAA", "BBB", "CCC", "DDD")
UNIVERSE = tuple(f"U{i:03d}" for i in range(200))
"""Synthetic coins for universe benchmarks (listed in USDT only)."""
LISTED = frozenset({f"{b}/{q}" for b in BASES for q in QUOTES} | {f"{u}/USDT" for u in UNIVERSE})
"""What the fake exchange lists by default: every base in every quote, and the universe in USDT."""


class Market(Protocol):
    def bars(self, symbol: str, timeframe: str, start: object, end: object, *,
             asset_type: str = "stock") -> pd.DataFrame:
        ...


@dataclass(frozen=True)
class FakeCall:
    kind: str                    # "load_markets" or "fetch_ohlcv"
    symbol: str | None = None
    timeframe: str | None = None
    since: int | None = None
    limit: int | None = None
    span_ms: int = 0             # from ``since`` to the end of the last candle answered


class FakeCcxt:
    """The state behind the patched exchange methods: market, listed pairs, calls, faults."""

    def __init__(self, market: Market, *, exchange_id: str = "binance", listed: Iterable[str] | None = None,
                 max_limit: int = 1000, default_limit: int = 500,
                 scale: dict[str, float] | None = None) -> None:
        self.market = market
        self.exchange_id = exchange_id
        self.listed = set(listed) if listed is not None else set(LISTED)
        self.max_limit = max_limit
        self.default_limit = default_limit
        self.scale = dict(scale or {})
        """Price multiplier per base symbol: e.g. ``{"PEPE": 1e-7}`` makes a sub-cent coin."""
        self.calls: list[FakeCall] = []
        self.faults = Faults((*FAULTS, "network"))
        self.answers: list[Callable[[FakeCall], list[list[Any]] | None]] = []
        self._lock = threading.Lock()

    # -- what tests look at --------------------------------------------------------------------
    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for c in self.calls if kind is None or c.kind == kind)

    def requested_days(self) -> int:
        """Calendar days of candles answered over all ``fetch_ohlcv`` calls (a re-download shows up here)."""
        with self._lock:
            return round(sum(c.span_ms for c in self.calls if c.kind == "fetch_ohlcv") / 86_400_000)

    def ohlcv_calls(self) -> list[FakeCall]:
        with self._lock:
            return [c for c in self.calls if c.kind == "fetch_ohlcv"]

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()

    def fail(self, mode: str, *, symbol: str | None = None, times: int | None = None) -> None:
        """Answer ``fetch_ohlcv`` (for ``symbol``: a pair ``"BTC/USDT"`` or a base ``"BTC"``; or all; the next
        ``times`` calls only) with a fault.

        ``empty``: ``[]``; ``malformed``: rows of the wrong shape and type; ``error``: ccxt's
        ``ExchangeError``; ``network``: ccxt's ``NetworkError``; ``transient``: ccxt's ``RequestTimeout``.
        """
        self.faults.set(mode, symbol, times)

    def heal(self) -> None:
        self.faults.clear()
        self.answers.clear()

    def intercept(self, answer: Callable[[FakeCall], list[list[Any]] | None]) -> None:
        """Answer ``fetch_ohlcv`` with ``answer(call)`` whenever it returns a list."""
        self.answers.append(answer)

    # -- the exchange methods --------------------------------------------------------------------
    def markets(self) -> dict[str, dict[str, Any]]:
        markets = {}
        for symbol in sorted(self.listed):
            base, quote = symbol.split("/", 1)
            markets[symbol] = {"id": f"{base}{quote}", "symbol": symbol, "base": base, "quote": quote,
                               "baseId": base, "quoteId": quote, "type": "spot", "spot": True, "active": True,
                               "precision": {"amount": 1e-8, "price": 1e-8}, "limits": {}, "info": {}}
        return markets

    def load_markets(self, exchange: Any, reload: bool = False, params: dict[str, Any] | None = None) -> Any:
        with self._lock:
            self.calls.append(FakeCall("load_markets"))
        markets = self.markets()
        exchange.markets = markets
        exchange.markets_by_id = {m["id"]: [m] for m in markets.values()}
        exchange.symbols = sorted(markets)
        return markets

    def fetch_ohlcv(self, exchange: Any, symbol: str, timeframe: str = "1m", since: int | None = None,
                    limit: int | None = None, params: dict[str, Any] | None = None) -> list[list[Any]]:
        import ccxt

        step = STEP_MS.get(timeframe)
        if step is None:
            raise ccxt.BadRequest(f"{self.exchange_id} does not have timeframe {timeframe}")
        count = min(int(limit or self.default_limit), self.max_limit)
        now_ms = int(time.time() * 1000)
        if since is None:
            since = (now_ms // step - count + 1) * step
        call = FakeCall("fetch_ohlcv", symbol, timeframe, int(since), limit)
        try:
            rows = self._answer(call, symbol, timeframe, int(since), count, step, now_ms)
        except Exception:
            with self._lock:  # a failed call is a request too
                self.calls.append(call)
            raise
        last = rows[-1] if isinstance(rows, list) and rows else None
        span = int(last[0]) + step - int(since) if isinstance(last, list) and last and isinstance(last[0], int) else 0
        with self._lock:
            self.calls.append(FakeCall("fetch_ohlcv", symbol, timeframe, int(since), limit, max(0, span)))
        return rows

    def _answer(self, call: FakeCall, symbol: str, timeframe: str, since: int, count: int, step: int,
                now_ms: int) -> list[list[Any]]:
        import ccxt

        for answer in list(self.answers):
            rows = answer(call)
            if rows is not None:
                return rows
        base = symbol.split("/", 1)[0]
        fault = self.faults.take(symbol, base)
        if fault == "empty":
            return []
        if fault == "malformed":
            garbage: list[Any] = [[since, "n/a", None, 1.0], ["soon", 1.0, 1.0, 1.0, 1.0, 1.0], None]
            return garbage
        if fault == "error":
            raise ccxt.ExchangeError(f'{self.exchange_id} {{"code":-1121,"msg":"Invalid symbol."}}')
        if fault == "transient":
            raise ccxt.RequestTimeout(f"{self.exchange_id} GET https://api.{self.exchange_id}.com/klines 10000 ms")
        if fault == "network":
            raise ccxt.NetworkError(f"{self.exchange_id} GET https://api.{self.exchange_id}.com/klines timed out")
        if symbol not in self.listed:
            raise ccxt.BadSymbol(f"{self.exchange_id} does not have market symbol {symbol}")
        first = -(-since // step) * step  # the first candle that opens at or after since
        start = pd.Timestamp(first, unit="ms", tz="UTC")
        end = pd.Timestamp(min(first + count * step, now_ms + 1), unit="ms", tz="UTC")
        bars = self.market.bars(base, TIMEFRAMES[timeframe], start, end, asset_type="crypto")
        if fault in VALUE_FAULTS:
            bars = spoil(bars, fault)
        factor = self.scale.get(base, 1.0)
        stamps = (bars.index.asi8 // 1_000_000 if bars.index.unit == "ns" else
                  bars.index.as_unit("ms").asi8).tolist()
        return [[int(t), float(o) * factor, float(h) * factor, float(lo) * factor, float(c) * factor, float(v)]
                for t, o, h, lo, c, v in zip(stamps, bars["open"], bars["high"], bars["low"], bars["close"],
                                             bars["volume"])][:count]


@contextlib.contextmanager
def serve_ccxt(market: Market, *, fast: bool = False, exchange_id: str = "binance",
               **options: Any) -> Iterator[FakeCcxt]:
    """Answer ``load_markets`` and ``fetch_ohlcv`` of ``ccxt.<exchange_id>`` from ``market`` inside the block.

    ``fast=True`` also removes Lumibot's deliberate sleeps (1 s every 10 pages, and between
    ``load_markets`` retries); the harness keeps them, because users wait for them.
    """
    import ccxt
    from lumibot.tools import ccxt_data_store

    fake = FakeCcxt(market, exchange_id=exchange_id, **options)
    exchange_class = getattr(ccxt, exchange_id)

    def load_markets(self: Any, reload: bool = False, params: dict[str, Any] | None = None) -> Any:
        return fake.load_markets(self, reload, params)

    def fetch_ohlcv(self: Any, symbol: str, timeframe: str = "1m", since: int | None = None,
                    limit: int | None = None, params: dict[str, Any] | None = None) -> list[list[Any]]:
        return fake.fetch_ohlcv(self, symbol, timeframe, since, limit, params)

    with contextlib.ExitStack() as stack:
        stack.enter_context(patched(exchange_class, "load_markets", load_markets))
        stack.enter_context(patched(exchange_class, "fetch_ohlcv", fetch_ohlcv))
        if fast:
            no_sleep = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
            no_sleep.sleep = lambda seconds: None
            stack.enter_context(patched(ccxt_data_store, "time", no_sleep))
        yield fake


class CcxtKit(SourceKit):
    """CCXT: Lumibot's ``CcxtBacktesting`` and ours, against :class:`FakeCcxt` (binance)."""

    name = "ccxt"
    asset_types = ("crypto",)
    timeframes = ("day", "hour", "minute")
    request_kinds = ("load_markets", "fetch_ohlcv")
    bar_request_kinds = ("fetch_ohlcv",)
    legacy_differs_in = ("cold", "warm", "shifted")  # prices rounded as they are written
    default_quote = "USDT"
    exchange_id = "binance"


    def serve(self, market: Any, *, fast: bool = False) -> contextlib.AbstractContextManager[FakeCcxt]:
        return serve_ccxt(market, fast=fast, exchange_id=self.exchange_id)

    def source_options(self) -> dict[str, Any]:
        return {"exchange_id": self.exchange_id}

    def backtest_kwargs(self, variant: str, scenario: Any = None) -> dict[str, Any]:
        """The exchange, and the strategy's quote asset in the exchange's quote currency (as Lumibot's
        CCXT example does): otherwise valuing the USDT position asks the exchange for USDT/USD."""
        from lumibot.entities import Asset

        return {"exchange_id": self.exchange_id, "quote_asset": Asset(self.default_quote, "crypto")}

    def data_layer(self) -> list[tuple[Any, str]]:
        from lumibot.tools.ccxt_data_store import CcxtCacheDB

        return [(CcxtCacheDB, "download_ohlcv")]

    def legacy_cache(self, cache_folder: Path) -> tuple[int, int]:
        import duckdb

        folder = cache_folder / self.exchange_id
        size = bars = 0
        for path in sorted(folder.glob("*.duckdb*")) if folder.exists() else []:
            size += path.stat().st_size
            if path.suffix != ".duckdb":
                continue
            with duckdb.connect(str(path), read_only=True) as con:
                row = con.execute("SELECT count(DISTINCT datetime) FROM candles WHERE coalesce(missing, 0) = 0"
                                  ).fetchone()
            bars += int(row[0]) if row else 0
        return size, bars

    def legacy_defects(self) -> dict[str, Any]:
        return {DECIMAL_DEFECT: fix_decimal_cache, DUPLICATE_DEFECT: fix_duplicate_candles}

    def describe_defects(self, workdir: Path, window: tuple[Any, Any]) -> str:
        return legacy_cache_defects(workdir / "lumibot-cache" / self.exchange_id)

    @contextlib.contextmanager
    def legacy_cache_folder(self, folder: Path) -> Iterator[None]:
        from lumibot.tools import ccxt_data_store

        with patched(ccxt_data_store, "LUMIBOT_CACHE_FOLDER", str(folder)):
            yield


DECIMAL_DEFECT = "prices and volumes stored as DECIMAL(18,3)"
DUPLICATE_DEFECT = "candles identical to an earlier one dropped"


def fix_decimal_cache() -> Callable[[], None]:
    """Make Lumibot's CCXT cache store DOUBLE columns instead of ``DECIMAL`` (= DECIMAL(18,3) in DuckDB).

    ``CcxtCacheDB._cache_ohlcv`` creates ``candles`` with ``DECIMAL`` price and volume columns,
    which DuckDB reads as DECIMAL(18,3): every price and volume is rounded to 3 decimals on the
    way in (a coin at 0.00001234 USDT is stored as 0.000). The fix is that one statement with
    ``DOUBLE`` columns, applied to the installed method's own source. Returns the undo.
    """
    return _edit_method("_cache_ohlcv",
                        "open DECIMAL, high DECIMAL, low DECIMAL, close DECIMAL, volume DECIMAL",
                        "open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE")


def fix_duplicate_candles() -> Callable[[], None]:
    """Make Lumibot's CCXT download drop repeated *timestamps*, not repeated *values*.

    ``CcxtCacheDB._get_barset_from_api`` ends with ``df_ret.drop_duplicates(inplace=True)`` on a
    frame indexed by time: a candle whose open/high/low/close/volume equal those of any earlier
    candle of the download is thrown away (flat, zero-volume minutes of a quiet pair, a price
    that comes back to the same level). The fix keeps the first candle of each timestamp
    instead, applied to the installed method's own source. Returns the undo.
    """
    return _edit_method("_get_barset_from_api", "df_ret.drop_duplicates(inplace=True)",
                        "df_ret = df_ret[~df_ret.index.duplicated(keep='first')]")


def _edit_method(name: str, old: str, new: str) -> Callable[[], None]:
    """Replace ``CcxtCacheDB.<name>`` by its own source with ``old`` replaced by ``new`` (exactly once)."""
    import inspect
    import textwrap

    from lumibot.tools import ccxt_data_store
    from lumibot.tools.ccxt_data_store import CcxtCacheDB

    original = CcxtCacheDB.__dict__[name]
    source = textwrap.dedent(inspect.getsource(original))
    if source.count(old) != 1:
        raise RuntimeError(f"CcxtCacheDB.{name} of this Lumibot version no longer contains {old!r}; "
                           "review the legacy defect patch in lumibot_duckdb.testing.ccxt.")
    namespace: dict[str, Any] = {}
    exec(compile(source.replace(old, new), inspect.getsourcefile(original) or "<ccxt_data_store>", "exec"),
         vars(ccxt_data_store), namespace)
    setattr(CcxtCacheDB, name, namespace[name])
    return lambda: setattr(CcxtCacheDB, name, original)


def legacy_cache_defects(folder: Path) -> str:
    """Name the DECIMAL(18,3) columns of Lumibot's CCXT cache files in ``folder``, and what they rounded."""
    import duckdb

    notes = []
    for path in sorted(folder.glob("*.duckdb")) if folder.exists() else []:
        with duckdb.connect(str(path), read_only=True) as con:
            types_ = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                                      "WHERE table_name = 'candles'").fetchall())
            rows = con.execute("SELECT count(*), count(*) FILTER (WHERE close = 0) FROM candles").fetchone()
        rounded = sorted(c for c, t in types_.items() if str(t).upper().startswith("DECIMAL"))
        if rounded:
            total, zero = rows if rows else (0, 0)
            note = f"{path.stem}: {', '.join(rounded)} stored as {types_[rounded[0]]} ({total} bars rounded to 0.001"
            notes.append(note + (f", {zero} closes became 0)" if zero else ")"))
    return "; ".join(notes) or "no known cache defect detected"
