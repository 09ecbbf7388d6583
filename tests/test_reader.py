"""The read path's fast way (store/reader.py: sorted, disjoint files gathered straight into the frame's arrays, a
pool decoding several files at once; store.py: the frame built from its blocks; polygon.legacy_frame in one pass)
gives exactly the frame of the general way and of DuckDB's query: same bars, dtypes, index, column order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import key, make_bars

from lumibot_duckdb import DuckDBDataStorage
from lumibot_duckdb.store import reader
from lumibot_duckdb.store import store as store_module
from lumibot_duckdb.store.coverage import utc
from lumibot_duckdb.store.parquet import ParquetSource, read_metadata
from lumibot_duckdb.store.schema import empty_bars

ALL = [*empty_bars().columns]
REPO = Path(__file__).resolve().parents[1]


def _unreadable(*args: object, **kwargs: object) -> None:
    raise OSError("pyarrow could not read it")


@pytest.fixture(scope="module")
def years(tmp_path_factory: pytest.TempPathFactory) -> DuckDBDataStorage:
    """Minute bars over three year files (2021-12-30 .. 2024-01-02), sparse, with a gap, nulls in some files only,
    metadata in one, and a file with no bars (an empty answer)."""
    store = DuckDBDataStorage(tmp_path_factory.mktemp("reads"))
    for seed, (start, periods, step) in enumerate([("2021-12-30 20:00", 4000, 7), ("2022-06-01", 3000, 97),
                                                   ("2023-12-31 22:00", 400, 1)]):
        bars = make_bars(start, periods=periods, freq=f"{step}min", seed=seed)
        bars["trade_count"] = pd.array(bars["trade_count"], dtype="Int64")
        if seed == 1:
            bars.loc[bars.index[::5], "trade_count"] = pd.NA
            bars.loc[bars.index[::7], "vwap"] = np.nan
            bars["metadata"] = [json.dumps({"otc": i % 2 == 0}) if i % 3 else None for i in range(periods)]
            bars["dividend"] = np.where(np.arange(periods) % 50 == 0, 0.25, np.nan)
        store.write(key(), bars, covered=(bars.index[0], bars.index[-1] + pd.Timedelta(minutes=1)))
    store.write(key(), make_bars(periods=0), covered=("2023-03-01", "2023-03-02"))
    return store


WINDOWS = {
    "everything": ("2021-01-01", "2025-01-01"),
    "across a year's file edge": ("2022-12-31 23:00", "2023-01-01 01:00"),
    "on the file edges exactly": ("2022-01-01", "2023-01-01"),
    "across two edges": ("2021-12-31", "2024-01-01 12:00"),
    "inside one row group": ("2022-06-02 10:00", "2022-06-02 10:30"),
    "a gap with no bars": ("2022-03-01", "2022-04-01"),
    "the empty answer": ("2023-03-01", "2023-03-02"),
    "before everything": ("2019-01-01", "2020-01-01"),
    "one bar": ("2023-12-31 22:00", "2023-12-31 22:01"),
}


@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("columns", [None, ["close", "trade_count", "metadata"], ["vwap", "open"], ["dividend"]])
@pytest.mark.parametrize("parallel", [False, True])
def test_fast_path_is_the_general_path_and_duckdbs_answer(years: DuckDBDataStorage, window: str,
                                                          columns: list[str] | None, parallel: bool,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    start, end = (utc(t) for t in WINDOWS[window])
    monkeypatch.setattr(reader, "_PARALLEL_GROUPS", 1 if parallel else 10**9)  # the pool, or none, for any read
    fast = years.read(key(), start, end, columns=columns)
    with monkeypatch.context() as patch:
        patch.setattr(reader, "_disjoint_and_sorted", lambda *args: None)
        general = years.read(key(), start, end, columns=columns)
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "read_files", _unreadable)
        duck = years.read(key(), start, end, columns=columns)
    pd.testing.assert_frame_equal(fast, general)
    pd.testing.assert_frame_equal(fast, duck)
    shape = empty_bars()[columns or ALL]
    assert list(fast.columns) == list(shape.columns)
    assert fast.dtypes.tolist() == shape.dtypes.tolist()
    assert str(fast.index.dtype) == "datetime64[us, UTC]" and fast.index.name == "ts"
    assert fast.index.is_monotonic_increasing and fast.index.is_unique
    assert ((fast.index >= start) & (fast.index < end)).all()


def test_many_files_with_many_row_groups(tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files of several row groups each (the pool decodes them at once), read whole and in slices."""
    monkeypatch.setattr("lumibot_duckdb.store.local.ROW_GROUP_SIZE", 64)
    store = DuckDBDataStorage(tmp_path / "store")
    for year in range(2015, 2022):
        bars = make_bars(f"{year}-03-01", periods=1000, freq="61min", seed=year)
        store.write(key(), bars, covered=(f"{year}-01-01", f"{year + 1}-01-01"))
    for start, end in [("2015-01-01", "2022-01-01"), ("2016-03-20", "2019-03-02"), ("2018-03-05", "2018-03-06")]:
        fast = store.read(key(), start, end)
        with monkeypatch.context() as patch:
            patch.setattr(store_module, "read_files", _unreadable)
            duck = store.read(key(), start, end)
        pd.testing.assert_frame_equal(fast, duck)
        assert len(fast) > 0


