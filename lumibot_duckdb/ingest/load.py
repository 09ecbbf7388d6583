"""Load bar files people already own (vendor CSV dumps, exchange exports) into the store.

>>> report = ingest(store, ["data/SPY_1d_2019.csv", "dumps/"])        # doctest: +SKIP
>>> report.rows_added, report.rows_present                             # doctest: +SKIP

**Inputs**: CSV, zstd-compressed CSV (``.csv.zst``) and Parquet; files or folders (searched
recursively for those extensions). **Layouts**, recognised by their header (or forced with
``layout=``): Yahoo (``Date,Open,High,Low,Close,Adj Close,Volume,Dividends,Stock Splits``),
Polygon (``t,o,h,l,c,v,vw,n`` with epoch ``t``, or ``timestamp,…,vwap,transactions``), Alpaca
(``timestamp,…,trade_count,vwap``) and generic (``timestamp|datetime|date|time|ts`` and
``open,high,low,close[,volume]``, any case). pandas' own output works as it is: ``df.to_csv()`` and
``df.to_parquet()`` of bars with an unnamed DatetimeIndex (an unnamed first column is the time).
Any other header: name the columns with ``time_column=`` and ``columns={"close": "Adj Close"}``
(CLI: ``--time-column``, ``--column close="Adj Close"``). The delimiter (``, ; tab |``) is read from
the header.

**Times**: naive timestamps are in ``timezone`` (default: Lumibot's default time zone,
America/New_York, the rule of the whole package — crypto included: pass ``timezone="UTC"`` for an
exchange export in UTC); timestamps with an offset (``-05:00``, ``Z``) keep it; integers are epoch
seconds, milliseconds, microseconds or nanoseconds (told apart by magnitude). Daily bars are stamped
at 00:00 of their date — the trading day's start: in ``timezone`` for stocks and everything else, in
UTC for crypto (whose days are UTC days, as exchanges count them) — as every daily series of the
store (a daily bar stamped at 00:00 UTC is taken as that UTC date; one stamped at any other time as
its local date).

**Series**: symbol from ``symbol=``, else a ``symbol``/``ticker`` column (several symbols per file
are fine), else the file name's first ``_``-separated part when it is written in capitals or followed by a
timeframe (``SPY_1d_2019.csv``, ``AAPL.csv``, ``spy_1m.csv``; not ``data.csv``);
timeframe from ``timeframe=``, else the file name (``1m``, ``1h``, ``1d``, ``minute``, ``daily``…),
else the bars' most common spacing (exactly 1 minute, 1 hour or 1 day). Weekly, monthly and longer
bars (by name, ``SPY_1wk.csv``, or by spacing) are refused with what to do instead: the store keeps
the minute, hour and day bars Lumibot backtests on.

**Validation** finds rows with unparseable values, missing prices, negative volumes, prices at or
below zero for asset types whose prices are positive (stocks, crypto...; futures and spreads may go
negative: the rules of :mod:`lumibot_duckdb.store.validate`, the same ones provider answers pass),
high/low that do not bracket open and close, bars that start in the future, duplicate timestamps
(identical or conflicting) and unsorted rows. ``on_invalid="reject"`` raises
:class:`~lumibot_duckdb.errors.BarsValidationError` naming the file, the problems and example
line numbers, and stores nothing of that file; ``"repair"`` drops invalid rows, sorts, and keeps
the last of duplicate rows (as the store does), counting every repair in the report.

**Coverage, idempotency**: a file answers for ``[first bar, last bar + one bar)`` of its series
(one bar: a minute, an hour, or up to the next local midnight for daily bars): a time inside
that range without a bar is recorded as "no bar there". Only the parts of that range the series
does not already cover are written, so ingesting a file twice adds nothing, and a file
overlapping stored data adds only its new part. Where a file and the store overlap, **stored
data wins**; bars that differ from it are counted as ``conflicts`` (bars equal to it as
``present``).

**Atomicity**: files are ingested one after the other, each under the locks of its series; every
write is an atomic publish. If a file fails (invalid, unreadable, disk full), the files this
ingest published for it are removed before the error is raised: earlier files stay whole, the
failed one is absent. After a hard crash (kill -9) a large file may be partly present; ingesting
it again adds exactly the rest.

**Memory**: large files are read in blocks (``chunk_bytes``, 8 MiB of CSV by default) and
written one block at a time: memory depends on the block size, not on the file size.

**Speed**: a CSV is read by Arrow's streaming reader (1 MiB at a time, joined into blocks cut at the same
lines as the text read) with the time and number columns typed as they are read (a file with a cell that does
not read as its type, e.g. ``n/a`` or ``12,5``, or any other trouble for that reader, is read again with every
cell as text, and reported exactly as before). Three things overlap: the next block is parsed (in a thread;
Arrow does not hold the GIL) while the current one is checked, and the block before is written to Parquet.

**Progress** counts rows stored, block by block (a Parquet file's rows are known from its footer,
a CSV's estimated from its first lines and corrected when the file is done).
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import os
import sys
import time
import zoneinfo
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lumibot_duckdb.config import default_timezone
from lumibot_duckdb.errors import BarsValidationError, ConfigError, LumibotDuckDBError, StoreError, spell
from lumibot_duckdb.ingest.formats import (
    _NUMBERS,
    _PRICES,
    EXTENSIONS,
    LAYOUTS,
    TypedReadFailed,
    _as_ns,
    _as_strings,
    _columns,
    _daily_stamps,
    _format_of,
    _infer_timeframe,
    _name_parts,
    _numbers,
    _read_blocks,
    _spacing,
    _times,
    estimate_rows,
)
from lumibot_duckdb.store import DuckDBDataStorage
from lumibot_duckdb.store.coverage import (
    TIMEFRAMES,
    Interval,
    SeriesKey,
    canonical_timeframe,
    missing_ranges,
    unsupported_timeframe_message,
)
from lumibot_duckdb.store.memory import release_unused
from lumibot_duckdb.store.validate import row_problems

__all__ = ["LAYOUTS", "FileReport", "IngestReport", "find_files", "ingest"]

CHUNK_BYTES = 8 << 20
"""Measured on the 10M-bar minute CSV of ``benchmarks/bench_ingest.py`` (one run each, shared machine): peak RSS
264 MB with 8 MiB blocks, 397 MB with 16 MiB, flat over the file; about the same speed. (Blocks are parsed one
ahead and written one behind: memory depends on the block size, not on the file's; 277 MB for 10M bars, 268 MB
for 2M with the streaming reader.) Smaller blocks make more files: a year of minute bars in more than
``COMPACT_AFTER_FILES`` (8) files is rewritten by the compaction that ends the ingest."""
PROBLEMS = {
    "unparseable": "unparseable time or number",
    "missing": "missing price or volume",
    "infinite": "infinite price, volume or trade count",
    "negative": "negative price (for an asset type whose prices are positive), volume or trade count",
    "zero_price": "price of zero (for an asset type whose prices are positive)",
    "ohlc": "high/low not bracketing open and close",
    "future": "bar starting in the future",
    "duplicate": "duplicate row (same time, same values)",
    "conflicting_duplicate": "duplicate time with different values",
    "unsorted": "row earlier than the row before it",
}
"""Validation findings, by the name used in :attr:`FileReport.issues` and :attr:`FileReport.repairs`."""

WRITES_AHEAD = 1
"""Blocks parsed ahead of the one being written: memory is that of a few blocks, whatever the file's size."""
_COMPARED = ("open", "high", "low", "close", "volume")
_STEP = {"minute": pd.Timedelta(minutes=1), "hour": pd.Timedelta(hours=1)}
_EXAMPLES = 3


