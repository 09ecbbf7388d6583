"""Fill the store for a universe without running a backtest (``lumibot-duckdb fetch``): a nightly job fills
what the next day's backtests read, and they run warm.

>>> report = fetch(store, source="polygon", symbols=["SPY", "QQQ"], timeframe="minute",
...                start="2023-01-01", end="2023-12-31")                      # doctest: +SKIP
>>> report.ok, [(s.series, s.requests, s.bars) for s in report.series]         # doctest: +SKIP

For each symbol it asks what a backtest of that source over ``start``..``end`` fills: the same series
key, the same range, the same provider object (each vendor module's ``prefetch``) and the same fill
(:func:`lumibot_duckdb.sources.fill.fill`): only what the store lacks is asked for, answers with no
bars are recorded as such, every request is retried like a backtest's (a rate limit is waited out:
the provider's ``Retry-After``, else up to ``LUMIBOT_DUCKDB_RETRY_WAIT``), requests are paced as the
data sources pace them (Polygon: Lumibot's 10 parallel requests; Alpaca: Lumibot's 180 a minute; CCXT:
ccxt's ``enableRateLimit``; Yahoo: one at a time), and each answer is stored the moment it arrives.
So it can be interrupted (Ctrl-C) and run again: what completed stays, and the next run asks only for
the rest. A backtest over the range afterwards asks nothing.

Ranges: ``start``/``end`` are dates, both included (New York days for US assets, UTC days for
crypto), or ``days=N`` for the N days up to today. Yahoo stores a symbol's whole daily history (it
answers ``period="max"``); Alpaca reads one day past ``end``, as Lumibot's window does. Backtests
also read a little before their first day (Lumibot's 5-day buffer plus the strategy's lookback;
CCXT 300 bars): start a fetch a week or more before the backtests that should run warm.

Credentials are Lumibot's: ``POLYGON_API_KEY``; ``ALPACA_API_KEY`` and ``ALPACA_API_SECRET`` (or
``ALPACA_OAUTH_TOKEN``), from the environment or a ``.env`` file found as Lumibot finds it. Yahoo and
CCXT candles need none.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from lumibot_duckdb.config import progress_wanted
from lumibot_duckdb.errors import ConfigError, LumibotDuckDBError
from lumibot_duckdb.ingest.legacy import yahoo_asset_type
from lumibot_duckdb.registry import SOURCES
from lumibot_duckdb.sources.fill import FillResult, fill
from lumibot_duckdb.sources.retry import RetryPolicy
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey
from lumibot_duckdb.store.coverage import canonical_timeframe, missing_ranges

__all__ = ["FetchReport", "SeriesFetch", "fetch", "read_symbols"]

TIMEFRAMES = {"polygon": ("minute", "hour", "day"), "yahoo": ("day",), "alpaca": ("minute", "hour", "day"),
              "ccxt": ("minute", "hour", "day")}
_CCXT = {"minute": "1m", "hour": "1h", "day": "1d"}
_OCC = re.compile(r"^(?:O:)?(?P<root>[A-Z][A-Z0-9.]*?)(?P<date>\d{6})(?P<right>[CP])(?P<strike>\d{8})$")


@dataclass
class SeriesFetch:
    """What fetching one symbol did."""

    symbol: str
    series: str = ""
    """The store series, as ``db-status`` lists it (``polygon AAA minute (split)``)."""
    key: dict[str, str] | None = None
    status: str = ""
    """``fetched``, ``present`` (nothing was missing), ``failed``, ``interrupted``, ``not settled`` (the range
    is still forming: nothing final to store yet)."""
    chunks: int = 0
    """Planned requests answered and stored (Polygon: 31-day chunks; CCXT: up to 10 pages each)."""
    requests: int = 0
    """Provider calls made for them (``retries`` more were made for calls that failed first)."""
    retries: int = 0
    bars: int = 0
    empty: int = 0
    """Requests answered with no bars, and ranges without a session (recorded without asking)."""
    covered_from: str | None = None
    covered_to: str | None = None
    gaps: int = 0
    """Parts of the range the store still lacks afterwards (a failure or an interrupt leaves some)."""
    error: str = ""
    seconds: float = 0.0


@dataclass
class FetchReport:
    """What a :func:`fetch` call did, series by series."""

    source: str
    store: str
    start: str
    end: str
    timeframe: str
    series: list[SeriesFetch] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every series is complete (nothing failed, nothing interrupted)."""
        return not self.interrupted and all(s.status in ("fetched", "present", "not settled") for s in self.series)

    @property
    def requests(self) -> int:
        return sum(s.requests for s in self.series)

    @property
    def bars(self) -> int:
        return sum(s.bars for s in self.series)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "store": self.store, "start": self.start, "end": self.end,
                "timeframe": self.timeframe, "ok": self.ok, "interrupted": self.interrupted,
                "requests": self.requests, "bars": self.bars, "seconds": round(self.seconds, 3),
                "series": [{**asdict(s), "seconds": round(s.seconds, 3)} for s in self.series]}


