"""``DuckDBDataStorage``: Parquet files are the truth, DuckDB in-process is the query engine.

No ``.duckdb`` database file is held open: every process (backtests, the CLI, maintenance)
reads the same Parquet folder through its own in-memory DuckDB, so any number of processes can
share one store. Writers of one series take that series' lock (:meth:`LocalFolder.lock`) and publish
whole files with one rename each. DuckDB is used at load time, to read the ranges a backtest
needs; per-bar lookups stay in Lumibot's in-memory structures.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import functools
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from lumibot_duckdb.config import Settings
from lumibot_duckdb.errors import BarsValidationError, CorruptFileError, StoreError
from lumibot_duckdb.store.coverage import Interval, SeriesKey, has_overlaps, missing_ranges, normalize
from lumibot_duckdb.store.interface import DataStorageInterface
from lumibot_duckdb.store.lazy import lazy_module
from lumibot_duckdb.store.local import BarFile, LocalFolder, partitions_for, read_footer
from lumibot_duckdb.store.reader import READ_ERRORS, read_files
from lumibot_duckdb.store.schema import VALUE_COLUMNS, empty_bars, normalize_bars, to_arrow

if TYPE_CHECKING:
    import duckdb
else:
    duckdb = lazy_module("duckdb")  # a backtest reading bars never imports it (store/lazy.py)

log = logging.getLogger(__name__)

COMPACT_AFTER_FILES = 8
"""A partition with more published files than this is rewritten as one file per covered run."""

_READ_ATTEMPTS = 25
_TOKEN_OF_FILENAME = r"regexp_extract(filename, '_([0-9a-f]+)\.parquet$', 1)"
_BAR_STEP = {"minute": pd.Timedelta(minutes=1), "hour": pd.Timedelta(hours=1), "day": pd.Timedelta(days=1)}


def _as_interval(value: tuple[Any, Any] | Interval) -> Interval:
    return value if isinstance(value, Interval) else Interval(*value)


@dataclass(frozen=True)
class SeriesStatus:
    """What the store holds for one series."""

    key: SeriesKey
    files: int
    rows: int
    bytes: int
    coverage: list[Interval]
    first_bar: pd.Timestamp | None
    last_bar: pd.Timestamp | None

    @property
    def gaps(self) -> list[Interval]:
        """Holes between the first and the last covered instant."""
        if not self.coverage:
            return []
        return missing_ranges(self.coverage, Interval(self.coverage[0].start, self.coverage[-1].end))


class DuckDBDataStorage(DataStorageInterface):
    """The shared bar store of one folder.

    >>> store = DuckDBDataStorage(tmp_path)                        # doctest: +SKIP
    >>> store.store_ohlcv_data("SPY", bars, "ingest", "day")        # doctest: +SKIP
    >>> store.get_historical_prices("SPY", "2024-01-01", "2024-02-01", "day", "ingest")  # doctest: +SKIP

    Thread-safe: each thread queries through its own DuckDB cursor.
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, /, *, lock_timeout: float = 600.0) -> None:
        self.root = Settings.resolve(cache_dir=cache_dir, use_duckdb=True).cache_dir
        self.backend = LocalFolder(self.root)
        self.lock_timeout = lock_timeout
        try:
            self.backend.ensure()
        except OSError as exc:
            raise StoreError(f"Cannot create the store folder {self.root}: {exc}. "
                             "Set LUMIBOT_DUCKDB_CACHE_DIR or cache_dir= to a writable folder.") from exc
        self._closed = False
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        _OPEN_STORES.add(self)

    def __repr__(self) -> str:
        return f"DuckDBDataStorage({str(self.root)!r})"

    # -- connections ---------------------------------------------------------------------------
    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            if self._closed:
                raise StoreError(f"{self!r} is closed.")
            cursor = _Engine.cursor()
            self._local.cursor = cursor
            with self._cursors_lock:
                self._cursors.append(cursor)
        return cursor

    def close(self) -> None:
        """Close this store's DuckDB cursors and drop every reference to them (safe to call twice)."""
        with self._cursors_lock:
            for cursor in self._cursors:
                with contextlib.suppress(duckdb.Error):
                    cursor.close()
            self._cursors.clear()
            self._local = threading.local()
            self._closed = True

    def __enter__(self) -> DuckDBDataStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- coverage ------------------------------------------------------------------------------
    def series(self) -> list[SeriesKey]:
        return self.backend.series()

    def files(self, key: SeriesKey, /, within: Interval | None = None) -> list[BarFile]:
        return self.backend.files(key, within)

    def coverage(self, key: SeriesKey, /) -> list[Interval]:
        return normalize(f.interval for f in self.backend.files(key))

    def remove(self, files: Sequence[BarFile], /) -> None:
        """Remove published files (their ranges are no longer covered). Callers hold the series' lock."""
        with _as_store_error(f"remove {len(files)} file(s)"):
            self.backend.remove(list(files))

    # -- notes: small JSON documents beside the bars ---------------------------------------------
    def read_note(self, *name: str) -> object | None:
        """The note stored under ``name`` (e.g. ``("yahoo", "info", "SPY.json")``), None if there is none
        or it cannot be parsed. Sources keep what they learned from a provider here (an exchange's
        market entries, Yahoo's ``info``, when a series was last checked against its provider)."""
        with _as_store_error(f"read the note {'/'.join(name)}"):
            return self.backend.read_json(*name)

    def write_note(self, document: object, *name: str) -> None:
        """Replace the note ``name`` with ``document`` (JSON; written whole, in one rename)."""
        with _as_store_error(f"write the note {'/'.join(name)}"):
            self.backend.write_json(document, *name)

    def add_views(self, con: duckdb.DuckDBPyConnection, /) -> None:
        """Create the views of :mod:`lumibot_duckdb.store.views` on ``con``, over what the store holds now."""
        from lumibot_duckdb.store.views import create_views  # (SQL only: a backtest never needs it)

        create_views(con, self)

    # -- writing -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, key: SeriesKey, /) -> Iterator[SeriesWriter]:
        """Hold ``key`` for this process while filling its gaps; compacts fragmented partitions on exit.

        Inside, :meth:`SeriesWriter.missing` sees every file published before the lock was
        taken, so two processes never fetch the same gap twice.
        """
        with self._series_lock(key):
            writer = SeriesWriter(self, key)
            yield writer
            if writer.touched:
                try:
                    with _as_store_error(f"compact {key}"):
                        self._compact_locked(key, partitions=writer.touched, only_if_fragmented=True)
                except StoreError as exc:  # compaction is an optimisation; a failure loses nothing
                    log.warning("Compaction of %s skipped: %s", key, exc)

    @contextlib.contextmanager
    def _series_lock(self, key: SeriesKey) -> Iterator[None]:
        with _as_store_error(f"lock {key}"), self.backend.lock(key, timeout=self.lock_timeout):
            yield

    def write(self, key: SeriesKey, data: pd.DataFrame, /, *, covered: tuple[Any, Any] | Interval | None = None) -> int:
        with self.writer(key) as writer:
            return writer.write(data, covered=covered)

    def _publish(self, key: SeriesKey, data: pd.DataFrame,
                 covered: tuple[Any, Any] | Interval | None) -> tuple[int, set[str]]:
        bars = normalize_bars(data)
        if covered is None:
            if bars.empty:
                raise BarsValidationError("An empty frame needs covered=(start, end): the range it answers for.")
            covered_iv = Interval(bars.index[0], bars.index[-1] + _BAR_STEP[key.timeframe])
        else:
            covered_iv = _as_interval(covered)
        if covered_iv.empty:
            raise BarsValidationError(f"covered={covered_iv} is an empty range.")
        outside = (bars.index < covered_iv.start) | (bars.index >= covered_iv.end)
        if outside.any():
            raise BarsValidationError(
                f"{int(outside.sum())} bar(s) fall outside covered={covered_iv} "
                f"(first {bars.index[outside][0]}); widen covered or drop those bars."
            )
        touched = set()
        with _as_store_error(f"write bars of {key}"):
            for partition, piece in partitions_for(key.timeframe, covered_iv):
                first, stop = bars.index.searchsorted([piece.start, piece.end])  # (bars are sorted by ts)
                rows = bars.iloc[first:stop]
                self.backend.publish(key, partition, to_arrow(rows, key), piece)
                touched.add(partition)
        return len(bars), touched

    # -- reading -------------------------------------------------------------------------------
    def read(self, key: SeriesKey, start: Any, end: Any, /, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Bars of ``key`` with ``start <= ts < end`` (UTC index ``ts``), oldest first.

        ``columns`` limits the value columns read (default: all of them, in schema order).
        """
        wanted = Interval(start, end)
        names = _value_columns(columns)
        for attempt in range(_READ_ATTEMPTS):
            with _as_store_error(f"list the files of {key}"):
                files = self.backend.files(key, wanted)
            if not files:
                return empty_bars()[names]
            try:
                return self._query_files(files, wanted, names)
            except duckdb.IOException as exc:
                if not all(f.path.exists() for f in files):
                    # Another process compacted the series between listing and reading: its new files
                    # are already published, so listing again finds them. Under heavy churn, back off.
                    time.sleep(min(0.05, 0.002 * attempt))
                    continue
                self._raise_for_damage(files, exc)
            except duckdb.Error as exc:
                self._raise_for_damage(files, exc)
        raise StoreError(f"Files of {key} kept changing while being read; try again.")

    def _query_files(self, files: list[BarFile], wanted: Interval, names: list[str]) -> pd.DataFrame:
        paths = [str(f.path) for f in files]
        # Columns null in every file (a source that has no VWAP, no dividends…) are not read at all.
        absent = functools.reduce(frozenset.intersection, (_null_columns(p) for p in paths))
        present = [n for n in names if n not in absent]
        overlaps = has_overlaps(f.interval for f in files)
        try:  # pyarrow decodes the row groups itself, no engine to start (store/reader.py) ...
            return _bars_frame(read_files(files, wanted, present, dedupe=overlaps), names)
        except READ_ERRORS:
            pass  # ... and where a file cannot be read, DuckDB's read below says which (see read())
        read = ", ".join(["ts", *present])
        params = [paths, wanted.start.to_pydatetime(), wanted.end.to_pydatetime()]
        if overlaps:
            sql = (f"SELECT {read} FROM read_parquet(?, filename = true) WHERE ts >= ? AND ts < ? "
                   f"QUALIFY row_number() OVER (PARTITION BY ts ORDER BY {_TOKEN_OF_FILENAME} DESC) = 1 "
                   "ORDER BY ts")
        else:
            sql = f"SELECT {read} FROM read_parquet(?) WHERE ts >= ? AND ts < ? ORDER BY ts"
        return _bars_frame(self._cursor().execute(sql, params).fetchnumpy(), names)

    def _raise_for_damage(self, files: list[BarFile], exc: Exception) -> None:
        """Find the damaged file(s) behind a failed read, set them aside, and say so."""
        damaged = [f for f in files if not _readable(f.path)]
        if not damaged:
            raise StoreError(f"DuckDB could not read {len(files)} file(s) of {files[0].key}: {exc}") from exc
        moved: list[Path] = []
        for bar_file in damaged:
            with contextlib.suppress(FileNotFoundError):
                moved.append(self.backend.quarantine(bar_file.path, f"unreadable: {exc}"))
        first = damaged[0]
        raise CorruptFileError(
            f"{len(damaged)} damaged file(s) of {first.key} set aside in {self.backend.quarantine_dir} "
            f"(first: {first.path.name}, covering {first.interval}). Every other file is intact; the "
            "range they covered is no longer marked as stored and is fetched again on the next request.",
            path=str(first.path),
            quarantined_to=str(moved[0]) if moved else None,
        ) from exc

    # -- maintenance ---------------------------------------------------------------------------
    def compact(self, key: SeriesKey | None = None, /) -> int:
        """Rewrite every partition of ``key`` (or of every series) as one sorted file per covered run.

        Safe while other processes read: new files are published before old ones are removed,
        and readers dedupe overlaps and retry on files that vanish. Returns files removed.
        """
        removed = 0
        for series in [key] if key is not None else self.series():
            with self._series_lock(series), _as_store_error(f"compact {series}"):
                removed += self._compact_locked(series, partitions=None, only_if_fragmented=False)
        return removed

    def _compact_locked(self, key: SeriesKey, *, partitions: set[str] | None, only_if_fragmented: bool) -> int:
        by_partition: dict[str, list[BarFile]] = {}
        for bar_file in self.backend.files(key):
            by_partition.setdefault(bar_file.partition, []).append(bar_file)
        removed = 0
        for partition, files in by_partition.items():
            if partitions is not None and partition not in partitions:
                continue
            runs = normalize(f.interval for f in files)
            if only_if_fragmented and len(files) <= COMPACT_AFTER_FILES:
                continue
            if not only_if_fragmented and len(files) == len(runs) and not has_overlaps(f.interval for f in files):
                continue  # already one file per run
            whole = Interval(runs[0].start, runs[-1].end)
            try:
                bars = self._query_files(files, whole, _value_columns(None))
            except duckdb.Error as exc:
                self._raise_for_damage(files, exc)
            for run in runs:
                rows = bars[(bars.index >= run.start) & (bars.index < run.end)]
                self.backend.publish(key, partition, to_arrow(rows, key), run)
            self.backend.remove(files)
            removed += len(files)
        return removed

    def status(self) -> list[SeriesStatus]:
        """One :class:`SeriesStatus` per series, read from file names and Parquet footers only."""
        report = []
        for key in self.series():
            files = self.backend.files(key)
            rows = size = 0
            first = last = None
            for bar_file in files:
                meta = read_footer(str(bar_file.path))
                if meta is None:  # damaged: set aside by the next read
                    continue
                rows += meta.num_rows
                size += bar_file.size
                for i in range(meta.num_row_groups):
                    stats = meta.row_group(i).column(0).statistics
                    if stats is not None and stats.has_min_max:
                        lo, hi = pd.Timestamp(stats.min), pd.Timestamp(stats.max)
                        lo = lo.tz_localize("UTC") if lo.tzinfo is None else lo.tz_convert("UTC")
                        hi = hi.tz_localize("UTC") if hi.tzinfo is None else hi.tz_convert("UTC")
                        first = lo if first is None or lo < first else first
                        last = hi if last is None or hi > last else last
            report.append(SeriesStatus(key, len(files), rows, size, normalize(f.interval for f in files), first, last))
        return report

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A new DuckDB connection (a cursor of this process's database; its temporary views are its own)
        with ``market_data``, ``symbols``, ``data_sources``, ``coverage`` and ``files`` over what the
        store holds now (see :mod:`lumibot_duckdb.store.views`). Close it when done."""
        con = _Engine.cursor()
        self.add_views(con)
        return con

    def sql(self, query: str, params: Sequence[Any] | None = None) -> pd.DataFrame:
        """Run one query over the views of :meth:`connect` and return the result as a DataFrame."""
        con = self.connect()
        try:
            return con.execute(query, params or []).df()
        finally:
            con.close()

_OPEN_STORES: weakref.WeakSet[DuckDBDataStorage] = weakref.WeakSet()


class _Engine:
    """One in-memory DuckDB per process; every store queries it through cursors of its own.

    Opening a DuckDB database costs ~16 ms (DuckDB 2.0 here), a cursor almost nothing; the
    database holds no state of ours (no tables), only DuckDB's caches of immutable files.
    """

    _lock = threading.Lock()
    _db: duckdb.DuckDBPyConnection | None = None
    _pid: int | None = None

    @classmethod
    def cursor(cls) -> duckdb.DuckDBPyConnection:
        with cls._lock:
            if cls._db is None or cls._pid != os.getpid():  # a forked child must not share the parent's
                try:
                    cls._db, cls._pid = _new_connection(), os.getpid()
                except duckdb.Error as exc:
                    raise StoreError(f"DuckDB could not start an in-memory database: {exc}") from exc
            return cls._db.cursor()

    @classmethod
    def shutdown(cls) -> None:
        with cls._lock:
            if cls._db is not None:
                with contextlib.suppress(duckdb.Error):
                    cls._db.close()
            cls._db = None


@atexit.register
def _close_open_stores() -> None:
    """Close DuckDB handles before the interpreter tears down (DuckDB 2 complains otherwise)."""
    for store in list(_OPEN_STORES):
        store.close()
    _Engine.shutdown()


class SeriesWriter:
    """Writes of one series while its lock is held (see :meth:`DuckDBDataStorage.writer`)."""

    def __init__(self, store: DuckDBDataStorage, key: SeriesKey) -> None:
        self.store = store
        self.key = key
        self.touched: set[str] = set()

    def coverage(self) -> list[Interval]:
        return self.store.coverage(self.key)

    def missing(self, wanted: Interval) -> list[Interval]:
        return missing_ranges(self.coverage(), wanted)

    def write(self, data: pd.DataFrame, *, covered: tuple[Any, Any] | Interval | None = None) -> int:
        count, partitions = self.store._publish(self.key, data, covered)
        self.touched |= partitions
        return count

    def files(self) -> list[BarFile]:
        """The series' published files, oldest first."""
        return self.store.files(self.key)

    def discard(self) -> int:
        """Remove every file of the series (e.g. its provider re-adjusted history). Returns files removed."""
        with _as_store_error(f"list the files of {self.key}"):
            files = self.store.files(self.key)
        self.store.remove(files)
        return len(files)

    def checked_on(self, check: str) -> dt.date | None:
        """The day the series last passed ``check`` (e.g. ``"splits-checked"``) against its provider."""
        record = self.store.read_note(*self._check_note(check))
        try:
            return dt.date.fromisoformat(record["checked"]) if isinstance(record, dict) else None
        except (KeyError, TypeError, ValueError):
            return None

    def mark_checked(self, check: str, day: dt.date) -> None:
        """Record that the series passed ``check`` on ``day``."""
        self.store.write_note({"series": self.key.as_dict(), "checked": day.isoformat()}, *self._check_note(check))

    def _check_note(self, check: str) -> tuple[str, str, str]:
        k = self.key
        return k.source, check, f"{k.symbol}.{k.timeframe}.{k.adjustment}.json".replace("/", "_")


@contextlib.contextmanager
def _as_store_error(action: str) -> Iterator[None]:
    """File-system failures (disk full, permissions, a vanished folder) as :class:`StoreError`."""
    try:
        yield
    except OSError as exc:
        raise StoreError(f"Could not {action}: {exc}. Files published before this error are kept; check "
                         "free space and permissions of the store folder (LUMIBOT_DUCKDB_CACHE_DIR).") from exc


def _new_connection() -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB in UTC that never turns Python variable names into tables."""
    con = duckdb.connect(":memory:", config={"python_enable_replacements": False})
    con.execute("SET GLOBAL TimeZone = 'UTC'")  # ICU is built into the wheels; it loads on first use
    return con


def _value_columns(columns: Sequence[str] | None) -> list[str]:
    known = [*VALUE_COLUMNS, "metadata"]
    if columns is None:
        return known
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise BarsValidationError(f"Unknown column(s) {unknown}; the store holds {known}.")
    return list(columns)


@functools.lru_cache(maxsize=8192)
def _null_columns(path: str) -> frozenset[str]:
    """Columns with no value in the file (from its footer; files never change once published)."""
    meta = read_footer(path)
    if meta is None:
        return frozenset()
    rows = meta.num_rows
    nulls: dict[str, int] = {}
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        for i in range(row_group.num_columns):
            column = row_group.column(i)
            stats = column.statistics
            count = stats.null_count if stats is not None and stats.has_null_count else -(10**18)
            nulls[column.path_in_schema] = nulls.get(column.path_in_schema, 0) + count
    if rows == 0:  # an answer with no bars: every column is empty
        return frozenset(meta.schema.names)
    return frozenset(name for name, count in nulls.items() if count == rows)


def _bars_frame(result: dict[str, Any], names: list[str]) -> pd.DataFrame:
    """DuckDB's ``fetchnumpy()`` result → the store's frame: UTC ``ts`` index, ``names`` in order.

    (``fetchnumpy`` plus a frame built here is about a third faster than DuckDB's own ``df()``
    for the small ranges a backtest reads; NULLs arrive as masked arrays.)
    """
    index = pd.DatetimeIndex(np.asarray(result["ts"], dtype="datetime64[us]"), name="ts").tz_localize("UTC")
    n = len(index)
    data: dict[str, Any] = {}
    for name in names:
        column = result.get(name)
        if name == "trade_count":
            if column is None:
                data[name] = pd.array(np.zeros(n, dtype="int64"), dtype="Int64", copy=False)
                data[name][:] = pd.NA
            else:
                values = np.ma.getdata(column).astype("int64", copy=False)
                data[name] = pd.arrays.IntegerArray(values, np.ma.getmaskarray(column))
        elif name == "metadata":
            values = np.full(n, None, dtype=object)
            if column is not None:  # (np.ma.filled(x, None) would fill with numpy's default, '?')
                present = ~np.ma.getmaskarray(column)
                values[present] = np.asarray(np.ma.getdata(column), dtype=object)[present]
            data[name] = pd.Series(values, index=index, dtype=object, copy=False)  # (typed: pandas would scan it)
        else:
            data[name] = (np.full(n, np.nan) if column is None else
                          np.ma.filled(np.ma.asarray(column, dtype="float64"), np.nan))
    return pd.DataFrame(data, index=index, columns=names, copy=False)  # (not consolidated: no copy of the bars)


def _readable(path: Path) -> bool:
    try:
        pq.ParquetFile(path).read()
    except FileNotFoundError:
        return True  # gone (compacted away) is not damaged
    except Exception:  # noqa: BLE001 - anything pyarrow cannot read is damage
        return False
    return True