def _now() -> pd.Timestamp:
    """The wall clock (a function so tests can stand in a fixed time)."""
    return pd.Timestamp.now(tz="UTC")


# -- reports -----------------------------------------------------------------------------------
@dataclass
class FileReport:
    """What ingesting one file found and did."""

    path: str
    format: str
    layout: str = ""
    series: list[str] = field(default_factory=list)
    rows_read: int = 0
    rows_added: int = 0
    rows_present: int = 0
    conflicts: int = 0
    issues: dict[str, int] = field(default_factory=dict)
    repairs: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)
    covered: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def status(self) -> str:
        if self.rows_read == 0:
            return "empty"
        return "ingested" if self.rows_added else "unchanged"

    def _found(self, problem: str, rows: np.ndarray, lines: np.ndarray,
               detail: Callable[[int], str] | None = None) -> None:
        """Count rows with ``problem``; keep the first few as examples (``detail(i)`` describes row ``i``)."""
        count = int(rows.sum())
        if not count:
            return
        self.issues[problem] = self.issues.get(problem, 0) + count
        examples = self.examples.setdefault(problem, [])
        for i in np.flatnonzero(rows)[: max(0, _EXAMPLES - len(examples))]:
            text = detail(int(i)) if detail is not None else ""
            examples.append(f"{'line' if self.format != 'parquet' else 'row'} {int(lines[i])}"
                            + (f": {text}" if text else ""))