def read_symbols(text: str) -> list[str]:
    """Symbols from a file's text: one per line (or separated by commas/spaces); ``#`` starts a comment."""
    found: list[str] = []
    for line in text.splitlines():
        found += [s for s in re.split(r"[,\s]+", line.split("#", 1)[0]) if s]
    return list(dict.fromkeys(found))


def fetch(
    store: DuckDBDataStorage | str | os.PathLike[str] | None = None,
    /,
    *,
    source: str,
    symbols: Iterable[str],
    timeframe: str = "day",
    start: Any = None,
    end: Any = None,
    days: int | None = None,
    asset_type: str | None = None,
    quote: str | None = None,
    exchange: str = "binance",
    adjustment: str = "split",
    refresh: bool = False,
    progress: bool | None = None,
    policy: RetryPolicy | None = None,
    credentials: dict[str, Any] | None = None,
    on_series: Callable[[SeriesFetch], None] | None = None,
) -> FetchReport:
    """Fetch ``symbols`` of ``source`` into ``store`` (a store or its folder; default the data sources' store).

    ``timeframe``: minute, hour or day (Yahoo: day). ``start``/``end``: dates, both included (``end``
    default today), or ``days``: that many days up to today. ``asset_type``: stock (default), crypto
    (pairs such as ``BTC/USD``; CCXT's default), option (Polygon and Alpaca contracts by OCC symbol,
    ``SPY240119C00470000``), index, future. ``quote``: the quote currency when a symbol gives none (USD;
    USDT on CCXT). ``exchange``: the CCXT exchange id. ``adjustment``: Alpaca stocks, ``split`` (as
    ``run_backtest``) or ``all``. ``refresh`` asks for the whole range again. ``progress``: a bar per
    series (default: on a terminal). ``credentials``: Alpaca's (``API_KEY``/``API_SECRET`` or
    ``OAUTH_TOKEN``; default Lumibot's). ``on_series(item)`` is called after each symbol.

    A symbol that fails is reported and the next one is fetched; Ctrl-C stops after keeping every
    answer stored so far (``report.interrupted``). Raises :class:`ConfigError` for options that cannot
    be used (an unknown source, a missing credential) before anything is asked.
    """
    name = str(source).strip().lower()
    if name not in SOURCES:
        raise ConfigError(f"Unknown source {source!r}; fetch serves {', '.join(SOURCES)}.")
    tf = canonical_timeframe(timeframe)
    if tf not in TIMEFRAMES[name]:
        hint = " (Yahoo serves minute bars for the last days of real time only)" if name == "yahoo" else ""
        raise ConfigError(f"{name} has no {tf} bars to fetch{hint}; use --timeframe {'/'.join(TIMEFRAMES[name])}.")
    first, last = _dates(start, end, days)
    wanted_symbols = list(dict.fromkeys(str(s).strip() for s in symbols if str(s).strip()))
    if not wanted_symbols:
        raise ConfigError("No symbol to fetch: pass symbols (or a file with one per line).")
    own = not isinstance(store, DuckDBDataStorage)
    db = store if isinstance(store, DuckDBDataStorage) else DuckDBDataStorage(store)
    policy = policy or RetryPolicy.from_settings()
    show = progress_wanted(progress, backtest=False)
    report = FetchReport(name, str(db.root), first.isoformat(), last.isoformat(), tf)
    started = time.perf_counter()
    try:
        for symbol in wanted_symbols:
            item = SeriesFetch(symbol)
            report.series.append(item)
            began = time.perf_counter()
            planned: tuple[SeriesKey, Interval, Any] | None = None
            result: FillResult | None = None
            try:
                key, wanted, provider, after = _plan(db, name, symbol, tf, first, last, asset_type=asset_type,
                                                     quote=quote, exchange=exchange, adjustment=adjustment,
                                                     credentials=credentials)
                planned = key, wanted, provider
                item.series, item.key = key.label, key.as_dict()
                result = FillResult(key)
                fill(db, key, wanted, provider, refresh=refresh, policy=policy, progress=show, result=result)
                item.requests += after()
                item.status = "fetched" if result.missing else "present"
            except KeyboardInterrupt:
                item.status, item.error = "interrupted", "interrupted: every answer stored so far is kept"
                report.interrupted = True
                break
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - one symbol's failure is reported; the others go on
                item.status = "failed"
                item.error = str(exc) if isinstance(exc, LumibotDuckDBError) else f"{type(exc).__name__}: {exc}"
            finally:
                if result is not None:  # (what was stored, also when the fill failed or was interrupted)
                    item.chunks, item.retries, item.bars, item.empty = (result.chunks, result.retries, result.bars,
                                                                        result.empty)
                    item.requests += result.requests
                if planned is not None:
                    _coverage(db, *planned, item)
                item.seconds = time.perf_counter() - began
                if on_series is not None and item.status:
                    on_series(item)
    finally:
        report.seconds = time.perf_counter() - started
        if own:
            db.close()
    return report