def test_the_frame_from_its_blocks_is_the_frame_from_its_columns(years: DuckDBDataStorage,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Where pandas no longer offers its block API the frame is built from a dict of columns: the same frame."""
    blocks = years.read(key(), "2021-01-01", "2025-01-01")
    monkeypatch.setattr(store_module, "_MAKE_BLOCK", None)
    columns = years.read(key(), "2021-01-01", "2025-01-01")
    pd.testing.assert_frame_equal(blocks, columns)
    blocks["close"] = blocks["close"] * 2  # a frame of one float block is an ordinary frame
    assert (blocks["close"] == columns["close"] * 2).all() and (blocks["open"] == columns["open"]).all()


def _reference_legacy_frame(bars: pd.DataFrame) -> pd.DataFrame:
    """polygon.legacy_frame as first written (column by column with pandas' own conversions)."""
    index = pd.DatetimeIndex(bars.index).as_unit("ns").rename("datetime")
    trades = bars["trade_count"]
    metadata = bars["metadata"]
    otc = np.full(len(bars), None, dtype=object)
    present = np.not_equal(metadata.to_numpy(), None)
    if present.any():
        otc[present] = [json.loads(m).get("otc") for m in metadata[present]]
    volume = bars["volume"].to_numpy(dtype="float64")
    if len(volume) and not pd.isna(volume).any() and (volume == volume.round()).all():
        volume = volume.astype("int64")
    return pd.DataFrame({"open": bars["open"].to_numpy(), "high": bars["high"].to_numpy(),
                         "low": bars["low"].to_numpy(), "close": bars["close"].to_numpy(), "volume": volume,
                         "vwap": bars["vwap"].to_numpy(), "timestamp": index.asi8 // 1_000_000,
                         "transactions": trades.astype("int64").to_numpy() if not trades.isna().any()
                         else trades.astype("float64").to_numpy(),
                         "otc": pd.Series(otc, index=index, dtype=object)}, index=index)


@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("volumes", ["whole", "fractional", "a missing one", "fractional after 70,000 bars"])
def test_legacy_frame_in_one_pass_is_the_column_by_column_frame(years: DuckDBDataStorage, window: str,
                                                                volumes: str) -> None:
    from lumibot_duckdb.sources.polygon import POLYGON_COLUMNS, legacy_frame

    bars = years.read(key(), *WINDOWS[window], columns=POLYGON_COLUMNS)
    if volumes == "fractional":
        bars["volume"] = bars["volume"] + 0.5
    elif volumes == "a missing one" and len(bars):
        bars.loc[bars.index[len(bars) // 2], "volume"] = np.nan
    elif volumes.startswith("fractional after"):  # (the check goes a slice at a time: past the first slices)
        bars = pd.concat([bars] * (70_000 // max(len(bars), 1) + 1)).iloc[:80_000] if len(bars) else bars
        bars.loc[bars.index[-1:], "volume"] = 1.5
    pd.testing.assert_frame_equal(legacy_frame(bars), _reference_legacy_frame(bars))


def test_parquet_source_reads_what_pyarrow_parquet_reads(years: DuckDBDataStorage, tmp_path: Path) -> None:
    """store/parquet.py (pyarrow's reader without importing pyarrow.parquet) against ParquetFile itself: footer,
    schema, whole file, columns (one the file lacks left out), row groups, and the errors of a missing or foreign
    file."""
    files = sorted(Path(years.root).rglob("*.parquet"))
    assert files
    for path in files:
        expected = pq.ParquetFile(path)
        with ParquetSource(str(path)) as found:
            assert found.metadata.equals(expected.metadata)
            assert found.schema_arrow.equals(expected.schema_arrow, check_metadata=True)
            assert found.num_row_groups == expected.num_row_groups
            assert found.read().equals(expected.read())
            assert found.read(["close", "no_such_column", "ts"]).equals(expected.read(["close", "no_such_column",
                                                                                       "ts"]))
            groups = list(range(expected.num_row_groups))[::-1]
            assert found.read_row_groups(groups, ["ts", "open"]).equals(expected.read_row_groups(groups,
                                                                                                 ["ts", "open"]))
        with ParquetSource(pa.BufferReader(path.read_bytes())) as in_memory:
            assert in_memory.read().equals(expected.read())
        assert read_metadata(str(path)).equals(expected.metadata)
    with pytest.raises(FileNotFoundError):
        ParquetSource(str(tmp_path / "gone.parquet"))
    (tmp_path / "foreign.parquet").write_bytes(b"PAR1 not really" * 10)
    with pytest.raises(pa.ArrowInvalid):
        ParquetSource(str(tmp_path / "foreign.parquet"))


def test_reading_the_store_loads_no_writer_filesystem_or_retry_modules(years: DuckDBDataStorage) -> None:
    """A process that only reads the store (a backtest on stored data) imports neither pyarrow.parquet (with
    pyarrow's S3/GCS/Azure/HDFS bindings: ~20 ms and ~6 MB a process), nor tenacity, difflib or DuckDB."""
    code = textwrap.dedent(f"""
        import sys
        from lumibot_duckdb import DuckDBDataStorage
        from lumibot_duckdb.store import SeriesKey
        store = DuckDBDataStorage({str(years.root)!r})
        bars = store.read(SeriesKey("test", "SPY", "minute", quote="USD"), "2021-01-01", "2025-01-01")
        print(len(bars), sorted(m for m in ("pyarrow.parquet", "pyarrow.fs", "tenacity", "difflib", "duckdb")
                                if m in sys.modules))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1) == [str(len(years.read(key(), "2021-01-01", "2025-01-01"))), "[]\n"]


def test_a_first_read_parses_each_footer_once(years: DuckDBDataStorage, monkeypatch) -> None:
    """The integrity check parses a file's footer from the bytes it hashed; the read after it reuses that
    footer instead of parsing it again from the file (what a new process knows: no footer, nothing checked)."""
    from lumibot_duckdb.store import integrity, local
    from lumibot_duckdb.store import parquet as parquet_module

    expected = years.read(key(), "2021-01-01", "2025-01-01")
    local.read_footer.cache_clear()
    monkeypatch.setattr(integrity, "_CHECKED", type(integrity._CHECKED)())
    parsed: list[object] = []
    real_open = parquet_module._open

    def counting_open(reader, source, metadata):
        if metadata is None:
            parsed.append(source)
        return real_open(reader, source, metadata)

    monkeypatch.setattr(parquet_module, "_open", counting_open)
    with DuckDBDataStorage(years.root) as fresh:
        bars = fresh.read(key(), "2021-01-01", "2025-01-01")
    pd.testing.assert_frame_equal(bars, expected)
    files = years.files(key())
    assert len(files) >= 3
    assert len(parsed) == len(files)  # the checks' parse of each file; none by the read
    assert all(isinstance(source, pa.BufferReader) for source in parsed)


def test_a_first_read_reads_each_file_once_and_keeps_none_of_its_bytes(years: DuckDBDataStorage, monkeypatch) -> None:
    """The check of a file not yet checked in this process reads and hashes all of its bytes; the read after it
    decodes from those bytes instead of opening the file again, and lets go of them when it is done. Past
    ``_OPENED_BYTES`` a read's files are hashed a chunk at a time and opened again to be decoded (what a read
    holds at once stays bounded)."""
    import gc
    import weakref

    from lumibot_duckdb.store import integrity, local
    from lumibot_duckdb.store import parquet as parquet_module

    expected = years.read(key(), "2021-01-01", "2025-01-01")
    files = years.files(key())
    assert len(files) >= 3
    opened: list[object] = []
    real_open = parquet_module._open
    monkeypatch.setattr(parquet_module, "_open", lambda reader_, source, metadata: (
        opened.append(source), real_open(reader_, source, metadata))[1])
    sources: list[weakref.ref] = []
    real_init = parquet_module.ParquetSource.__init__

    def tracked_init(self, *args, **kwargs):
        sources.append(weakref.ref(self))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(parquet_module.ParquetSource, "__init__", tracked_init)
    for budget, reopened in ((store_module._OPENED_BYTES, 0), (0, len(files) - 1)):  # (one file has no bars)
        monkeypatch.setattr(store_module, "_OPENED_BYTES", budget)
        local.read_footer.cache_clear()
        monkeypatch.setattr(integrity, "_CHECKED", type(integrity._CHECKED)())
        opened.clear()
        sources.clear()
        with DuckDBDataStorage(years.root) as fresh:
            bars = fresh.read(key(), "2021-01-01", "2025-01-01")
        pd.testing.assert_frame_equal(bars, expected)
        checks = [s for s in opened if isinstance(s, pa.BufferReader)]
        assert len(checks) == (len(files) if budget else 0), "each file's check reads it, whole within the budget"
        assert len(opened) == len(files) + reopened, f"budget {budget}: files opened again to be decoded"
        gc.collect()
        assert sources and not [s for s in sources if s() is not None], "the bytes of the checks are let go"


def test_statistics_are_written_where_they_are_read(years: DuckDBDataStorage) -> None:
    """Every file has min/max of ``ts`` (row groups, integrity, status) and of the key columns (DuckDB skips other
    series' files by them), and a null count wherever a column has no value at all (the read leaves it out);
    value columns with values carry none (their min/max only slowed the write); the read path's answers do not
    change (test_fast_path_is_the_general_path_and_duckdbs_answer)."""
    from lumibot_duckdb.store.local import STATISTICS_COLUMNS

    files = [f for k in years.series() for f in years.files(k)]
    seen_without = set()
    for bar_file in files:
        meta = read_metadata(str(bar_file.path))
        table = pq.read_table(bar_file.path)
        if meta.num_rows == 0:
            continue
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for i in range(group.num_columns):
                name, stats = group.column(i).path_in_schema, group.column(i).statistics
                if name in STATISTICS_COLUMNS:
                    assert stats is not None and stats.has_min_max, (bar_file.path.name, name)
                elif table.column(name).null_count == len(table):
                    assert stats is not None and stats.null_count == group.num_rows, (bar_file.path.name, name)
                else:
                    assert stats is None, (bar_file.path.name, name)
                    seen_without.add(name)
        null_everywhere = {n for n in table.column_names if table.column(n).null_count == len(table)}
        assert store_module._null_columns(str(bar_file.path)) == frozenset(null_everywhere)
    assert {"open", "close", "volume"} <= seen_without


def test_a_published_file_is_the_file_pyarrow_parquet_writes(tmp_path: Path) -> None:
    """Publishing writes through pyarrow's writer directly (no ``pyarrow.parquet``: ~14 ms and ~5 MB for a
    backtest that fills the store) with the options ``pyarrow.parquet.write_table`` passes: byte for byte its file,
    and writing bars into the store loads no ``pyarrow.parquet`` in a process that had none."""
    import io

    from lumibot_duckdb.store import local
    from lumibot_duckdb.store.coverage import SeriesKey
    from lumibot_duckdb.store.parquet import write_table
    from lumibot_duckdb.store.schema import normalize_bars, to_arrow

    bars = make_bars(periods=40_000, freq="1min")
    bars.loc[bars.index[::9], "vwap"] = np.nan
    table = to_arrow(normalize_bars(bars), SeriesKey("ingest", "AAA", "minute")).replace_schema_metadata(
        {b"lumibot_duckdb.schema": b"1"})
    ours, theirs = io.BytesIO(), io.BytesIO()
    write_table(table, ours, row_group_size=local.ROW_GROUP_SIZE, **local.write_options(table))
    pq.write_table(table, theirs, row_group_size=local.ROW_GROUP_SIZE, **local.write_options(table))
    assert ours.getvalue() == theirs.getvalue()
    assert pq.read_table(pa.BufferReader(ours.getvalue())).equals(table)
    code = textwrap.dedent(f"""
        import sys
        import pandas as pd
        from lumibot_duckdb import DuckDBDataStorage
        from lumibot_duckdb.testing.market import SyntheticMarket
        from lumibot_duckdb.store.coverage import SeriesKey
        bars = SyntheticMarket(seed=1).bars("AAA", "day", "2023-01-01", "2024-01-01")
        store = DuckDBDataStorage({str(tmp_path / "store")!r})
        store.write(SeriesKey("ingest", "AAA", "day"), bars, covered=("2023-01-01", "2024-01-01"))
        assert len(store.read(SeriesKey("ingest", "AAA", "day"), "2023-01-01", "2024-01-01")) == len(bars)
        print(sorted(m for m in sys.modules if m.startswith("pyarrow.parquet") or m == "pyarrow.fs"))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_footers_are_kept_within_their_memory_budget(years: DuckDBDataStorage) -> None:
    """The footer cache keeps the most recently used footers within its budget (a parsed footer holds ~10x its
    serialized size): a universe's hundreds of files do not stay in memory, and a footer let go is read again
    from its file, the same."""
    from lumibot_duckdb.store.parquet import FOOTER_WEIGHT, FooterCache

    paths = [str(f.path) for k in years.series() for f in years.files(k)]
    assert len(paths) >= 3
    one = FOOTER_WEIGHT * read_metadata(paths[0]).serialized_size
    cache = FooterCache(8192, budget=2 * one)
    for path in paths:
        assert cache(path).equals(read_metadata(path))
        assert cache.held_bytes() <= 2 * max(FOOTER_WEIGHT * read_metadata(p).serialized_size for p in paths)
    kept = list(cache._footers)
    assert 1 <= len(kept) < len(paths) and kept[-1] == paths[-1], "the most recent are kept"
    assert cache(paths[0]).equals(read_metadata(paths[0])), "a footer let go is read again"
    cache.cache_clear()
    assert cache.held_bytes() == 0 and not cache._footers
