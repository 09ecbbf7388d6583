"""Reading published files straight into NumPy with pyarrow: the read path of a backtest.

A backtest reads a range of one series at a time (a window, a roll): a few row groups of one or two
files. DuckDB answers that too, but a process pays ~0.15 s and ~40 MB to import it and start its
engine, and a query plan per read; pyarrow, which Lumibot imports anyway, decodes the same row
groups directly. The answer is the one the store's DuckDB query gives (``SELECT ts, <columns> ...
WHERE ts >= start AND ts < end ORDER BY ts``, the newest file winning where files overlap), in the
shape DuckDB's ``fetchnumpy()`` returns it; a file that cannot be read raises ``OSError`` or an Arrow
error, and the caller asks DuckDB, which says which file is damaged.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lumibot_duckdb.store.coverage import Interval
from lumibot_duckdb.store.local import BarFile, read_footer

READ_ERRORS: tuple[type[BaseException], ...] = (OSError, pa.ArrowException)
"""What reading a vanished or damaged file raises here."""

_US = np.dtype("datetime64[us]")


def read_files(files: Sequence[BarFile], wanted: Interval, names: Sequence[str], *,
               dedupe: bool) -> dict[str, Any]:
    """``ts`` and ``names`` of the bars of ``files`` with ``wanted.start <= ts < wanted.end``, by ``ts``.

    Columns as NumPy arrays: ``ts`` ``datetime64[us]`` (UTC), floats with NaN for null, ``trade_count``
    a masked int64 array, ``metadata`` objects (None for null). ``dedupe``: files overlap in time,
    and where they do the bar of the newest file (``files`` come oldest first) is kept.
    """
    lo = _micros(wanted.start)
    hi = _micros(wanted.end)
    pieces: list[tuple[int, pa.Table]] = []
    for rank, bar_file in enumerate(files):
        path = str(bar_file.path)
        groups = _row_groups(path, lo, hi)
        if not groups:
            continue
        with pa.OSFile(path) as source:  # (a plain file: pyarrow's filesystem layer costs more than the read)
            handle = pq.ParquetFile(source, metadata=read_footer(path))
            table = handle.read_row_groups(groups, columns=["ts", *names], use_threads=len(groups) > 4)
        pieces.append((rank, table))
    if not pieces:
        return _columns(pa.table({"ts": pa.array([], pa.timestamp("us", tz="UTC"))}), names)
    if len(pieces) > 1 and not dedupe:  # files of disjoint ranges: oldest range first
        pieces.sort(key=lambda piece: _first_ts(piece[1]))
    ts_parts = [_ts(table) for _, table in pieces]
    ts = np.concatenate(ts_parts) if len(ts_parts) > 1 else ts_parts[0]
    keep = (ts >= lo) & (ts < hi)
    table = pa.concat_tables([t for _, t in pieces], promote_options="permissive") if len(pieces) > 1 \
        else pieces[0][1]
    order: np.ndarray | None = None
    if dedupe:
        ranks = np.concatenate([np.full(t.num_rows, r, dtype=np.int64) for r, t in pieces])
        inside = np.flatnonzero(keep)
        by_ts = inside[np.lexsort((-ranks[inside], ts[inside]))]  # by ts, the newest file first
        sorted_ts = ts[by_ts]
        first = np.ones(len(by_ts), dtype=bool)
        first[1:] = sorted_ts[1:] != sorted_ts[:-1]
        order = by_ts[first]
    else:
        selected = ts[keep]
        if len(selected) > 1 and not bool((selected[1:] >= selected[:-1]).all()):
            inside = np.flatnonzero(keep)
            order = inside[np.argsort(selected, kind="stable")]
    if order is not None:
        table, ts = table.take(pa.array(order)), ts[order]
    elif not keep.all():
        table, ts = table.filter(pa.array(keep)), ts[keep]
    return _columns(table, names, ts)


def _columns(table: pa.Table, names: Sequence[str], ts: np.ndarray | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"ts": (_ts(table) if ts is None else ts).view(_US)}
    for name in names:
        if name not in table.column_names:
            continue
        column = table.column(name)
        if isinstance(column.type, pa.DictionaryType):
            column = column.cast(column.type.value_type)
        if name == "metadata" or pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            result[name] = np.asarray(column.to_pylist(), dtype=object) if column.null_count != len(column) \
                else np.full(len(column), None, dtype=object)
        elif pa.types.is_integer(column.type):
            if column.null_count:
                values = column.fill_null(0).to_numpy().astype("int64", copy=False)
                result[name] = np.ma.MaskedArray(values, mask=column.is_null().to_numpy())
            else:
                result[name] = column.to_numpy().astype("int64", copy=False)
        else:
            result[name] = column.to_numpy().astype("float64", copy=False)  # nulls arrive as NaN
    return result


def _ts(table: pa.Table) -> np.ndarray:
    """The ``ts`` column as int64 microseconds since the epoch."""
    column = table.column("ts")
    if column.type != pa.timestamp("us", tz="UTC"):
        column = column.cast(pa.timestamp("us", tz="UTC"))
    chunks = [c.cast(pa.int64()).to_numpy() for c in column.chunks]
    if not chunks:
        return np.empty(0, dtype=np.int64)
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def _first_ts(table: pa.Table) -> int:
    values = _ts(table)
    return int(values.min()) if len(values) else 0


def _micros(stamp: Any) -> int:
    return int(stamp.value // 1000)


def _row_groups(path: str, lo: int, hi: int) -> list[int]:
    """Row groups of the file that may hold a bar with ``lo <= ts < hi`` (by their ``ts`` statistics)."""
    bounds = _ts_bounds(path)
    if bounds is None:
        raise OSError(f"cannot read the Parquet footer of {path}")
    mins, maxs = bounds
    return np.flatnonzero((maxs >= lo) & (mins < hi)).tolist()


@functools.lru_cache(maxsize=8192)
def _ts_bounds(path: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Per row group, the least and greatest ``ts`` (µs), from the footer (published files never change).

    A group without statistics spans everything (it is always read)."""
    meta = read_footer(path)
    if meta is None:
        return None
    if meta.num_row_groups == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    first = meta.row_group(0)
    ts_index = next(i for i in range(first.num_columns) if first.column(i).path_in_schema == "ts")
    mins = np.full(meta.num_row_groups, np.iinfo(np.int64).min, dtype=np.int64)
    maxs = np.full(meta.num_row_groups, np.iinfo(np.int64).max, dtype=np.int64)
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        if row_group.num_rows == 0:
            mins[group], maxs[group] = 1, 0  # nothing to read
            continue
        stats = row_group.column(ts_index).statistics
        if stats is not None and stats.has_min_max:
            mins[group], maxs[group] = _stat_micros(stats.min), _stat_micros(stats.max)
    return mins, maxs


def _stat_micros(value: Any) -> int:
    """A ``ts`` statistic (a datetime, or the raw int64 of microseconds) as microseconds since the epoch."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    import pandas as pd

    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value // 1000)
