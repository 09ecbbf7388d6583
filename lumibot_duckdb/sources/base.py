"""``EnhancedDataSourceBacktesting``: the ``use_duckdb`` switch and the one path all vendors share.

A vendor module subclasses Lumibot's backtesting class with this mixin first::

    class PolygonDataBacktesting(EnhancedDataSourceBacktesting, lumibot_polygon.PolygonDataBacktesting): ...

and routes its provider seam through :meth:`EnhancedDataSourceBacktesting.serve`: ask the store
what is missing, fetch only that from the provider (a :class:`Provider`), store it, and read the
range back from the store. With ``use_duckdb=False`` nothing of this runs and the class is Lumibot's
own.

**The seam of each vendor.** Each diverts one Lumibot function at import time with :func:`route`
(a pass-through unless the call comes from one of our instances on the DuckDB path):

=========  ===============================================================  ===========================
vendor     Lumibot function diverted                                         what is held in memory
=========  ===============================================================  ===========================
polygon    ``polygon_helper.get_price_data_from_polygon``                    a window (``Data``)
yahoo      ``YahooHelper.get_symbol_data``                                   the whole daily history
alpaca     none: its own methods ``_download_and_cache_ohlcv_data``,         Lumibot's window frames
           ``_load_ohlcv_into_data_store``, ``_history_segment`` (overridden)
ccxt       ``CcxtCacheDB.__init__`` (no ``load_markets``) and                a window (DataFrame)
           ``CcxtCacheDB.download_ohlcv``
=========  ===============================================================  ===========================

**The sections of every vendor module**, in this order: constants; the data source class (its
overrides of Lumibot's methods, then the seam method the router calls); the provider (a
:class:`Provider`: ``plan``, ``fetch``, ``revalidate``, ``settled_until``); the answer parser (provider
answer -> store bars, malformed answers -> :func:`bad_answer`); the legacy frame (store bars -> the
exact frame Lumibot's helper returns); small helpers; the route, installed last.
"""

from __future__ import annotations

import functools
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import duckdb
import pandas as pd

from lumibot_duckdb.config import Settings
from lumibot_duckdb.errors import CorruptFileError, ProviderDataError, StoreError
from lumibot_duckdb.log import get_logger
from lumibot_duckdb.sources.window import DEFAULT_POLICY, WindowBook, WindowPolicy
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey
from lumibot_duckdb.store.store import SeriesWriter

log = get_logger(__name__)
T = TypeVar("T")


class DuckDBFallbackWarning(RuntimeWarning):
    """The DuckDB path failed at run time and the data source went back to Lumibot's legacy path."""


@dataclass(frozen=True)
class FetchTask:
    """One provider request, and the range of the series its answer stands for.

    ``request`` is None when the range needs no request (no trading session in it): the empty
    answer is recorded without asking the provider.
    """

    covers: Interval
    request: Any = None


class Provider(Protocol):
    """What a vendor module hands to :meth:`EnhancedDataSourceBacktesting.serve`."""

    max_workers: int

    def plan(self, key: SeriesKey, missing: list[Interval]) -> list[FetchTask]:
        """Turn missing ranges into provider requests whose ``covers`` tile the missing ranges."""

    def fetch(self, task: FetchTask) -> pd.DataFrame:
        """Bars answering ``task`` (columns of :func:`normalize_bars`); may include bars outside ``covers``."""

    def revalidate(self, key: SeriesKey, writer: SeriesWriter) -> None:
        """Before new bars join stored ones: drop the stored ones if the provider re-wrote history."""

    def settled_until(self) -> pd.Timestamp:
        """Bars before this instant are final. Nothing later is asked for or recorded as covered (the
        shared path clips every missing range to it before :meth:`plan`), so a backtest reaching today
        asks again for what was still forming."""


