"""The store: exact round trips, coverage kept as data, atomic files, damage set aside, concurrency."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from factories import key, make_bars
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lumibot_duckdb import BarsValidationError, CorruptFileError, DuckDBDataStorage, Interval, StoreError
from lumibot_duckdb.store.coverage import utc

VALUES = ["open", "high", "low", "close", "volume", "vwap", "trade_count"]


@pytest.fixture(params=["folder", "s3", "ducklake"])
def store_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """The same checks on every backend: a folder, an S3 store on moto's server, and a DuckLake store on a
    throw-away PostgreSQL cluster (tests/conftest.py; it needs the [team] extra, else it skips saying so).
    Tests of what only a folder has (its .tmp/, files damaged in place) take ``store_folder`` instead."""
    if request.param == "folder":
        return tmp_path / "store"
    return request.getfixturevalue("s3_store" if request.param == "s3" else "lake_store")


@pytest.fixture
def store_folder(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_round_trip_is_exact(store_dir: Path) -> None:
    bars = make_bars(periods=500)
    store = DuckDBDataStorage(store_dir)
    assert store.write(key(), bars) == 500
    back = store.read(key(), bars.index[0], bars.index[-1] + pd.Timedelta(minutes=1))
    pd.testing.assert_frame_equal(back[VALUES], bars[VALUES], check_dtype=False, check_freq=False,
                                  check_index_type=False, check_names=False)
    assert back.index.tz is not None and str(back.index.tz) == "UTC"
    assert (back["open"].to_numpy() == bars["open"].to_numpy()).all()  # bit-exact, not approximately


def test_prices_are_never_rounded(store_dir: Path) -> None:
    """Invariant: float64 in, same float64 out (Lumibot's CCXT cache rounds to 3 decimals)."""
    bars = make_bars(periods=4)
    tiny = [0.000001234567, 1.23456789012345e-9, 12345.678901234, 0.0004999]
    for column in ("open", "high", "low", "close", "volume"):
        bars[column] = tiny
    store = DuckDBDataStorage(store_dir)
    store.write(key("SHIB/USDT", source="ccxt", asset_type="crypto"), bars)
    back = store.read(key("SHIB/USDT", source="ccxt", asset_type="crypto"), "2024-01-01", "2024-01-03")
    assert back["close"].tolist() == tiny


finite = st.floats(min_value=1e-12, max_value=1e12, allow_nan=False, allow_infinity=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prices=st.lists(finite, min_size=1, max_size=60), offsets=st.lists(
    st.integers(min_value=0, max_value=10**6), min_size=1, max_size=60, unique=True))
def test_round_trip_property(tmp_path_factory: pytest.TempPathFactory, prices: list[float], offsets: list[int]) -> None:
    n = min(len(prices), len(offsets))
    index = pd.DatetimeIndex(sorted(pd.Timestamp("2023-06-01", tz="UTC") + pd.to_timedelta(offsets[:n], "s")))
    bars = pd.DataFrame({c: prices[:n] for c in ("open", "high", "low", "close", "volume")}, index=index)
    with DuckDBDataStorage(tmp_path_factory.mktemp("s")) as store:
        store.write(key(), bars, covered=("2023-06-01Z", "2023-07-01Z"))
        back = store.read(key(), "2023-06-01Z", "2023-07-01Z")
    assert back.index.equals(index.as_unit("us")) or list(back.index) == list(index)
    assert back["close"].tolist() == prices[:n]


def test_has_bars_is_a_read_that_is_not_empty(store_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``has_bars`` answers from the row groups' ``ts`` statistics what a read of the range would: bursts of bars
    with long gaps between them, row groups of 7 bars that straddle the gaps, an answer with no bars, and a newer
    file over part of an older one; every range on a grid of their edges, and a read only where a group spans
    the whole range."""
    from lumibot_duckdb.store import local

    monkeypatch.setattr(local, "ROW_GROUP_SIZE", 7)
    store = DuckDBDataStorage(store_dir)
    bursts = [make_bars("2024-01-02 14:30", periods=20, seed=1), make_bars("2024-01-02 18:00", periods=3, seed=2),
              make_bars("2024-01-03 15:00", periods=30, seed=3)]
    store.write(key(), pd.concat(bursts), covered=(utc("2024-01-02 14:00"), utc("2024-01-04")))
    store.write(key(), make_bars("2024-01-03 15:10", periods=5, seed=4),
                covered=(utc("2024-01-03 15:10"), utc("2024-01-03 15:15")))
    store.write(key(), make_bars(periods=0), covered=(utc("2024-01-05"), utc("2024-01-06")))
    edges = sorted({t for b in bursts for t in (b.index[0], b.index[-1], b.index[-1] + pd.Timedelta(minutes=1),
                                                 b.index[0] - pd.Timedelta(minutes=1), b.index[len(b) // 2])}
                   | {utc("2024-01-01"), utc("2024-01-02 16:00"), utc("2024-01-05 12:00"), utc("2024-01-07")})
    reads = []
    real_read = DuckDBDataStorage.read
    monkeypatch.setattr(DuckDBDataStorage, "read", lambda self, *a, **k: (reads.append(a), real_read(self, *a, **k))[1])
    answers = {}
    for start in edges:
        for end in edges:
            if end <= start:
                assert store.has_bars(key(), start, end) is False
                continue
            answers[start, end] = store.has_bars(key(), start, end)
    asked = len(reads)
    for (start, end), answer in answers.items():
        assert answer == (not store.read(key(), start, end, columns=["close"]).empty), (start, end)
    assert True in answers.values() and False in answers.values()
    assert asked < len(answers) / 4, f"{asked} reads for {len(answers)} answers: the statistics decide most"
    assert store.has_bars(key("QQQ"), "2024-01-01", "2025-01-01") is False  # (a series the store does not hold)


def test_empty_answer_is_recorded_as_covered(store_dir: Path) -> None:
    store = DuckDBDataStorage(store_dir)
    empty = make_bars(periods=0)
    store.write(key(), empty, covered=("2024-01-06", "2024-01-08"))
    assert store.coverage(key()) == [Interval("2024-01-06", "2024-01-08")]
    assert store.missing_ranges(key(), "2024-01-05", "2024-01-09") == [
        Interval("2024-01-05", "2024-01-06"), Interval("2024-01-08", "2024-01-09")]
    assert store.read(key(), "2024-01-06", "2024-01-08").empty


def test_empty_frame_needs_a_covered_range(store_dir: Path) -> None:
    with pytest.raises(BarsValidationError, match="covered="):
        DuckDBDataStorage(store_dir).write(key(), make_bars(periods=0))


def test_bars_outside_covered_are_refused_not_dropped(store_dir: Path) -> None:
    store = DuckDBDataStorage(store_dir)
    with pytest.raises(BarsValidationError, match="outside covered"):
        store.write(key(), make_bars(periods=10), covered=("2024-01-02 14:30", "2024-01-02 14:35"))
    assert store.coverage(key()) == []


@pytest.mark.parametrize("damage, message", [
    (lambda b: b.drop(columns="close"), "missing price column"),
    (lambda b: b.assign(open=np.nan), "missing or infinite"),
    (lambda b: b.assign(high="abc"), "not numeric"),
    (lambda b: b.reset_index(drop=True), "DatetimeIndex"),
])
def test_unusable_frames_are_refused_with_the_reason(store_dir: Path, damage, message: str) -> None:
    with pytest.raises(BarsValidationError, match=message):
        DuckDBDataStorage(store_dir).write(key(), damage(make_bars(periods=5)))


def test_series_are_isolated_by_every_key_field(store_dir: Path) -> None:
    store = DuckDBDataStorage(store_dir)
    variants = [key(), key(source="polygon"), key(timeframe="hour"), key(quote="EUR"), key(adjustment="split"),
                key(exchange="binance"), key("SPY240119C00470000", asset_type="option")]
    for i, k in enumerate(variants):
        store.write(k, make_bars(periods=3, price=100 + i))
    assert set(store.series()) == set(variants)
    for i, k in enumerate(variants):
        assert store.read(k, "2024-01-01", "2024-02-01")["open"].iloc[0] == 100 + i


@pytest.mark.parametrize("symbol", ["BTC/USDT", "BRK.B", "_", ".hidden", "O:SPY240119C00470000", "ÄÖÜ", "a b"])
def test_awkward_symbols_round_trip_through_paths(store_dir: Path, symbol: str) -> None:
    store = DuckDBDataStorage(store_dir)
    store.write(key(symbol), make_bars(periods=2))
    assert store.series() == [key(symbol)]
    assert len(store.read(key(symbol), "2024-01-01", "2024-02-01")) == 2


def test_intraday_files_split_by_year_daily_in_one_partition(store_dir: Path) -> None:
    store = DuckDBDataStorage(store_dir)
    store.write(key(), make_bars("2023-12-31 23:58", periods=4))
    store.write(key(timeframe="day"), make_bars("2023-12-30", periods=4, freq="1D"))
    assert sorted(f.partition for f in store.files(key())) == ["2023", "2024"]
    assert [f.partition for f in store.files(key(timeframe="day"))] == ["all"]
    assert len(store.read(key(), "2023-12-31", "2024-01-02")) == 4


def test_overlapping_answers_keep_the_newest_bar_once(store_dir: Path) -> None:
    store = DuckDBDataStorage(store_dir)
    old = make_bars(periods=60)
    new = old.iloc[30:].copy()
    new["close"] += 1.0
    store.write(key(), old)
    store.write(key(), new)
    back = store.read(key(), "2024-01-01", "2024-02-01")
    assert back.index.is_unique and len(back) == 60
    assert (back["close"].iloc[30:].to_numpy() == new["close"].to_numpy()).all()
    assert (back["close"].iloc[:30].to_numpy() == old["close"].iloc[:30].to_numpy()).all()


def test_compaction_keeps_bars_and_coverage(store_dir: Path) -> None:
    store = DuckDBDataStorage(store_dir)
    bars = make_bars(periods=600)
    for i in range(0, 600, 50):
        store.write(key(), bars.iloc[i:i + 50], covered=(bars.index[i], bars.index[i] + pd.Timedelta(minutes=50)))
    store.write(key(), make_bars("2024-01-05", periods=10))  # a second, separate covered run
    before = store.read(key(), "2024-01-01", "2024-02-01")
    coverage = store.coverage(key())
    assert len(store.files(key())) < 13  # the writer compacted once the partition passed the threshold
    store.compact()
    assert len(store.files(key())) == 2 == len(coverage)
    assert store.coverage(key()) == coverage
    pd.testing.assert_frame_equal(store.read(key(), "2024-01-01", "2024-02-01"), before)


def test_status_reports_rows_bytes_coverage_and_gaps(store_dir: Path) -> None:
    store = DuckDBDataStorage(store_dir)
    store.write(key(), make_bars(periods=10))
    store.write(key(), make_bars("2024-01-03 14:30", periods=5))
    (status,) = store.status()
    assert status.rows == 15 and status.files == 2 and status.bytes > 0
    assert status.first_bar == utc("2024-01-02 14:30") and status.last_bar == utc("2024-01-03 14:34")
    assert status.gaps == [Interval("2024-01-02 14:40Z", "2024-01-03 14:30Z")]


def test_truncated_file_is_set_aside_and_the_rest_survives(store_folder: Path) -> None:
    store = DuckDBDataStorage(store_folder)
    store.write(key(), make_bars(periods=30))
    store.write(key(), make_bars("2024-01-03 14:30", periods=30, seed=1))
    damaged = store.files(key())[1].path
    damaged.write_bytes(damaged.read_bytes()[:200])
    with pytest.raises(CorruptFileError) as info:
        store.read(key(), "2024-01-01", "2024-02-01")
    assert "fetched again" in str(info.value) and info.value.quarantined_to
    assert Path(info.value.quarantined_to).exists()  # kept for inspection, not deleted
    assert store.coverage(key()) == [Interval("2024-01-02 14:30Z", "2024-01-02 15:00Z")]
    assert len(store.read(key(), "2024-01-01", "2024-02-01")) == 30


def test_garbage_file_with_a_valid_name_is_set_aside(store_folder: Path) -> None:
    store = DuckDBDataStorage(store_folder)
    store.write(key(), make_bars(periods=5))
    folder = store.files(key())[0].path.parent
    (folder / "20240102T150000Z_20240102T160000Z_00000000000000000000ff.parquet").write_text("not parquet")
    with pytest.raises(CorruptFileError):
        store.read(key(), "2024-01-01", "2024-02-01")
    assert len(store.read(key(), "2024-01-01", "2024-02-01")) == 5


def test_stray_files_are_ignored(store_folder: Path) -> None:
    store = DuckDBDataStorage(store_folder)
    store.write(key(), make_bars(periods=5))
    folder = store.files(key())[0].path.parent
    (folder / "notes.txt").write_text("hello")
    (folder / "random.parquet").write_bytes(b"x")
    assert len(store.read(key(), "2024-01-01", "2024-02-01")) == 5


def test_unwritable_store_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="LUMIBOT_DUCKDB_CACHE_DIR"):
        DuckDBDataStorage(blocker / "store")


_WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np, pandas as pd
    from lumibot_duckdb import DuckDBDataStorage, SeriesKey
    from lumibot_duckdb.store import local
    real = local.write_table   # (what publishing writes every file with)
    def slow_write(table, where, **kw):   # write half the rows, then hang: the process is killed here
        real(table.slice(0, table.num_rows // 2), where, **kw)
        where.flush()
        print("writing", flush=True)
        time.sleep(60)
    local.write_table = slow_write
    store = DuckDBDataStorage(sys.argv[1])
    index = pd.date_range("2024-02-01", periods=50_000, freq="1min", tz="UTC")
    bars = pd.DataFrame({c: np.linspace(1, 2, len(index)) for c in ("open", "high", "low", "close")}, index=index)
    store.write(SeriesKey("test", "SPY", "minute", quote="USD"), bars)
""")


def test_writer_killed_halfway_leaves_the_store_as_it_was(store_folder: Path) -> None:
    store = DuckDBDataStorage(store_folder)
    store.write(key(), make_bars(periods=100))
    before = store.read(key(), "2024-01-01", "2024-03-01")
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(store_folder)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert list((store_folder / ".tmp").iterdir()), "the half-written file stays in .tmp/, invisible to readers"
    fresh = DuckDBDataStorage(store_folder)
    pd.testing.assert_frame_equal(fresh.read(key(), "2024-01-01", "2024-03-01"), before)
    assert fresh.coverage(key()) == store.coverage(key())
    with fresh.writer(key()):  # the dead writer's lock was released with its process
        pass


def _write_same_gap(store_dir: str, barrier, seed: int) -> None:
    store = DuckDBDataStorage(store_dir)
    barrier.wait()
    with store.writer(key()) as writer:
        for gap in writer.missing(Interval("2024-01-02 14:30Z", "2024-01-02 16:30Z")):
            bars = make_bars(periods=120, seed=seed)
            writer.write(bars[(bars.index >= gap.start) & (bars.index < gap.end)], covered=gap)


def test_two_processes_filling_the_same_gap_store_it_once(store_dir: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_write_same_gap, args=(str(store_dir), barrier, s)) for s in (1, 2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    store = DuckDBDataStorage(store_dir)
    assert len(store.files(key())) == 1, "the second process found the gap filled and fetched nothing"
    back = store.read(key(), "2024-01-01", "2024-02-01")
    assert len(back) == 120 and back.index.is_unique


def test_readers_never_see_partial_or_duplicate_bars_during_writes_and_compaction(store_dir: Path) -> None:
    """One process keeps publishing and compacting while this one reads."""
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys
        import pandas as pd
        sys.path.insert(0, sys.argv[2])
        from factories import key, make_bars
        from lumibot_duckdb import DuckDBDataStorage
        store = DuckDBDataStorage(sys.argv[1])
        bars = make_bars(periods=4000)
        for i in range(0, 4000, 100):
            store.write(key(), bars.iloc[i:i + 100])
            if i % 700 == 0:
                store.compact()
    """), str(store_dir), str(Path(__file__).parent)])
    reader = DuckDBDataStorage(store_dir)
    reads = 0
    expected = make_bars(periods=4000)
    while writer.poll() is None:
        back = reader.read(key(), "2024-01-01", "2024-02-01")
        assert back.index.is_unique and back.index.is_monotonic_increasing
        assert (back["close"].to_numpy() == expected["close"].iloc[:len(back)].to_numpy()).all()
        reads += 1
    assert writer.returncode == 0
    assert len(reader.read(key(), "2024-01-01", "2024-02-01")) == 4000
    assert reads > 5


def test_sql_views_over_the_store(store_dir: Path) -> None:
    store = DuckDBDataStorage(store_dir)
    store.write(key(), make_bars(periods=30))
    store.write(key(), make_bars(periods=30).iloc[10:])  # overlapping answer: counted once
    store.write(key("QQQ", timeframe="day", source="polygon"), make_bars("2024-01-02", periods=5, freq="1D"))
    store.write(key("BTC/USDT", source="ccxt", asset_type="crypto", exchange="binance"), make_bars(periods=3))
    assert store.sql("SELECT count(*) AS n FROM market_data WHERE symbol = 'SPY'")["n"].iloc[0] == 30
    symbols = store.sql("SELECT * FROM symbols")
    assert set(symbols["symbol"]) == {"SPY", "QQQ", "BTC/USDT"}
    sources = store.sql("SELECT source, symbols, bars, description FROM data_sources").set_index("source")
    assert sources.loc["polygon", "symbols"] == 1 and sources.loc["ccxt", "bars"] == 3
    assert "Yahoo" in sources.loc["yahoo", "description"]
    assert len(store.sql("SELECT * FROM coverage")) == 3
    close = store.sql("SELECT close FROM market_data WHERE symbol = ? ORDER BY ts LIMIT 1", ["QQQ"])["close"].iloc[0]
    assert close == make_bars("2024-01-02", periods=5, freq="1D")["close"].iloc[0]


def test_sql_views_on_an_empty_store(store_dir: Path) -> None:
    store = DuckDBDataStorage(store_dir)
    assert store.sql("SELECT count(*) AS n FROM market_data")["n"].iloc[0] == 0
    assert list(store.sql("SELECT * FROM market_data").columns)[:3] == ["ts", "source", "symbol"]
    assert len(store.sql("SELECT * FROM data_sources")) == 5


def test_metadata_and_nullable_columns_round_trip(store_dir: Path) -> None:
    """Regression: NULL strings must come back as None, never as numpy's fill value."""
    store = DuckDBDataStorage(store_dir)
    bars = make_bars(periods=4)
    bars["metadata"] = [None, '{"otc": true}', None, None]
    bars["trade_count"] = pd.array([1, None, 3, None], dtype="Int64")
    bars["vwap"] = [1.0, np.nan, 2.0, np.nan]
    store.write(key(), bars)
    store.write(key(), make_bars("2024-01-03", periods=2))  # a second file where these are all null
    back = store.read(key(), "2024-01-01", "2024-02-01")
    assert back["metadata"].tolist() == [None, '{"otc": true}', None, None, None, None]
    assert back["trade_count"].isna().tolist()[:4] == [False, True, False, True]
    assert back["vwap"].isna().tolist()[:4] == [False, True, False, True]


def test_columns_null_everywhere_are_not_read(store_dir: Path) -> None:
    """Reading skips columns no file has values for; an empty answer (zero rows) does not spoil that."""
    from lumibot_duckdb.store.store import _null_columns

    store = DuckDBDataStorage(store_dir)
    store.write(key(), make_bars(periods=0), covered=("2024-01-01", "2024-01-02"))
    store.write(key(), make_bars(periods=5))
    empty, full = (str(f.path) for f in sorted(store.files(key()), key=lambda f: f.interval.start))
    assert {"metadata", "dividend", "open"} <= _null_columns(empty)
    assert {"metadata", "dividend"} <= _null_columns(full) and "open" not in _null_columns(full)
    assert store.read(key(), "2024-01-01", "2024-02-01")["metadata"].isna().all()


def test_each_connection_sees_the_files_of_its_moment(store_dir: Path) -> None:
    store = DuckDBDataStorage(store_dir)
    store.write(key(), make_bars(periods=10))
    early = store.connect()
    store.write(key(), make_bars("2024-01-03 14:30", periods=5))
    assert early.execute("SELECT count(*) FROM market_data").fetchone()[0] == 10
    assert store.sql("SELECT count(*) AS n FROM market_data")["n"].iloc[0] == 15
    early.close()
    assert len(store.read(key(), "2024-01-01", "2024-02-01")) == 15


# -- the read path: pyarrow gives DuckDB's answer, and a backtest never starts DuckDB ----------------
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 800), st.booleans()), min_size=1, max_size=5),
       window=st.tuples(st.integers(-100, 2500), st.integers(1, 3000)))
