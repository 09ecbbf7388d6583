"""Write a stored series, or the result of a SQL query over the store, to a CSV or Parquet file.

>>> export(store, SeriesName("SPY", timeframe="day"), "spy.parquet")                     # doctest: +SKIP
>>> export(store, "SELECT symbol, count(*) AS bars FROM market_data GROUP BY 1", "counts.csv")  # doctest: +SKIP

The file appears whole or not at all: it is written beside its destination under a temporary
name and renamed into place. Series come out as the store reads them (``ts`` in UTC, written with
its offset, oldest first, overlapping files resolved); a CSV of a series can be ingested again as it
is. A series is named as everywhere (:mod:`lumibot_duckdb.store.naming`): one the store does not hold
is an error naming what it holds; a held series with no bar in the range gives a file with the
header only (``ExportResult.note`` says so). Queries run
on the views of :meth:`DuckDBDataStorage.connect` (``market_data``, ``symbols``,
``data_sources``, ``coverage``, ``files``) and must be one read-only ``SELECT``; their result is
streamed to the file, so it may be larger than memory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lumibot_duckdb.errors import ConfigError, StoreError, spell
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey
from lumibot_duckdb.store.naming import SeriesName, parse_time, show_time

__all__ = ["FORMATS", "ExportResult", "export"]

FORMATS = ("csv", "parquet")
_BATCH_ROWS = 256_000
_EARLIEST, _LATEST = "1677-09-22", "2262-04-11"


@dataclass(frozen=True)
class ExportResult:
    """Where the export went, and how much it wrote."""

    path: str
    format: str
    rows: int
    bytes: int
    series: str | None = None
    """The series exported (None for a query)."""
    note: str = ""
    """Why nothing was written, when a held series has no bar in the range asked."""


def export(
    store: DuckDBDataStorage | str | os.PathLike[str] | None,
    what: SeriesKey | SeriesName | str,
    path: str | os.PathLike[str],
    /,
    *,
    format: str | None = None,
    start: Any = None,
    end: Any = None,
) -> ExportResult:
    """Write ``what`` (a series: a :class:`SeriesKey` or a :class:`SeriesName`; or one SQL ``SELECT``) to ``path``.

    ``format`` defaults to the file's extension (``.csv`` or ``.parquet``). ``start``/``end``
    (naive = Lumibot's default time zone, New York) limit a series to ``start <= ts < end``; for a
    query, put the limits in its ``WHERE``. Raises :class:`SeriesNotFoundError` for a series the
    store does not hold, :class:`ConfigError` for a query that is not one ``SELECT`` or a format that
    cannot be told; :class:`StoreError` when the file cannot be written.
    """
    target = Path(path).expanduser()
    fmt = (format or target.suffix.lstrip(".")).lower()
    fmt = {"pq": "parquet"}.get(fmt, fmt)
    if fmt not in FORMATS:
        raise ConfigError(f"Cannot tell the export format of {target.name!r}: pass {spell('format')} one of "
                          f"{', '.join(FORMATS)} or end the file name in .csv or .parquet.")
    if not target.parent.is_dir():
        raise ConfigError(f"The folder of {target} does not exist; create it first.")
    own = not isinstance(store, DuckDBDataStorage)
    db = store if isinstance(store, DuckDBDataStorage) else DuckDBDataStorage(store)
    key: SeriesKey | None = None
    note = ""
    try:
        if isinstance(what, (SeriesKey, SeriesName)):
            key = db.find_series(what)
            lo, hi = (parse_time(start if start is not None else _EARLIEST),
                      parse_time(end if end is not None else _LATEST))
            batches = _series(db, key, lo, hi)
        else:
            if start is not None or end is not None:
                raise ConfigError(f"{spell('start')}/{spell('end')} apply to a series; for a query, put the limits "
                                  "in its WHERE clause.")
            batches = _query(db, what)
        rows = _write(batches, target, fmt)
        if key is not None and rows == 0:
            covered = db.coverage(key)
            held = (f"it covers {show_time(covered[0].start)} to {show_time(covered[-1].end)} (exclusive)"
                    if covered else "it holds no coverage")
            note = f"{key} has no bar from {show_time(lo)} to {show_time(hi)} (exclusive); {held}."
    finally:
        if own:
            db.close()
    return ExportResult(str(target), fmt, rows, target.stat().st_size, None if key is None else str(key), note)


def _series(db: DuckDBDataStorage, key: SeriesKey, start: Any, end: Any) -> Iterator[pa.Schema | pa.RecordBatch]:
    """The schema of the series' file, then its batches (none for a range without bars)."""
    bars = db.read(key, start, end)
    keep = [c for c in bars.columns if bars[c].notna().any() or c in ("open", "high", "low", "close", "volume")]
    frame = bars[keep].reset_index()
    table = pa.Table.from_pandas(frame, preserve_index=False)
    yield table.schema
    yield from table.to_batches(max_chunksize=_BATCH_ROWS)


def _query(db: DuckDBDataStorage, sql: str) -> Iterator[pa.Schema | pa.RecordBatch]:
    """Stream the result of one read-only statement, through the same two guards as ``db-query``:
    the statement is checked (:func:`lumibot_duckdb.sql.query.read_only_statement`), and it runs on a
    locked-down connection that cannot reach files outside the store (:func:`lumibot_duckdb.sql.query.connect`)."""
    from lumibot_duckdb.sql.macros import our_message
    from lumibot_duckdb.sql.query import connect, read_only_statement

    statement = read_only_statement(sql)
    con = connect(db)
    try:
        try:
            relation = con.sql(statement)
            # DuckDB 2.x names it to_arrow_reader (fetch_arrow_reader is deprecated); 1.x has the latter only
            stream = getattr(relation, "to_arrow_reader", None) or relation.fetch_arrow_reader
            reader = stream(_BATCH_ROWS)
        except duckdb.Error as exc:
            raise ConfigError(our_message(exc) or f"The query failed: {_first_line(exc)}") from exc
        yield reader.schema
        yield from reader
    finally:
        con.close()


def _write(items: Iterator[pa.Schema | pa.RecordBatch], target: Path, fmt: str) -> int:
    """Stream a schema and its batches into a temporary file beside ``target``, then rename it into place
    (a header-only file when there are no batches)."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    rows = 0
    try:
        schema = cast(pa.Schema, next(items))
        if fmt == "csv":
            schema = pa.schema([pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
                                for f in schema])
        writer: Any = (pq.ParquetWriter(tmp, schema, compression="zstd") if fmt == "parquet"
                       else pacsv.CSVWriter(tmp, schema))
        with writer:
            for item in items:
                batch = cast(pa.RecordBatch, item)
                writer.write_batch(_csv_friendly(batch) if fmt == "csv" else batch)
                rows += batch.num_rows
        os.replace(tmp, target)
    except OSError as exc:
        raise StoreError(f"Could not write {target}: {exc}. Nothing was written there; check the folder's "
                         "free space and permissions.") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return rows


def _csv_friendly(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Dictionary columns (the store's key columns) as plain strings: the CSV writer takes no dictionaries."""
    columns = [c.dictionary_decode() if pa.types.is_dictionary(c.type) else c for c in batch.columns]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300]
