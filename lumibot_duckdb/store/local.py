"""Where bars live on disk, and how a file gets there whole.

::

    <root>/
      bars/<source>/<asset_type>/<symbol>/<quote>/<exchange>/<timeframe>/<adjustment>/<partition>/
          <start>_<end>_<token>.parquet     one published answer: bars of [start, end), maybe zero rows
      .tmp/        files being written; moved into bars/ with one rename, never visible half-written
      .locks/      one lock file per series, held while a process fetches or compacts that series
      .quarantine/ damaged files set aside by a reader (kept for inspection, never deleted by us)
      meta/        small JSON documents (e.g. the day a series' splits were last checked)

The covered range of a file is in its name, so a file's data and its coverage are published by
the same atomic rename: a crash can leave a stray file in ``.tmp/``, never a half-written bar file
or coverage that claims bars the store does not hold. ``<token>`` is a publish-time-ordered id:
where two files cover the same time (two processes fetched the same gap), the newer file wins. Its
first 16 hex digits are the publish time; the last 8 are the CRC-32 of the file's bytes, which every
read checks (:mod:`lumibot_duckdb.store.integrity`; files written before that have 6 random digits
there instead, and are checked by what they carry).

Partitions: intraday series by UTC year, daily series in one partition (``all``); measured in
``benchmarks/bench_layout.py``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow as pa

from lumibot_duckdb.errors import StoreLockTimeout
from lumibot_duckdb.store.coverage import Interval, SeriesKey, utc
from lumibot_duckdb.store.integrity import COVERAGE_MARK, SERIES_MARK, file_checksum, sealed_token, token_checksum
from lumibot_duckdb.store.parquet import read_footer, write_table

if TYPE_CHECKING:
    import pyarrow.parquet as pq

ROW_GROUP_SIZE = 16_384
COMPRESSION = "lz4"
# Byte-stream-split floats and delta-encoded integers: ~35 bytes per bar instead of ~56 with
# zstd alone (benchmarks/bench_layout.py). Key columns are constant per file: dictionary-encoded.
# LZ4 (Parquet's LZ4_RAW) rather than zstd: decoding a file takes ~0.6x the time and writing it ~0.8x, for
# 1-21% more bytes (a year of generated bars: 35.0 against 34.5 B/bar; real minute prices on a tick grid,
# which zstd packs tighter: 8.5 against 7.0). Files written with zstd before are read as they are.
DICTIONARY_COLUMNS = ["source", "symbol", "asset_type", "quote", "exchange", "timeframe", "adjustment", "metadata"]
COLUMN_ENCODINGS = {
    **{c: "BYTE_STREAM_SPLIT" for c in ("open", "high", "low", "close", "volume", "vwap", "adj_close", "dividend",
                                        "split_ratio")},
    "ts": "DELTA_BINARY_PACKED",
    "trade_count": "DELTA_BINARY_PACKED",
}
EMPTY_FIELD = "_"
_KEY_FIELDS = ("source", "asset_type", "symbol", "quote", "exchange", "timeframe", "adjustment")
_STAMP = "%Y%m%dT%H%M%S"

# Statistics (per row group min/max/null count) are written where something reads them: ``ts`` (the reader's row
# groups, the integrity check, status), the key columns (DuckDB skips the files of other series by them: the SQL
# views and macros) and columns with no value at all (the reader then leaves them out). A value column's min/max
# would only slow the write (~10% of it; benchmarks/results/ingest.md): no reader prunes bars by price.
STATISTICS_COLUMNS = ["ts", *_KEY_FIELDS]


def statistics_columns(table: pa.Table) -> list[str]:
    """The columns of ``table`` whose statistics are written (:data:`STATISTICS_COLUMNS` and the all-null ones)."""
    return [*STATISTICS_COLUMNS, *(name for name in table.column_names
                                   if name not in STATISTICS_COLUMNS and table.column(name).null_count == len(table))]


def write_options(table: pa.Table) -> dict[str, Any]:
    """The Parquet writer's options for a store file of ``table`` (besides :data:`ROW_GROUP_SIZE`)."""
    return {"compression": COMPRESSION, "coerce_timestamps": "us", "use_dictionary": DICTIONARY_COLUMNS,
            "column_encoding": COLUMN_ENCODINGS, "write_statistics": statistics_columns(table)}


def _encode(value: str) -> str:
    if value == "":
        return EMPTY_FIELD
    text = quote(value, safe="")
    if text == EMPTY_FIELD or text.startswith("."):
        text = "%" + format(ord(text[0]), "02X") + text[1:]
    return text


def _decode(part: str) -> str:
    return "" if part == EMPTY_FIELD else unquote(part)


def partition_scheme(timeframe: str) -> str:
    return "all" if timeframe == "day" else "year"


