"""Reading published files straight into NumPy with pyarrow: the read path of a backtest.

A backtest reads a range of one series at a time (a window, a roll): a few row groups of one or two
files. DuckDB answers that too, but a process pays ~0.15 s and ~40 MB to import it and start its
engine, and a query plan per read; pyarrow, which Lumibot imports anyway, decodes the same row
groups directly. The answer is the one the store's DuckDB query gives (``SELECT ts, <columns> ...
WHERE ts >= start AND ts < end ORDER BY ts``, the newest file winning where files overlap), in the
shape DuckDB's ``fetchnumpy()`` returns it; a file that cannot be read raises ``OSError`` or an Arrow
error, and the caller asks DuckDB, which says which file is damaged.

Published files are sorted and cover disjoint ranges, so the usual answer is each file's rows inside the range,
one file after the other: those are copied once into arrays of the answer's length (the float columns into the
rows of one 2-D array, the frame's float block), with no concatenation and no consolidation copy. Files that
overlap (two answers for one gap, before compaction) or are out of order take the general way: concatenate,
order by ``ts``, the newest file's bar where two have one. Several files are decoded at once on a small pool of
threads (pyarrow releases the GIL while it decodes): a bulk read of 20 year files, or a window across a year's edge.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from lumibot_duckdb.store.coverage import Interval
from lumibot_duckdb.store.local import BarFile, read_footer
from lumibot_duckdb.store.parquet import ParquetSource

READ_ERRORS: tuple[type[BaseException], ...] = (OSError, pa.ArrowException)
"""What reading a vanished or damaged file raises here."""

_US = np.dtype("datetime64[us]")


def read_files(files: Sequence[BarFile], wanted: Interval, names: Sequence[str], *,
               dedupe: bool, floats: Sequence[str] = (),
               opened: Mapping[str, ParquetSource] | None = None) -> dict[str, Any]:
    """``ts`` and ``names`` of the bars of ``files`` with ``wanted.start <= ts < wanted.end``, by ``ts``.

    Columns as NumPy arrays: ``ts`` ``datetime64[us]`` (UTC), floats with NaN for null, ``trade_count``
    a masked int64 array, ``metadata`` objects (None for null). ``dedupe``: files overlap in time,
    and where they do the bar of the newest file (``files`` come oldest first) is kept.

    ``floats``: the float columns of the frame to build, in its order (some may be absent from ``names``:
    null in every file). When given, the answer may also hold them as the rows of one 2-D array under
    :data:`FLOAT_BLOCK` (``(floats, block)``, absent ones all NaN): the frame's one float block, decoded into
    once, with no copy to consolidate it.

    ``opened``: files already open (on the bytes their check just read), by path: decoded from there.
    """
    lo = _micros(wanted.start)
    hi = _micros(wanted.end)
    jobs = []
    for rank, bar_file in enumerate(files):
        path = str(bar_file.path)
        groups = _row_groups(path, lo, hi)
        if groups:
            jobs.append((rank, path, groups))
    if not jobs:
        return _columns(pa.table({"ts": pa.array([], pa.timestamp("us", tz="UTC"))}), names)
    tables = _read_tables(jobs, ["ts", *names], opened or {})
    pieces: list[tuple[int, pa.Table]] = [(rank, table) for (rank, _, _), table in zip(jobs, tables)]
    if not dedupe:
        fast = _disjoint_and_sorted(pieces, lo, hi)
        if fast is not None:
            return _gather(fast, names, floats)
    return _general(pieces, lo, hi, names, dedupe=dedupe)


FLOAT_BLOCK = "\x00floats"
"""The key of the 2-D float block in :func:`read_files`' answer (a name no column can have)."""

_POOL: list[Any] = []  # [ThreadPoolExecutor, pid]: decoding several files at once (pyarrow releases the GIL)
_POOL_LOCK = threading.Lock()
_PARALLEL_GROUPS = 4
"""Fewer row groups than this to read are decoded on the calling thread (a pool's hand-off costs ~50 µs)."""


def _read_tables(jobs: list[tuple[int, str, list[int]]], columns: list[str],
                 opened: Mapping[str, ParquetSource]) -> list[pa.Table]:
    total = sum(len(groups) for _, _, groups in jobs)
    if len(jobs) > 1 and total >= _PARALLEL_GROUPS and (os.cpu_count() or 1) > 1:
        return list(pool().map(lambda job: _read_groups(job[1], job[2], columns, opened.get(job[1]), threads=False),
                               jobs))
    return [_read_groups(path, groups, columns, opened.get(path), threads=len(groups) >= _PARALLEL_GROUPS)
            for _, path, groups in jobs]


def _read_groups(path: str, groups: list[int], columns: list[str], source: ParquetSource | None, *,
                 threads: bool) -> pa.Table:
    if source is not None:  # (its bytes are in memory: the first check of the file just read them)
        return source.read_row_groups(groups, columns, use_threads=threads)
    with ParquetSource(path, metadata=read_footer(path)) as handle:
        return handle.read_row_groups(groups, columns, use_threads=threads)


def pool() -> Any:
    """The process's pool of reading threads (a ``ThreadPoolExecutor``; a new one in a forked child)."""
    from concurrent.futures import ThreadPoolExecutor

    with _POOL_LOCK:
        if not _POOL or _POOL[1] != os.getpid():  # a forked child has none of its parent's threads
            _POOL[:] = [ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                           thread_name_prefix="lumibot-duckdb-read"), os.getpid()]
        return _POOL[0]


