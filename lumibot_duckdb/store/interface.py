"""The storage contracts: :class:`DataStorageInterface` (what callers use: the seed's API) and
:class:`Backend` (what a place that holds the bytes implements: a folder today)."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import pandas as pd

from lumibot_duckdb.store.coverage import Interval, SeriesKey, missing_ranges
from lumibot_duckdb.store.naming import SeriesName, matching, not_found, option_symbol, parse_time, resolve


def series_key(
    asset: Any,
    source: str,
    timeframe: str,
    /,
    *,
    quote: Any = None,
    exchange: str | None = None,
    adjustment: str = "raw",
) -> SeriesKey:
    """Build a :class:`SeriesKey` from what a user has at hand.

    ``asset`` is a symbol string (``"SPY"``, ``"BTC/USDT"``), anything with ``.symbol`` and
    ``.asset_type`` (a Lumibot ``Asset``), a ``(base, quote)`` tuple of those, or a ready
    :class:`SeriesKey` (returned unchanged).
    """
    if isinstance(asset, SeriesKey):
        return asset
    if isinstance(asset, tuple) and len(asset) == 2:
        asset, quote = asset
    symbol = getattr(asset, "symbol", asset)
    asset_type = str(getattr(asset, "asset_type", None) or "stock")  # Lumibot's AssetType is a StrEnum
    if asset_type == "option" and getattr(asset, "expiration", None) is not None:
        symbol = option_symbol(symbol, asset.expiration, asset.right, asset.strike)
    quote_symbol = getattr(quote, "symbol", quote) or ""
    if isinstance(symbol, str) and "/" in symbol and not quote_symbol:
        quote_symbol = symbol.split("/", 1)[1]
    return SeriesKey(
        source=source,
        symbol=str(symbol),
        timeframe=timeframe,
        asset_type=str(asset_type),
        quote=str(quote_symbol),
        exchange=exchange or "",
        adjustment=adjustment,
    )


class DataStorageInterface(ABC):
    """A store of OHLCV bars keyed by series, with coverage kept as data.

    Implementations hold bars in the unified schema (:mod:`lumibot_duckdb.store.schema`) and
    record, per series, which time ranges they hold the provider's answer for.
    """

    # -- the two calls every caller needs ------------------------------------------------------
    def store_ohlcv_data(
        self,
        asset: Any,
        data: pd.DataFrame,
        source: str,
        timeframe: str,
        /,
        *,
        quote: Any = None,
        exchange: str | None = None,
        adjustment: str = "raw",
        covered: tuple[Any, Any] | Interval | None = None,
    ) -> int:
        """Store ``data`` (bars with a ``ts`` column or a datetime index) and record its coverage.

        ``covered`` is the range the bars answer for, so that a range with no bars is recorded
        too; by default it runs from the first bar to the end of the last one. Naive times (of
        ``covered`` or of the bars) are in Lumibot's default time zone. Returns the number of
        bars stored.
        """
        key = series_key(asset, source, timeframe, quote=quote, exchange=exchange, adjustment=adjustment)
        return self.write(key, data, covered=covered)

    def get_historical_prices(
        self,
        asset: Any,
        start: Any,
        end: Any,
        timeframe: str,
        source: str,
        /,
        *,
        quote: Any = None,
        exchange: str | None = None,
        adjustment: str | None = None,
    ) -> pd.DataFrame:
        """Bars of the series ``asset`` names, with ``start <= ts < end`` (UTC index ``ts``), oldest first.

        ``timeframe`` takes its aliases (``"1d"``, ``"daily"``, ``"1m"``…); ``quote``, ``exchange`` and
        ``adjustment`` left out match whatever the store holds (see :meth:`find_series`). Naive
        ``start``/``end`` are in Lumibot's default time zone (New York). A series the store does not
        hold raises :class:`~lumibot_duckdb.errors.SeriesNotFoundError` naming what it holds for that
        symbol; a held series with no bars in the range gives an empty frame.
        """
        key = self.find_series(asset, source=source, timeframe=timeframe, quote=quote, exchange=exchange,
                               adjustment=adjustment)
        return self.read(key, start, end)

    def find_series(self, asset: Any, /, *, source: str | None = None, timeframe: str | None = None,
                    quote: Any = None, exchange: str | None = None, adjustment: str | None = None,
                    asset_type: str | None = None) -> SeriesKey:
        """The one series the store holds that ``asset`` and the options given name (options left out
        match anything; see :mod:`lumibot_duckdb.store.naming`). Raises
        :class:`~lumibot_duckdb.errors.SeriesNotFoundError` when none matches (saying what is held for
        that symbol) and :class:`~lumibot_duckdb.errors.ConfigError` when several do (naming the option
        that tells them apart)."""
        name = SeriesName.of(asset, source=source, timeframe=timeframe, quote=quote, exchange=exchange,
                             adjustment=adjustment, asset_type=asset_type)
        return resolve(name, self.held_series(name), where=self.describe())

    def find_all(self, name: SeriesName, /) -> list[SeriesKey]:
        """Every held series ``name`` matches (at least one, else :class:`SeriesNotFoundError`)."""
        return matching(name, self.held_series(name), where=self.describe())

    def held_series(self, name: SeriesName | None = None, /) -> list[SeriesKey]:
        """The series holding coverage (bars, or answers with no bars). With ``name``, those it matches
        if any does (coverage is listed only for them), else every held series (for the error)."""
        every = self.series()
        if name is not None:
            wanted = [k for k in every if name.matches(k) and self.coverage(k)]
            if wanted:
                return wanted
        held = [k for k in every if self.coverage(k)]
        if name is not None and not held:
            raise not_found(name, [], where=self.describe())
        return held

    def describe(self) -> str:
        """How messages name this store (``"the store /path"``)."""
        return "the store"

    def has_bars(self, key: SeriesKey, start: Any, end: Any, /) -> bool:
        """Whether the store holds at least one bar of ``key`` with ``start <= ts < end`` (naive = Lumibot's
        default time zone). Reads the bars' times only; a store may answer from its files' statistics."""
        return len(self.read(key, start, end, columns=())) > 0  # (a frame of no columns is .empty)

    def missing_ranges(self, key: SeriesKey, start: Any, end: Any, /) -> list[Interval]:
        """What a fetch of ``[start, end)`` for ``key`` would have to ask the provider for (naive = Lumibot's
        default time zone)."""
        return missing_ranges(self.coverage(key), Interval(parse_time(start), parse_time(end)))

    # -- what implementations provide ----------------------------------------------------------
    @abstractmethod
    def write(self, key: SeriesKey, data: pd.DataFrame, /, *, covered: tuple[Any, Any] | Interval | None = None) -> int:
        """Store bars of one series; see :meth:`store_ohlcv_data`."""

    @abstractmethod
    def read(self, key: SeriesKey, start: Any, end: Any, /, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Bars of one series in ``[start, end)`` (all value columns, or ``columns``); naive times are in
        Lumibot's default time zone. A key without coverage reads as no bars: use
        :meth:`get_historical_prices` or :meth:`find_series` for a read that checks the name."""

    @abstractmethod
    def coverage(self, key: SeriesKey, /) -> list[Interval]:
        """The merged ranges the store holds answers for, oldest first."""

    @abstractmethod
    def series(self) -> list[SeriesKey]:
        """Every series the store holds."""


