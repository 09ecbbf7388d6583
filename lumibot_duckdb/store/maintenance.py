"""Looking after a store: what it holds (:func:`status`), and keeping it tidy and sound.

* :func:`compact`: rewrite fragmented or overlapping partitions as one sorted file per covered run.
* :func:`clean_tmp`: remove files a crashed writer left in ``.tmp/`` (only those older than a grace
  period, so a live writer's file is never touched).
* :func:`prune`: remove bars older than a date, or whole series of a source / symbol / timeframe;
  coverage shrinks with the bars (a partly-cut file is rewritten to cover only what it keeps).
* :func:`verify`: read every file and check names, partitions, checksums, schema, keys, ranges and
  overlaps, with the same checks every read runs (:mod:`lumibot_duckdb.store.integrity`); nothing is
  changed unless ``quarantine=True``.
* :func:`seal`: give files written before checksums existed their checksum (after checking them).
* :func:`forget_empty`: make empty answers of a series (over a range) be asked again at the next request.

Safe while backtests read the store: rewrites hold the series' lock (as fetching writers do),
publish the replacement (one rename) before removing what it replaces, and readers retry when a
listed file vanishes. Everything that deletes has ``dry_run``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fnmatch
import itertools
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lumibot_duckdb.errors import ConfigError, StoreError, spell
from lumibot_duckdb.store import integrity
from lumibot_duckdb.store.answers import EmptyAnswer, empty_answers
from lumibot_duckdb.store.coverage import (
    Interval,
    SeriesKey,
    canonical_timeframe,
    has_overlaps,
    missing_ranges,
    normalize,
    utc,
)
from lumibot_duckdb.store.local import BarFile, partition_interval, partition_scheme, read_footer
from lumibot_duckdb.store.naming import parse_time, show_time
from lumibot_duckdb.store.schema import ARROW_SCHEMA, VALUE_COLUMNS, empty_bars
from lumibot_duckdb.store.store import DuckDBDataStorage, mergeable

TMP_GRACE = dt.timedelta(hours=1)
"""Temporary files younger than this are left alone by :func:`clean_tmp` (a writer may still own them)."""


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
                  timeframe: str | None = None, symbol_glob: str | None = None) -> list[SeriesKey]:
    """Series of the store matching every filter given.

    ``symbol`` matches exactly, case kept (``spy`` and ``SPY`` are two series); ``symbol_glob`` is a
    shell pattern matched case kept too (``BTC*``, ``SP?``, ``[AB]*``).
    """
    tf = canonical_timeframe(timeframe) if timeframe else None
    return [k for k in store.series()
            if (source is None or k.source == source.strip().lower())
            and (symbol is None or k.symbol == symbol.strip())
            and (symbol_glob is None or fnmatch.fnmatchcase(k.symbol, symbol_glob))
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
    flags: dict[str, Any] = field(default_factory=dict)
    """Properties recorded for the series (:meth:`DuckDBDataStorage.flags`), e.g. ``rounded``."""
    empty_answers: list[EmptyAnswer] = field(default_factory=list)
    """Empty answers a provider gave to requests (:mod:`lumibot_duckdb.store.answers`)."""

    @property
    def bytes_per_bar(self) -> float | None:
        return self.bytes / self.rows if self.rows else None

    @property
    def waiting(self) -> list[EmptyAnswer]:
        """Empty answers that the next request for their range (after ``recheck_after``) asks again."""
        return [a for a in self.empty_answers if not a.trusted]


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
    location: str = ""
    """The store's location (a folder, or ``s3://bucket/prefix`` whose mirror is in ``root``)."""

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
            "location": self.location or str(self.root),
            "totals": {"series": len(self.series), "files": self.files, "rows": self.rows, "bytes": self.bytes,
                       "bytes_per_bar": round(self.bytes / self.rows, 2) if self.rows else None,
                       "empty_answers_waiting": sum(len(s.waiting) for s in self.series),
                       "quarantined_files": len(self.quarantined), "temporary_files": len(self.temporary)},
            "sources": [{k: (ts(v) if isinstance(v, pd.Timestamp) else v) for k, v in s.items()}
                        for s in self.sources()],
            "series": [{**s.key.as_dict(), "files": s.files, "rows": s.rows, "bytes": s.bytes,
                        "bytes_per_bar": None if s.bytes_per_bar is None else round(s.bytes_per_bar, 2),
                        "first_bar": ts(s.first_bar), "last_bar": ts(s.last_bar),
                        "coverage": iv(s.coverage), "gaps": iv(s.gaps), "flags": s.flags,
                        "empty_answers": [{"range": iv([a.file.interval])[0], "asked": ts(a.asked),
                                           "answers": a.answers, "asked_again_after": ts(a.recheck_after)}
                                          for a in s.empty_answers]} for s in self.series],
            "quarantined": [{"path": str(f.path), "bytes": f.bytes, "age_seconds": round(f.age_seconds),
                             "reason": f.reason} for f in self.quarantined],
            "temporary": [{"path": str(f.path), "bytes": f.bytes, "age_seconds": round(f.age_seconds)}
                          for f in self.temporary],
        }


