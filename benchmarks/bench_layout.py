"""Why the store partitions intraday series by year, uses 16,384-row row groups and these encodings.

Five years of one symbol's regular-session minute bars (489,000 bars) are written in several
layouts; the same range queries (1 day, 1 month, 1 year) run on each through one warm DuckDB
connection, listing only the files whose range overlaps the query, as the store does. Printed:
median query time over ``--rounds`` and bytes per bar. Then the codecs and encodings on one year of
extended-hours bars and on real minute bars (``../shared/data``, when present): bytes per bar, decode and write time.

Reproduce (about a minute)::

    python3 dev.py bench benchmarks/bench_layout.py
"""

from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lumibot_duckdb.store.coverage import SeriesKey
from lumibot_duckdb.store.local import COLUMN_ENCODINGS, COMPRESSION, DICTIONARY_COLUMNS
from lumibot_duckdb.store.parquet import ParquetSource
from lumibot_duckdb.store.schema import normalize_bars, to_arrow
from lumibot_duckdb.testing.market import SyntheticMarket

QUERIES = {"1 day": ("2021-06-15", "2021-06-16"), "1 month": ("2021-06-01", "2021-07-01"),
           "1 year": ("2021-01-01", "2022-01-01")}
KEY = SeriesKey("polygon", "AAA", "minute", quote="USD", adjustment="split")


def write_layout(table: pa.Table, folder: Path, partition: str, row_group: int) -> None:
    folder.mkdir(parents=True)
    ts = table.column("ts").to_pandas()
    if partition == "single":
        groups = {"all": table}
    elif partition == "year":
        groups = {str(y): table.filter(pa.array(ts.dt.year == y)) for y in sorted(ts.dt.year.unique())}
    else:
        months = ts.dt.year * 100 + ts.dt.month
        groups = {str(m): table.filter(pa.array(months == m)) for m in sorted(months.unique())}
    for name, part in groups.items():
        pq.write_table(part, folder / f"{name}.parquet", row_group_size=row_group, compression=COMPRESSION,
                       use_dictionary=DICTIONARY_COLUMNS, column_encoding=COLUMN_ENCODINGS)


def files_for(folder: Path, start: pd.Timestamp, end: pd.Timestamp) -> list[str]:
    chosen = []
    for path in sorted(folder.glob("*.parquet")):
        name = path.stem
        if name == "all":
            chosen.append(str(path))
            continue
        lo = pd.Timestamp(f"{name[:4]}-{name[4:] or '01'}-01", tz="UTC")
        hi = lo + (pd.DateOffset(years=1) if len(name) == 4 else pd.DateOffset(months=1))
        if lo < end and start < hi:
            chosen.append(str(path))
    return chosen


def time_query(con: duckdb.DuckDBPyConnection, folder: Path, start: pd.Timestamp, end: pd.Timestamp,
               rounds: int) -> tuple[float, int]:
    sql = "SELECT ts, open, high, low, close, volume FROM read_parquet(?) WHERE ts >= ? AND ts < ? ORDER BY ts"
    args = [files_for(folder, start, end), start.to_pydatetime(), end.to_pydatetime()]
    rows = len(con.execute(sql, args).df())
    samples = []
    for _ in range(rounds):
        began = time.perf_counter()
        con.execute(sql, args).df()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples), rows


def encodings(table: pa.Table, rounds: int) -> list[str]:
    """Bytes per bar, and the median time to decode the file's value columns with pyarrow (what a backtest's read
    does) and to write it, per codec and encoding."""
    store = {"use_dictionary": DICTIONARY_COLUMNS, "column_encoding": COLUMN_ENCODINGS}
    options = {
        "snappy (Lumibot's Polygon cache codec)": {"compression": "snappy"},
        "zstd": {"compression": "zstd"},
        "zstd + byte-stream-split floats + delta ints (the store before 2026-12)": {"compression": "zstd", **store},
        "lz4 + byte-stream-split floats + delta ints (the store)": {"compression": "lz4", **store},
    }
    columns = ["ts", "open", "high", "low", "close", "volume", "vwap", "trade_count"]
    lines = []
    for label, kwargs in options.items():
        buffer = io.BytesIO()
        written = []
        for _ in range(max(3, rounds // 4)):
            buffer = io.BytesIO()
            began = time.perf_counter()
            pq.write_table(table, buffer, row_group_size=16_384, **kwargs)
            written.append(time.perf_counter() - began)
        data = buffer.getvalue()
        decoded = []
        for _ in range(rounds * 5):
            parquet = ParquetSource(pa.BufferReader(data))
            began = time.perf_counter()
            parquet.read(columns, use_threads=False)
            decoded.append(time.perf_counter() - began)
        lines.append(f"| {label} | {len(data) / table.num_rows:.1f} | {statistics.median(decoded) * 1e3:.2f} ms | "
                     f"{statistics.median(written) * 1e3:.1f} ms |")
    return lines


def real_minutes() -> pa.Table | None:
    """The real minute bars of ``../shared/data/XYZ_1m_2020.csv`` (30,397 bars, prices on a 0.25 tick), if present."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "XYZ_1m_2020.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path, parse_dates=["time"]).set_index("time")
    frame.index = frame.index.tz_localize("America/New_York").tz_convert("UTC").rename("ts")
    return to_arrow(normalize_bars(frame), SeriesKey("polygon", "XYZ", "minute", quote="USD", adjustment="split"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()
    bars = SyntheticMarket(seed=5, extended_hours=False).bars("AAA", "minute", "2019-01-01", "2024-01-01")
    table = to_arrow(normalize_bars(bars), KEY)
    layouts = [("single", 1_000_000), ("single", 16_384), ("year", 16_384), ("year", 65_536),
               ("year", 131_072), ("month", 16_384)]
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    print(f"{len(bars):,} minute bars, 2019-2023; query median of {args.rounds} rounds, warm connection\n")
    print("| layout | bytes/bar | " + " | ".join(QUERIES) + " |")
    print("|---|---|" + "---|" * len(QUERIES))
    with tempfile.TemporaryDirectory() as scratch:
        for partition, row_group in layouts:
            folder = Path(scratch) / f"{partition}-{row_group}"
            write_layout(table, folder, partition, row_group)
            size = sum(p.stat().st_size for p in folder.glob("*.parquet"))
            cells = []
            for start, end in QUERIES.values():
                seconds, rows = time_query(con, folder, pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC"),
                                           args.rounds)
                cells.append(f"{seconds * 1e3:.2f} ms ({rows:,} bars)")
            label = f"{partition}, {'one row group' if row_group > len(bars) else f'{row_group:,}-row groups'}"
            print(f"| {label} | {size / len(bars):.1f} | " + " | ".join(cells) + " |")
    extended = to_arrow(normalize_bars(SyntheticMarket(seed=5).bars("AAA", "minute", "2023-01-01", "2024-01-01")), KEY)
    samples = [(f"one year of generated extended-hours minute bars ({extended.num_rows:,} bars)", extended)]
    real = real_minutes()
    if real is None:
        print("\n(../shared/data is absent: the encodings of real minute bars are left out)")
    else:
        samples.append((f"real minute bars, XYZ_1m_2020.csv ({real.num_rows:,} bars)", real))
    for label, sample in samples:
        print(f"\nEncodings, {label}; decode: ts and the value columns with pyarrow, one thread, median:\n")
        print("| encoding | bytes/bar | decode | write |\n|---|---|---|---|")
        print("\n".join(encodings(sample, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