def _plan(db: DuckDBDataStorage, source: str, symbol: str, timeframe: str, first: dt.date, last: dt.date, *,
          asset_type: str | None, quote: str | None, exchange: str, adjustment: str,
          credentials: dict[str, Any] | None) -> tuple[SeriesKey, Interval, Any, Callable[[], int]]:
    """The series, range and provider a backtest of ``source`` fills for ``symbol``, and what to ask after."""
    def nothing() -> int:
        return 0

    if source == "ccxt":
        from lumibot_duckdb.sources import ccxt

        pair = symbol.upper() if "/" in symbol else f"{symbol.upper()}/{(quote or 'USDT').upper()}"
        key, wanted, provider = ccxt.prefetch(db, pair, _CCXT[timeframe], first, last, exchange_id=exchange)
        return key, wanted, provider, nothing
    if source == "yahoo":
        from lumibot_duckdb.sources import yahoo

        key, wanted, provider = yahoo.prefetch(symbol, asset_type or yahoo_asset_type(symbol, None), last)

        def info() -> int:  # the data source asks Ticker.info once per symbol: keep it too
            asked = []
            yahoo.yahoo_info(db, symbol, on_request=lambda: asked.append(1))
            return len(asked)

        return key, wanted, provider, info
    asset, quote_asset = _asset(symbol, asset_type, quote)
    if source == "polygon":
        from lumibot_duckdb.sources import polygon

        key, wanted, provider = polygon.prefetch(asset, quote_asset, timeframe, first, last)
        return key, wanted, provider, nothing
    from lumibot_duckdb.sources import alpaca

    key, wanted, provider = alpaca.prefetch(asset, quote_asset, timeframe, first, last,
                                            adjustment=adjustment, credentials=credentials)
    return key, wanted, provider, nothing


def _asset(symbol: str, asset_type: str | None, quote: str | None) -> tuple[Any, Any]:
    """A Lumibot ``Asset`` and quote ``Asset`` for a Polygon or Alpaca symbol, as a strategy passes them."""
    from lumibot.entities import Asset

    text = symbol.strip().upper()
    occ = _OCC.match(text)
    kind = (asset_type or ("option" if occ else "crypto" if "/" in text else "stock")).lower()
    if kind == "option":
        if occ is None:
            raise ConfigError(f"{symbol!r} is not an option contract; give its OCC symbol, e.g. SPY240119C00470000.")
        expiration = dt.datetime.strptime(occ["date"], "%y%m%d").date()
        asset = Asset(occ["root"], "option", expiration=expiration, strike=int(occ["strike"]) / 1000,
                      right="CALL" if occ["right"] == "C" else "PUT")
        return asset, Asset((quote or "USD").upper(), "forex")
    base, _, pair_quote = text.partition("/")
    quote_symbol = (pair_quote or quote or "USD").upper()
    return Asset(base, kind), Asset(quote_symbol, "crypto" if kind == "crypto" and quote_symbol != "USD" else "forex")


def _dates(start: Any, end: Any, days: int | None) -> tuple[dt.date, dt.date]:
    today = pd.Timestamp.now(tz="America/New_York").date()
    last = _date(end, "end") if end is not None else today
    if days is not None:
        if start is not None:
            raise ConfigError("Give --start or --days, not both.")
        if int(days) < 1:
            raise ConfigError(f"--days {days}: at least 1.")
        first = last - dt.timedelta(days=int(days) - 1)
    elif start is not None:
        first = _date(start, "start")
    else:
        raise ConfigError("Give the range: --start DATE (and --end DATE, default today) or --days N.")
    if first > last:
        raise ConfigError(f"--start {first} is after --end {last}.")
    return first, last


def _date(value: Any, name: str) -> dt.date:
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        return value
    try:
        return pd.Timestamp(value).date()
    except (TypeError, ValueError):
        raise ConfigError(f"--{name} {value!r} is not a date; use YYYY-MM-DD.") from None


def _coverage(db: DuckDBDataStorage, key: SeriesKey, wanted: Interval, provider: Any, item: SeriesFetch) -> None:
    """The store's coverage of the range after the fill (read from file names only)."""
    try:
        coverage = db.coverage(key)
    except LumibotDuckDBError:
        return
    horizon = provider.settled_until()
    inside = [piece for c in coverage if (piece := c.intersection(wanted)) is not None]
    item.covered_from = inside[0].start.isoformat() if inside else None
    item.covered_to = inside[-1].end.isoformat() if inside else None
    if wanted.start >= horizon:
        item.gaps = 0
        if item.status in ("fetched", "present"):
            item.status = "not settled"
        return
    item.gaps = len(missing_ranges(coverage, Interval(wanted.start, min(wanted.end, horizon))))