@dataclass
class IngestReport:
    """What an :func:`ingest` call did, file by file. Totals are properties."""

    store: str
    on_invalid: str
    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_read(self) -> int:
        return sum(f.rows_read for f in self.files)

    @property
    def rows_added(self) -> int:
        return sum(f.rows_added for f in self.files)

    @property
    def rows_present(self) -> int:
        return sum(f.rows_present for f in self.files)

    @property
    def conflicts(self) -> int:
        return sum(f.conflicts for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        files = [{**asdict(f), "status": f.status} for f in self.files]
        return {"store": self.store, "on_invalid": self.on_invalid, "seconds": round(self.seconds, 3),
                "rows_read": self.rows_read, "rows_added": self.rows_added, "rows_present": self.rows_present,
                "conflicts": self.conflicts, "files": files}


# -- public entry point ------------------------------------------------------------------------
def ingest(
    store: DuckDBDataStorage | str | os.PathLike[str] | None,
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    /,
    *,
    source: str = "ingest",
    symbol: str | None = None,
    timeframe: str | None = None,
    asset_type: str = "stock",
    quote: str = "USD",
    exchange: str = "",
    adjustment: str = "raw",
    timezone: str | None = None,
    layout: str = "auto",
    time_column: str | None = None,
    columns: Mapping[str, str] | None = None,
    on_invalid: str = "reject",
    progress: bool | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> IngestReport:
    """Ingest bar files into ``store`` (a store or its folder); see the module docstring for the rules.

    ``time_column`` names the file column with the bar times, ``columns`` maps bar fields to file
    columns (``{"close": "Adj Close", "volume": "Vol"}``); both win over what the header suggests.
    ``progress``: a tqdm bar on stderr counting rows stored; ``None`` shows it when stderr is a terminal.
    Raises :class:`BarsValidationError` for an unusable or (with ``on_invalid="reject"``) invalid
    file, :class:`ConfigError` for options that cannot be used or a series that cannot be named,
    :class:`StoreError` when the store cannot be written. Files before the failing one stay ingested.
    """
    if on_invalid not in ("reject", "repair"):
        raise ConfigError(f"{spell('on_invalid', on_invalid)}: use 'reject' or 'repair'.")
    if layout not in LAYOUTS:
        raise ConfigError(f"{spell('layout', layout)}: use one of {', '.join(LAYOUTS)}.")
    tz = timezone or default_timezone()
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{spell('timezone', tz)} is not a time zone name; use e.g. America/New_York or "
                          "UTC.") from None
    overrides = {str(k).strip(): str(v) for k, v in (columns or {}).items()}
    if time_column is not None:
        overrides["ts"] = time_column
    wanted_timeframe = canonical_timeframe(timeframe) if timeframe else None
    if chunk_bytes < 1024:
        raise ConfigError("chunk_bytes must be at least 1024.")
    files = find_files(paths)
    own = not isinstance(store, DuckDBDataStorage)
    db = store if isinstance(store, DuckDBDataStorage) else DuckDBDataStorage(store)
    report = IngestReport(store=db.location, on_invalid=on_invalid)
    started = time.perf_counter()
    day_tz = "UTC" if str(asset_type).strip().lower() == "crypto" else tz
    options = _Options(source=source, symbol=symbol, timeframe=wanted_timeframe, asset_type=asset_type, quote=quote,
                       exchange=exchange, adjustment=adjustment, tz=tz, day_tz=day_tz, tz_given=timezone is not None,
                       layout=layout, columns=overrides, repair=on_invalid == "repair", chunk_bytes=chunk_bytes)
    show = sys.stderr.isatty() if progress is None else progress
    estimates = [estimate_rows(p, _format_of(p)) if show else None for p in files]
    bar = _progress_bar(None if None in estimates else sum(e or 0 for e in estimates), show)
    try:
        for number, path in enumerate(files):
            file_report = FileReport(path=str(path), format=_format_of(path))
            bar.set_postfix_str(path.name)
            try:
                _FileIngest(db, path, options, file_report, bar.update).run()
                if bar.total is not None and estimates[number] is not None:  # the estimate, now known exactly
                    bar.total += file_report.rows_read - (estimates[number] or 0)
                    bar.refresh()
            except LumibotDuckDBError as exc:
                if not number:
                    raise
                try:
                    again = type(exc)(f"{exc} ({number} earlier file(s) of this ingest are stored; ingesting "
                                      "the same files again adds only what is missing.)")
                except TypeError:
                    raise exc from None
                raise again from exc
            report.files.append(file_report)
    finally:
        bar.close()
        report.seconds = time.perf_counter() - started
        if own:
            db.close()
    return report


def _progress_bar(total: int | None, show: bool) -> Any:
    """The tqdm bar of an ingest: rows stored, on stderr (a function, so tests can watch it). Not shown: a bar that
    counts silently (importing tqdm costs ~0.06 s, and it starts a monitor thread)."""
    if not show:
        return _SilentBar(total)
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=" rows", unit_scale=True, disable=not show, desc="ingest", file=sys.stderr,
                mininterval=0.5)


