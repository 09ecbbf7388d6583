"""One time-range query out of 5 years of one symbol's minute bars: the store beside Lumibot's way.

Lumibot's Polygon cache answers a range by reading the symbol's whole Parquet file into pandas
and masking it (``polygon_helper.load_cache`` + the mask of ``get_price_data_from_polygon``).
The store reads only the partitions and row groups that overlap the range.

* ``legacy``: ``polygon_helper.load_cache(file)`` then the boolean mask, as Lumibot does.
* ``store-warm``: ``DuckDBDataStorage.read`` on a store object already open (a backtest's case).
* ``store-cold``: a new store object for every query (the process's DuckDB is shared: new cursor).
* ``store-first-read``: what the first query of a new process pays: a new store object, no footer or
  file-name cached, the file not yet checked (its CRC-32 and footer marks are verified again,
  :mod:`lumibot_duckdb.store.integrity`), no DuckDB database open (the store reads with pyarrow and opens
  none; DuckDB's ``connect`` alone was ~16 ms here when it did).

Every variant cycles through the same 16 windows of its length (seeded starts over 2019–2022, some across a
year's file edge), so no variant answers the same range twice in a row; each window's answer is checked
against the bars written, outside the timing.

``test_bulk_read``: 10.5M minute bars (20 years of one 24/7 symbol, 20 files) read whole into the frame
Lumibot's Polygon source builds its ``Data`` from (``sources.polygon.legacy_frame``), beside Lumibot's
``load_cache`` of the same bars in its own cache file.

Reproduce: ``python3 dev.py bench benchmarks/test_range_query.py`` (about 1.5 minutes); the
ratio table is printed at the end.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lumibot_duckdb import DuckDBDataStorage, SeriesKey
from lumibot_duckdb.testing.market import SyntheticMarket

KEY = SeriesKey("polygon", "AAA", "minute", quote="USD", adjustment="split")
LENGTHS = {"1 day": pd.DateOffset(days=1), "1 month": pd.DateOffset(months=1), "1 year": pd.DateOffset(years=1)}
ROTATION = 16
"""Each variant cycles through this many windows of its length (starts spread over 2019–2022, some crossing a
year's file edge), so that no answer is read twice in a row: nothing can be served from a cache of the last one."""


def windows(length: str, bars: pd.DataFrame) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    """``ROTATION`` windows of ``length`` that hold bars, at starts a seeded draw spreads over 2019-02 to 2022-11."""
    days = pd.bdate_range("2019-02-01", "2022-11-30", tz="UTC")
    found: list[tuple[pd.Timestamp, pd.Timestamp]] = []
    for start in np.random.default_rng(19).permutation(days):
        start = pd.Timestamp(start)
        end = start + LENGTHS[length]
        if ((bars.index >= start) & (bars.index < end)).any():
            found.append((start, end))
        if len(found) == ROTATION:
            return found
    raise AssertionError(f"fewer than {ROTATION} {length} windows with bars")


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


@pytest.mark.parametrize("window", list(LENGTHS))
@pytest.mark.parametrize("method", ["legacy", "store-warm", "store-cold", "store-first-read"])
def test_range_query(benchmark, five_years, window: str, method: str) -> None:
    legacy_file, store_dir, bars = five_years
    rotation = windows(window, bars)
    benchmark.group = f"range query {window} of 5y minute ({len(bars):,} bars)"
    if method == "legacy":
        def query(start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
            return legacy_query(legacy_file, start, end)
    elif method == "store-warm":
        store = DuckDBDataStorage(store_dir)
        query = functools.partial(store.read, KEY)
    elif method == "store-cold":
        def query(start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
            with DuckDBDataStorage(store_dir) as fresh:
                return fresh.read(KEY, start, end)
    else:
        def query(start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
            _forget_caches()
            with DuckDBDataStorage(store_dir) as fresh:
                return fresh.read(KEY, start, end)
    turn = itertools.cycle(rotation)
    benchmark(lambda: query(*next(turn)))
    for start, end in rotation:  # every window's answer, checked once outside the timing
        result = query(start, end)
        expected = bars[(bars.index >= start) & (bars.index < end)]
        assert len(result) == len(expected) > 0
        assert (result["close"].to_numpy() == expected["close"].to_numpy()).all()


def _forget_caches() -> None:
    """What a new process has not learnt yet: footers, row-group bounds, file names, which files passed their
    integrity check (so the first read checksums its file again); no DuckDB database."""
    from lumibot_duckdb.store import answers, integrity, local, reader
    from lumibot_duckdb.store import store as store_module

    for cached in (local.read_footer, answers._empty_mark, local.parse_file_name, local.partition_interval,
                   reader.ts_bounds, store_module._null_columns):
        cached.cache_clear()
    with integrity._CHECKED_LOCK:
        integrity._CHECKED.clear()
    store_module._Engine.shutdown()


BULK = SeriesKey("polygon", "BTC", "minute", asset_type="crypto", quote="USD", adjustment="split")


@pytest.fixture(scope="module")
def twenty_years(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, int]:
    """10.5M minute bars of one 24/7 symbol, 2005–2024: in the store (a file a year) and in Lumibot's cache file."""
    market = SyntheticMarket(seed=3)
    folder = tmp_path_factory.mktemp("bulk")
    store = DuckDBDataStorage(folder / "store")
    legacy_parts, total = [], 0
    for year in range(2005, 2025):
        bars = market.bars("BTC", "minute", f"{year}-01-01", f"{year + 1}-01-01", asset_type="crypto")
        year_utc = (pd.Timestamp(f"{year}-01-01", tz="UTC"), pd.Timestamp(f"{year + 1}-01-01", tz="UTC"))
        store.write(BULK, bars, covered=year_utc)
        legacy = bars.rename_axis("datetime").rename(columns={"trade_count": "transactions"})
        legacy["timestamp"] = legacy.index.as_unit("ns").asi8 // 1_000_000
        legacy.index = legacy.index.as_unit("ns")
        legacy_parts.append(legacy)
        total += len(bars)
    legacy_file = folder / "crypto_BTC_USD_minute.parquet"
    pd.concat(legacy_parts).reset_index().to_parquet(legacy_file, engine="pyarrow", compression="snappy")
    return legacy_file, folder / "store", total


@pytest.mark.parametrize("method", ["legacy", "store"])
def test_bulk_read(benchmark, twenty_years, method: str) -> None:
    from lumibot.tools.polygon_helper import load_cache

    from lumibot_duckdb.sources.polygon import POLYGON_COLUMNS, legacy_frame

    legacy_file, store_dir, total = twenty_years
    benchmark.group = f"bulk read of {total:,} minute bars into the frame of a backtest"
    start, end = pd.Timestamp("2005-01-01", tz="UTC"), pd.Timestamp("2025-01-01", tz="UTC")
    if method == "legacy":
        result = benchmark.pedantic(load_cache, args=(legacy_file,), rounds=5, warmup_rounds=1)
    else:
        store = DuckDBDataStorage(store_dir)
        result = benchmark.pedantic(lambda: legacy_frame(store.read(BULK, start, end, columns=POLYGON_COLUMNS)),
                                    rounds=5, warmup_rounds=1)
    assert len(result) == total