def status(store: DuckDBDataStorage, /) -> StoreReport:
    """What the store holds, per series (from file names and Parquet footers; no bar is read)."""
    rows = [SeriesRow(s.key, s.files, s.rows, s.bytes, s.coverage, s.gaps, s.first_bar, s.last_bar, store.flags(s.key),
                      empty_answers(store.files(s.key)))
            for s in store.status()]
    return StoreReport(store.root, rows, _quarantined(store), _temporary(store), store.shown_location)


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
    lake: dict[str, Any] | None = None
    """A DuckLake store's upkeep: its data files before and after, and what each step did."""


def compact(store: DuckDBDataStorage, /, *, source: str | None = None, symbol: str | None = None,
            timeframe: str | None = None, symbol_glob: str | None = None, dry_run: bool = False,
            lake_grace: dt.timedelta | None = None) -> CompactReport:
    """Rewrite every partition that has several files for one covered run, or overlapping files,
    as one sorted file per run (where files overlap, the newer file's bars are kept, as on read).

    With ``dry_run`` nothing changes and ``files_after`` is what the real run would leave
    (:func:`files_after_compaction`). On a DuckLake store, DuckLake's own upkeep runs after (merge of small
    files, expiry of snapshots older than ``lake_grace``, removal of the files only they used and of files no
    snapshot knows: :meth:`~lumibot_duckdb.store.ducklake.DuckLakeBackend.upkeep`)."""
    report = CompactReport(dry_run=dry_run)
    for key in select_series(store, source=source, symbol=symbol, timeframe=timeframe, symbol_glob=symbol_glob):
        files = store.files(key)
        report.series += 1
        report.files_before += len(files)
        if _needs_compaction(files):
            report.rewritten.append(str(key))
            if not dry_run:
                store.compact(key)
        report.files_after += files_after_compaction(files) if dry_run else len(store.files(key))
    upkeep = getattr(store.backend, "upkeep", None)
    if upkeep is not None and not dry_run:
        report.lake = upkeep() if lake_grace is None else upkeep(lake_grace)
    return report


def files_after_compaction(files: list[BarFile]) -> int:
    """How many files :meth:`DuckDBDataStorage.compact` leaves of ``files`` (one series): one per covered
    run in each partition it rewrites, the others as they are (the rule of ``_compact_locked``)."""
    count = 0
    for _, group in itertools.groupby(sorted(files, key=lambda f: f.partition), key=lambda f: f.partition):
        parts = list(group)
        merged = mergeable(parts)  # (the files compaction may merge; the others stay as they are)
        count += len(parts) - len(merged) + len(normalize(f.interval for f in merged)) \
            if _partition_needs_compaction(merged) else len(parts)
    return count