def partitions_for(timeframe: str, interval: Interval) -> list[tuple[str, Interval]]:
    """Split ``interval`` into the partitions of ``timeframe`` it touches."""
    if interval.empty:
        return []
    if partition_scheme(timeframe) == "all":
        return [("all", interval)]
    pieces = []
    for year in range(interval.start.year, (interval.end - pd.Timedelta(1, "us")).year + 1):
        bounds = Interval(utc(f"{year}-01-01"), utc(f"{year + 1}-01-01"))
        piece = interval.intersection(bounds)
        if piece is not None:
            pieces.append((str(year), piece))
    return pieces


@functools.lru_cache(maxsize=4096)
def partition_interval(timeframe: str, name: str) -> Interval:
    if name == "all" or partition_scheme(timeframe) == "all":
        return Interval(utc("1677-09-22"), utc("2262-04-11"))
    year = int(name)
    return Interval(utc(f"{year}-01-01"), utc(f"{year + 1}-01-01"))


def _stamp(ts: pd.Timestamp) -> str:
    text = ts.strftime(_STAMP)
    if ts.microsecond or ts.nanosecond:
        text += f".{ts.microsecond:06d}"
    return text + "Z"


def _parse_stamp(text: str) -> pd.Timestamp:
    return utc(pd.Timestamp(text.rstrip("Z")))


def file_name(interval: Interval, token: str) -> str:
    return f"{_stamp(interval.start)}_{_stamp(interval.end)}_{token}.parquet"


@functools.lru_cache(maxsize=65536)
def parse_file_name(name: str) -> tuple[Interval, str] | None:
    """``(interval, token)`` of a published bar file, or None for anything else (cached: a read lists the
    files of its series every time, and parsing the two stamps costs more than reading a day of bars)."""
    if not name.endswith(".parquet"):
        return None
    parts = name[: -len(".parquet")].split("_")
    if len(parts) != 3:
        return None
    try:
        return Interval(_parse_stamp(parts[0]), _parse_stamp(parts[1])), parts[2]
    except (ValueError, TypeError):
        return None


def new_token() -> str:
    """Unique, and ordered by publish time (hex nanoseconds, then randomness)."""
    return f"{time.time_ns():016x}{secrets.token_hex(3)}"


@dataclass(frozen=True)
class BarFile:
    """One published file: which series, which partition, which time it covers."""

    path: Path
    key: SeriesKey
    partition: str
    interval: Interval
    token: str

    @property
    def published(self) -> pd.Timestamp:
        """When the file was written (from its token)."""
        return pd.Timestamp(int(self.token[:16], 16), unit="ns", tz="UTC")

    @property
    def sealed(self) -> bool:
        """Whether the file's name carries the checksum of its bytes (files written before checksums do not)."""
        return token_checksum(self.token) is not None

    @property
    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0