def test_reads_are_what_duckdbs_query_answers(tmp_path_factory: pytest.TempPathFactory, writes: list[tuple[int, int,
                                              bool]], window: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """Overlapping answers (the newest wins), gaps, nulls and a year boundary, any range: the same frame."""
    from lumibot_duckdb.store import store as store_module

    store = DuckDBDataStorage(tmp_path_factory.mktemp("reads"))
    for seed, (offset, length, sparse) in enumerate(writes):
        bars = make_bars("2023-12-31 20:00", periods=length, seed=seed, price=100.0 + seed)
        bars.index = bars.index + pd.Timedelta(minutes=offset)
        bars["trade_count"] = pd.array(bars["trade_count"], dtype="Int64")
        bars.loc[bars.index[::3], "trade_count"] = pd.NA
        bars["metadata"] = [None if i % 4 else f'{{"i": {i}}}' for i in range(length)]
        if sparse:
            bars = bars.iloc[::5]
        store.write(key(), bars, covered=(bars.index[0], bars.index[-1] + pd.Timedelta(minutes=1)))
    start = utc("2023-12-31 20:00") + pd.Timedelta(minutes=window[0])
    end = start + pd.Timedelta(minutes=window[1])
    ours = store.read(key(), start, end)
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "read_files", _unreadable)  # what read() does when pyarrow cannot: DuckDB
        theirs = store.read(key(), start, end)
    pd.testing.assert_frame_equal(ours, theirs)
    assert ours.index.is_unique and ours.index.is_monotonic_increasing


def _unreadable(*args: object, **kwargs: object) -> None:
    raise OSError("pyarrow could not read it")


def test_a_backtest_reading_bars_never_imports_duckdb(store_dir: Path) -> None:
    if str(store_dir).startswith("ducklake:"):
        pytest.skip("not applicable: a DuckLake store's coverage is a table in the lake, read through DuckDB")
    DuckDBDataStorage(store_dir).write(key(), make_bars(periods=50))
    code = textwrap.dedent(f"""
        import sys
        import lumibot_duckdb
        from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey
        from lumibot_duckdb.sources import base
        bars = DuckDBDataStorage({str(store_dir)!r}).read(SeriesKey("test", "SPY", "minute", quote="USD"),
                                                          "2024-01-01", "2024-02-01")
        print(len(bars), "duckdb" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["50", "False"]