def _partition_needs_compaction(parts: list[BarFile]) -> bool:
    return len(parts) != len(normalize(f.interval for f in parts)) or has_overlaps(f.interval for f in parts)


def _needs_compaction(files: list[BarFile]) -> bool:
    return any(_partition_needs_compaction(mergeable(list(group))) for _, group in
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
          symbol: str | None = None, timeframe: str | None = None, symbol_glob: str | None = None,
          dry_run: bool = False) -> PruneReport:
    """Remove bars with ``ts < before`` (and the coverage of that time) from the selected series, or
    every bar of them when ``before`` is None. At least one of the four filters is required. A naive
    ``before`` is in Lumibot's default time zone (New York), as everywhere.

    A file that straddles ``before`` is replaced by one covering ``[before, its end)`` with the
    bars it keeps; the replacement is published before the old file is removed, under the
    series' lock. Coverage after a prune is exactly what remains: a backtest asking for pruned
    time fetches it again.
    """
    if before is None and source is None and symbol is None and timeframe is None and symbol_glob is None:
        raise ConfigError(f"prune needs {spell('before')} and/or {spell('source')}, {spell('symbol')}, "
                          f"{spell('symbol_glob')} or {spell('timeframe')}; refusing to empty the whole store "
                          "(delete its folder for that).")
    cut = parse_time(before) if before is not None else None
    report = PruneReport(dry_run=dry_run)
    for key in select_series(store, source=source, symbol=symbol, timeframe=timeframe, symbol_glob=symbol_glob):
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
            waiting = {a.file.path: a for a in writer.empty_answers() if not a.trusted and a.file in affected}
            kept = normalize(iv for f in affected if f.path not in waiting
                             and (iv := f.interval.intersection(Interval(cut, f.interval.end))))
            for run in kept:
                writer.write(store.read(key, run.start, run.end), covered=run)
            for answer in waiting.values():  # the part kept of an empty answer is still to be asked again
                if (part := answer.file.interval.intersection(Interval(cut, answer.file.interval.end))) is not None:
                    writer.record_empty(part, asked=answer.asked, times=answer.answers)
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
    quarantined: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "files_checked": self.files_checked, "series_checked": self.series_checked,
                "problems": [asdict(p) for p in self.problems], "quarantined": list(self.quarantined)}


_SET_ASIDE = ("the next read of its range sets it aside in .quarantine/ and fetches the range again "
              "(or `maintain verify --quarantine` does it now)")


def verify(store: DuckDBDataStorage, /, *, quarantine: bool = False) -> VerifyReport:
    """Check the store; ``report.ok`` is False when an error was found. Never raises for a damaged file.

    Every published file gets the checks every read runs (:func:`lumibot_duckdb.store.integrity.check_file`,
    thoroughly: every column decoded, timestamps and key columns scanned, sealed or not): unreadable, a
    checksum that does not match, a foreign schema or types, another series, bars outside its range,
    unsorted or duplicated bars; plus what only a whole-store look finds: a stray file or folder in
    ``bars/`` (readers ignore it), a file in the wrong partition folder, two files that overlap *and*
    disagree on a bar. Warnings: overlapping files that agree (``compact`` merges them), files without a
    checksum (``seal`` adds it), quarantined files, temporary files older than :data:`TMP_GRACE`.

    Nothing is changed, unless ``quarantine=True``: then every file with an error of its own is set aside
    in ``.quarantine/`` with its reason, as a read would (its range is fetched again by the next backtest).
    """
    report = VerifyReport()
    problems = report.problems
    _find_strays(store, problems)
    for key in store.series():
        report.series_checked += 1
        try:
            files = store.local_files(key)
        except (OSError, StoreError) as exc:
            problems.append(Problem("error", "unreadable", _where(store, key),
                                    f"the series folder cannot be listed ({exc})"))
            continue
        sound: list[BarFile] = []
        unsealed = 0
        for bar_file in files:
            report.files_checked += 1
            damage = _check_file(bar_file, problems)
            if damage is None:
                sound.append(bar_file)
                unsealed += not bar_file.sealed
            elif quarantine:
                with contextlib.suppress(FileNotFoundError, OSError):
                    report.quarantined.append(str(store.backend.quarantine(bar_file.path, str(damage))))
        if unsealed:
            problems.append(Problem("warning", "unsealed", _where(store, key),
                                    f"{unsealed} file(s) of {key} were written before files carried a checksum: "
                                    "damage that still reads as Parquet cannot be told from data in them; "
                                    "`maintain seal` checks them and adds it"))
        _check_overlaps(sound, problems)
    for item in _quarantined(store):
        problems.append(Problem("warning", "quarantined", str(item.path),
                                f"set aside as damaged ({item.reason or 'no reason recorded'}); inspect or delete it"))
    for item in _temporary(store):
        if item.age_seconds >= TMP_GRACE.total_seconds():
            problems.append(Problem("warning", "orphaned-temp", str(item.path),
                                    "left by a writer that stopped; `maintain clean-tmp` removes it"))
    return report


