"""Push one store into another (a folder into S3, S3 into a folder, …): only what the target lacks.

>>> report = sync(DuckDBDataStorage("./bars"), DuckDBDataStorage("s3://team/bars", role="write"))  # doctest: +SKIP

For each series of the source, the ranges its files cover that the target does not cover are read from
the source (as any reader sees them: overlaps deduplicated, newest bar first) and written to the target
under the target's series lock (on S3, its lease), one source file's range at a time, so memory stays
bounded by a file. A range both stores cover keeps the target's bars: the target is the shared truth,
and nothing in it is replaced. Notes the target has not got are copied. Idempotent: a second run finds
every range covered and writes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lumibot_duckdb.store.coverage import Interval, missing_ranges
from lumibot_duckdb.store.store import DuckDBDataStorage


@dataclass
class SyncReport:
    source: str
    target: str
    dry_run: bool = False
    series: int = 0
    series_pushed: int = 0
    series_current: int = 0
    ranges: int = 0
    bars: int = 0
    notes: int = 0
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)


def sync(source: DuckDBDataStorage, target: DuckDBDataStorage, /, *, dry_run: bool = False) -> SyncReport:
    """Write into ``target`` every range (and note) ``source`` holds that ``target`` lacks; see the module."""
    started = time.perf_counter()
    report = SyncReport(source.shown_location, target.shown_location, dry_run=dry_run)
    for key in source.series():
        files = sorted(source.files(key), key=lambda f: (f.interval.start, f.token))
        if not files:
            continue
        report.series += 1
        if not _lacking(files, target.coverage(key)):  # a look without the lock first: nothing to do, no lease
            report.series_current += 1
            continue
        pushed = bars = 0
        if dry_run:
            gaps = _lacking(files, target.coverage(key))
            pushed, bars = len(gaps), sum(len(source.read(key, g.start, g.end, columns=["close"])) for g in gaps)
        else:
            with target.writer(key) as writer:
                for bar_file in files:
                    for gap in missing_ranges(writer.coverage(), bar_file.interval):
                        bars += writer.write(source.read(key, gap.start, gap.end), covered=gap)
                        pushed += 1
        if pushed:
            report.series_pushed += 1
            report.ranges += pushed
            report.bars += bars
            report.details.append(f"{key}: {pushed} range(s), {bars:,} bars")
        else:
            report.series_current += 1
    for name in source.notes():
        if target.read_note(*name) is None:
            document = source.read_note(*name)
            if document is None:
                continue
            if not dry_run:
                target.write_note(document, *name)
            report.notes += 1
    report.seconds = time.perf_counter() - started
    return report


def _lacking(files: list, covered: list[Interval]) -> list[Interval]:
    gaps: list[Interval] = []
    for bar_file in files:
        for gap in missing_ranges(covered + gaps, bar_file.interval):
            gaps.append(gap)
    return gaps
