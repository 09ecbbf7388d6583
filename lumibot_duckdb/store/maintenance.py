"""Looking after a store: what it holds (:func:`status`), and keeping it tidy and sound.

* :func:`compact`: rewrite fragmented or overlapping partitions as one sorted file per covered run.
* :func:`clean_tmp`: remove files a crashed writer left in ``.tmp/`` (only those older than a grace
  period, so a live writer's file is never touched).
* :func:`prune`: remove bars older than a date, or whole series of a source / symbol / timeframe;
  coverage shrinks with the bars (a partly-cut file is rewritten to cover only what it keeps).
* :func:`verify`: read every file and check names, partitions, schema, keys, ranges and overlaps;
  nothing is changed.

Safe while backtests read the store: rewrites hold the series' lock (as fetching writers do),
publish the replacement (one rename) before removing what it replaces, and readers retry when a
listed file vanishes. Everything that deletes has ``dry_run``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lumibot_duckdb.errors import ConfigError, StoreError, spell
from lumibot_duckdb.store.coverage import Interval, SeriesKey, canonical_timeframe, has_overlaps, normalize
from lumibot_duckdb.store.local import BarFile, parse_file_name, partition_interval, partition_scheme
from lumibot_duckdb.store.naming import parse_time, show_time
from lumibot_duckdb.store.schema import ARROW_SCHEMA, KEY_COLUMNS, VALUE_COLUMNS
from lumibot_duckdb.store.store import DuckDBDataStorage

TMP_GRACE = dt.timedelta(hours=1)
"""Temporary files younger than this are left alone by :func:`clean_tmp` (a writer may still own them)."""

_KEY_DEPTH = 7  # bars/<source>/<asset_type>/<symbol>/<quote>/<exchange>/<timeframe>/<adjustment>/


def parse_age(text: str) -> dt.timedelta:
    """``'30m'``, ``'2h'``, ``'1d'``, ``'90s'`` (or anything :class:`pandas.Timedelta` reads) → timedelta."""
    value = str(text).strip()
    units = {"s": "s", "m": "min", "h": "h", "d": "D", "w": "W"}
    if value and value[-1] in units and value[:-1].replace(".", "", 1).isdigit():
        value = value[:-1] + units[value[-1]]
    try:
        age = pd.Timedelta(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{text!r} is not a duration; write e.g. 30m, 2h, 1d.") from None
    if age is pd.NaT or age < pd.Timedelta(0):
        raise ConfigError(f"{text!r} is not a duration of zero or more; write e.g. 30m, 2h, 1d.")
    return age.to_pytimedelta()


def select_series(store: DuckDBDataStorage, /, *, source: str | None = None, symbol: str | None = None,
                  timeframe: str | None = None) -> list[SeriesKey]:
    """Series of the store matching every filter given (``symbol`` compared case-insensitively)."""
    tf = canonical_timeframe(timeframe) if timeframe else None
    return [k for k in store.series()
            if (source is None or k.source == source.strip().lower())
            and (symbol is None or k.symbol.upper() == symbol.strip().upper())
            and (tf is None or k.timeframe == tf)]


# -- status -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesRow:
    key: SeriesKey
    files: int
    rows: int
    bytes: int
    coverage: list[Interval]
    gaps: list[Interval]
    first_bar: pd.Timestamp | None
    last_bar: pd.Timestamp | None

    @property
    def bytes_per_bar(self) -> float | None:
        return self.bytes / self.rows if self.rows else None


@dataclass(frozen=True)
class LooseFile:
    """A file outside ``bars/``'s published files: in ``.tmp/`` or ``.quarantine/``."""

    path: Path
    bytes: int
    age_seconds: float
    reason: str = ""


