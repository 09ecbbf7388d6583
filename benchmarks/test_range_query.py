"""One time-range query out of 5 years of one symbol's minute bars: the store beside Lumibot's way.

Lumibot's Polygon cache answers a range by reading the symbol's whole Parquet file into pandas
and masking it (``polygon_helper.load_cache`` + the mask of ``get_price_data_from_polygon``).
The store reads only the partitions and row groups that overlap the range.

* ``legacy``: ``polygon_helper.load_cache(file)`` then the boolean mask, as Lumibot does.
* ``store-warm``: ``DuckDBDataStorage.read`` on a store object already open (a backtest's case).
* ``store-cold``: a new store object for every query (the process's DuckDB is shared: new cursor).
* ``store-fresh-duckdb``: a brand-new DuckDB database for every query, i.e. what the first query
  of a new process pays (DuckDB's ``connect`` alone is ~16 ms here).

Reproduce: ``python3 dev.py bench benchmarks/test_range_query.py`` (about 1 minute); the
ratio table is printed at the end.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from lumibot_duckdb import DuckDBDataStorage, SeriesKey
from lumibot_duckdb.testing.market import SyntheticMarket

KEY = SeriesKey("polygon", "AAA", "minute", quote="USD", adjustment="split")
WINDOWS = {"1 day": ("2021-06-15", "2021-06-16"), "1 month": ("2021-06-01", "2021-07-01"),
           "1 year": ("2021-01-01", "2022-01-01")}


@pytest.fixture(scope="module")
def five_years(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """Five years of regular-session minute bars, in Lumibot's cache format and in the store."""
    bars = SyntheticMarket(seed=5, extended_hours=False).bars("AAA", "minute", "2019-01-01", "2024-01-01")
    folder = tmp_path_factory.mktemp("range")
    legacy = bars.rename_axis("datetime").rename(columns={"trade_count": "transactions"})
    legacy["timestamp"] = legacy.index.as_unit("ns").asi8 // 1_000_000
    legacy.index = legacy.index.as_unit("ns")
    legacy_file = folder / "stock_AAA_USD_minute.parquet"
    legacy.reset_index().to_parquet(legacy_file, engine="pyarrow", compression="snappy")  # as update_cache does
    store_dir = folder / "store"
    DuckDBDataStorage(store_dir).write(KEY, bars, covered=("2019-01-01", "2024-01-01"))
    return legacy_file, store_dir, bars


def legacy_query(path: Path, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    from lumibot.tools.polygon_helper import load_cache

    frame = load_cache(path)
    return frame[(frame.index >= start) & (frame.index < end)]


@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("method", ["legacy", "store-warm", "store-cold", "store-fresh-duckdb"])
def test_range_query(benchmark, five_years, window: str, method: str) -> None:
    legacy_file, store_dir, bars = five_years
    start, end = (pd.Timestamp(t, tz="UTC") for t in WINDOWS[window])
    expected = int(((bars.index >= start) & (bars.index < end)).sum())
    benchmark.group = f"range query {window} of 5y minute ({len(bars):,} bars)"
    if method == "legacy":
        result = benchmark(legacy_query, legacy_file, start, end)
    elif method == "store-warm":
        store = DuckDBDataStorage(store_dir)
        result = benchmark(store.read, KEY, start, end)
    elif method == "store-cold":
        def cold() -> pd.DataFrame:
            with DuckDBDataStorage(store_dir) as fresh:
                return fresh.read(KEY, start, end)
        result = benchmark(cold)
    else:
        from lumibot_duckdb.store import store as store_module

        def fresh_duckdb() -> pd.DataFrame:
            store_module._Engine.shutdown()
            with DuckDBDataStorage(store_dir) as fresh:
                return fresh.read(KEY, start, end)
        result = benchmark(fresh_duckdb)
    assert len(result) == expected > 0
    assert result["close"].iloc[0] == bars.loc[result.index[0], "close"]