class _SilentBar:
    """What the ingest uses of a tqdm bar, showing nothing."""

    def __init__(self, total: int | None) -> None:
        self.total, self.n = total, 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix_str(self, text: str) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def find_files(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The files to ingest: each file given, and the bar files found recursively in each folder given."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not items:
        raise ConfigError("No file or folder to ingest was given.")
    found: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p) != "")
            if not inside:
                raise ConfigError(f"{path} holds no {', '.join(EXTENSIONS)} file.")
            found.extend(inside)
        elif path.is_file():
            if _format_of(path) == "":
                raise ConfigError(f"{path} is not a {', '.join(EXTENSIONS)} file; rename it or convert it.")
            found.append(path)
        else:
            raise ConfigError(f"{path} does not exist.")
    return list(dict.fromkeys(found))


def _read_ahead(items: Iterator[pa.Table | pa.RecordBatch], reader: ThreadPoolExecutor,
                ) -> Iterator[pa.Table | pa.RecordBatch]:
    """``items``, the next one read by ``reader`` while the current one is checked (Arrow parses without the GIL).
    A reading error is raised where that item would come; one item at most is read ahead."""
    done = object()
    ahead = reader.submit(next, items, done)
    try:
        while True:
            item = ahead.result()
            if item is done:
                return
            ahead = reader.submit(next, items, done)
            yield item
    finally:
        with contextlib.suppress(BaseException):
            ahead.result()
        close = getattr(items, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True)
class _Options:
    source: str
    symbol: str | None
    timeframe: str | None
    asset_type: str
    quote: str
    exchange: str
    adjustment: str
    tz: str
    day_tz: str
    tz_given: bool
    layout: str
    columns: dict[str, str]
    repair: bool
    chunk_bytes: int