@dataclass(frozen=True)
class StoreReport:
    root: Path
    series: list[SeriesRow]
    quarantined: list[LooseFile]
    temporary: list[LooseFile]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.series)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.series)

    @property
    def files(self) -> int:
        return sum(s.files for s in self.series)

    def sources(self) -> list[dict[str, Any]]:
        """Per-source totals: series, symbols, files, rows, bytes, bytes per bar, covered span."""
        totals: list[dict[str, Any]] = []
        for source, rows in itertools.groupby(sorted(self.series, key=lambda s: s.key.source),
                                              key=lambda s: s.key.source):
            group = list(rows)
            nbars, nbytes = sum(s.rows for s in group), sum(s.bytes for s in group)
            starts = [s.coverage[0].start for s in group if s.coverage]
            ends = [s.coverage[-1].end for s in group if s.coverage]
            totals.append({"source": source, "series": len(group), "symbols": len({s.key.symbol for s in group}),
                           "files": sum(s.files for s in group), "rows": nbars, "bytes": nbytes,
                           "bytes_per_bar": round(nbytes / nbars, 2) if nbars else None,
                           "covered_from": min(starts) if starts else None, "covered_to": max(ends) if ends else None})
        return totals

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready document (times as ISO 8601 UTC strings)."""
        def iv(items: list[Interval]) -> list[list[str]]:
            return [[i.start.isoformat(), i.end.isoformat()] for i in items]

        def ts(value: pd.Timestamp | None) -> str | None:
            return None if value is None else value.isoformat()

        return {
            "root": str(self.root),
            "totals": {"series": len(self.series), "files": self.files, "rows": self.rows, "bytes": self.bytes,
                       "bytes_per_bar": round(self.bytes / self.rows, 2) if self.rows else None,
                       "quarantined_files": len(self.quarantined), "temporary_files": len(self.temporary)},
            "sources": [{k: (ts(v) if isinstance(v, pd.Timestamp) else v) for k, v in s.items()}
                        for s in self.sources()],
            "series": [{**s.key.as_dict(), "files": s.files, "rows": s.rows, "bytes": s.bytes,
                        "bytes_per_bar": None if s.bytes_per_bar is None else round(s.bytes_per_bar, 2),
                        "first_bar": ts(s.first_bar), "last_bar": ts(s.last_bar),
                        "coverage": iv(s.coverage), "gaps": iv(s.gaps)} for s in self.series],
            "quarantined": [{"path": str(f.path), "bytes": f.bytes, "age_seconds": round(f.age_seconds),
                             "reason": f.reason} for f in self.quarantined],
            "temporary": [{"path": str(f.path), "bytes": f.bytes, "age_seconds": round(f.age_seconds)}
                          for f in self.temporary],
        }


def status(store: DuckDBDataStorage, /) -> StoreReport:
    """What the store holds, per series (from file names and Parquet footers; no bar is read)."""
    rows = [SeriesRow(s.key, s.files, s.rows, s.bytes, s.coverage, s.gaps, s.first_bar, s.last_bar)
            for s in store.status()]
    return StoreReport(store.root, rows, _quarantined(store), _temporary(store))


def _loose(folder: Path) -> Iterable[tuple[Path, os.stat_result]]:
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            if entry.is_file():
                found.append((Path(entry.path), entry.stat()))
    return sorted(found)


def _temporary(store: DuckDBDataStorage) -> list[LooseFile]:
    now = time.time()
    return [LooseFile(path, st.st_size, now - st.st_mtime) for path, st in _loose(store.backend.tmp)]


def _quarantined(store: DuckDBDataStorage) -> list[LooseFile]:
    now = time.time()
    found = []
    for path, st in _loose(store.backend.quarantine_dir):
        if path.name.endswith(".reason.txt"):
            continue
        note = path.with_name(path.name + ".reason.txt")
        try:
            reason = note.read_text().strip()
        except OSError:
            reason = ""
        found.append(LooseFile(path, st.st_size, now - st.st_mtime, reason))
    return found


# -- compact -----------------------------------------------------------------------------------------
@dataclass
class CompactReport:
    series: int = 0
    files_before: int = 0
    files_after: int = 0
    dry_run: bool = False
    rewritten: list[str] = field(default_factory=list)


def compact(store: DuckDBDataStorage, /, *, source: str | None = None, symbol: str | None = None,
            timeframe: str | None = None, dry_run: bool = False) -> CompactReport:
    """Rewrite every partition that has several files for one covered run, or overlapping files,
    as one sorted file per run (where files overlap, the newer file's bars are kept, as on read).

    With ``dry_run`` nothing changes and ``files_after`` is what the real run would leave
    (:func:`files_after_compaction`)."""
    report = CompactReport(dry_run=dry_run)
    for key in select_series(store, source=source, symbol=symbol, timeframe=timeframe):
        files = store.files(key)
        report.series += 1
        report.files_before += len(files)
        if _needs_compaction(files):
            report.rewritten.append(str(key))
            if not dry_run:
                store.compact(key)
        report.files_after += files_after_compaction(files) if dry_run else len(store.files(key))
    return report


def files_after_compaction(files: list[BarFile]) -> int:
    """How many files :meth:`DuckDBDataStorage.compact` leaves of ``files`` (one series): one per covered
    run in each partition it rewrites, the others as they are (the rule of ``_compact_locked``)."""
    count = 0
    for _, group in itertools.groupby(sorted(files, key=lambda f: f.partition), key=lambda f: f.partition):
        parts = list(group)
        count += len(normalize(f.interval for f in parts)) if _partition_needs_compaction(parts) else len(parts)
    return count


def _partition_needs_compaction(parts: list[BarFile]) -> bool:
    return len(parts) != len(normalize(f.interval for f in parts)) or has_overlaps(f.interval for f in parts)


def _needs_compaction(files: list[BarFile]) -> bool:
    return any(_partition_needs_compaction(list(group)) for _, group in
               itertools.groupby(sorted(files, key=lambda f: f.partition), key=lambda f: f.partition))


# -- clean-tmp ---------------------------------------------------------------------------------------
@dataclass
class CleanReport:
    removed: list[str] = field(default_factory=list)
    bytes: int = 0
    kept_fresh: int = 0
    dry_run: bool = False


def clean_tmp(store: DuckDBDataStorage, /, *, older_than: dt.timedelta = TMP_GRACE,
              dry_run: bool = False) -> CleanReport:
    """Remove files in ``.tmp/`` last modified more than ``older_than`` ago (crashed writers' leftovers).

    Younger files are kept: a writer may be writing them right now (a publish renames its file
    out of ``.tmp/`` within seconds; the default grace is an hour).
    """
    report = CleanReport(dry_run=dry_run)
    for item in _temporary(store):
        if item.age_seconds < older_than.total_seconds():
            report.kept_fresh += 1
            continue
        if not dry_run:
            try:
                item.path.unlink()
            except FileNotFoundError:
                continue  # published or removed by its writer meanwhile
            except OSError as exc:
                raise StoreError(f"Could not remove {item.path}: {exc}. Check the folder's permissions.") from exc
        report.removed.append(str(item.path))
        report.bytes += item.bytes
    return report


# -- prune -------------------------------------------------------------------------------------------
@dataclass
class PruneReport:
    series: int = 0
    files_removed: int = 0
    files_rewritten: int = 0
    bars_removed: int = 0
    dry_run: bool = False
    details: list[str] = field(default_factory=list)


def prune(store: DuckDBDataStorage, /, *, before: Any = None, source: str | None = None,
          symbol: str | None = None, timeframe: str | None = None, dry_run: bool = False) -> PruneReport:
    """Remove bars with ``ts < before`` (and the coverage of that time) from the selected series, or
    every bar of them when ``before`` is None. At least one of the four filters is required. A naive
    ``before`` is in Lumibot's default time zone (New York), as everywhere.

    A file that straddles ``before`` is replaced by one covering ``[before, its end)`` with the
    bars it keeps; the replacement is published before the old file is removed, under the
    series' lock. Coverage after a prune is exactly what remains: a backtest asking for pruned
    time fetches it again.
    """
    if before is None and source is None and symbol is None and timeframe is None:
        raise ConfigError(f"prune needs {spell('before')} and/or {spell('source')}, {spell('symbol')} or "
                          f"{spell('timeframe')}; refusing to empty the whole store (delete its folder for that).")
    cut = parse_time(before) if before is not None else None
    report = PruneReport(dry_run=dry_run)
    for key in select_series(store, source=source, symbol=symbol, timeframe=timeframe):
        report.series += 1
        if dry_run:
            _prune_plan(store, key, cut, report)
            continue
        with store.writer(key) as writer:
            if cut is None:
                files = store.files(key)
                report.bars_removed += _bars_before(store, key, None)
                report.files_removed += writer.discard()
                report.details.append(f"{key}: removed {len(files)} file(s)")
                continue
            affected = [f for f in store.files(key) if f.interval.start < cut]
            if not affected:
                continue
            removed_bars = _bars_before(store, key, cut)
            kept = normalize(iv for f in affected if (iv := f.interval.intersection(Interval(cut, f.interval.end))))
            for run in kept:
                writer.write(store.read(key, run.start, run.end), covered=run)
            with _store_error(f"remove pruned files of {key}"):
                store.backend.remove(affected)
            rewritten = sum(1 for f in affected if f.interval.end > cut)
            report.files_rewritten += rewritten
            report.files_removed += len(affected) - rewritten
            report.bars_removed += removed_bars
            report.details.append(f"{key}: {len(affected) - rewritten} file(s) removed, {rewritten} rewritten "
                                  f"from {show_time(cut)}")
    return report


def _prune_plan(store: DuckDBDataStorage, key: SeriesKey, cut: pd.Timestamp | None, report: PruneReport) -> None:
    files = store.files(key)
    report.bars_removed += _bars_before(store, key, cut)
    if cut is None:
        report.files_removed += len(files)
        report.details.append(f"{key}: would remove {len(files)} file(s)")
        return
    affected = [f for f in files if f.interval.start < cut]
    if not affected:
        return
    straddling = [f for f in affected if f.interval.end > cut]
    report.files_removed += len(affected) - len(straddling)
    report.files_rewritten += len(straddling)
    report.details.append(f"{key}: would remove {len(affected) - len(straddling)} file(s), rewrite "
                          f"{len(straddling)} from {show_time(cut)}")


def _bars_before(store: DuckDBDataStorage, key: SeriesKey, cut: pd.Timestamp | None) -> int:
    """Distinct bars of ``key`` before ``cut`` (all of them if None), as readers see them."""
    covered = store.coverage(key)
    if not covered or (cut is not None and cut <= covered[0].start):
        return 0
    return len(store.read(key, covered[0].start, covered[-1].end if cut is None else cut, columns=["close"]))


@contextlib.contextmanager
def _store_error(action: str) -> Any:
    try:
        yield
    except OSError as exc:
        raise StoreError(f"Could not {action}: {exc}. Replacements were published first; nothing is lost. "
                         "Check permissions and run the command again.") from exc


# -- verify ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    severity: str  # "error": the store is not sound; "warning": worth a look, nothing is wrong with the data
    kind: str
    path: str
    message: str


@dataclass
class VerifyReport:
    files_checked: int = 0
    series_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "files_checked": self.files_checked, "series_checked": self.series_checked,
                "problems": [asdict(p) for p in self.problems]}


def verify(store: DuckDBDataStorage, /) -> VerifyReport:
    """Check the store without changing it; ``report.ok`` is False when an error was found.

    Errors: a file that cannot be read in full; a stray file or folder in ``bars/`` (its name
    does not parse, so readers ignore it); a file in the wrong partition or series folder; bars
    outside the range the file's name covers, unsorted or duplicated; a footer whose recorded
    coverage differs from the name; two files that overlap *and* disagree on a bar. Warnings:
    overlapping files that agree (``compact`` merges them), quarantined files, temporary files
    older than :data:`TMP_GRACE`.
    """
    report = VerifyReport()
    problems = report.problems
    _find_strays(store, problems)
    for key in store.series():
        report.series_checked += 1
        files = store.files(key)
        bars: dict[Path, pa.Table] = {}
        for bar_file in files:
            table = _check_file(bar_file, problems)
            report.files_checked += 1
            if table is not None:
                bars[bar_file.path] = table
        _check_overlaps(files, bars, problems)
    for item in _quarantined(store):
        problems.append(Problem("warning", "quarantined", str(item.path),
                                f"set aside as damaged ({item.reason or 'no reason recorded'}); inspect or delete it"))
    for item in _temporary(store):
        if item.age_seconds >= TMP_GRACE.total_seconds():
            problems.append(Problem("warning", "orphaned-temp", str(item.path),
                                    "left by a writer that stopped; `maintain clean-tmp` removes it"))
    return report


def _find_strays(store: DuckDBDataStorage, problems: list[Problem]) -> None:
    bars_dir = store.backend.bars
    if not bars_dir.is_dir():
        return
    for folder, dirs, names in os.walk(bars_dir):
        depth = len(Path(folder).relative_to(bars_dir).parts)
        for name in names:
            path = Path(folder) / name
            if depth != _KEY_DEPTH + 1:
                problems.append(Problem("error", "stray-file", str(path),
                                        "not in a partition folder of a series; readers ignore it — move it away"))
            elif parse_file_name(name) is None:
                problems.append(Problem("error", "stray-file", str(path),
                                        "name is not <start>_<end>_<token>.parquet; readers ignore it — move it away"))
        if depth > _KEY_DEPTH:
            for name in dirs:
                problems.append(Problem("error", "stray-folder", str(Path(folder) / name),
                                        "a folder inside a partition; readers ignore it — move it away"))
            dirs.clear()


def _check_file(bar_file: BarFile, problems: list[Problem]) -> pa.Table | None:
    path = str(bar_file.path)

    def error(kind: str, message: str) -> None:
        problems.append(Problem("error", kind, path, message))

    if bar_file.interval.empty:
        error("empty-range", f"covers an empty range {bar_file.interval}; delete it")
    try:
        partition = partition_interval(bar_file.key.timeframe, bar_file.partition)
        if partition_scheme(bar_file.key.timeframe) == "all" and bar_file.partition != "all":
            raise ValueError
    except ValueError:
        error("wrong-partition", f"partition folder {bar_file.partition!r} is not valid for "
                                 f"{bar_file.key.timeframe} bars")
        partition = None
    if partition is not None and not bar_file.interval.empty and (
            bar_file.interval.start < partition.start or bar_file.interval.end > partition.end):
        error("wrong-partition", f"covers {bar_file.interval}, outside its partition {bar_file.partition}")
    try:
        parquet = pq.ParquetFile(path)
        table = parquet.read()
    except FileNotFoundError:
        return None  # compacted or pruned away while we looked: not a problem
    except Exception as exc:  # noqa: BLE001 - anything pyarrow cannot read is damage
        error("unreadable", f"cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                            "the next backtest that reads it sets it aside in .quarantine/ and fetches its range "
                            "again — or delete it now")
        return None
    missing = [f.name for f in ARROW_SCHEMA if f.name not in table.column_names]
    if missing:
        error("schema", f"lacks column(s) {missing}")
        return None
    recorded = (parquet.schema_arrow.metadata or {}).get(b"lumibot_duckdb.coverage")
    if recorded is not None:
        try:
            start, end = json.loads(recorded)
            if Interval(start, end) != bar_file.interval:
                error("coverage-mismatch", f"its name covers {bar_file.interval} but its footer records "
                                           f"[{start}, {end})")
        except (ValueError, TypeError):
            error("coverage-mismatch", "its footer's coverage record is not readable")
    expected = bar_file.key.as_dict()
    for name in KEY_COLUMNS:
        values = set(pc.unique(table.column(name).cast(pa.string())).to_pylist())
        if values and values != {expected[name]}:
            error("wrong-series", f"column {name} holds {sorted(map(str, values))[:3]} but the folder says "
                                  f"{expected[name]!r}")
    if table.num_rows:
        ts = table.column("ts").cast(pa.timestamp("us", tz="UTC")).to_numpy().astype("datetime64[us]")
        lo = np.datetime64(bar_file.interval.start.tz_convert(None).to_datetime64(), "us")
        hi = np.datetime64(bar_file.interval.end.tz_convert(None).to_datetime64(), "us")
        outside = int(((ts < lo) | (ts >= hi)).sum())
        if outside:
            error("outside-coverage", f"{outside} bar(s) lie outside the range its name covers "
                                      f"{bar_file.interval}")
        steps = np.diff(ts.astype("int64"))
        if (steps < 0).any():
            error("unsorted", "bars are not in time order")
        elif (steps == 0).any():
            error("duplicates", f"{int((steps == 0).sum())} duplicated timestamp(s)")
    return table


def _check_overlaps(files: list[BarFile], tables: dict[Path, pa.Table], problems: list[Problem]) -> None:
    ordered = sorted(files, key=lambda f: (f.interval.start, f.token))
    for i, older in enumerate(ordered):
        for newer in ordered[i + 1:]:
            if newer.interval.start >= older.interval.end:
                break
            a, b = tables.get(older.path), tables.get(newer.path)
            if a is None or b is None:
                continue
            conflicts = _conflicting_bars(a, b)
            pair = f"{older.path.name} and {newer.path.name}"
            if conflicts:
                problems.append(Problem(
                    "error", "conflicting-overlap", str(newer.path),
                    f"{pair} overlap and disagree on {conflicts} bar(s); readers take the newer file's bars "
                    "— `maintain compact` keeps those and removes the disagreement"))
            else:
                problems.append(Problem("warning", "overlap", str(newer.path),
                                        f"{pair} overlap (same bars); `maintain compact` merges them"))


def _conflicting_bars(a: pa.Table, b: pa.Table) -> int:
    columns = ["ts", *VALUE_COLUMNS]
    left = a.select(columns).to_pandas().set_index("ts")
    right = b.select(columns).to_pandas().set_index("ts")
    common = left.index.intersection(right.index)
    if common.empty:
        return 0
    x, y = left.loc[common, list(VALUE_COLUMNS)], right.loc[common, list(VALUE_COLUMNS)]
    differs = ~((x == y) | (x.isna() & y.isna()))
    return int(differs.any(axis=1).sum())
