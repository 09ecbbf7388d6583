"""Why the store partitions intraday series by year, uses 16,384-row row groups and these encodings.

Five years of one symbol's regular-session minute bars (489,000 bars) are written in several
layouts; the same range queries (1 day, 1 month, 1 year) run on each through one warm DuckDB
connection, listing only the files whose range overlaps the query, as the store does. Printed:
median query time over ``--rounds`` and bytes per bar. Then the encodings on one year of
extended-hours bars.

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
from lumibot_duckdb.store.local import COLUMN_ENCODINGS, DICTIONARY_COLUMNS
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
        pq.write_table(part, folder / f"{name}.parquet", row_group_size=row_group, compression="zstd",
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


def encodings(bars: pd.DataFrame) -> list[str]:
    table = to_arrow(normalize_bars(bars), KEY)
    options = {
        "snappy (Lumibot's Polygon cache codec)": {"compression": "snappy"},
        "zstd": {"compression": "zstd"},
        "zstd + byte-stream-split floats + delta ints (the store)": {
            "compression": "zstd", "use_dictionary": DICTIONARY_COLUMNS, "column_encoding": COLUMN_ENCODINGS},
    }
    lines = []
    for label, kwargs in options.items():
        buffer = io.BytesIO()
        pq.write_table(table, buffer, row_group_size=16_384, **kwargs)
        lines.append(f"| {label} | {len(buffer.getvalue()) / table.num_rows:.1f} |")
    return lines


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
    extended = SyntheticMarket(seed=5).bars("AAA", "minute", "2023-01-01", "2024-01-01")
    print(f"\nEncodings, one year of extended-hours minute bars ({len(extended):,} bars):\n")
    print("| encoding | bytes/bar |\n|---|---|")
    print("\n".join(encodings(extended)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