class Backend(Protocol):
    """Where the bytes of a store live: the contract :class:`~lumibot_duckdb.store.store.DuckDBDataStorage`
    runs on. :class:`~lumibot_duckdb.store.local.LocalFolder` (a folder) and
    :class:`~lumibot_duckdb.store.s3.S3Backend` (a bucket prefix on S3, read through a local mirror) implement it.

    Invariants every backend keeps (the store and its tests rely on them):

    * **Coverage is the list of published files.** A file answers for exactly the interval it was published
      with (bars may be fewer, down to none: "the provider had nothing"); listing a series' files is how the
      store knows what it holds. Nothing else records coverage.
    * **Publishing is atomic and never overwrites.** A reader sees a file whole or not at all; two writers
      publishing the same range make two files (readers keep the newest bar of a timestamp).
    * **Files never change once published.** Compaction publishes the merged file first, then removes the old
      ones; a reader that finds a file gone lists again.
    * **One writer per series at a time,** across processes (and machines, for a shared backend), through
      :meth:`lock`; readers take no lock.
    * **Damage is set aside, never deleted:** :meth:`quarantine` moves a file out of the series with its reason.
    * **DuckDB reads local files.** A file's ``path`` is where its bytes are on this machine once :meth:`local`
      returned (for a folder, at once; for S3, its mirror copy).
    * **Every file proves itself:** its token ends with the CRC-32 of its bytes and its footer names its series
      and range (:mod:`lumibot_duckdb.store.integrity`), so any reader can check it is the file that was written;
      the metadata of the published table (e.g. an empty answer's record) is kept in the file.
    """

    root: Any
    """A local folder of this store: the store itself, or where a remote store's mirror lives."""
    tmp: Any
    """Local temporary files (``maintain clean-tmp`` removes old ones)."""
    quarantine_dir: Any
    """Where damaged files are set aside on this machine."""

    def ensure(self) -> None:
        """Create what the backend needs to accept writes (idempotent)."""

    def series(self) -> list[SeriesKey]:
        """Every series with at least a folder (or prefix) in the store."""

    def files(self, key: SeriesKey, within: Interval | None = None) -> list[Any]:
        """The published files of ``key`` (``BarFile``: path, key, partition, interval, token), those overlapping
        ``within`` if given, oldest first. Listing reads names only, never file contents."""

    def local(self, files: list[Any]) -> list[Any]:
        """Make the bytes of ``files`` readable at their ``path`` on this machine (a remote store downloads what
        it lacks); returns ``files``. A file gone since it was listed is left absent (the reader lists again)."""

    def footer(self, bar_file: Any) -> Any:
        """The Parquet footer (``pyarrow.parquet.FileMetaData``) of a file, or None if it cannot be read; a remote
        store reads only the footer's bytes."""

    def rewritable(self, files: list[Any]) -> list[Any]:
        """Those of ``files`` this process may rewrite and remove (compaction): all of them, except that a reader
        of a shared store may only rewrite what it keeps locally."""

    def strays(self) -> list[tuple[str, str, str]]:
        """``(kind, where, message)`` of everything under ``bars/`` that readers ignore (for ``verify``)."""

    def notes(self) -> list[tuple[str, ...]]:
        """The names of every note (the ``parts`` of :meth:`read_json`)."""

    def publish(self, key: SeriesKey, partition: str, table: Any, interval: Interval, *,
                published: str | None = None) -> Any:
        """Write ``table`` (Arrow, the store's schema) as the answer for ``interval`` and make it visible at once,
        named with the CRC-32 of the written bytes; ``published`` keeps an earlier token's publish time."""

    def remove(self, files: list[Any]) -> None:
        """Remove published files (after compaction, pruning or a provider re-writing history)."""

    def quarantine(self, path: Any, reason: str) -> Any:
        """Move a damaged file out of its series, with ``reason`` beside it; returns where it went."""

    def lock(self, key: SeriesKey, timeout: float = 600.0) -> contextlib.AbstractContextManager[None]:
        """Hold ``key`` for this process while it fills gaps or compacts; raises ``StoreLockTimeout``."""

    def read_json(self, *parts: str) -> object | None:
        """A small JSON note (None if absent or unreadable)."""

    def write_json(self, document: object, *parts: str) -> None:
        """Replace a small JSON note, whole."""