class LocalFolder:
    """The folder backend (:class:`~lumibot_duckdb.store.interface.Backend`): paths and file operations of one
    store folder. Knows Parquet files, not DuckDB."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.bars = self.root / "bars"
        self.tmp = self.root / ".tmp"
        self.locks = self.root / ".locks"
        self.quarantine_dir = self.root / ".quarantine"
        self.meta = self.root / "meta"

    def ensure(self) -> None:
        for folder in (self.bars, self.tmp, self.locks, self.meta):
            folder.mkdir(parents=True, exist_ok=True)

    # -- series and files -------------------------------------------------------------------
    def series_dir(self, key: SeriesKey) -> Path:
        values = key.as_dict()
        return self.bars.joinpath(*(_encode(values[f]) for f in _KEY_FIELDS))

    def series(self) -> list[SeriesKey]:
        """Every series that has a folder in the store."""
        found: list[SeriesKey] = []
        depth = len(_KEY_FIELDS)
        if not self.bars.is_dir():
            return found
        for folder in self.bars.glob("/".join(["*"] * depth)):
            if not folder.is_dir():
                continue
            parts = folder.relative_to(self.bars).parts
            values = dict(zip(_KEY_FIELDS, (_decode(p) for p in parts)))
            found.append(SeriesKey(**values))
        return sorted(found)

    def files(self, key: SeriesKey, within: Interval | None = None) -> list[BarFile]:
        """Published files of ``key`` (those overlapping ``within`` if given), oldest first."""
        base = self.series_dir(key)
        found: list[BarFile] = []
        try:
            partitions = [p for p in os.scandir(base) if p.is_dir()]
        except FileNotFoundError:
            return found
        for part in partitions:
            if within is not None and not partition_interval(key.timeframe, part.name).overlaps(within):
                continue
            try:
                entries = list(os.scandir(part.path))
            except FileNotFoundError:  # emptied and removed by another process meanwhile
                continue
            for entry in entries:
                parsed = parse_file_name(entry.name)
                if parsed is None:
                    continue
                interval, token = parsed
                if within is None or interval.overlaps(within):
                    found.append(BarFile(Path(entry.path), key, part.name, interval, token))
        return sorted(found, key=lambda f: f.token)

    def local(self, files: list[BarFile]) -> list[BarFile]:
        """The files are on this machine already."""
        return files

    def footer(self, bar_file: BarFile) -> pq.FileMetaData | None:
        return read_footer(str(bar_file.path))

    def rewritable(self, files: list[BarFile]) -> list[BarFile]:
        """Compaction may rewrite every file of a folder."""
        return files

    def strays(self) -> list[tuple[str, str, str]]:
        """``(kind, path, message)`` of every file or folder in ``bars/`` that readers ignore."""
        found: list[tuple[str, str, str]] = []
        if not self.bars.is_dir():
            return found
        depth_of_series = len(_KEY_FIELDS)
        for folder, dirs, names in os.walk(self.bars):
            depth = len(Path(folder).relative_to(self.bars).parts)
            for name in names:
                path = str(Path(folder) / name)
                if depth != depth_of_series + 1:
                    found.append(("stray-file", path,
                                  "not in a partition folder of a series; readers ignore it — move it away"))
                elif parse_file_name(name) is None:
                    found.append(("stray-file", path,
                                  "name is not <start>_<end>_<token>.parquet; readers ignore it — move it away"))
            if depth > depth_of_series:
                for name in dirs:
                    found.append(("stray-folder", str(Path(folder) / name),
                                  "a folder inside a partition; readers ignore it — move it away"))
                dirs.clear()
        return found

    def notes(self) -> list[tuple[str, ...]]:
        """The names of every note (``read_json``'s parts)."""
        if not self.meta.is_dir():
            return []
        return sorted(path.relative_to(self.meta).parts for path in self.meta.rglob("*") if path.is_file())

    # -- writing ----------------------------------------------------------------------------
    def publish(self, key: SeriesKey, partition: str, table: pa.Table, interval: Interval, *,
                published: str | None = None) -> BarFile:
        """Write ``table`` as the answer for ``interval`` and make it visible in one rename.

        The file's name carries the CRC-32 of its bytes (computed from the written file, after
        ``fsync``); its footer the series and the range. ``published`` keeps the publish time of
        an earlier file's token (``maintain seal`` rewrites a file without changing which one is
        newer); by default it is now.
        """
        self.ensure()
        token = new_token()
        final_dir = self.series_dir(key) / partition
        tmp = self.tmp / f"{token}.parquet.part"
        meta = {
            b"lumibot_duckdb.schema": b"1",
            SERIES_MARK: json.dumps(key.as_dict()).encode(),
            COVERAGE_MARK: json.dumps([interval.start.isoformat(), interval.end.isoformat()]).encode(),
        }
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        try:
            # (an Arrow file, not a Python one: the writer's threads then never wait for the GIL at each page)
            with pa.OSFile(str(tmp), "wb") as handle:
                write_table(table, handle, row_group_size=ROW_GROUP_SIZE, **write_options(table))
                handle.flush()
                os.fsync(handle.fileno())
            token = sealed_token(published or token, file_checksum(tmp))
            final = final_dir / file_name(interval, token)
            final_dir.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _fsync_dir(final_dir)
        return BarFile(final, key, partition, interval, token)

    def remove(self, files: list[BarFile]) -> None:
        for bar_file in files:
            with contextlib.suppress(FileNotFoundError):
                bar_file.path.unlink()
        for bar_file in files:
            _prune_empty_dirs(bar_file.path.parent, stop=self.bars)

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move a damaged file out of the way (never delete it) and leave a note beside it."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        relative = path.relative_to(self.root) if path.is_relative_to(self.root) else Path(path.name)
        target = self.quarantine_dir / f"{new_token()}__{'__'.join(relative.parts)}"
        shutil.move(str(path), target)
        target.with_name(target.name + ".reason.txt").write_text(reason + "\n")
        return target

    # -- locks and small documents ---------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: SeriesKey, timeout: float = 600.0) -> Iterator[None]:
        """Hold the series for this process while it fetches or compacts (other processes wait)."""
        self.ensure()
        digest = hashlib.sha1(str(key).encode()).hexdigest()[:20]
        path = self.locks / f"{digest}.lock"
        from filelock import FileLock, Timeout  # (here: a warm backtest takes no lock, and filelock imports asyncio)

        lock = FileLock(str(path), timeout=timeout, thread_local=False, is_singleton=False)
        try:
            lock.acquire()
        except Timeout as exc:
            raise StoreLockTimeout(
                f"Series {key} is locked by another process for more than {timeout:.0f}s "
                f"(lock file {path}). If no other backtest or maintenance job is running, delete that file."
            ) from exc
        try:
            yield
        finally:
            lock.release()

    def read_json(self, *parts: str) -> object | None:
        path = self.meta.joinpath(*parts)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError:
            return None

    def write_json(self, document: object, *parts: str) -> None:
        self.ensure()
        path = self.meta.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"{new_token()}.json.part"
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True, default=str))
        os.replace(tmp, path)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prune_empty_dirs(folder: Path, *, stop: Path) -> None:
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent
