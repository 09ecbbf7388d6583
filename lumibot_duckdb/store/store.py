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

from lumibot_duckdb.config import Settings, is_ducklake, is_remote, is_s3
from lumibot_duckdb.errors import BarsValidationError, CorruptFileError, StoreError, spell
from lumibot_duckdb.log import get_logger
from lumibot_duckdb.store import answers, integrity
from lumibot_duckdb.store.coverage import Interval, SeriesKey, has_overlaps, missing_ranges, normalize
from lumibot_duckdb.store.interface import Backend, DataStorageInterface
from lumibot_duckdb.store.lazy import lazy_module
from lumibot_duckdb.store.local import BarFile, LocalFolder, partitions_for, read_footer
from lumibot_duckdb.store.naming import parse_time
from lumibot_duckdb.store.parquet import ParquetSource
from lumibot_duckdb.store.reader import FLOAT_BLOCK, READ_ERRORS, read_files, ts_bounds
from lumibot_duckdb.store.reader import pool as reader_pool
from lumibot_duckdb.store.schema import VALUE_COLUMNS, empty_bars, normalize_bars, to_arrow

if TYPE_CHECKING:
    import duckdb
else:
    duckdb = lazy_module("duckdb")  # a backtest reading bars never imports it (store/lazy.py)

log = get_logger(__name__)

COMPACT_AFTER_FILES = 8
"""A partition with more published files than this is rewritten as one file per covered run."""

_READ_ATTEMPTS = 25
_OPENED_BYTES = 32 << 20
"""At most this many bytes of a read's files, read and hashed by their first check, are kept for its decoding
(instead of reading them again: ~1.3 ms of 6 for a year of minute bars); files beyond it are read again."""
_OPENED_SHARE = 1 / 16
"""A file's bytes are kept for decoding only when the read needs at least this share of its time range (a month
of a year's file: kept, its first read decodes from the bytes it hashed; a few days of it, as a backtest's window
reads: hashed a chunk at a time, only the row groups read from the file). Measured on a year's file of minute bars
(benchmarks/test_range_query.py, n=2): a month's first read 3.4 ms from the kept bytes, 4.1-4.3 ms without."""
_TOKEN_OF_FILENAME = r"regexp_extract(filename, '_([0-9a-f]+)\.parquet$', 1)"
_BAR_STEP = {"minute": pd.Timedelta(minutes=1), "hour": pd.Timedelta(hours=1), "day": pd.Timedelta(days=1)}