@dataclass
class DataLayerStats:
    """What the data layer of one data source did (read it as ``data_source.duckdb_stats``)."""

    seam_calls: int = 0
    seam_seconds: float = 0.0
    provider_requests: int = 0
    bars_fetched: int = 0
    bars_served: int = 0
    fallbacks: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class _Once(Generic[T]):
    """A value built on first use, once, under a lock."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._value: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
        return self._value


class EnhancedDataSourceBacktesting:
    """Mixin that puts the shared DuckDB + Parquet store behind a Lumibot backtesting data source.

    Keyword arguments (all optional; explicit values win over the environment):

    ``use_duckdb``
        ``True``/``False``; default from ``LUMIBOT_USE_DUCKDB`` (on). ``False`` is Lumibot's
        legacy class, unchanged.
    ``cache_dir``
        The store folder; default ``LUMIBOT_DUCKDB_CACHE_DIR`` or ``<Lumibot cache>/duckdb``.
    ``strict``
        Raise store failures instead of falling back to the legacy path; default
        ``LUMIBOT_DUCKDB_STRICT`` (off).
    ``max_memory``
        Budget in bytes (or ``"512MB"``, ``"2GiB"``) for the bars held in memory, across series;
        default ``LUMIBOT_DUCKDB_MAX_MEMORY`` (none: each series is still held only as a window
        around the clock, see :mod:`lumibot_duckdb.sources.window`).
    """

    LEGACY_TAKES_MAX_MEMORY = False
    """True where Lumibot's own class has a ``max_memory`` keyword (handed to it on the legacy path)."""
    WINDOW_POLICY: WindowPolicy = DEFAULT_POLICY
    """How this source sizes the windows it holds (:mod:`lumibot_duckdb.sources.window`)."""

    def __init__(self, *args: Any, use_duckdb: bool | str | None = None, cache_dir: Any = None,
                 strict: bool | str | None = None, max_memory: Any = None, **kwargs: Any) -> None:
        enabled = Settings.resolve(use_duckdb=use_duckdb, cache_dir=cache_dir, strict=strict).use_duckdb
        if not enabled and self.LEGACY_TAKES_MAX_MEMORY:
            kwargs["max_memory"] = max_memory  # the legacy path gets Lumibot's own behaviour, whatever it is
            max_memory = None
        self.duckdb_settings = Settings.resolve(use_duckdb=use_duckdb, cache_dir=cache_dir, strict=strict,
                                                max_memory=max_memory if enabled else None)
        self.duckdb_windows = WindowBook(budget=self.duckdb_settings.max_memory, policy=self.WINDOW_POLICY)
        self.duckdb_stats = DataLayerStats()
        self._duckdb_failure: BaseException | None = None
        self.duckdb_strict_error: BaseException | None = None
        self._duckdb_store = _Once(lambda: DuckDBDataStorage(self.duckdb_settings.cache_dir, create_parents=True))
        super().__init__(*args, **kwargs)

    # -- switches ------------------------------------------------------------------------------
    @property
    def use_duckdb(self) -> bool:
        """True while this data source serves bars from the store."""
        return self.duckdb_settings.use_duckdb and self._duckdb_failure is None

    @property
    def store(self) -> DuckDBDataStorage:
        """The store this data source reads and fills (opened on first use)."""
        return self._duckdb_store.get()

    def via_store(self, store_call: Callable[[], T], legacy_call: Callable[[], T]) -> T:
        """``store_call()``; on a store failure, ``legacy_call()`` from then on (one warning), unless strict."""
        if not self.use_duckdb:
            return legacy_call()
        started = time.perf_counter()
        try:
            return store_call()
        except (StoreError, duckdb.Error) as exc:
            if self.duckdb_settings.strict:
                self.duckdb_strict_error = exc  # for callers above a Lumibot layer that swallows errors
                raise
            self._fall_back(exc)
            return legacy_call()
        finally:
            self.duckdb_stats.add(seam_calls=1, seam_seconds=time.perf_counter() - started)

    def _fall_back(self, exc: BaseException) -> None:
        if self._duckdb_failure is None:
            self._duckdb_failure = exc
            self.duckdb_stats.add(fallbacks=1)
            warnings.warn(
                f"lumibot-duckdb: the bar store at {self.duckdb_settings.cache_dir} failed "
                f"({type(exc).__name__}: {exc}). {type(self).__name__} continues on Lumibot's legacy "
                "data path for the rest of this backtest. Pass strict=True (or set "
                "LUMIBOT_DUCKDB_STRICT=1) to make this an error instead.",
                DuckDBFallbackWarning,
                stacklevel=3,
            )

    # -- the shared path -----------------------------------------------------------------------
    def serve(self, key: SeriesKey, wanted: Interval, provider: Provider, *, refresh: bool = False,
              columns: Sequence[str] | None = None, read: Interval | None = None) -> pd.DataFrame:
        """Bars of ``key`` in ``wanted``: fetch what the store lacks, store it, read it back.

        ``read`` reads a different range than the one filled (e.g. all stored history, when the
        legacy frame holds everything the provider ever sent). A damaged file found while reading
        is set aside and its range fetched again, once.
        """
        read = read or wanted
        for attempt in (1, 2):
            if not wanted.empty:
                self._fill(key, wanted, provider, refresh=refresh and attempt == 1)
            try:
                bars = self.store.read(key, read.start, read.end, columns=columns)
            except CorruptFileError as exc:
                if attempt == 2:
                    raise
                log.warning("%s Fetching that range again.", exc)
                continue
            self.duckdb_stats.add(bars_served=len(bars))
            return bars
        raise AssertionError("unreachable")

    def _fill(self, key: SeriesKey, wanted: Interval, provider: Provider, *, refresh: bool) -> None:
        with self.store.writer(key) as writer:
            missing = [wanted] if refresh else writer.missing(wanted)
            if not missing:
                return
            if writer.coverage():
                provider.revalidate(key, writer)
                missing = [wanted] if refresh else writer.missing(wanted)
            horizon = provider.settled_until()
            missing = [Interval(gap.start, min(gap.end, horizon)) for gap in missing if gap.start < horizon]
            if not missing:
                return
            tasks = provider.plan(key, missing)
            asked = [t for t in tasks if t.request is not None]
            for task in tasks:
                if task.request is None:
                    writer.write(_no_bars(), covered=task.covers)
            if not asked:
                return
            errors: list[BaseException] = []
            workers = max(1, min(provider.max_workers, len(asked)))
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lumibot-duckdb-fetch") as pool:
                futures = {pool.submit(provider.fetch, task): task for task in asked}
                for future in as_completed(futures):
                    task = futures[future]
                    try:
                        bars = future.result()
                    except ProviderDataError as exc:
                        errors.append(exc.locate(series=key, interval=task.covers))
                        continue
                    except Exception as exc:  # noqa: BLE001 - re-raised below, after the others are stored
                        errors.append(exc)
                        continue
                    inside = bars[(bars.index >= task.covers.start) & (bars.index < task.covers.end)]
                    writer.write(inside, covered=task.covers)
                    self.duckdb_stats.add(provider_requests=1, bars_fetched=len(inside))
            if errors:
                raise errors[0]


