"""Reading bar files for :mod:`lumibot_duckdb.ingest.load`: what a file holds and how its cells read as bars.

Format detection (CSV, zstd CSV, Parquet) by file name, block-wise reading (:func:`_read_blocks`), layout and
column detection from the header (:func:`_columns`), and parsing of raw cells: times to UTC (:func:`_times`,
:func:`_epoch`, :func:`_daily_stamps`), numbers with masks of missing and unreadable cells (:func:`_numbers`),
and the series hints a file gives (its name, its bars' spacing). Nothing here touches the store or judges bars:
validation, coverage and writing are :mod:`lumibot_duckdb.ingest.load`'s. The rules are in that module's docstring.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from lumibot_duckdb.errors import BarsValidationError, ConfigError, spell
from lumibot_duckdb.store.coverage import canonical_timeframe, unsupported_timeframe
from lumibot_duckdb.store.memory import arrow_pool

EXTENSIONS = (".csv", ".csv.zst", ".parquet")
LAYOUTS = ("auto", "yahoo", "polygon", "alpaca", "generic")
_TIME_NAMES = ("timestamp", "datetime", "date", "time", "ts", "t")
_ALIASES: dict[str, tuple[str, ...]] = {
    "open": ("open", "o"), "high": ("high", "h"), "low": ("low", "l"), "close": ("close", "c"),
    "volume": ("volume", "v", "vol"), "vwap": ("vwap", "vw"), "trade_count": ("trade_count", "transactions", "n"),
    "adj_close": ("adj close", "adj_close", "adjclose", "adjusted_close"), "dividend": ("dividends", "dividend"),
    "split_ratio": ("stock splits", "split_ratio", "splits"), "symbol": ("symbol", "ticker", "T"),
}
_LAYOUT_COLUMNS: dict[str, dict[str, tuple[str, ...]]] = {
    "yahoo": {"ts": ("date", "datetime"), "open": ("open",), "high": ("high",), "low": ("low",),
              "close": ("close",), "volume": ("volume",), "adj_close": ("adj close",), "dividend": ("dividends",),
              "split_ratio": ("stock splits",)},
    "polygon": {"ts": ("t", "timestamp"), "open": ("o", "open"), "high": ("h", "high"), "low": ("l", "low"),
                "close": ("c", "close"), "volume": ("v", "volume"), "vwap": ("vw", "vwap"),
                "trade_count": ("n", "transactions"), "symbol": ("T", "symbol", "ticker")},
    "alpaca": {"ts": ("timestamp",), "open": ("open",), "high": ("high",), "low": ("low",), "close": ("close",),
               "volume": ("volume",), "trade_count": ("trade_count",), "vwap": ("vwap",), "symbol": ("symbol",)},
}
_PRICES = ("open", "high", "low", "close")
_NUMBERS = ("open", "high", "low", "close", "volume", "vwap", "trade_count", "adj_close", "dividend", "split_ratio")
try:
    from pytz import AmbiguousTimeError as _Ambiguous  # (what pandas raises for an ambiguous time, with pytz)
except ImportError:  # pragma: no cover
    _Ambiguous = ValueError
_OFFSET = re.compile(r"[T ]\d{1,2}:\d{2}.*(?:Z|[+-]\d{2}:?\d{2})$")


# -- format ------------------------------------------------------------------------------------
def _format_of(path: Path) -> str:
    name = path.name.lower()
    for ext in (".csv.zst", ".csv.zstd", ".csv", ".parquet", ".pq"):
        if name.endswith(ext):
            return {".csv.zstd": "csv.zst", ".pq": "parquet"}.get(ext, ext[1:])
    return ""


# -- reading -----------------------------------------------------------------------------------
class TypedReadFailed(Exception):
    """A CSV read with typed columns met a cell its type cannot hold: read the file again as text."""


def _read_blocks(path: Path, fmt: str, chunk_bytes: int, advance: Callable[[int], object], *,
                 types: Callable[[list[str]], dict[str, pa.DataType]] | None = None,
                 ) -> tuple[list[str], Iterator[pa.RecordBatch | pa.Table]]:
    """Column names and record batches (or tables) of a file.

    CSV columns are read as text (values are parsed later), or, with ``types`` (the header's names ->
    the type of some columns), those columns are parsed by Arrow's CSV reader while it reads, several
    times faster; a cell that does not parse then raises :class:`TypedReadFailed` (the cells Arrow reads
    as null, e.g. empty ones, are null in both ways).
    """
    if fmt == "parquet":
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise BarsValidationError(f"{path} is not a readable Parquet file ({exc}).") from exc

        def parquet_batches() -> Iterator[pa.RecordBatch]:
            yield from parquet.iter_batches(batch_size=max(1024, chunk_bytes // 80))

        return list(parquet.schema_arrow.names), parquet_batches()
    raw: BinaryIO = open(path, "rb")
    try:
        stream = pa.input_stream(raw, compression="zstd" if fmt == "csv.zst" else None)
        head = stream.read(1 << 16)
    except (pa.ArrowException, OSError) as exc:
        raw.close()
        raise BarsValidationError(f"{path} cannot be read as {fmt} ({exc}); is it really a "
                                  f"{'zstd-compressed ' if fmt == 'csv.zst' else ''}CSV file?") from exc
    if not head.strip():
        raw.close()
        raise BarsValidationError(f"{path} is empty: no header, no rows.")
    if b"\x00" in head:
        raw.close()
        raise BarsValidationError(f"{path} holds binary data, not CSV text.")
    first = head.splitlines()[0].decode("utf-8", errors="replace").lstrip("\ufeff")
    delimiter = max(",;\t|", key=first.count)
    if first.count(delimiter) == 0:
        delimiter = ","
    names = [n.strip().strip('"').strip() for n in first.split(delimiter)]
    raw.close()
    column_types: dict[str, pa.DataType] = {n: pa.string() for n in names}
    typed = types(names) if types is not None else {}
    column_types.update(typed)
    convert = pacsv.ConvertOptions(column_types=column_types, strings_can_be_null=True)
    parse = pacsv.ParseOptions(delimiter=delimiter)
    if typed:
        return _streamed(path, fmt, chunk_bytes, parse, convert)

    def parsed(chunk: bytes, header: list[str] | None) -> pa.Table:
        options = pacsv.ReadOptions(use_threads=True, block_size=max(1 << 20, len(chunk) // 2 + 1),
                                    column_names=header or [])
        try:
            return pacsv.read_csv(pa.BufferReader(chunk), read_options=options, parse_options=parse,
                                  convert_options=convert, memory_pool=arrow_pool())
        except (pa.ArrowException, OSError) as exc:
            if typed and isinstance(exc, pa.ArrowInvalid):
                raise TypedReadFailed(str(exc)) from exc
            raise BarsValidationError(f"{path} is not CSV that can be read ({_arrow_message(exc)}); "
                                      f"{_CSV_HINT}") from exc

    # Blocks of whole lines, each parsed on its own (in parallel inside the block): Arrow's streaming
    # reader reads ahead as far as it can, so memory would grow with the file instead of the block size.
    raw = open(path, "rb")
    blocks = _line_blocks(pa.input_stream(raw, compression="zstd" if fmt == "csv.zst" else None), chunk_bytes)

    def next_block() -> bytes | None:
        try:
            return next(blocks, None)
        except (pa.ArrowException, OSError) as exc:
            raise BarsValidationError(f"{path} cannot be read as {fmt} ({_arrow_message(exc)}); is it really a "
                                      f"{'zstd-compressed ' if fmt == 'csv.zst' else ''}CSV file?") from exc

    try:
        table = parsed(next_block() or b"", None)
    except BaseException:
        raw.close()
        raise
    header = [str(c) for c in table.schema.names]

    def csv_batches() -> Iterator[pa.Table]:
        position, current = 0, table
        try:
            while True:
                now = raw.tell()
                advance(now - position)
                position = now
                yield current  # (one table per block: the store gets one file per block and partition)
                block = next_block()
                if block is None:
                    break
                current = parsed(block, header)
        finally:
            raw.close()

    return header, csv_batches()


STREAM_BLOCK = 1 << 20
"""At most this many bytes of CSV are parsed at a time by Arrow's streaming reader (several blocks in parallel, a
few read ahead). Measured on the 10M-bar minute CSV of ``benchmarks/bench_ingest.py`` (the reader alone, one run
each, shared machine): Arrow holds ~40 MB with 1 MiB blocks, ~80 MB with 2 MiB and 160–310 MB with 4–8 MiB (not
flat: more on a longer file), at about the same speed."""


def _stream_blocks(chunk_bytes: int) -> tuple[int, int]:
    """Arrow's block size and how many of its blocks make one block of ``chunk_bytes``: the largest divisor of
    ``chunk_bytes`` up to :data:`STREAM_BLOCK` (so both reads cut the file at the same lines)."""
    parts = -(-chunk_bytes // STREAM_BLOCK)
    while chunk_bytes % parts and chunk_bytes // parts >= 64 << 10:
        parts += 1
    if chunk_bytes % parts:  # (no divisor worth it: whole blocks, as large as chunk_bytes)
        parts = 1
    return chunk_bytes // parts, parts


def _streamed(path: Path, fmt: str, chunk_bytes: int, parse: pacsv.ParseOptions,
              convert: pacsv.ConvertOptions) -> tuple[list[str], Iterator[pa.Table]]:
    """A typed read by Arrow's streaming reader, one table per block of ``chunk_bytes`` of CSV ending at the end of
    a line: the rows of each block are those the text read gives (Arrow's reader cuts each of its blocks after the
    last whole line and carries the rest on, as :func:`_line_blocks` does). Any error it meets (a cell that is not
    of its type, a row with too many fields, a line longer than a block, a damaged stream) raises
    :class:`TypedReadFailed`: the file is then read as text, which reports it."""
    block, parts = _stream_blocks(chunk_bytes)
    raw = _arrow_input(path, fmt)
    try:
        reader = pacsv.open_csv(raw,
                                read_options=pacsv.ReadOptions(use_threads=True, block_size=block),
                                parse_options=parse, convert_options=convert, memory_pool=arrow_pool())
    except (pa.ArrowException, OSError) as exc:
        raw.close()
        raise TypedReadFailed(str(exc)) from exc

    def tables() -> Iterator[pa.Table]:
        try:
            batches: list[pa.RecordBatch] = []
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as exc:
                    raise TypedReadFailed(str(exc)) from exc
                if len(batches) == parts:
                    yield pa.Table.from_batches(batches)
                    batches = []
            if batches:
                yield pa.Table.from_batches(batches)
        finally:
            reader.close()
            raw.close()

    return [str(c) for c in reader.schema.names], tables()


def _arrow_input(path: Path, fmt: str) -> pa.NativeFile:
    """The file opened by Arrow itself, its blocks read into the package's pool: Arrow's reading threads then never
    wait for the GIL (as they do at each read of a Python file object) while the checks run on the main thread."""
    stream = pa.OSFile(str(path), "r", memory_pool=arrow_pool())
    return pa.CompressedInputStream(stream, "zstd") if fmt == "csv.zst" else stream


def _line_blocks(stream: pa.NativeFile, size: int) -> Iterator[bytes]:
    """The stream's bytes in blocks of about ``size``, each ending at the end of a line."""
    rest = b""
    while True:
        data = stream.read(size)
        if not data:
            if rest:
                yield rest
            return
        data = rest + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:  # a line longer than a block: read on
            rest = data
            continue
        rest = data[cut:]
        yield data[:cut]


