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
answer -> store bars, malformed answers -> :func:`~lumibot_duckdb.sources.fill.bad_answer`); the legacy
frame (store bars -> the exact frame Lumibot's helper returns); small helpers; the route, installed last.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import pandas as pd

from lumibot_duckdb.config import Settings, progress_wanted
from lumibot_duckdb.errors import CorruptFileError, ProviderDataError, StoreError
from lumibot_duckdb.log import get_logger
from lumibot_duckdb.sources.fill import fill
from lumibot_duckdb.sources.retry import RetryPolicy
from lumibot_duckdb.sources.verify import Verifier
from lumibot_duckdb.sources.window import DEFAULT_POLICY, WindowBook, WindowPolicy
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey
from lumibot_duckdb.store.coverage import normalize
from lumibot_duckdb.store.lazy import lazy_module
from lumibot_duckdb.store.store import SeriesWriter

if TYPE_CHECKING:
    import duckdb
else:
    duckdb = lazy_module("duckdb")  # a backtest reading bars never imports it (store/lazy.py)

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
    """What a vendor module hands to :meth:`EnhancedDataSourceBacktesting.serve` (and ``fetch`` to
    :func:`lumibot_duckdb.sources.fill.fill`).

    Optional: ``name`` (the provider as users know it, "Polygon", for messages; default the source)
    and ``describe(task)`` (a request in words, "AAA minute bars 2024-01-02..2024-01-31").
    """

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
    """What the data layer of one data source did (read it as ``data_source.duckdb_stats``).

    ``seam_seconds`` is all the time spent in the data layer: Lumibot's calls of the seam and the
    work done outside them (a window rolled or read again, :meth:`EnhancedDataSourceBacktesting.data_layer`),
    each counted once however they nest; ``window_calls`` / ``window_seconds`` are that outside part.
    ``store_reads`` counts every query of the store (each a DuckDB read of Parquet files), wherever
    it happens, and ``store_read_seconds`` their time.
    """

    seam_calls: int = 0
    seam_seconds: float = 0.0
    window_calls: int = 0
    window_seconds: float = 0.0
    store_reads: int = 0
    store_read_seconds: float = 0.0
    provider_requests: int = 0
    bars_fetched: int = 0
    bars_served: int = 0
    empty_answers: int = 0
    """Requests the provider answered with no bars (recorded, asked again once a day later)."""
    empty_rechecks: int = 0
    """Empty answers asked again (:mod:`lumibot_duckdb.store.answers`)."""
    fallbacks: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


class CountedStorage(DuckDBDataStorage):
    """The store as one data source uses it: every read counted in its :class:`DataLayerStats`."""

    def __init__(self, location: Any, /, *, stats: DataLayerStats, **options: Any) -> None:
        super().__init__(location, **options)
        self.stats = stats

    def read(self, key: SeriesKey, start: Any, end: Any, /, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
        started = time.perf_counter()
        try:
            return super().read(key, start, end, columns=columns)
        finally:
            self.stats.add(store_reads=1, store_read_seconds=time.perf_counter() - started)


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
        legacy class, unchanged. ``"verify"``: on, and every answer of the store is also checked
        against Lumibot's legacy path (:mod:`lumibot_duckdb.sources.verify`; read the result as
        ``data_source.duckdb_verifier``).
    ``cache_dir``
        The store folder; default ``LUMIBOT_DUCKDB_CACHE_DIR`` or ``<Lumibot cache>/duckdb``.
    ``store``
        Another place for the store: a folder or ``s3://bucket/prefix`` (a team's store, mirrored under
        ``cache_dir``); default ``LUMIBOT_DUCKDB_STORE``, else ``cache_dir``.
    ``store_role``
        ``"read"`` (never writes to a shared store; gaps are kept on this machine) or ``"write"``;
        default ``LUMIBOT_DUCKDB_STORE_ROLE``, else read.
    ``strict``
        Raise store failures instead of falling back to the legacy path; default
        ``LUMIBOT_DUCKDB_STRICT`` (off).
    ``max_memory``
        Budget in bytes (or ``"512MB"``, ``"2GiB"``) for the bars held in memory, across series;
        default ``LUMIBOT_DUCKDB_MAX_MEMORY`` (none: each series is still held only as a window
        around the clock, see :mod:`lumibot_duckdb.sources.window`).
    ``verify_report``
        Verify mode's report file; default ``LUMIBOT_DUCKDB_VERIFY_REPORT``, else under ``./logs``.
    """

    LEGACY_TAKES_MAX_MEMORY = False
    """True where Lumibot's own class has a ``max_memory`` keyword (handed to it on the legacy path)."""
    WINDOW_POLICY: WindowPolicy = DEFAULT_POLICY
    """How this source sizes the windows it holds (:mod:`lumibot_duckdb.sources.window`)."""

    def __init__(self, *args: Any, use_duckdb: bool | str | None = None, cache_dir: Any = None,
                 strict: bool | str | None = None, max_memory: Any = None, verify_report: Any = None,
                 store: Any = None, store_role: str | None = None, **kwargs: Any) -> None:
        enabled = Settings.resolve(use_duckdb=use_duckdb, cache_dir=cache_dir, strict=strict).use_duckdb
        if not enabled and self.LEGACY_TAKES_MAX_MEMORY:
            kwargs["max_memory"] = max_memory  # the legacy path gets Lumibot's own behaviour, whatever it is
            max_memory = None
        self.duckdb_settings = Settings.resolve(use_duckdb=use_duckdb, cache_dir=cache_dir, strict=strict,
                                                max_memory=max_memory if enabled else None,
                                                verify_report=verify_report,
                                                store=store if enabled else None,
                                                store_role=store_role if enabled else None)
        self.duckdb_verifier: Verifier | None = None
        """Verify mode's checks of this data source (None unless ``use_duckdb="verify"``)."""
        if self.duckdb_settings.verify:
            self.duckdb_verifier = Verifier(_source_name(type(self)),
                                            report=self.duckdb_settings.verify_report, isolate=self._legacy_cache_at,
                                            explain=self._declared_difference)
        self.duckdb_windows = WindowBook(budget=self.duckdb_settings.max_memory, policy=self.WINDOW_POLICY)
        self.duckdb_stats = DataLayerStats()
        self.duckdb_retry = RetryPolicy.from_settings(self.duckdb_settings)
        """How provider requests are retried (``LUMIBOT_DUCKDB_RETRIES``, ``LUMIBOT_DUCKDB_RETRY_WAIT``)."""
        self._duckdb_depth = threading.local()
        self._duckdb_failure: BaseException | None = None
        self.duckdb_error: BaseException | None = None
        """An error that must reach the user although a Lumibot layer above the seam may swallow it (a refused
        provider answer; a store failure in strict mode): re-raised by :meth:`reraise_swallowed`."""
        self._duckdb_store = _Once(lambda: CountedStorage(self.duckdb_settings.location, stats=self.duckdb_stats,
                                                         cache_dir=self.duckdb_settings.cache_dir,
                                                         role=self.duckdb_settings.store_role,
                                                         create_parents=True))
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

    def via_store(self, store_call: Callable[[], T], legacy_call: Callable[[], T], *,
                  check: Callable[[T], None] | None = None, seam: bool = True) -> T:
        """``store_call()``; on a store failure, ``legacy_call()`` from then on (one warning), unless strict.

        ``check(answer)`` runs after the store answered, in verify mode only (see :meth:`verify_check`).
        ``seam=False`` for work of the data layer that is not a call of Lumibot's seam (a window
        rolled or read again): counted as ``window_calls`` instead of ``seam_calls``.
        """
        if not self.use_duckdb:
            return legacy_call()
        with self.data_layer(seam=seam):
            try:
                answer = store_call()
            except ProviderDataError as exc:
                self.duckdb_error = exc  # for callers above a Lumibot layer that swallows errors
                raise
            except (StoreError, duckdb.Error) as exc:
                if self.duckdb_settings.strict:
                    self.duckdb_error = exc
                    raise
                self._fall_back(exc)
                return legacy_call()
        if check is not None and self.duckdb_verifier is not None:
            check(answer)
        return answer

    @contextlib.contextmanager
    def data_layer(self, *, seam: bool = True) -> Iterator[None]:
        """Time the block as data-layer work in :attr:`duckdb_stats` (outermost blocks only: nothing counts twice)."""
        local = self._duckdb_depth
        depth = getattr(local, "depth", 0)
        local.depth = depth + 1
        started = time.perf_counter()
        try:
            yield
        finally:
            local.depth = depth
            if depth == 0:
                elapsed = time.perf_counter() - started
                if seam:
                    self.duckdb_stats.add(seam_calls=1, seam_seconds=elapsed)
                else:
                    self.duckdb_stats.add(window_calls=1, window_seconds=elapsed, seam_seconds=elapsed)

    # -- verify mode -----------------------------------------------------------------------------
    def verify_check(self, legacy_call: Callable[[], Any], **where: Any) -> Callable[[Any], None] | None:
        """In verify mode, the ``check`` for :meth:`via_store`: the answer against ``legacy_call()``'s.

        ``where``: :meth:`Verifier.check`'s keywords (``series``, ``request``, ``select``, ``reuse``,
        ``hold``). None when verify mode is off, so the check costs nothing then.
        """
        verifier = self.duckdb_verifier
        if verifier is None:
            return None
        return lambda answer: verifier.check(answer, legacy_call, **where)

    def _legacy_cache_at(self, folder: Path) -> contextlib.AbstractContextManager[None]:
        """Point this vendor's legacy cache at ``folder`` inside the block (verify mode's throw-away cache)."""
        raise NotImplementedError(f"{type(self).__name__} does not say where its legacy cache is; verify mode "
                                  "cannot isolate it")

    def _declared_difference(self, ours: Any, legacy: Any) -> str | None:
        """The declared legacy defect that explains why ``legacy`` differs from ``ours``, if one does."""
        return None

    def reraise_swallowed(self, *, since: BaseException | None = None, last: bool = False) -> None:
        """Raise :attr:`duckdb_error` if one is waiting (and is not ``since``, what was waiting before the call
        that checks): where Lumibot turned it into a generic message, "no data" or a ``None`` price, the user
        gets the error itself.

        Called just above the Lumibot layers that swallow errors (the error stays waiting, as a layer further
        up may swallow it again: Lumibot's ``get_last_price`` does), and with ``last=True`` at the next step of
        the simulated clock, so a backtest never goes on past a refused provider answer (or, in strict mode,
        a store failure)."""
        error = self.duckdb_error
        if error is not None and error is not since:
            if last:
                self.duckdb_error = None
            raise error.with_traceback(error.__traceback__) from None

    def _update_datetime(self, *args: Any, **kwargs: Any) -> Any:
        self.reraise_swallowed(last=True)
        return super()._update_datetime(*args, **kwargs)  # type: ignore[misc]

    def _fall_back(self, exc: BaseException) -> None:
        if self._duckdb_failure is None:
            self._duckdb_failure = exc
            self.duckdb_stats.add(fallbacks=1)
            warnings.warn(
                f"lumibot-duckdb: the bar store at {self.duckdb_settings.location} failed "
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
        legacy frame holds everything the provider ever sent). A damaged file found while filling or
        reading is set aside (:mod:`lumibot_duckdb.store.integrity`) and its range fetched again; so is
        a range another process set aside between the fill and the read.
        """
        read = read or wanted
        ranges = [] if wanted.empty else [wanted]
        for attempt in range(1, _SERVE_ATTEMPTS + 1):
            try:
                settled = self._fill(key, ranges, provider, refresh=refresh and attempt == 1)
                bars = self.store.read(key, read.start, read.end, columns=columns)
            except CorruptFileError as exc:
                if attempt == _SERVE_ATTEMPTS:
                    raise
                log.warning("%s Fetching that range again.", exc)
                ranges = normalize([*ranges, *(iv for iv in exc.intervals if isinstance(iv, Interval))])
                continue
            lost = [gap for want in ranges for gap in self.store.missing_ranges(key, want.start, min(want.end, settled))
                    if want.start < settled]
            if lost:  # set aside (or pruned) by another process between the fill and the read
                if attempt == _SERVE_ATTEMPTS:
                    raise StoreError(f"Files of {key} covering {', '.join(map(str, lost))} kept disappearing while "
                                     "being read (set aside as damaged, or pruned, by another process).")
                log.warning("lumibot-duckdb: %s lost %s while being read (set aside by another process); "
                            "fetching it again.", key, ", ".join(map(str, lost)))
                continue
            self.duckdb_stats.add(bars_served=len(bars))
            return bars
        raise AssertionError("unreachable")

    def _fill(self, key: SeriesKey, wanted: list[Interval], provider: Provider, *, refresh: bool) -> pd.Timestamp:
        """The shared fill (:func:`lumibot_duckdb.sources.fill.fill`), counted in :attr:`duckdb_stats`; returns the
        settled horizon it filled up to."""
        def counted(bars: int) -> None:
            self.duckdb_stats.add(provider_requests=1, bars_fetched=bars)

        result = fill(self.store, key, wanted, provider, refresh=refresh, policy=self.duckdb_retry,
                      progress=progress_wanted(backtest=True), on_request=counted)
        self.duckdb_stats.add(retries=result.retries, empty_answers=result.empty_answers,
                              empty_rechecks=result.rechecks)
        return result.horizon


_SERVE_ATTEMPTS = 3
"""A read that finds damage is retried after fetching the damaged range again; twice more at most."""


def _source_name(cls: type) -> str:
    """The registry name of a data source class ("polygon"...), from its class name (as Lumibot keys it)."""
    from lumibot_duckdb.registry import SOURCES

    return next((s.name for s in SOURCES.values() if s.class_name == cls.__name__), cls.__name__.lower())



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
        router._lumibot_duckdb_original = current  # type: ignore[attr-defined]
        setattr(owner, attribute, staticmethod(router) if static else router)


def legacy_function(owner: Any, attribute: str) -> Callable[..., Any]:
    """Lumibot's own function below the router of ``owner.attribute``, whatever wraps the router now
    (a timer, a test's spy): what verify mode asks when it needs the legacy answer."""
    current: Any = getattr(owner, attribute)
    for _ in range(32):
        original = getattr(current, "_lumibot_duckdb_original", None)
        if original is not None:
            return original
        current = getattr(current, "__wrapped__", None)
        if current is None:
            break
    return getattr(owner, attribute)