# -- one file ----------------------------------------------------------------------------------
class _FileIngest:
    """Ingest of one file: parse and validate block by block, write the parts the store lacks."""

    def __init__(self, store: DuckDBDataStorage, path: Path, options: _Options, report: FileReport,
                 advance: Callable[[int], object]) -> None:
        self.store, self.path, self.opt, self.report, self.advance = store, path, options, report, advance
        self.notes: set[str] = set()
        self.stack = contextlib.ExitStack()
        self.writers: dict[SeriesKey, Any] = {}
        self.before: dict[SeriesKey, set[Path]] = {}
        self.existing: dict[SeriesKey, list[Interval]] = {}
        self.pending: dict[SeriesKey, pd.DataFrame] = {}
        self.last: dict[SeriesKey, np.datetime64] = {}
        self.covered: dict[SeriesKey, list[pd.Timestamp]] = {}
        self.timeframe = options.timeframe
        self.typed = False
        self.pool: ThreadPoolExecutor | None = None
        self.writes: collections.deque[Future[int]] = collections.deque()
        self.failed = False
        self.file_symbol, self.file_timeframe, self.file_unsupported = _name_parts(path)
        self.spacing_checked = False

    def run(self) -> None:
        started = time.perf_counter()
        try:
            with self.stack:
                try:
                    try:
                        self._ingest(typed=self.report.format != "parquet")
                    except TypedReadFailed:  # a cell Arrow cannot read as its type: every cell read as text
                        self._roll_back()
                        self._restart()
                        self._ingest(typed=False)
                except BaseException:
                    self._roll_back()
                    raise
        except (OSError, StoreError) as exc:
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            raise StoreError(f"Ingest of {self.path} failed ({cause}); nothing of this file is stored (the parts "
                             "already published were removed). Check free space and permissions of the store "
                             "folder, then ingest it again.") from exc
        finally:
            self.report.seconds = time.perf_counter() - started
        naive = f"naive timestamps read in {self.opt.tz}"
        if naive in self.notes and self.opt.asset_type.strip().lower() == "crypto" and not self.opt.tz_given:
            self.notes.discard(naive)
            self.notes.add(f"{naive} (Lumibot's default time zone; crypto exports are often in UTC: if so, pass "
                           f"{spell('timezone', 'UTC')})")
        self.report.notes = sorted(self.notes)
        self.report.covered = [f"{k}: [{v[0].isoformat()}, {v[1].isoformat()})" for k, v in self.covered.items()]
        self.report.series = [str(k) for k in self.covered]

    def _restart(self) -> None:
        """Forget what a first read of the file found (its published parts were removed by ``_roll_back``)."""
        fresh = FileReport(path=self.report.path, format=self.report.format)
        for name in fields(FileReport):
            setattr(self.report, name.name, getattr(fresh, name.name))
        self.notes.clear()
        self.pending.clear()
        self.last.clear()
        self.covered.clear()
        self.timeframe = self.opt.timeframe
        self.typed = False
        self.failed = False
        self.spacing_checked = False

    def _ingest(self, *, typed: bool) -> None:
        """Read, check and write the file; ``typed``: Arrow parses the time and number columns while reading
        (several times faster), and a cell that does not parse raises :class:`TypedReadFailed`."""
        self.typed = typed
        types = self._column_types if typed else None
        # (progress counts rows stored, below, not bytes read ahead)
        names, batches = _read_blocks(self.path, self.report.format, self.opt.chunk_bytes, lambda _: None,
                                      types=types)
        layout, mapping, found = _columns(names, self.opt.layout, self.path, self.opt.columns)
        self.notes.update(found)
        self.report.layout = layout
        ignored = [n for n in names if n not in mapping.values()]
        if ignored:
            self.notes.add(f"columns ignored: {', '.join(ignored[:8])}")
        offset = 0
        with ThreadPoolExecutor(1, thread_name_prefix="lumibot-duckdb-read") as reader:
            for batch in _read_ahead(batches, reader):
                if batch.num_rows:
                    self.report.rows_read = offset + batch.num_rows
                    self._block(batch, mapping, offset)
                    offset += batch.num_rows
                    self.advance(batch.num_rows)  # after the block is validated and its bars handed to the store
        if offset == 0:
            self.notes.add("no rows (header only)")
        self._problems_or_raise()
        for key in list(self.pending):
            self._flush(key, None)
        self._written(0)

    def _column_types(self, names: list[str]) -> dict[str, pa.DataType]:
        """The time column as naive timestamps, the number columns as float64 (what the text would parse to)."""
        try:
            _, mapping, _ = _columns(names, self.opt.layout, self.path, self.opt.columns)
        except BarsValidationError:
            return {}  # (the text read reports it)
        types: dict[str, pa.DataType] = {mapping["ts"]: pa.timestamp("ns")}
        types.update({mapping[name]: pa.float64() for name in _NUMBERS if name in mapping})
        return types

    # -- a block of rows ---------------------------------------------------------------------
    def _block(self, batch: pa.RecordBatch | pa.Table, mapping: dict[str, str], offset: int) -> None:
        n = batch.num_rows
        first_line = 2 if self.report.format != "parquet" else 1
        lines = np.arange(offset + first_line, offset + first_line + n, dtype=np.int64)
        ts = _as_ns(_times(batch.column(mapping["ts"]), self.opt.tz, self.notes))
        timeframe = self._timeframe(ts)
        if timeframe == "day":
            ts = _daily_stamps(ts, self.opt.day_tz, self.notes)
        columns: dict[str, Any] = {"ts": ts, "line": lines}
        unparseable = np.isnat(ts)
        missing = np.zeros(n, dtype=bool)
        unreadable: dict[str, np.ndarray] = {}
        for name in _NUMBERS:
            if name not in mapping:
                continue
            values, empty, bad = _numbers(batch.column(mapping[name]))
            if name == "trade_count":  # an integer column: counts beyond int64 are not counts
                with np.errstate(invalid="ignore"):
                    bad |= np.abs(values) >= 2.0**62
                values = np.where(bad, np.nan, values)
            if self.typed and bad.any():  # (reported with the cell's own text, as read as text)
                raise TypedReadFailed(f"{mapping[name]}: unparseable value")
            columns[name] = values
            unreadable[mapping[name]] = bad
            unparseable |= bad
            if name in (*_PRICES, "volume"):
                missing |= empty
        if "volume" not in columns:
            columns["volume"] = np.zeros(n)
        count = np.round(columns["trade_count"]) if "trade_count" in columns else np.full(n, np.nan)
        for name in _NUMBERS:  # every schema column in its final dtype: the store then only checks them
            if name == "trade_count":
                absent = np.isnan(count)
                counts = np.zeros(n, dtype="int64") if absent.all() else np.where(absent, 0, count).astype("int64")
                columns[name] = pd.arrays.IntegerArray(counts, absent)
            elif name not in columns:
                columns[name] = np.full(n, np.nan)
        frame = pd.DataFrame(columns, copy=False)
        missing &= ~unparseable
        o, h, lo, c, v = (columns[k] for k in ("open", "high", "low", "close", "volume"))
        # the store's rules for every bar (provider answers pass the same ones: lumibot_duckdb.store.validate)
        found = row_problems(o, h, lo, c, v, count, asset_type=self.opt.asset_type, starts=ts,
                             now=_now().tz_localize(None).to_datetime64(), skip=unparseable | missing)
        missing |= found.pop("missing")
        invalid = unparseable | missing
        for mask in found.values():
            invalid |= mask
        r = self.report
        def raw(i: int) -> str:
            """The cells of row ``i`` that could not be read."""
            names = [mapping["ts"]] if np.isnat(ts[i]) else []
            names += [column for column, bad in unreadable.items() if bad[i]]
            return ", ".join(f"{n}={str(batch.column(n)[i].as_py())[:40]!r}" for n in names)

        r._found("unparseable", unparseable, lines, raw)
        r._found("missing", missing, lines)
        for problem, mask in found.items():
            r._found(problem, mask, lines)
        if self.opt.repair:
            for problem in ("unparseable", "missing", *found):
                if problem in r.issues:
                    r.repairs[f"{problem}: rows dropped"] = r.issues[problem]
        if invalid.any():
            frame = frame[~invalid]
        symbols = self._symbols(batch, mapping, invalid)
        self._problems_or_raise()
        if frame.empty:
            return
        if isinstance(symbols, str):
            self._series_rows(self._key(symbols, timeframe), frame)
            return
        for symbol, rows in frame.groupby(symbols, sort=False):
            self._series_rows(self._key(str(symbol), timeframe), rows)

    def _timeframe(self, ts: np.ndarray) -> str:
        if self.timeframe is None:
            spacing = _spacing(ts)
            kind = self.file_unsupported or spacing
            if kind is not None and (self.file_timeframe is None or spacing is not None):
                how = "its name says so" if self.file_unsupported else "its bars are that far apart"
                raise ConfigError(f"{self.path} holds {kind} bars ({how}). {unsupported_timeframe_message(kind)}")
            self.timeframe = self.file_timeframe or _infer_timeframe(ts, self.opt.day_tz)
            if self.timeframe is None:
                raise ConfigError(f"Cannot tell the timeframe of {self.path}: pass {spell('timeframe')} one of "
                                  f"{', '.join(TIMEFRAMES)}, or name the file like SPY_1m_2020.csv.")
            if self.file_timeframe is None and self.opt.timeframe is None:
                self.notes.add(f"timeframe {self.timeframe} inferred from the bars' spacing")
        elif self.opt.timeframe is not None and not self.spacing_checked and (kind := _spacing(ts)):
            self.notes.add(f"the bars are {kind} ({spell('timeframe', self.timeframe)} was given): "
                           "is that what the file holds?")
        self.spacing_checked = True
        return self.timeframe

    def _symbols(self, batch: pa.RecordBatch | pa.Table, mapping: dict[str, str],
                 invalid: np.ndarray) -> str | np.ndarray:
        """One symbol for the whole block, or the symbol of each valid row."""
        if "symbol" in mapping:
            values = pd.Series(_as_strings(batch.column(mapping["symbol"])).to_pandas(), dtype=object)[~invalid]
            values = values.where(values.astype(bool) & values.notna(), None)
            if self.opt.symbol:
                if values.dropna().nunique() > 1:
                    raise ConfigError(f"{self.path} holds several symbols in column {mapping['symbol']!r}; "
                                      f"do not pass {spell('symbol')} for it (each symbol becomes its own series).")
                return self.opt.symbol
            if values.isna().any():
                raise BarsValidationError(f"{self.path}: {int(values.isna().sum())} row(s) have no "
                                          f"{mapping['symbol']!r}; fill it or pass {spell('symbol')}.")
            return str(values.iloc[0]) if values.nunique() == 1 else values.to_numpy()
        symbol = self.opt.symbol or self.file_symbol
        if not symbol:
            raise ConfigError(f"Cannot tell the symbol of {self.path}: pass {spell('symbol')}, add a symbol "
                              "column, or name the file like SPY_1d_2019.csv.")
        return symbol

    def _key(self, symbol: str, timeframe: str) -> SeriesKey:
        key = SeriesKey(source=self.opt.source, symbol=symbol, timeframe=timeframe, asset_type=self.opt.asset_type,
                        quote=self.opt.quote, exchange=self.opt.exchange, adjustment=self.opt.adjustment)
        if key not in self.writers:
            self.writers[key] = self.stack.enter_context(self.store.writer(key))
            self.before[key] = {f.path for f in self.store.files(key)}
            self.existing[key] = self.store.coverage(key)
        return key

    def _series_rows(self, key: SeriesKey, rows: pd.DataFrame) -> None:
        """Sort and de-duplicate (recording what was found), then hand the bars on with one block of lookahead."""
        ts = rows["ts"].to_numpy()
        lines = rows["line"].to_numpy()
        previous = self.last.get(key)
        increasing = len(ts) < 2 or bool((ts[1:] > ts[:-1]).all())  # sorted, no repeated time (the usual file)
        earlier = np.zeros(len(ts), dtype=bool)
        if len(ts) > 1 and not increasing:
            earlier[1:] = ts[1:] < np.maximum.accumulate(ts)[:-1]
        if previous is not None:
            earlier |= ts < previous
        self.report._found("unsorted", earlier, lines)
        if not increasing:
            rows = rows.sort_values("ts", kind="stable")
        duplicated = np.zeros(len(ts), dtype=bool) if increasing else rows["ts"].duplicated(keep="last").to_numpy()
        if previous is not None:
            duplicated |= rows["ts"].to_numpy() == previous
        if duplicated.any():
            values = rows[[c for c in rows.columns if c != "line"]]
            same_as_next = values.duplicated(keep="last").to_numpy() & duplicated
            self.report._found("duplicate", same_as_next, rows["line"].to_numpy())
            self.report._found("conflicting_duplicate", duplicated & ~same_as_next, rows["line"].to_numpy())
        self._problems_or_raise()
        if self.opt.repair:
            for problem, what in (("unsorted", "rows sorted"), ("duplicate", "rows dropped"),
                                  ("conflicting_duplicate", "earlier rows dropped, last kept")):
                if problem in self.report.issues:
                    self.report.repairs[f"{problem}: {what}"] = self.report.issues[problem]
            rows = rows[~duplicated]
        bars = pd.DataFrame({name: rows[name].array for name in rows.columns if name not in ("ts", "line")},
                            index=pd.DatetimeIndex(rows["ts"].to_numpy(), name="ts").tz_localize("UTC"), copy=False)
        if bars.empty:
            return
        self.last[key] = max(bars.index[-1].to_datetime64(), previous) if previous is not None else \
            bars.index[-1].to_datetime64()
        pending = self.pending.get(key)
        if pending is not None and bars.index[0] <= pending.index[-1]:  # late rows across blocks (repair mode)
            late = bars[bars.index <= pending.index[-1]]
            bars = bars[bars.index > pending.index[-1]]
            merge = late[late.index >= pending.index[0]]
            pending = pd.concat([pending, merge]).sort_index(kind="stable")
            pending = pending[~pending.index.duplicated(keep="last")]
            self.pending[key] = pending
            older = late[late.index < pending.index[0]]
            if not older.empty:
                self._emit(key, older, Interval(older.index[0], self._after(key, older.index[-1])))
            if bars.empty:
                return
        if pending is not None:
            self._flush(key, bars.index[0])
        self.pending[key] = bars

    def _after(self, key: SeriesKey, last: pd.Timestamp) -> pd.Timestamp:
        """Start of the bar after ``last``: one minute or hour later, or the next local midnight."""
        if key.timeframe in _STEP:
            return last + _STEP[key.timeframe]
        local = last.tz_convert(self.opt.day_tz)
        following = pd.Timestamp(local.date() + dt.timedelta(days=1)).tz_localize(
            self.opt.day_tz, ambiguous=True, nonexistent="shift_forward")
        return following.tz_convert("UTC")

    def _flush(self, key: SeriesKey, until: pd.Timestamp | None) -> None:
        bars = self.pending.pop(key)
        end = until if until is not None else self._after(key, bars.index[-1])
        self._emit(key, bars, Interval(bars.index[0], end))

    def _emit(self, key: SeriesKey, bars: pd.DataFrame, covered: Interval) -> None:
        """Write the parts of ``covered`` the series lacked before this file; compare the rest with the store."""
        span = self.covered.get(key)
        self.covered[key] = [min(span[0], covered.start), max(span[1], covered.end)] if span else \
            [covered.start, covered.end]
        written = np.zeros(len(bars), dtype=bool)
        index = bars.index  # (sorted, unique)
        for gap in missing_ranges(self.existing[key], covered):
            first, stop = index.searchsorted([gap.start, gap.end])
            self._write(key, bars if stop - first == len(bars) else bars.iloc[first:stop], gap)
            written[first:stop] = True
        self.report.rows_added += int(written.sum())
        rest = bars[~written] if not written.all() else bars.iloc[:0]
        if rest.empty:
            return
        stored = self.store.read(key, rest.index[0], rest.index[-1] + pd.Timedelta(1, "us"), columns=list(_COMPARED))
        stored.index = pd.DatetimeIndex(stored.index).as_unit("ns")
        joined = rest[list(_COMPARED)].join(stored, how="left", rsuffix="_stored")
        same = np.ones(len(joined), dtype=bool)
        for name in _COMPARED:
            a, b = joined[name].to_numpy(dtype="float64"), joined[f"{name}_stored"].to_numpy(dtype="float64")
            same &= np.isclose(a, b, rtol=1e-12, atol=0.0)
        self.report.rows_present += int(same.sum())
        self.report.conflicts += int((~same).sum())

    def _problems_or_raise(self) -> None:
        if self.opt.repair or not self.report.issues:
            return
        r = self.report
        found = "; ".join(f"{PROBLEMS[p]}: {count:,} row(s) ({', '.join(r.examples[p])}"
                          f"{', …' if count > len(r.examples[p]) else ''})" for p, count in r.issues.items())
        raise BarsValidationError(
            f"{self.path}: {found}, in the {r.rows_read:,} rows read. Nothing of this file was stored. Fix the "
            f"file, or ingest with {spell('on_invalid', 'repair')} to drop invalid rows, sort and keep the "
            "last of duplicate times, each repair counted in the report.")

    def _write(self, key: SeriesKey, bars: pd.DataFrame, covered: Interval) -> None:
        """Publish ``bars`` in the background (encoding Parquet overlaps reading the next block), in order."""
        if self.pool is None:
            self.pool = self.stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="lumibot-duckdb-ingest"))
        self.writes.append(self.pool.submit(self._publish, key, bars, covered))
        self._written(WRITES_AHEAD)

    def _publish(self, key: SeriesKey, bars: pd.DataFrame, covered: Interval) -> int:
        if self.failed:  # a write before this one failed: nothing more is written (it is all rolled back)
            return 0
        try:
            return int(self.writers[key].write(bars, covered=covered))
        except BaseException:
            self.failed = True
            raise

    def _written(self, ahead: int) -> None:
        """Wait until at most ``ahead`` writes are pending (memory stays that of a few blocks); raise their errors."""
        while len(self.writes) > ahead:
            self.writes.popleft().result()
        release_unused()

    def _roll_back(self) -> None:
        """Remove what this ingest published for the file (it holds the series' locks, so nobody else did)."""
        while self.writes:  # (finished or failed: nothing is being written while files are removed)
            with contextlib.suppress(Exception):
                self.writes.popleft().result()
        for key, before in self.before.items():
            with contextlib.suppress(OSError, StoreError):
                mine = [f for f in self.store.files(key) if f.path not in before]
                self.store.remove(mine)