def _where(store: DuckDBDataStorage, key: SeriesKey) -> str:
    """Where a series lives, for a problem report (its folder; on S3 its key)."""
    folder = getattr(store.backend, "series_dir", None)
    return str(folder(key)) if folder is not None else f"{store.shown_location} {key}"


def _find_strays(store: DuckDBDataStorage, problems: list[Problem]) -> None:
    for kind, path, message in store.backend.strays():
        problems.append(Problem("error", kind, path, message))


def _check_file(bar_file: BarFile, problems: list[Problem]) -> integrity.Damage | None:
    """Record the problems of one file; returns its damage (None if it can be served)."""
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
        found = integrity.inspect_file(bar_file.path, bar_file.key, bar_file.interval, bar_file.token)
    except FileNotFoundError:
        return None  # compacted or pruned away while we looked: not a problem
    except OSError as exc:
        found = [integrity.Damage("unreadable", f"cannot be opened ({exc})")]
    for damage in found:
        error(damage.kind, f"{damage.message}; {_SET_ASIDE}")
    return integrity.Damage(found[0].kind, "; ".join(map(str, found))) if found else None


def _check_overlaps(files: list[BarFile], problems: list[Problem]) -> None:
    ordered = sorted(files, key=lambda f: (f.interval.start, f.token))
    tables: dict[Path, pa.Table | None] = {}

    def table(bar_file: BarFile) -> pa.Table | None:
        if bar_file.path not in tables:
            try:
                tables[bar_file.path] = pq.read_table(bar_file.path)
            except Exception:  # noqa: BLE001 - gone or damaged since it was checked: reported by the next verify
                tables[bar_file.path] = None
        return tables[bar_file.path]

    for i, older in enumerate(ordered):
        for newer in ordered[i + 1:]:
            if newer.interval.start >= older.interval.end:
                break
            a, b = table(older), table(newer)
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


# -- seal --------------------------------------------------------------------------------------------
@dataclass
class SealReport:
    series: int = 0
    sealed: int = 0
    already: int = 0
    damaged: list[str] = field(default_factory=list)
    dry_run: bool = False


