"""SQL for humans: ``market_data``, ``symbols``, ``data_sources``, ``coverage`` and ``files`` over the store.

The views are built on a DuckDB connection from a listing of the store's files taken when the
connection is made (new files appear on the next :meth:`DuckDBDataStorage.connect`). Nothing here
writes to the store.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from lumibot_duckdb.store.coverage import has_overlaps, normalize
from lumibot_duckdb.store.layout import BarFile, Layout, read_footer
from lumibot_duckdb.store.schema import ARROW_SCHEMA, BAR_COLUMNS, KEY_COLUMNS

KNOWN_SOURCES = {
    "polygon": "Polygon.io aggregates (polygon-api-client get_aggs), split-adjusted",
    "yahoo": "Yahoo Finance (yfinance Ticker.history), raw OHLC with Adj Close, dividends and splits",
    "alpaca": "Alpaca market data (alpaca-py get_stock_bars / get_crypto_bars)",
    "ccxt": "Crypto exchanges through CCXT (fetch_ohlcv), per exchange",
    "ingest": "Files loaded with lumibot-duckdb ingest",
}
VIEWS = ("market_data", "symbols", "data_sources", "coverage", "files")


def file_rows(path: str) -> int | None:
    """Bars in a published file, from its (cached) footer; None when it cannot be read."""
    footer = read_footer(path)
    return None if footer is None else footer.num_rows


def create_views(con: duckdb.DuckDBPyConnection, layout: Layout) -> None:
    """Create the human-facing views on ``con`` from the files ``layout`` holds now."""
    files: list[BarFile] = [f for key in layout.series() for f in layout.files(key)]
    listing = pd.DataFrame(
        [{**f.key.as_dict(), "partition": f.partition, "start": f.interval.start, "end": f.interval.end,
          "rows": file_rows(str(f.path)), "bytes": f.size, "path": str(f.path)} for f in files],
        columns=[*KEY_COLUMNS, "partition", "start", "end", "rows", "bytes", "path"],
    )
    listing["rows"] = listing["rows"].astype("Int64")
    for column in ("start", "end"):
        listing[column] = pd.to_datetime(listing[column], utc=True)
    con.register("_files", listing)
    con.execute("CREATE OR REPLACE TEMP TABLE files AS SELECT * FROM _files")
    con.unregister("_files")

    runs = []
    for key in {f.key for f in files}:
        for interval in normalize(f.interval for f in files if f.key == key):
            runs.append({**key.as_dict(), "start": interval.start, "end": interval.end})
    coverage = pd.DataFrame(runs, columns=[*KEY_COLUMNS, "start", "end"])
    for column in ("start", "end"):
        coverage[column] = pd.to_datetime(coverage[column], utc=True)
    con.register("_coverage", coverage)
    con.execute("CREATE OR REPLACE TEMP TABLE coverage AS SELECT * FROM _coverage ORDER BY ALL")
    con.unregister("_coverage")

    readable = [f for f in files if file_rows(str(f.path)) is not None]
    columns = ", ".join(["ts", *KEY_COLUMNS, *(c for c in BAR_COLUMNS if c != "ts")])
    if not readable:
        empty = pd.DataFrame({name: pd.Series(dtype=_pandas_type(name)) for name in ARROW_SCHEMA.names})
        con.register("_empty", empty)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _no_bars AS SELECT {columns} FROM _empty")
        con.unregister("_empty")
        con.execute("CREATE OR REPLACE TEMP VIEW market_data AS SELECT * FROM _no_bars")
    else:
        # The file list goes in through a relation, never formatted into SQL text.
        con.read_parquet([str(f.path) for f in readable], filename=True).create_view("_bar_files", replace=True)
        keys = {f.key for f in readable}
        if any(has_overlaps(f.interval for f in readable if f.key == key) for key in keys):
            # Two processes answered the same range: keep the bar of the newest file.
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW market_data AS SELECT {columns} FROM _bar_files "
                "QUALIFY row_number() OVER (PARTITION BY source, symbol, asset_type, quote, exchange, timeframe, "
                "adjustment, ts ORDER BY regexp_extract(filename, '_([0-9a-f]+)\\.parquet$', 1) DESC) = 1")
        else:
            con.execute(f"CREATE OR REPLACE TEMP VIEW market_data AS SELECT {columns} FROM _bar_files")

    con.execute("""
        CREATE OR REPLACE TEMP VIEW symbols AS
        SELECT source, symbol, asset_type, quote, exchange,
               list(DISTINCT timeframe ORDER BY timeframe) AS timeframes,
               min("start") AS covered_from, max("end") AS covered_to,
               sum("rows")::BIGINT AS bars, sum(bytes)::BIGINT AS bytes
        FROM files GROUP BY ALL ORDER BY ALL""")
    known = pd.DataFrame({"source": list(KNOWN_SOURCES), "description": list(KNOWN_SOURCES.values())})
    con.register("_known_sources", known)
    con.execute("CREATE OR REPLACE TEMP TABLE _sources AS SELECT * FROM _known_sources")
    con.unregister("_known_sources")
    con.execute("""
        CREATE OR REPLACE TEMP VIEW data_sources AS
        WITH stats AS (
            SELECT source, count(DISTINCT (symbol, asset_type, quote, exchange)) AS symbols,
                   count(DISTINCT (symbol, asset_type, quote, exchange, timeframe, adjustment)) AS series,
                   count(*) AS files, sum("rows")::BIGINT AS bars, sum(bytes)::BIGINT AS bytes,
                   min("start") AS covered_from, max("end") AS covered_to
            FROM files GROUP BY source)
        SELECT coalesce(s.source, k.source) AS source, coalesce(k.description, '') AS description,
               coalesce(symbols, 0) AS symbols, coalesce(series, 0) AS series, coalesce(files, 0) AS files,
               coalesce(bars, 0) AS bars, coalesce(bytes, 0) AS bytes, covered_from, covered_to
        FROM _sources k FULL OUTER JOIN stats s ON s.source = k.source
        ORDER BY bars DESC, source""")


def _pandas_type(name: str) -> str:
    if name == "ts":
        return "datetime64[us, UTC]"
    if name in KEY_COLUMNS or name == "metadata":
        return "object"
    return "Int64" if name == "trade_count" else "float64"