def bad_answer(source: str, what: str, problem: str, *, advice: str) -> ProviderDataError:
    """The error for a provider answer that is not usable bars: who answered what, with what, and what to do.

    ``source`` is the provider's name as users know it ("Polygon", "The exchange"...). The fetch path
    adds the series and the range (:meth:`ProviderDataError.locate`) before the error leaves it.
    """
    return ProviderDataError(f"{source} answered {what} with {problem}; nothing was stored, so the range is asked "
                             f"for again next time. If it persists, {advice}", source=source)


_ROUTE_LOCK = threading.Lock()


def route(owner: Any, attribute: str, divert: Callable[[Callable[..., Any]], Callable[..., Any]], *,
          static: bool = False) -> None:
    """Replace ``owner.attribute`` once with ``divert(original)``, Lumibot's function wrapped by a router.

    The router a vendor writes passes every call straight to ``original`` unless it comes from one of
    our data sources with the DuckDB path on (each vendor knows that from a context variable it sets
    around Lumibot's call, so threads and other data sources are unaffected). Importing a vendor module
    twice, or reloading it, wraps nothing twice. ``static=True`` for a ``staticmethod`` of a class.
    """
    with _ROUTE_LOCK:
        current = getattr(owner, attribute)
        if getattr(current, "_lumibot_duckdb_router", False):
            return
        router = functools.wraps(current)(divert(current))
        router._lumibot_duckdb_router = True  # type: ignore[attr-defined]
        setattr(owner, attribute, staticmethod(router) if static else router)


def _no_bars() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("open", "high", "low", "close")})
    frame.index = pd.DatetimeIndex([], tz="UTC", name="ts")
    return frame