def estimate_rows(path: Path, fmt: str) -> int | None:
    """About how many rows ``path`` holds, for a progress bar: exact for Parquet (its footer), the file size
    over the mean line length of its first 64 KiB for CSV; None for compressed CSV (no cheap estimate)."""
    try:
        if fmt == "parquet":
            return int(pq.ParquetFile(path).metadata.num_rows)
        if fmt == "csv":
            size = path.stat().st_size
            with open(path, "rb") as raw:
                head = raw.read(1 << 16)
            lines = head.count(b"\n")
            if not lines:
                return 1
            return max(1, round(size / (len(head) / lines)) - 1)  # minus the header
    except (OSError, pa.ArrowException):
        return None
    return None


_CSV_HINT = ("check that it is UTF-8 text (iconv -f latin1 -t utf-8 converts it), the delimiter, and that "
             "every row has as many fields as the header.")


def _arrow_message(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300]


FIELDS = ("ts", *_NUMBERS, "symbol")
"""Bar fields a file column can be mapped to (``columns=``/``--column FIELD=COLUMN``)."""
_INDEX_NAMES = ("", "unnamed: 0", "index")  # a first column holding pandas' unnamed index, as to_csv() writes it


def _columns(names: list[str], layout: str, path: Path,
             overrides: Mapping[str, str] | None = None) -> tuple[str, dict[str, str], list[str]]:
    """The layout of a header, the file column of each bar field, and notes on how they were found.

    ``overrides`` maps bar fields to file columns (``{"ts": "Date", "close": "Adj Close"}``) and wins
    over detection. Without a named time column, an unnamed first column (pandas' index, as
    ``DataFrame.to_csv()`` and ``to_parquet()`` write it) is the time column.
    """
    clean = [n.strip().lstrip("\ufeff").strip() for n in names]
    twice = sorted({n for n in clean if clean.count(n) > 1})
    if twice:
        raise BarsValidationError(f"{path}: column(s) {twice} appear more than once in the header; rename or drop "
                                  "the extra one(s).")
    exact = dict(zip(clean, names))
    lower = {c.lower(): n for c, n in zip(clean, names) if len(c) > 1}
    lowered = {c.lower() for c in clean}
    auto = layout == "auto"
    notes: list[str] = []
    if auto:  # the label only: auto-detected files are read with every known column name
        if "adj close" in lowered or {"dividends", "stock splits"} <= lowered:
            layout = "yahoo"
        elif {"t", "o", "h", "l", "c"} <= set(exact) or "transactions" in lowered:
            layout = "polygon"
        elif {"timestamp", "trade_count"} <= lowered:
            layout = "alpaca"
        else:
            layout = "generic"

    def pick(candidates: Iterable[str]) -> str | None:
        for candidate in candidates:
            if len(candidate) == 1 and candidate in exact:  # Polygon's t/o/h/l/c/v/n/T: case matters
                return candidate
            if len(candidate) > 1 and candidate.lower() in lower:
                return lower[candidate.lower()]
        return None

    table: dict[str, tuple[str, ...]] = {"ts": _TIME_NAMES, **_ALIASES}
    if not auto:
        table = _LAYOUT_COLUMNS.get(layout, table)
    mapping: dict[str, str] = {}
    for name, candidates in table.items():
        column = pick(candidates)
        if column is not None:
            mapping[name] = column
    if layout in _LAYOUT_COLUMNS and "symbol" not in mapping and (column := pick(_ALIASES["symbol"])):
        mapping["symbol"] = column
    for field, column in (overrides or {}).items():
        if field not in FIELDS:
            raise ConfigError(f"{spell('columns')}: {field!r} is not a bar field; map one of {', '.join(FIELDS)}.")
        found = exact.get(str(column).strip())
        if found is None:
            raise ConfigError(f"{path} has no column {column!r} (for {field}); its header is {names[:12]}.")
        for other, used in list(mapping.items()):
            if used == found and other != field:
                del mapping[other]
        mapping[field] = found
    index = next((n for c, n in zip(clean, names) if c.lower() == "__index_level_0__"), None)
    if index is None and names and clean[0].lower() in _INDEX_NAMES:
        index = names[0]
    if "ts" not in mapping and index is not None:
        mapping["ts"] = index
        notes.append("times from the unnamed index column (pandas' index, as DataFrame.to_csv() or to_parquet() "
                     "writes it)")
    missing = [n for n in ("ts", *_PRICES) if n not in mapping]
    if missing:
        wanted = ", ".join("time column (timestamp/datetime/date/time)" if n == "ts" else n for n in missing)
        hint = ""
        if len(names) == 1 and any(d in names[0] for d in ",;\t| "):
            hint = " The header has one column only: is the delimiter one of , ; tab |?"
        fix = " or ".join(spell("columns", f"{n}=<column>") if n != "ts" else spell("time_column", "<column>")
                          for n in missing[:2])
        raise BarsValidationError(f"{path}: the header {names[:12]} has no {wanted} (layout {layout}). Name the "
                                  f"column(s) with {fix}, rename them, or pass {spell('layout')} one of "
                                  f"{', '.join(LAYOUTS[1:])}.{hint}")
    return layout, mapping, notes