def seal(store: DuckDBDataStorage, /, *, source: str | None = None, symbol: str | None = None,
         timeframe: str | None = None, symbol_glob: str | None = None, dry_run: bool = False) -> SealReport:
    """Give every file written before checksums existed its checksum (and its footer marks), so that reads
    can prove it is the file that was written.

    Each such file is first checked thoroughly (:func:`lumibot_duckdb.store.integrity.check_file`); a damaged
    one is left where it is and listed (``verify`` says why; the next read sets it aside), never sealed.
    A sound one is rewritten with the same bars, range and publish time (so which of two overlapping files
    is newer does not change) and the old file removed, under the series' lock.
    """
    report = SealReport(dry_run=dry_run)
    for key in select_series(store, source=source, symbol=symbol, timeframe=timeframe, symbol_glob=symbol_glob):
        report.series += 1
        with store.writer(key):
            for bar_file in store.files(key):
                if bar_file.sealed:
                    report.already += 1
                    continue
                try:
                    damage = integrity.check_file(bar_file.path, key, bar_file.interval, bar_file.token,
                                                  thorough=True)
                except FileNotFoundError:
                    continue
                if damage is not None:
                    report.damaged.append(f"{bar_file.path}: {damage}")
                    continue
                report.sealed += 1
                if dry_run:
                    continue
                with _store_error(f"seal {bar_file.path}"):
                    table = _as_store_schema(pq.read_table(bar_file.path))
                    store.backend.publish(key, bar_file.partition, table, bar_file.interval,
                                          published=bar_file.token)
                    store.backend.remove([bar_file])
    return report


def _as_store_schema(table: pa.Table) -> pa.Table:
    """A checked file's table in exactly the store's schema, keeping its own marks (an empty answer's)."""
    kept = {k: v for k, v in (table.schema.metadata or {}).items() if k.startswith(b"lumibot_duckdb.")}
    columns = [table.column(f.name).cast(f.type) for f in ARROW_SCHEMA]
    return pa.Table.from_arrays(columns, schema=ARROW_SCHEMA).replace_schema_metadata(kept or None)


# -- forget-empty ------------------------------------------------------------------------------------
@dataclass
class ForgetReport:
    series: int = 0
    files_removed: int = 0
    ranges: list[str] = field(default_factory=list)
    dry_run: bool = False


def forget_empty(store: DuckDBDataStorage, /, *, source: str | None = None, symbol: str | None = None,
                 timeframe: str | None = None, symbol_glob: str | None = None, start: Any = None,
                 end: Any = None, dry_run: bool = False) -> ForgetReport:
    """Forget the empty answers (files with no bars) of the selected series over ``[start, end)`` (default:
    all time), so the next request for that time asks the provider again. At least one filter is required.

    An empty file that reaches outside ``[start, end)`` is replaced by empty files for the parts outside
    (with the marks it had), published before it is removed, under the series' lock. Files with bars are
    never touched (``prune`` removes those).
    """
    if source is None and symbol is None and timeframe is None and symbol_glob is None:
        raise ConfigError("forget-empty needs --source, --symbol, --symbol-glob and/or --timeframe: say which "
                          "series' empty answers to ask again.")
    window = Interval(parse_time(start) if start is not None else utc("1677-09-22"),
                      parse_time(end) if end is not None else utc("2262-04-11"))  # (naive: Lumibot's zone)
    if window.empty:
        raise ConfigError(f"--start {start} is not before --end {end}.")
    report = ForgetReport(dry_run=dry_run)
    for key in select_series(store, source=source, symbol=symbol, timeframe=timeframe, symbol_glob=symbol_glob):
        report.series += 1
        with store.writer(key) as writer:
            marks = {a.file.path: a for a in writer.empty_answers(window)}
            empty = [f for f in store.files(key, window) if _rows(f) == 0]
            for bar_file in empty:
                part = bar_file.interval.intersection(window)
                if part is None:
                    continue
                report.files_removed += 1
                report.ranges.append(f"{key}: {part}")
                if dry_run:
                    continue
                answer = marks.get(bar_file.path)
                for rest in missing_ranges([window], bar_file.interval):
                    if answer is not None:
                        writer.record_empty(rest, asked=answer.asked, times=answer.answers)
                    else:
                        writer.write(empty_bars(), covered=rest)
                writer.remove([bar_file])
    return report


def _rows(bar_file: BarFile) -> int | None:
    footer = read_footer(str(bar_file.path))
    return None if footer is None else footer.num_rows