def _as_interval(value: tuple[Any, Any] | Interval) -> Interval:
    if isinstance(value, Interval):
        return value
    start, end = value
    return Interval(parse_time(start), parse_time(end))


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

    def __init__(self, location: str | os.PathLike[str] | None = None, /, *, lock_timeout: float = 600.0,
                 cache_dir: str | os.PathLike[str] | None = None, role: str | None = None,
                 create_parents: bool = False, data_path: str | os.PathLike[str] | None = None) -> None:
        """``location``: a folder, ``s3://bucket/prefix`` or ``ducklake:postgres:<libpq string>`` (a team's store
        on DuckLake, its Parquet files at ``data_path`` / ``LUMIBOT_DUCKDB_DATA_PATH``;
        :mod:`lumibot_duckdb.store.ducklake`) (default: ``LUMIBOT_DUCKDB_STORE``, else the local
        cache folder ``cache_dir`` / ``LUMIBOT_DUCKDB_CACHE_DIR``, else ``<Lumibot cache>/duckdb``, which also
        holds an S3 store's mirror). ``role``: ``"read"`` or ``"write"`` (default ``LUMIBOT_DUCKDB_STORE_ROLE``,
        else read; see :mod:`lumibot_duckdb.store.s3`).

        A folder that does not exist is created as a new, empty store. A folder given here whose parent
        folder does not exist either is far more often a typo than a wish: that is a :class:`StoreError`
        unless ``create_parents=True``. The default folder and one configured with
        ``LUMIBOT_DUCKDB_CACHE_DIR`` (a deployment's setting) are created with their parents, as are the
        data sources' stores.
        """
        settings = Settings.resolve(store=location, cache_dir=cache_dir, store_role=role, use_duckdb=True,
                                    data_path=data_path)
        self.location = settings.location
        self.backend = _open_backend(settings)
        self.root = Path(self.backend.root)
        # a folder store named here (a typo guard); an S3 store's mirror folder is derived, always created
        named = not is_remote(settings.location) and (location is not None or settings.cache_dir_from == "cache_dir=")
        self.lock_timeout = lock_timeout
        missing = next((p for p in reversed(self.root.parents) if not p.exists()), None)
        if missing is not None and named and not create_parents:
            raise StoreError(f"No store at {self.root}, and its folder {missing} does not exist either: is the path "
                             f"mistyped? To start a new store there, create the folder first (mkdir -p {self.root}).")
        try:
            self.backend.ensure()
        except OSError as exc:
            raise StoreError(f"Cannot create the store folder {self.root}: {exc}. "
                             f"Set LUMIBOT_DUCKDB_CACHE_DIR or {spell('cache_dir')} to a writable folder.") from exc
        self._closed = False
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        _OPEN_STORES.add(self)

    def __repr__(self) -> str:
        return f"DuckDBDataStorage({self.shown_location!r})"

    def describe(self) -> str:
        return f"the store {self.shown_location if is_ducklake(self.location) else self.root}"

    @property
    def shown_location(self) -> str:
        """The location as messages show it (a DuckLake store's libpq string without its password)."""
        return str(getattr(self.backend, "location", self.location)) if is_ducklake(self.location) else self.location

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
        closer = getattr(self.backend, "close", None)  # a DuckLake store's own DuckDB (its catalog connections)
        if closer is not None:
            closer()

    def __enter__(self) -> DuckDBDataStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- coverage ------------------------------------------------------------------------------
    def series(self) -> list[SeriesKey]:
        return self.backend.series()

    def files(self, key: SeriesKey, /, within: Interval | None = None) -> list[BarFile]:
        return self.backend.files(key, within)

    def local_files(self, key: SeriesKey, /, within: Interval | None = None) -> list[BarFile]:
        """:meth:`files`, with their bytes on this machine (an S3 store downloads what its mirror lacks)."""
        return self.backend.local(self.backend.files(key, within))

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

    # -- flags: what db-status says about a series beyond its bars ----------------------------------
    def flags(self, key: SeriesKey, /) -> dict[str, Any]:
        """Properties recorded for a series, by name (e.g. ``"rounded"`` for bars imported from Lumibot's
        CCXT cache, rounded to 3 decimals); ``db-status`` shows them. Empty when there are none."""
        record = self.read_note(*_flags_note(key))
        flags = record.get("flags") if isinstance(record, dict) else None
        return dict(flags) if isinstance(flags, dict) else {}

    def set_flag(self, key: SeriesKey, name: str, value: object, /) -> None:
        """Record property ``name`` of a series (``value`` JSON; None removes it)."""
        flags = self.flags(key)
        if value is None:
            if name not in flags:
                return
            flags.pop(name)
        else:
            flags[name] = value
        self.write_note({"series": key.as_dict(), "flags": flags}, *_flags_note(key))

    def remote_stats(self) -> dict[str, Any]:
        """What this store asked of a remote service so far (S3: requests by operation, bytes each way, lease
        waits and takeovers); empty for a folder."""
        stats = getattr(self.backend, "stats", None)
        return stats.as_dict() if stats is not None else {}

    def notes(self) -> list[tuple[str, ...]]:
        """The names of every note the store holds (each a tuple for :meth:`read_note`)."""
        with _as_store_error("list the notes"):
            return self.backend.notes()

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

    def _publish(self, key: SeriesKey, data: pd.DataFrame, covered: tuple[Any, Any] | Interval | None, *,
                 marks: dict[bytes, bytes] | None = None) -> tuple[int, set[str]]:
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
                table = to_arrow(rows, key)
                if marks:
                    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **marks})
                self.backend.publish(key, partition, table, piece)
                touched.add(partition)
        return len(bars), touched

    # -- reading -------------------------------------------------------------------------------
    def read(self, key: SeriesKey, start: Any, end: Any, /, *, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Bars of ``key`` with ``start <= ts < end`` (UTC index ``ts``), oldest first.

        ``columns`` limits the value columns read (default: all of them, in schema order). Every file
        read is checked first (:mod:`lumibot_duckdb.store.integrity`); a damaged one is set aside with
        its reason and :class:`CorruptFileError` says which range is no longer covered. Naive times
        are in Lumibot's default time zone (New York).
        """
        wanted = Interval(parse_time(start), parse_time(end))
        names = _value_columns(columns)
        if wanted.empty:
            return empty_bars()[names]
        for attempt in range(_READ_ATTEMPTS):
            with _as_store_error(f"list the files of {key}"):
                files = self.backend.files(key, wanted)
            if not files:
                return empty_bars()[names]
            with _as_store_error(f"fetch the files of {key}"):
                files = self.backend.local(files)  # checks and reads need the bytes here (S3: the mirror)
            opened: integrity.Opened = {}  # files checked now, open on the bytes the check read: decoded from them
            try:
                if not self._check(files, opened, wanted):
                    raise _Vanished
                return self._query_files(files, wanted, names, opened)
            except _Vanished:
                pass
            except duckdb.IOException as exc:
                if all(f.path.exists() for f in files):
                    self._raise_for_damage(files, exc)
            except duckdb.Error as exc:
                self._raise_for_damage(files, exc)
            finally:
                integrity.close_all(opened)
            # Another process compacted the series between listing and reading: its new files are
            # already published, so listing again finds them. Under heavy churn, back off.
            time.sleep(min(0.05, 0.002 * attempt))
        raise StoreError(f"Files of {key} kept changing while being read; try again.")

    def has_bars(self, key: SeriesKey, start: Any, end: Any, /) -> bool:
        """Whether ``key`` holds a bar with ``start <= ts < end``, from the ``ts`` statistics of its files' row
        groups: a group whose first or last bar is in the range answers at once, and only when a group spans the
        whole range (or has no statistics) are the bars' times read (:meth:`read`, which checks the files).

        A backtest asks this of a whole year of minute bars before holding a few days of them: decoding the
        year to learn that it is not empty cost ~4 MB a series of memory the process kept.
        """
        wanted = Interval(parse_time(start), parse_time(end))
        if wanted.empty:
            return False
        lo, hi = wanted.start.value // 1000, wanted.end.value // 1000  # (microseconds, as the statistics)
        undecided = False
        with _as_store_error(f"list the files of {key}"):
            files = self.backend.local(self.backend.files(key, wanted))
        for bar_file in files:
            bounds = ts_bounds(str(bar_file.path))
            if bounds is None:  # an unreadable footer: the read below finds it (and sets the file aside)
                undecided = True
                continue
            mins, maxs = bounds
            full = mins <= maxs  # (a group without bars spans nothing; one without statistics, everything)
            if bool((full & (((lo <= mins) & (mins < hi)) | ((lo <= maxs) & (maxs < hi)))).any()):
                return True
            undecided = undecided or bool((full & (mins < lo) & (maxs >= hi)).any())
        return undecided and len(self.read(key, wanted.start, wanted.end, columns=())) > 0  # (no columns: .empty)

    def _check(self, files: Sequence[BarFile], opened: integrity.Opened | None = None,
               wanted: Interval | None = None) -> bool:
        """Check every file (once per process and file); set damaged ones aside and raise :class:`CorruptFileError`.

        Returns False when a file vanished meanwhile (compacted away: list again), True when all are sound.
        ``opened``: files checked now are put there open on the bytes the check read, up to
        :data:`_OPENED_BYTES` in all (:func:`integrity.check_file`), and only files the read of ``wanted``
        needs at least :data:`_OPENED_SHARE` of (by time): a few days out of a year's file are hashed a chunk at a time
        and their few row groups read from the file.
        """
        damaged: list[tuple[BarFile, integrity.Damage]] = []
        present = True
        # Files not yet checked in this process are checked at once (a checksum and a footer each; zlib and
        # pyarrow release the GIL): the first read of a range across files waits for the slowest, not the sum.
        unchecked = [f for f in files if not integrity.known(f.path)]  # (a known file: its one stat, here)
        jobs = []
        room = _OPENED_BYTES
        for bar_file in unchecked:
            needed = opened is not None and (wanted is None or _share(bar_file.interval, wanted) >= _OPENED_SHARE)
            size = bar_file.size if needed else room + 1
            jobs.append((bar_file, opened if size <= room else None))
            room -= size if size <= room else 0
        run = reader_pool().map if len(jobs) > 1 else map
        found = dict(zip((f.path for f in unchecked), run(_check_one, *zip(*jobs)) if jobs else ()))
        outcomes = [found.get(f.path, (None, None)) for f in files]
        for bar_file, (damage, error) in zip(files, outcomes):
            if isinstance(error, FileNotFoundError):
                present = False
                continue
            if error is not None:
                raise StoreError(f"Could not read {bar_file.path}: {error}. Check the permissions of the store "
                                 "folder (LUMIBOT_DUCKDB_CACHE_DIR).") from error
            if damage is not None:
                damaged.append((bar_file, damage))
        if damaged:
            self._set_aside(damaged)
        return present

    def _query_files(self, files: list[BarFile], wanted: Interval, names: list[str],
                     opened: integrity.Opened | None = None) -> pd.DataFrame:
        files = self.backend.local(files)  # DuckDB reads local files (an S3 store: its mirror, filled here)
        paths = [str(f.path) for f in files]
        # Columns null in every file (a source that has no VWAP, no dividends…) are not read at all.
        absent = functools.reduce(frozenset.intersection, (_null_columns(p) for p in paths))
        present = [n for n in names if n not in absent]
        overlaps = has_overlaps(f.interval for f in files)
        try:  # pyarrow decodes the row groups itself, no engine to start (store/reader.py) ...
            floats = [n for n in names if n not in _NOT_FLOAT]
            return _bars_frame(read_files(files, wanted, present, dedupe=overlaps, floats=floats,
                                          opened=opened), names)
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
        """Find the damaged file(s) behind a failed read, set them aside, and say so.

        A file is damaged when pyarrow cannot read it whole, or DuckDB cannot read it alone (their Parquet
        readers differ: a footer one of them still parses can be beyond the other)."""
        damaged = []
        for bar_file in files:
            problem = _unreadable(bar_file.path)
            reason = None if problem is None else f"pyarrow cannot read it ({problem})"
            if reason is None:
                try:
                    self._cursor().execute("SELECT * FROM read_parquet(?)", [str(bar_file.path)]).fetchnumpy()
                except duckdb.IOException as alone:
                    if bar_file.path.exists():
                        reason = f"DuckDB cannot read it ({_first_line(alone)})"
                except duckdb.Error as alone:
                    reason = f"DuckDB cannot read it ({_first_line(alone)})"
            if reason is not None:
                damaged.append((bar_file, integrity.Damage("unreadable", reason)))
        if not damaged:
            raise StoreError(f"DuckDB could not read {len(files)} file(s) of {files[0].key}: {exc}") from exc
        self._set_aside(damaged, cause=exc)

    def _set_aside(self, damaged: list[tuple[BarFile, integrity.Damage]], *,
                   cause: BaseException | None = None) -> None:
        """Quarantine damaged files with their reasons and raise :class:`CorruptFileError` naming them."""
        moved: list[Path] = []
        for bar_file, damage in damaged:
            integrity.forget(bar_file.path)
            _null_columns.cache_clear()
            try:
                moved.append(self.backend.quarantine(bar_file.path, str(damage)))
            except FileNotFoundError:  # set aside by another reader meanwhile
                continue
            except OSError as exc:
                raise StoreError(f"{bar_file.path} is damaged ({damage}) but could not be moved to "
                                 f"{self.backend.quarantine_dir}: {exc}. Move or delete it by hand.") from exc
            log.warning("lumibot-duckdb: set aside %s (%s, covering %s): %s", bar_file.path.name,
                        bar_file.key, bar_file.interval, damage)
        first, reason = damaged[0]
        more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
        raise CorruptFileError(
            f"{len(damaged)} damaged file(s) of {first.key} set aside in {self.backend.quarantine_dir} "
            f"(first: {first.path.name}, covering {first.interval}: {reason}{more}). Every other file is "
            "intact; the range they covered is no longer marked as stored and is fetched again on the next "
            "request.",
            path=str(first.path),
            quarantined_to=str(moved[0]) if moved else None,
            intervals=[f.interval for f, _ in damaged],
            reasons=[str(d) for _, d in damaged],
        ) from cause

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
        for bar_file in self.backend.rewritable(self.backend.files(key)):
            by_partition.setdefault(bar_file.partition, []).append(bar_file)
        removed = 0
        damage: CorruptFileError | None = None
        for partition, listed in by_partition.items():
            if partitions is not None and partition not in partitions:
                continue
            if only_if_fragmented and len(listed) <= COMPACT_AFTER_FILES:
                continue
            files = self.backend.local(mergeable(listed))  # the bytes here (S3, DuckLake: their mirror)
            try:  # (a damaged file is set aside, never merged into a new file that would pass every check)
                if not self._check(files):
                    raise StoreError(f"Files of {key} changed while being compacted; compact again.")
            except CorruptFileError as exc:  # the sound files are still merged; the damage is reported after
                damage = damage or exc
                files = [f for f in files if f.path.exists()]
            if not files or (only_if_fragmented and len(files) <= COMPACT_AFTER_FILES):
                continue
            runs = normalize(f.interval for f in files)
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
        if damage is not None:
            raise damage
        return removed

    def status(self) -> list[SeriesStatus]:
        """One :class:`SeriesStatus` per series, read from file names and Parquet footers only."""
        report = []
        for key in self.series():
            files = self.backend.files(key)
            rows = size = 0
            first = last = None
            for bar_file in files:
                meta = self.backend.footer(bar_file)
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


def _check_one(bar_file: BarFile, opened: integrity.Opened | None) -> tuple[integrity.Damage | None, OSError | None]:
    """:func:`integrity.checked` of one file: its damage, or the error that kept it from being read."""
    try:
        return integrity.checked(bar_file.path, bar_file.key, bar_file.interval, bar_file.token, opened=opened), None
    except OSError as exc:  # (FileNotFoundError: compacted away meanwhile)
        return None, exc


def mergeable(files: Sequence[BarFile]) -> list[BarFile]:
    """The files compaction may merge: all but the empty answers waiting to be asked again (each keeps its
    own file, with when it was given, until it is asked again: :mod:`lumibot_duckdb.store.answers`)."""
    waiting = {a.file.path for a in answers.empty_answers(files) if not a.trusted}
    return [f for f in files if f.path not in waiting]


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

    def record_empty(self, covered: Interval, *, asked: pd.Timestamp, times: int = 1) -> None:
        """Record that the provider answered no bars for ``covered`` when asked at ``asked`` (the ``times``-th
        empty answer in a row); the range is asked again by the rule of :mod:`lumibot_duckdb.store.answers`."""
        _, partitions = self.store._publish(self.key, empty_bars(), covered, marks=answers.mark(asked, times))
        self.touched |= partitions

    def empty_answers(self, within: Interval | None = None) -> list[answers.EmptyAnswer]:
        """The series' recorded empty answers (overlapping ``within`` if given), oldest first."""
        return answers.empty_answers(self.store.files(self.key, within))

    def remove(self, files: Sequence[BarFile]) -> None:
        """Remove some of the series' files (e.g. an empty answer that a new answer replaced)."""
        self.store.remove(files)

    def files(self) -> list[BarFile]:
        """The series' published files, oldest first."""
        return self.store.files(self.key)

    def discard(self) -> int:
        """Remove every file of the series (e.g. its provider re-adjusted history). Returns files removed."""
        with _as_store_error(f"list the files of {self.key}"):
            files = self.store.files(self.key)
        self.store.remove(files)
        for name in self.store.flags(self.key):  # they described the bars just removed
            self.store.set_flag(self.key, name, None)
        if self._recorded_as_of() is not None:
            self.store.write_note({"series": self.key.as_dict(), "as_of": None}, *self._check_note("as-of"))
        return len(files)

    def as_of(self, tz: str = "UTC") -> dt.date | None:
        """The day (in ``tz``) the oldest stored bars of the series were obtained from its provider.

        That is the day the oldest file was published, unless an earlier day was recorded with
        :meth:`record_as_of` (bars imported from a cache Lumibot filled before): what a provider
        re-adjusted since that day (a split) makes the stored bars stale. None without files.
        """
        files = self.files()
        if not files:
            return None
        days = [min(f.published for f in files).tz_convert(tz).date()]
        recorded = self._recorded_as_of()
        if recorded is not None:
            days.append(recorded)
        return min(days)

    def record_as_of(self, day: dt.date) -> None:
        """Record that some stored bars are as the provider sent them on ``day`` (kept if an earlier day is)."""
        recorded = self._recorded_as_of()
        if recorded is None or day < recorded:
            self.store.write_note({"series": self.key.as_dict(), "as_of": day.isoformat()},
                                  *self._check_note("as-of"))

    def _recorded_as_of(self) -> dt.date | None:
        record = self.store.read_note(*self._check_note("as-of"))
        try:
            value = record.get("as_of") if isinstance(record, dict) else None
            return dt.date.fromisoformat(value) if value else None
        except (TypeError, ValueError):
            return None

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
    except StoreError:  # already says what to do (StoreLockTimeout is an OSError too: a TimeoutError)
        raise
    except OSError as exc:
        raise StoreError(f"Could not {action}: {exc}. Files published before this error are kept; check "
                         "free space and permissions of the store folder (LUMIBOT_DUCKDB_CACHE_DIR).") from exc


def _open_backend(settings: Settings) -> Backend:
    """The backend of a resolved location: a folder, an S3 store or a DuckLake store (its module imported only
    then)."""
    if is_ducklake(settings.location):
        from lumibot_duckdb.store.ducklake import DuckLakeBackend

        return DuckLakeBackend(settings.location, data_path=settings.data_path or None, cache_dir=settings.cache_dir)
    if is_s3(settings.location):
        from lumibot_duckdb.store.s3 import S3Backend

        return S3Backend(settings.location, cache_dir=settings.cache_dir, role=settings.store_role,
                         listing_ttl=settings.listing_ttl, lease_ttl=settings.lease_ttl)
    return LocalFolder(settings.location)


def _new_connection() -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB in UTC that never turns Python variable names into tables."""
    con = duckdb.connect(":memory:", config={"python_enable_replacements": False})
    con.execute("SET GLOBAL TimeZone = 'UTC'")  # ICU is built into the wheels; it loads on first use
    return con


def _flags_note(key: SeriesKey) -> tuple[str, str, str]:
    from urllib.parse import quote

    return ("flags", key.source, f"{quote(str(key), safe='')}.json")


def _share(covered: Interval, wanted: Interval) -> float:
    """The share of ``covered``'s time range that ``wanted`` overlaps (1.0 for an empty ``covered``)."""
    span = (covered.end - covered.start).value
    if span <= 0:
        return 1.0
    overlap = (min(covered.end, wanted.end) - max(covered.start, wanted.start)).value
    return max(0, overlap) / span


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
    """Columns with no value in the file (from its footer; files never change once published): null in every
    row of every row group, by the groups' statistics (a group without a null count has values, maybe)."""
    meta = read_footer(path)
    if meta is None:
        return frozenset()
    if meta.num_rows == 0:  # an answer with no bars: every column is empty
        return frozenset(meta.schema.names)
    groups = [meta.row_group(g) for g in range(meta.num_row_groups)]
    empty = set()
    for i in range(meta.num_columns):
        for group in groups:  # (a column with values shows it in its first group: one look for most)
            stats = group.column(i).statistics
            if stats is None or not stats.has_null_count or stats.null_count != group.num_rows:
                break
        else:
            empty.add(groups[0].column(i).path_in_schema if groups else meta.schema.column(i).path)
    return frozenset(empty)


def _bars_frame(result: dict[str, Any], names: list[str]) -> pd.DataFrame:
    """A read's columns (:func:`read_files`, or DuckDB's ``fetchnumpy()``) → the store's frame: UTC ``ts`` index,
    ``names`` in order; NULLs arrive as masked arrays (DuckDB) or NaN (floats, pyarrow).

    The float columns are one 2-D block (pyarrow's read decodes into it: :data:`FLOAT_BLOCK`), ``trade_count``
    a nullable Int64 block, ``metadata`` an object block: the frame pandas would consolidate, built directly
    (building it from a dict of columns costs ~0.25 ms, more than a day of bars takes to decode).
    """
    index = pd.DatetimeIndex(np.asarray(result["ts"], dtype="datetime64[us]"), name="ts").tz_localize("UTC")
    n = len(index)
    floats = [name for name in names if name not in _NOT_FLOAT]
    supplied = result.get(FLOAT_BLOCK)
    if supplied is not None and list(supplied[0]) == floats:
        block = supplied[1]
    else:
        block = np.empty((len(floats), n), dtype=np.float64)
        for row, name in enumerate(floats):
            column = result.get(name)
            block[row] = np.nan if column is None else np.ma.filled(np.ma.asarray(column, dtype="float64"), np.nan)
    others: dict[str, Any] = {}
    if "trade_count" in names:
        column = result.get("trade_count")
        if column is None:
            others["trade_count"] = pd.arrays.IntegerArray(np.zeros(n, dtype="int64"), np.ones(n, dtype=bool))
        else:
            values = np.ma.getdata(column).astype("int64", copy=False)
            others["trade_count"] = pd.arrays.IntegerArray(values, np.ma.getmaskarray(column))
    if "metadata" in names:
        values = np.full(n, None, dtype=object)
        column = result.get("metadata")
        if column is not None:  # (np.ma.filled(x, None) would fill with numpy's default, '?')
            if isinstance(column, np.ma.MaskedArray):
                present = ~np.ma.getmaskarray(column)
                values[present] = np.asarray(np.ma.getdata(column), dtype=object)[present]
            else:  # (pyarrow's: None for null already)
                values = np.asarray(column, dtype=object)
        others["metadata"] = values
    return _frame(index, names, floats, block, others)


_NOT_FLOAT = frozenset({"trade_count", "metadata"})


def _frame(index: pd.DatetimeIndex, names: list[str], floats: list[str], block: np.ndarray,
           others: dict[str, Any]) -> pd.DataFrame:
    """The frame of ``names`` from the float ``block`` (a row per name of ``floats``) and the ``others`` columns,
    its blocks handed to pandas as they are (pandas' own block API; its public constructor where that is gone)."""
    position = {name: i for i, name in enumerate(names)}
    if _MAKE_BLOCK is not None:
        blocks = [_MAKE_BLOCK(block, placement=[position[name] for name in floats], ndim=2)] if floats else []
        for name, values in others.items():
            shaped = values.reshape(1, -1) if isinstance(values, np.ndarray) else values
            blocks.append(_MAKE_BLOCK(shaped, placement=[position[name]], ndim=2))
        manager = _BLOCK_MANAGER(blocks, [pd.Index(names), index])
        return pd.DataFrame._from_mgr(manager, axes=manager.axes)
    data = {name: block[row] for row, name in enumerate(floats)}
    data.update({name: pd.Series(values, index=index, dtype=values.dtype, copy=False) for name, values in
                 others.items()})  # (typed: pandas would scan an object column)
    return pd.DataFrame(data, index=index, columns=names, copy=False)


def _block_api() -> tuple[Any, Any]:
    """pandas' ``make_block`` and ``BlockManager`` (pandas 2.x, what pyarrow's ``to_pandas`` uses), or None."""
    try:
        from pandas.core.internals.api import make_block
        from pandas.core.internals.managers import BlockManager
    except ImportError:
        return None, None
    if not hasattr(pd.DataFrame, "_from_mgr"):
        return None, None
    return make_block, BlockManager


_MAKE_BLOCK, _BLOCK_MANAGER = _block_api()


class _Vanished(Exception):
    """A listed file was gone when read (compacted or pruned away meanwhile): list again."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _unreadable(path: Path) -> str | None:
    """Why pyarrow cannot read the file whole, or None if it can (or the file is gone: compacted away)."""
    try:
        with ParquetSource(path) as parquet:
            parquet.read()
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - anything pyarrow cannot read is damage
        return _first_line(exc)
    return None
