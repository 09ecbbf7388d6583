"""SQL for humans: ``market_data``, ``symbols``, ``data_sources``, ``coverage`` and ``files`` over the store.

The views are built on a DuckDB connection from a listing of the store's files taken when the
connection is made (new files appear on the next :meth:`DuckDBDataStorage.connect`). Nothing here
writes to the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from lumibot_duckdb.registry import STORE_SOURCES
from lumibot_duckdb.store.coverage import has_overlaps, normalize
from lumibot_duckdb.store.local import BarFile, read_footer
from lumibot_duckdb.store.schema import ARROW_SCHEMA, BAR_COLUMNS, KEY_COLUMNS

if TYPE_CHECKING:
    import duckdb

VIEWS = ("market_data", "symbols", "data_sources", "coverage", "files")


def file_rows(path: str) -> int | None:
    """Bars in a published file, from its (cached) footer; None when it cannot be read."""
    footer = read_footer(path)
    return None if footer is None else footer.num_rows


def create_views(con: duckdb.DuckDBPyConnection, store: Any) -> None:
    """Create the human-facing views on ``con`` from the files ``store`` (a :class:`DuckDBDataStorage`) holds now."""
    files: list[BarFile] = [f for key in store.series() for f in store.local_files(key)]
    keys = [f.key.as_dict() for f in files]
    key_values: dict[str, list[object]] = {name: [k[name] for k in keys] for name in KEY_COLUMNS}
    _table(con, "files", {
        **{name: (values, pa.string()) for name, values in key_values.items()},
        "partition": ([f.partition for f in files], pa.string()),
        "start": ([f.interval.start for f in files], _TS),
        "end": ([f.interval.end for f in files], _TS),
        "rows": ([file_rows(str(f.path)) for f in files], pa.int64()),
        "bytes": ([f.size for f in files], pa.int64()),
        "path": ([str(f.path) for f in files], pa.string()),
    })
    by_key: dict[Any, list[BarFile]] = {}
    for f in files:  # (grouped once: a scan of every file per series was quadratic in the store's size)
        by_key.setdefault(f.key, []).append(f)
    runs = [(key, interval) for key in sorted(by_key) for interval in normalize(f.interval for f in by_key[key])]
    run_keys: dict[str, list[object]] = {name: [key.as_dict()[name] for key, _ in runs] for name in KEY_COLUMNS}
    _table(con, "coverage", {
        **{name: (values, pa.string()) for name, values in run_keys.items()},
        "start": ([interval.start for _, interval in runs], _TS),
        "end": ([interval.end for _, interval in runs], _TS),
    })

    readable = [f for f in files if file_rows(str(f.path)) is not None]
    columns = ", ".join(["ts", *KEY_COLUMNS, *(c for c in BAR_COLUMNS if c != "ts")])
    # _bar_rows: market_data plus the file each bar comes from (``filename`` = ``files.path``), so the
    # analytics macros number series by joining one short text per bar, not the seven key columns.
    if not readable:
        _table(con, "_no_bars", {f.name: ([], f.type) for f in ARROW_SCHEMA})
        con.execute(f"CREATE OR REPLACE TEMP VIEW _bar_rows AS SELECT {columns}, NULL::VARCHAR AS filename "
                    "FROM _no_bars")
    else:
        # The file list goes in through a relation, never formatted into SQL text.
        con.read_parquet([str(f.path) for f in readable], filename=True).create_view("_bar_files", replace=True)
        readable_by_key: dict[Any, list[BarFile]] = {}
        for f in readable:
            readable_by_key.setdefault(f.key, []).append(f)
        if any(has_overlaps(f.interval for f in group) for group in readable_by_key.values()):
            # Two processes answered the same range: keep the bar of the newest file.
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW _bar_rows AS SELECT {columns}, filename FROM _bar_files "
                "QUALIFY row_number() OVER (PARTITION BY source, symbol, asset_type, quote, exchange, timeframe, "
                "adjustment, ts ORDER BY regexp_extract(filename, '_([0-9a-f]+)\\.parquet$', 1) DESC) = 1")
        else:
            con.execute(f"CREATE OR REPLACE TEMP VIEW _bar_rows AS SELECT {columns}, filename FROM _bar_files")
    con.execute(f"CREATE OR REPLACE TEMP VIEW market_data AS SELECT {columns} FROM _bar_rows")

    con.execute("""
        CREATE OR REPLACE TEMP VIEW symbols AS
        SELECT source, symbol, asset_type, quote, exchange,
               list(DISTINCT timeframe ORDER BY timeframe) AS timeframes,
               min("start") AS covered_from, max("end") AS covered_to,
               sum("rows")::BIGINT AS bars, sum(bytes)::BIGINT AS bytes
        FROM files GROUP BY ALL ORDER BY ALL""")
    _table(con, "_sources", {"source": (list(STORE_SOURCES), pa.string()),
                             "description": (list(STORE_SOURCES.values()), pa.string())})
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


_TS = pa.timestamp("us", tz="UTC")


def _table(con: duckdb.DuckDBPyConnection, name: str, columns: dict[str, tuple[list[object], pa.DataType]]) -> None:
    """A temporary table from Python lists with explicit Arrow types (typed even when empty)."""
    table = pa.table({column: pa.array(values, type=kind) for column, (values, kind) in columns.items()})
    con.from_arrow(table).create_view(f"_{name}_source", replace=True)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT * FROM _{name}_source")
    con.execute(f"DROP VIEW _{name}_source")