def _disjoint_and_sorted(pieces: list[tuple[int, pa.Table]], lo: int,
                         hi: int) -> list[tuple[pa.Table, np.ndarray, int, int]] | None:
    """Per piece, its table, its ``ts`` and the rows ``[first, stop)`` inside ``[lo, hi)``, in time order, when
    every piece is sorted and the pieces follow one another (published files are); None otherwise."""
    found = []
    for _, table in pieces:
        ts = _ts(table)
        if len(ts) > 1 and not bool((ts[1:] >= ts[:-1]).all()):
            return None
        first, stop = (int(i) for i in np.searchsorted(ts, (lo, hi)))
        if stop > first:
            found.append((table, ts, first, stop))
    found.sort(key=lambda piece: int(piece[1][piece[2]]))
    for before, after in itertools.pairwise(found):
        if before[1][before[3] - 1] > after[1][after[2]]:
            return None
    return found


def _gather(pieces: list[tuple[pa.Table, np.ndarray, int, int]], names: Sequence[str],
            floats: Sequence[str]) -> dict[str, Any]:
    """The columns of sorted, disjoint pieces, each copied once into arrays of the answer's length."""
    n = sum(stop - first for _, _, first, stop in pieces)
    ts = np.empty(n, dtype=np.int64)
    at = 0
    for _, piece_ts, first, stop in pieces:
        ts[at:at + stop - first] = piece_ts[first:stop]
        at += stop - first
    result: dict[str, Any] = {"ts": ts.view(_US)}
    block = None
    if floats:
        block = np.empty((len(floats), n), dtype=np.float64)
        result[FLOAT_BLOCK] = (tuple(floats), block)
    rows = {name: i for i, name in enumerate(floats)}
    for name in names:
        kinds = {table.schema.field(name).type for table, _, _, _ in pieces if name in table.column_names}
        if not kinds:
            continue
        kind = kinds.pop() if len(kinds) == 1 else None
        if kind is None or (name == "metadata" or _is_string(kind)):
            result[name] = _gather_objects(pieces, name, n)
        elif pa.types.is_integer(kind):
            result[name] = _gather_integers(pieces, name, n)
        elif pa.types.is_floating(kind):
            out = block[rows[name]] if block is not None and name in rows else np.empty(n, dtype=np.float64)
            at = 0
            for chunk in _chunks(pieces, name):
                values = chunk.to_numpy(zero_copy_only=False)  # nulls arrive as NaN
                out[at:at + len(values)] = values
                at += len(values)
            result[name] = out
        else:
            result[name] = _gather_objects(pieces, name, n)
    if block is not None:
        for name in floats:
            if name not in result:
                block[rows[name]] = np.nan
    return result


def _chunks(pieces: list[tuple[pa.Table, np.ndarray, int, int]], name: str) -> Iterator[pa.Array]:
    for table, _, first, stop in pieces:
        column = table.column(name).slice(first, stop - first)
        yield from (chunk for chunk in column.chunks if len(chunk))


def _gather_integers(pieces: list[tuple[pa.Table, np.ndarray, int, int]], name: str, n: int) -> Any:
    values = np.empty(n, dtype=np.int64)
    mask: np.ndarray | None = None
    at = 0
    for chunk in _chunks(pieces, name):
        if chunk.null_count:
            if mask is None:
                mask = np.zeros(n, dtype=bool)
            mask[at:at + len(chunk)] = chunk.is_null().to_numpy(zero_copy_only=False)
            chunk = chunk.fill_null(0)
        values[at:at + len(chunk)] = chunk.to_numpy()
        at += len(chunk)
    return values if mask is None else np.ma.MaskedArray(values, mask=mask)


def _gather_objects(pieces: list[tuple[pa.Table, np.ndarray, int, int]], name: str, n: int) -> np.ndarray:
    out = np.full(n, None, dtype=object)
    at = 0
    for chunk in _chunks(pieces, name):
        if isinstance(chunk.type, pa.DictionaryType):
            chunk = chunk.cast(chunk.type.value_type)
        if chunk.null_count != len(chunk):
            out[at:at + len(chunk)] = chunk.to_numpy(zero_copy_only=False)  # (None for null)
        at += len(chunk)
    return out


def _is_string(kind: pa.DataType) -> bool:
    if isinstance(kind, pa.DictionaryType):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def _general(pieces: list[tuple[int, pa.Table]], lo: int, hi: int, names: Sequence[str], *,
             dedupe: bool) -> dict[str, Any]:
    """Overlapping or unsorted pieces: the bars inside ``[lo, hi)`` by ``ts``, the newest file's where they
    overlap (``dedupe``)."""
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
    bounds = ts_bounds(path)
    if bounds is None:
        raise OSError(f"cannot read the Parquet footer of {path}")
    mins, maxs = bounds
    return np.flatnonzero((maxs >= lo) & (mins < hi)).tolist()


@functools.lru_cache(maxsize=8192)
def ts_bounds(path: str) -> tuple[np.ndarray, np.ndarray] | None:
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
    # The raw INT64 statistics are the microseconds themselves when ``ts`` is stored as the store writes it
    # (a datetime per statistic costs ~15 µs: a first read of a year file paid ~0.3 ms for them).
    column = meta.schema.column(ts_index)
    micros = column.physical_type == "INT64" and '"timeUnit":"microseconds"' in column.logical_type.to_json()
    mins = np.full(meta.num_row_groups, np.iinfo(np.int64).min, dtype=np.int64)
    maxs = np.full(meta.num_row_groups, np.iinfo(np.int64).max, dtype=np.int64)
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        if row_group.num_rows == 0:
            mins[group], maxs[group] = 1, 0  # nothing to read
            continue
        stats = row_group.column(ts_index).statistics
        if stats is not None and stats.has_min_max:
            if micros:
                mins[group], maxs[group] = stats.min_raw, stats.max_raw
            else:
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