# -- parsing -----------------------------------------------------------------------------------
def _as_strings(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.utf8_trim_whitespace(array.cast(pa.string()))


def _numbers(column: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values as float64, and masks of missing and of unparseable (or infinite) cells."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        text = _as_strings(column)
        missing = pc.or_kleene(pc.is_null(text), pc.equal(text, "")).fill_null(True).to_numpy(zero_copy_only=False)
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        try:
            values = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
        except pa.ArrowInvalid:
            values = pd.to_numeric(pd.Series(text.to_pandas()), errors="coerce").to_numpy(dtype="float64")
        values = np.where(missing, np.nan, values)
        missing = missing | (np.isnan(values) & ~missing & _nan_literal(text))
    else:
        try:
            whole = _one_array(column)
            values = pc.cast(whole, pa.float64(), memory_pool=arrow_pool()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = pd.to_numeric(pd.Series(column.to_pandas()), errors="coerce").to_numpy(dtype="float64")
        finite = np.isfinite(values)
        if finite.all():  # (the usual column: one pass)
            return values, np.zeros(len(values), dtype=bool), np.zeros(len(values), dtype=bool)
        missing = np.isnan(values)
        return values, missing, ~missing & ~finite
    bad = ~missing & ~np.isfinite(values)
    return values, missing, bad


def _one_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The column as one array: its chunks copied once into the package's pool (these are the bars' values
    until they are written; ``combine_chunks`` allocates from the default pool whatever it is given, pyarrow 26)."""
    if not isinstance(column, pa.ChunkedArray):
        return column
    if column.num_chunks == 1:
        return column.chunk(0)
    if column.num_chunks == 0:
        return pa.array([], column.type)
    return pa.concat_arrays(column.chunks, memory_pool=arrow_pool())


def _nan_literal(text: pa.Array) -> np.ndarray:
    lowered = pc.utf8_lower(text)
    return pc.is_in(lowered, pa.array(["nan", "na", "n/a", "null", "none", "-"])).fill_null(False).to_numpy(
        zero_copy_only=False)


def _times(column: pa.Array, tz: str, notes: set[str]) -> np.ndarray:
    """UTC nanoseconds since the epoch as datetime64[ns] (NaT where a value is not a time)."""
    kind = column.type
    if pa.types.is_timestamp(kind):
        index = pd.DatetimeIndex(column.to_pandas(memory_pool=arrow_pool()))
        return _to_utc(index, tz, notes)
    if pa.types.is_date(kind):
        return _to_utc(pd.DatetimeIndex(pd.to_datetime(column.to_pandas())), tz, notes)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _epoch(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), notes)
    text = _as_strings(column)
    text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
    numeric = pc.match_substring_regex(text, r"^-?\d+(\.\d*)?$")
    if len(text) and pc.all(pc.or_kleene(numeric, pc.is_null(text))).as_py() and text.null_count < len(text):
        if pc.all(pc.or_kleene(pc.match_substring_regex(text, r"^(19|20)\d{2}(0[1-9]|1[0-2])([0-2]\d|3[01])$"),
                               pc.is_null(text))).as_py():
            notes.add("dates as YYYYMMDD")
            parsed = pd.to_datetime(pd.Series(text.to_pandas()), format="%Y%m%d", errors="coerce")
            return _to_utc(pd.DatetimeIndex(parsed), tz, notes)
        return _epoch(pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False), notes)
    with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _to_utc(pd.DatetimeIndex(pc.cast(text, pa.timestamp("ns")).to_pandas()), tz, notes)
    with contextlib.suppress(pa.ArrowInvalid, pa.ArrowNotImplementedError):
        aware = pc.cast(text, pa.timestamp("ns", tz="UTC")).to_pandas()
        notes.add("offset timestamps honoured")
        return pd.DatetimeIndex(aware).tz_convert("UTC").tz_localize(None).to_numpy()
    # Mixed or partly unparseable: naive values in tz, values with an offset converted, the rest NaT.
    values = pd.Series(text.to_pandas(), dtype=object).str.replace(r"\s*(?:UTC|GMT)$", "+00:00", regex=True)
    has_offset = values.str.contains(_OFFSET, na=False).to_numpy()
    # A zone abbreviation (EST, CET, IST…) is ambiguous and pandas would silently drop it: not a time.
    named = values.str.contains(r"\d\s*[A-Za-z]{2,5}$", na=False).to_numpy() & ~has_offset
    if named.any():
        notes.add("times with a zone abbreviation (EST, CET…) are not read: write an offset (-05:00) instead")
    if values.str.contains(r"^\d{1,2}/\d{1,2}/\d{2,4}", na=False).any():
        notes.add("dates written like 01/02/2024 read month first")
    out = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[ns]")
    if has_offset.any():
        parsed = pd.to_datetime(values[has_offset], utc=True, errors="coerce", format="mixed")
        out[has_offset] = pd.DatetimeIndex(parsed).tz_localize(None).to_numpy()
        notes.add("offset timestamps honoured")
    naive = ~has_offset & ~named
    if naive.any():
        parsed = pd.to_datetime(values[naive], errors="coerce", format="mixed")
        out[naive] = _to_utc(pd.DatetimeIndex(parsed), tz, notes)
    if has_offset.any() and (naive & values.notna().to_numpy()).any():
        notes.add(f"file mixes timestamps with and without an offset; those without are in {tz}")
    return out


def _as_ns(ts: np.ndarray) -> np.ndarray:
    """Times as datetime64[ns]; those outside its range (1678–2261) become NaT instead of wrapping around."""
    if ts.dtype == np.dtype("datetime64[ns]"):
        return ts
    inside = (ts >= np.datetime64("1678-01-01")) & (ts <= np.datetime64("2261-12-31"))
    return np.where(inside, ts, np.datetime64("NaT")).astype("datetime64[ns]")


def _epoch(values: np.ndarray, notes: set[str]) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if not finite.size:
        return np.full(len(values), np.datetime64("NaT"), dtype="datetime64[ns]")
    magnitude = float(np.median(np.abs(finite)))
    unit, scale = next((u, s) for limit, u, s in ((1e11, "s", 1e9), (1e14, "ms", 1e6), (1e17, "us", 1e3),
                                                  (float("inf"), "ns", 1.0)) if magnitude < limit)
    notes.add(f"epoch timestamps in {unit}")
    ns = values * scale
    ok = np.isfinite(ns) & (np.abs(ns) < 9.2e18)
    out = np.full(len(values), np.datetime64("NaT"), dtype="datetime64[ns]")
    out[ok] = ns[ok].astype("int64").view("datetime64[ns]")
    return out


def _to_utc(index: pd.DatetimeIndex, tz: str, notes: set[str]) -> np.ndarray:
    if index.tz is not None:
        return index.tz_convert("UTC").tz_localize(None).to_numpy()
    if tz == "UTC":  # (naive times in UTC are UTC times as they are)
        notes.add(f"naive timestamps read in {tz}")
        return index.to_numpy()
    try:  # (no ambiguous time, the usual block: what "infer" gives, three times faster)
        local = index.tz_localize(tz, ambiguous="raise", nonexistent="NaT")
    except (ValueError, TypeError, _Ambiguous):
        try:
            local = index.tz_localize(tz, ambiguous="infer", nonexistent="NaT")
        except (ValueError, TypeError, _Ambiguous):  # ambiguous times that cannot be inferred (unsorted, a lone hour)
            local = index.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    notes.add(f"naive timestamps read in {tz}")
    return local.tz_convert("UTC").tz_localize(None).to_numpy()


def _daily_stamps(ts: np.ndarray, tz: str, notes: set[str]) -> np.ndarray:
    """Daily bars at 00:00 of their date in ``tz`` (the store's convention for daily series)."""
    ok = ~np.isnat(ts)
    if not ok.any():
        return ts
    utc_index = pd.DatetimeIndex(ts[ok]).tz_localize("UTC")
    local = utc_index.tz_convert(tz)
    if (local == local.normalize()).all():
        return ts
    if (utc_index == utc_index.normalize()).all():
        dates = utc_index.tz_localize(None)
        notes.add(f"daily bars stamped at 00:00 UTC read as that date, restamped at 00:00 {tz}")
    else:
        dates = local.normalize().tz_localize(None)
        notes.add(f"daily bars restamped at 00:00 {tz} of their local date")
    out = ts.copy()
    out[ok] = dates.tz_localize(tz, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC").tz_localize(
        None).to_numpy()
    return out


def _spacing(ts: np.ndarray) -> str | None:
    """``'weekly'``/``'monthly'``/``'quarterly or yearly'`` when the bars' most common spacing says so."""
    valid = np.sort(ts[~np.isnat(ts)])
    if len(valid) < 3:
        return None
    diffs = np.diff(valid.astype("int64")) / (86_400 * 10**9)
    diffs = diffs[diffs > 0]
    if not diffs.size:
        return None
    days = float(np.median(diffs))
    if 6.5 <= days <= 7.5:
        return "weekly"
    if 27.5 <= days <= 31.5:
        return "monthly"
    if days >= 88:
        return "quarterly or yearly"
    return None


def _infer_timeframe(ts: np.ndarray, tz: str) -> str | None:
    valid = np.sort(ts[~np.isnat(ts)])
    if len(valid) < 2:
        return None
    diffs = np.diff(valid.astype("int64"))
    diffs = diffs[diffs > 0]
    if not diffs.size:
        return None
    values, counts = np.unique(diffs, return_counts=True)
    common = int(values[np.argmax(counts)])
    if common == 60 * 10**9:
        return "minute"
    if common == 3600 * 10**9:
        return "hour"
    local = pd.DatetimeIndex(valid).tz_localize("UTC").tz_convert(tz)
    if 23 * 3600 * 10**9 <= common <= 25 * 3600 * 10**9 and (local == local.normalize()).all():
        return "day"
    return None


def _name_parts(path: Path) -> tuple[str | None, str | None, str | None]:
    """Symbol, timeframe and an unsupported timeframe (``'weekly'``…) from a file name like ``SPY_1d_2019.csv``
    (each may be None)."""
    stem = path.name
    for ext in (".csv.zstd", ".csv.zst", ".csv", ".parquet", ".pq"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    parts = [p for p in re.split(r"[_\s]+", stem) if p]
    timeframe = unsupported = None
    for part in parts[1:]:
        kind = unsupported_timeframe(part)
        if kind is not None:
            unsupported = unsupported or kind
            continue
        with contextlib.suppress(ConfigError):
            timeframe = canonical_timeframe(part)
            break
    # The first part names the symbol when it looks like one: written in capitals (AAPL.csv, BTC-USD_2020.csv)
    # or followed by a timeframe (spy_1d.csv). "data.csv" or "export.csv" name no symbol.
    first = parts[0] if parts else ""
    looks = bool(re.fullmatch(r"[A-Za-z0-9.\-^=]+", first)) and not first.isdigit()
    symbol = first.upper() if looks and (first == first.upper() or timeframe is not None) else None
    return symbol, timeframe, None if timeframe is not None else unsupported
