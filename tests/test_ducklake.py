"""Team mode on DuckLake: a PostgreSQL catalog, bars and coverage committed together, one writer per series.

On a throw-away PostgreSQL cluster on 127.0.0.1 (started by the session, stopped by a watchdog if the run dies;
``tests/conftest.py``), data in the test's folder or on moto's S3 server. Needs the ``[team]`` extra (DuckDB
1.5.5 and the extension wheels): ``python3 dev.py test-team`` runs this file in its own environment; elsewhere
it skips, saying so. The store-level checks of ``tests/test_store.py`` run on DuckLake too.

Invariants:
* bars and the coverage that claims them commit in one transaction: a writer killed mid-commit leaves
  nothing visible, and its lock is freed at once (it dies with its connection);
* 4 writers and 4 readers: each gap fetched once, readers only ever see whole answers, 0 duplicates;
* compaction (the store's and DuckLake's own) runs while writers commit, without errors or lost bars;
* damage in the lake or in the mirror is set aside, never served; sync moves stores in and out, idempotently.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from factories import key, make_bars

from lumibot_duckdb import ConfigError, CorruptFileError, DuckDBDataStorage, Interval, StoreError
from lumibot_duckdb.cli import main as cli
from lumibot_duckdb.config import Settings
from lumibot_duckdb.store.sync import sync
from lumibot_duckdb.testing.team import expected_gaps, provider_bars, race_plan, series

MONTH = ("2024-01-01", "2024-02-01")
ROOT = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def naive_times_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The times written naive in this file are UTC (the store reads naive times in Lumibot's default zone)."""
    monkeypatch.setattr("lumibot_duckdb.config.LUMIBOT_DEFAULT_TIMEZONE", "UTC")
    constants = sys.modules.get("lumibot.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "LUMIBOT_DEFAULT_TIMEZONE", "UTC")


class DiesBeforeCoverage:
    """A DuckDB cursor whose process "dies" when it comes to insert the coverage row (after the bars)."""

    def __init__(self, cursor: object) -> None:
        self.cursor = cursor

    def __getattr__(self, name: str) -> object:
        return getattr(self.cursor, name)

    def execute(self, sql: str, params: object = None) -> object:
        if "INSERT INTO lake.coverage" in sql:
            raise RuntimeError("the process dies here")
        return self.cursor.execute(sql, params or [])


def lake_counts(store: DuckDBDataStorage) -> tuple[int, int, int]:
    """(bars rows, distinct (series, ts), coverage rows) in the lake, as raw SQL sees them."""
    cursor = store.backend._cursor()
    rows, distinct = cursor.execute("SELECT count(*), count(DISTINCT (source, symbol, timeframe, ts)) "
                                    "FROM lake.bars").fetchone()
    return int(rows), int(distinct), int(cursor.execute("SELECT count(*) FROM lake.coverage").fetchone()[0])


def spawn(role: str, spec: dict) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lumibot_duckdb.testing.team", role, json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def report_of(process: subprocess.Popen[str], timeout: float = 300) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


# -- where the store is, and what it needs -------------------------------------------------------------
def test_a_ducklake_location_and_its_data_path(tmp_path: Path) -> None:
    env = {"LUMIBOT_DUCKDB_CACHE_DIR": str(tmp_path)}
    lake = "ducklake:postgres:dbname=lake host=db.example user=research"
    settings = Settings.resolve(environ={**env, "LUMIBOT_DUCKDB_STORE": lake,
                                         "LUMIBOT_DUCKDB_DATA_PATH": "s3://team-bars/lake/"})
    assert (settings.location, settings.data_path) == (lake, "s3://team-bars/lake/")
    assert Settings.resolve(store="DuckLake:Postgres: dbname=x", environ=env).location == \
        "ducklake:postgres:dbname=x"
    for bad in ("ducklake:sqlite:/tmp/x.sqlite", "ducklake:/tmp/x.ducklake", "ducklake:postgres:"):
        with pytest.raises(ConfigError, match=r"ducklake:postgres:<libpq string>"):
            Settings.resolve(store=bad, environ=env)


def test_a_duckdb_without_the_extension_wheels_fails_at_once_naming_the_extra(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import duckdb

    if duckdb.__version__.startswith("1.5"):  # the team environment: take a wheel away
        import importlib.util

        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name == "duckdb_extension_ducklake" else real(name, *a))
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r'pip install "lumibot-duckdb\[team\]"'):
        DuckDBDataStorage("ducklake:postgres:dbname=lake host=127.0.0.1 port=1", cache_dir=tmp_path)
    assert time.monotonic() - started < 2.0, "no connection tried, no download"


# -- one store, one process ---------------------------------------------------------------------------------
def test_bars_and_coverage_are_tables_of_the_lake_committed_together(lake_store: str, tmp_path: Path) -> None:
    store = DuckDBDataStorage(lake_store)
    store.write(key(), make_bars(periods=300))
    store.write(key(), make_bars(periods=0), covered=("2024-01-03Z", "2024-01-04Z"))  # an empty answer
    assert lake_counts(store) == (300, 300, 2)
    cursor = store.backend._cursor()
    assert cursor.execute("SELECT bars FROM lake.coverage ORDER BY start").fetchall() == [(300,), (0,)]
    partitions = cursor.execute("SELECT partition_key_index, column_id FROM "
                                "__ducklake_metadata_lake.ducklake_partition_column").fetchall()
    assert len(partitions) == 2, "bars partitioned by symbol and year"
    options = dict(cursor.execute("SELECT option_name, value FROM lake.options()").fetchall())
    assert options["parquet_compression"] == "zstd" and options["parquet_row_group_size"] == "16384"

    # A commit that fails half-way leaves nothing: the bars are inserted, then the coverage insert fails.
    backend = store.backend
    real = backend._transaction

    def half_way(work, what):
        return real(lambda cursor: work(DiesBeforeCoverage(cursor)), what)

    backend._transaction = half_way
    with pytest.raises(RuntimeError, match="dies here"):
        store.write(key(), make_bars("2024-01-05 14:30", periods=50))
    backend._transaction = real
    assert lake_counts(store) == (300, 300, 2), "neither the bars nor their coverage"
    assert len(store.read(key(), *MONTH)) == 300


def test_a_fresh_machine_reads_through_its_mirror_and_checks_what_the_lake_sends(lake_store: str,
                                                                                 tmp_path: Path) -> None:
    writer = DuckDBDataStorage(lake_store, cache_dir=tmp_path / "writer")
    bars = make_bars(periods=400)
    bars["metadata"] = [None if i % 7 else '{"otc": true}' for i in range(400)]
    writer.write(key(), bars)
    reader = DuckDBDataStorage(lake_store, cache_dir=tmp_path / "reader")
    pd.testing.assert_frame_equal(reader.read(key(), *MONTH), writer.read(key(), *MONTH))
    assert reader.backend.stats.materialised == 1
    reader.read(key(), *MONTH)
    assert reader.backend.stats.materialised == 1, "a mirror copy is made once"

    # The mirror copy is sealed like a folder store's file: damage on this machine is found and set aside,
    # and the next read makes a new copy from the lake (the lake's answer is sound).
    copy = reader.local_files(key())[0].path
    raw = bytearray(copy.read_bytes())
    raw[len(raw) // 3] ^= 0x10
    copy.write_bytes(bytes(raw))
    from lumibot_duckdb.store import integrity

    integrity.forget(copy)
    with pytest.raises(CorruptFileError):
        reader.read(key(), *MONTH)
    assert len(reader.read(key(), *MONTH)) == 400 and reader.coverage(key()) == writer.coverage(key())
    assert list(reader.backend.quarantine_dir.glob("*.reason.txt")), "the damaged copy set aside with its reason"


def test_damage_in_the_lake_is_set_aside_and_its_range_fetched_again(lake_store: str, tmp_path: Path) -> None:
    store = DuckDBDataStorage(lake_store, cache_dir=tmp_path / "writer")
    store.write(key(), make_bars(periods=300))
    store.write(key(), make_bars("2024-01-03 14:30", periods=300, seed=1))
    first, second = sorted(store.files(key()), key=lambda f: f.interval.start)
    # Someone edits the lake behind the store's back: the second answer's bars change.
    store.backend._cursor().execute("UPDATE lake.bars SET close = close + 1 WHERE token = ?", [second.lake_token])
    reader = DuckDBDataStorage(lake_store, cache_dir=tmp_path / "reader")
    with pytest.raises(CorruptFileError, match="digest"):
        reader.read(key(), *MONTH)
    assert reader.coverage(key()) == [first.interval], "no longer covered: fetched again on the next request"
    assert len(reader.read(key(), *MONTH)) == 300
    held = reader.backend._cursor().execute("SELECT token, reason FROM lake.quarantine").fetchall()
    assert [t for t, _ in held] == [second.lake_token] and "digest" in held[0][1]

    # A data file of the lake damaged on disk: set aside too (never served), whatever DuckDB makes of it.
    files = [Path(p) for (p,) in reader.backend._cursor().execute(
        "SELECT data_file FROM ducklake_list_files('lake', 'bars')").fetchall()]
    assert len(files) == 2
    for path in files:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
        path.write_bytes(bytes(raw))
    third = DuckDBDataStorage(lake_store, cache_dir=tmp_path / "third")
    with pytest.raises(CorruptFileError):
        third.read(key(), *MONTH)
    assert third.coverage(key()) == [] and third.read(key(), *MONTH).empty


def test_two_answers_for_one_range_are_served_once_newest_first(lake_store: str, tmp_path: Path) -> None:
    """The dedupe on read, behind the lock: answers that overlap (two writers without the lock, a crash
    between a compaction's commit and its removal) serve each timestamp once, from the newest answer."""
    store = DuckDBDataStorage(lake_store)
    old, new = make_bars(periods=100), make_bars(periods=100, seed=5)
    for bars in (old, new):  # two writers' answers to the same gap, each under its own lock
        with store.writer(key()) as writer:
            writer.write(bars)
    assert lake_counts(store)[:2] == (200, 100), "the lake holds both: DuckLake has no keys"
    back = store.read(key(), *MONTH)
    assert back.index.is_unique and back["close"].tolist() == new["close"].tolist()
    assert store.sql("SELECT count(*) AS n FROM market_data")["n"].iloc[0] == 100


# -- the lock ------------------------------------------------------------------------------------------------
def test_the_advisory_lock_serialises_writers_of_a_series_only(lake_store: str) -> None:
    store = DuckDBDataStorage(lake_store, lock_timeout=1.0)
    other = DuckDBDataStorage(lake_store, lock_timeout=1.0)
    from lumibot_duckdb.errors import StoreLockTimeout

    with store.writer(key()):
        started = time.monotonic()
        with pytest.raises(StoreLockTimeout, match="lumibot-duckdb lock"):
            with other.writer(key()):
                pass
        assert 0.9 <= time.monotonic() - started < 15.0  # (the timeout, plus a connection on a loaded machine)
        with other.writer(key("QQQ")) as writer:  # another series: not held
            writer.write(make_bars(periods=10))
    with other.writer(key()) as writer:
        writer.write(make_bars(periods=10))


CRASH = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from factories import key, make_bars
    from lumibot_duckdb import DuckDBDataStorage
    store = DuckDBDataStorage(sys.argv[1])
    backend = store.backend
    with store.writer(key()):
        cursor = backend._cursor()
        cursor.execute("BEGIN TRANSACTION")
        frame = make_bars(periods=5000).reset_index()
        cursor.register("incoming", frame)
        cursor.execute("INSERT INTO lake.bars SELECT ts, 'test', 'SPY', 'stock', 'USD', '', 'minute', 'raw', "
                       "open, high, low, close, volume, NULL, NULL, NULL, NULL, NULL, NULL, 'crash' FROM incoming")
        cursor.execute("SELECT count(*) FROM lake.bars").fetchall()  # flushes the transaction's Parquet file
        print("holding", flush=True)
        time.sleep(600)
""")


def test_a_writer_killed_mid_commit_frees_its_lock_at_once_and_leaves_nothing(lake_store: str,
                                                                              tmp_path: Path) -> None:
    store = DuckDBDataStorage(lake_store, lock_timeout=30)
    store.write(key("QQQ"), make_bars(periods=20))  # the lake exists, with one committed answer
    data = Path(os.environ["LUMIBOT_DUCKDB_DATA_PATH"])
    before = {p for p in data.rglob("*.parquet")}
    holder = subprocess.Popen([sys.executable, "-c", CRASH, lake_store, str(ROOT)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding", holder.stderr.read()
    written = {p for p in data.rglob("*.parquet")} - before
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    killed = time.monotonic()
    with store.writer(key()) as writer:
        took_over = time.monotonic() - killed
        assert writer.missing(Interval(*MONTH)) == [Interval(*MONTH)], "nothing of the killed commit is visible"
    assert took_over < 2.0, f"the lock was freed {took_over:.2f}s after the kill"
    assert lake_counts(store) == (20, 20, 1)
    orphans = {p for p in written if p.exists()}
    report = store.backend.upkeep(grace=dt.timedelta(0))
    assert not [p for p in orphans if p.exists()], "the killed writer's file is removed as an orphan"
    assert report["orphans"] == len(orphans)
    assert len(store.read(key("QQQ"), *MONTH)) == 20


# -- many processes ------------------------------------------------------------------------------------------
def test_four_writers_and_four_readers_fill_each_gap_once(lake_store: str, tmp_path: Path) -> None:
    plans = race_plan(["2024-01-02", "2024-01-03", "2024-01-04"])
    log, go, stop = tmp_path / "fetches.jsonl", tmp_path / "go", tmp_path / "stop"
    symbols = sorted({s for plan in plans for s, _, _ in plan})
    common = {"store": lake_store, "go": str(go), "stop": str(stop)}
    writers = [spawn("writer", {**common, "plan": plan, "log": str(log), "latency": 0.2,
                                "cache": str(tmp_path / f"w{i}")}) for i, plan in enumerate(plans)]
    readers = [spawn("reader", {**common, "symbols": symbols, "seed": i, "pause": 0.02,
                                "cache": str(tmp_path / f"r{i}"),
                                "ranges": [["2024-01-02Z", "2024-01-03Z"], ["2024-01-02 12:00Z", "2024-01-03 12:00Z"]]})
               for i in range(4)]
    for process in writers + readers:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
    go.touch()
    wrote = [report_of(w) for w in writers]
    stop.touch()
    read = [report_of(r) for r in readers]

    fetched = Counter(tuple(json.loads(line)[:3]) for line in log.read_text().splitlines())
    assert set(fetched) == expected_gaps(plans) and len(fetched) == 19
    assert set(fetched.values()) == {1}, "each gap fetched once"
    assert not [e for r in wrote + read for e in r["errors"]]
    assert not [b for r in read for b in r["bad"]], "readers only ever saw whole answers"
    assert sum(r["reads"] for r in read) > 0
    rows, distinct, _ = lake_counts(DuckDBDataStorage(lake_store, cache_dir=tmp_path / "check"))
    assert rows == distinct == 1440 * (1 + 4 * 4) + 720, "0 duplicates in the lake itself"


COMPACTOR = textwrap.dedent("""
    import datetime as dt, json, sys, time
    from lumibot_duckdb import DuckDBDataStorage
    from lumibot_duckdb.store.maintenance import compact
    store = DuckDBDataStorage(sys.argv[1])
    runs, merged = 0, 0
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while not __import__("os").path.exists(sys.argv[2]) and time.monotonic() < deadline:
        compact(store)
        merged += store.backend.upkeep(grace=dt.timedelta(seconds=5))["merge"]
        runs += 1
    print(json.dumps({"runs": runs, "conflicts": store.backend.stats.conflicts, "merged": merged}), flush=True)
""")


def test_compaction_runs_while_writers_commit(lake_store: str, tmp_path: Path) -> None:
    """The store's compaction and DuckLake's own upkeep, in a loop, while 4 writers commit small answers and 2
    readers check every bar: no error anywhere, nothing lost, nothing doubled."""
    plans = [[(f"C{w}", f"2024-01-02 {h:02d}:00Z", f"2024-01-02 {h + 1:02d}:00Z") for h in range(12)]
             for w in range(4)]
    log, go, stop, done = tmp_path / "fetches.jsonl", tmp_path / "go", tmp_path / "stop", tmp_path / "done"
    common = {"store": lake_store, "go": str(go), "stop": str(stop)}
    writers = [spawn("writer", {**common, "plan": plan, "log": str(log), "cache": str(tmp_path / f"w{i}")})
               for i, plan in enumerate(plans)]
    readers = [spawn("reader", {**common, "symbols": [f"C{w}" for w in range(4)], "seed": i, "pause": 0.05,
                                "cache": str(tmp_path / f"r{i}"), "ranges": [["2024-01-02Z", "2024-01-03Z"]]})
               for i in range(2)]
    compactor = subprocess.Popen([sys.executable, "-c", COMPACTOR, lake_store, str(done)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    for process in [*writers, *readers, compactor]:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
    go.touch()
    wrote = [report_of(w) for w in writers]
    time.sleep(1.0)
    done.touch()
    compacted = report_of(compactor)
    stop.touch()
    read = [report_of(r) for r in readers]
    assert not [e for r in wrote + read for e in r["errors"]], [e for r in wrote + read for e in r["errors"]][:2]
    assert not [b for r in read for b in r["bad"]]
    assert compacted["runs"] >= 2 and sum(r["fetched"] for r in wrote) == 48
    store = DuckDBDataStorage(lake_store, cache_dir=tmp_path / "check")
    for w in range(4):
        assert store.coverage(series(f"C{w}")) == [Interval("2024-01-02", "2024-01-02 12:00")]
        got = store.read(series(f"C{w}"), "2024-01-02", "2024-01-03")
        assert got["close"].tolist() == provider_bars(f"C{w}", Interval("2024-01-02", "2024-01-02 12:00"))[
            "close"].tolist()
    rows, distinct, answers = lake_counts(store)
    assert rows == distinct == 4 * 720 and answers <= 4 * 12
    compact_all = store.backend.upkeep(grace=dt.timedelta(0))
    assert compact_all["files_after"] <= compact_all["files_before"]


# -- moving in and out ---------------------------------------------------------------------------------------
def test_sync_moves_a_folder_store_in_and_back_out(lake_store: str, tmp_path: Path) -> None:
    local = DuckDBDataStorage(tmp_path / "bars")
    local.write(key(), make_bars(periods=30))
    local.write(key(), make_bars("2024-01-03 14:30", periods=30))
    local.write(key("QQQ", timeframe="day"), make_bars("2024-01-02", periods=20, freq="1D"))
    local.write_note({"exchange": "x"}, "test", "markets.json")
    team = DuckDBDataStorage(lake_store)
    report = sync(local, team)
    assert (report.series, report.series_pushed, report.ranges, report.bars, report.notes) == (2, 2, 3, 80, 1)
    again = sync(local, team)
    assert (again.ranges, again.notes, again.series_current) == (0, 0, 2), "idempotent"
    assert lake_counts(team)[0] == 80
    laptop = DuckDBDataStorage(tmp_path / "laptop")
    out = sync(team, laptop)
    assert (out.ranges, out.bars, out.notes) == (3, 80, 1)
    assert sync(team, laptop).ranges == 0
    for k in (key(), key("QQQ", timeframe="day")):
        pd.testing.assert_frame_equal(laptop.read(k, *MONTH), local.read(k, *MONTH))
    assert laptop.read_note("test", "markets.json") == {"exchange": "x"}


def test_a_lake_with_its_data_on_s3(lake_store: str, s3_endpoint: str, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from lumibot_duckdb.testing.s3server import S3Proxy

    with S3Proxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("LUMIBOT_DUCKDB_DATA_PATH", f"s3://lumibot-tests/lake-{tmp_path.name}/")
        writer = DuckDBDataStorage(lake_store, cache_dir=tmp_path / "writer")
        writer.write(key(), make_bars(periods=2000))
        assert proxy.requests["PUT"] >= 1, dict(proxy.requests)
        proxy.reset()
        reader = DuckDBDataStorage(lake_store, cache_dir=tmp_path / "reader")
        back = reader.read(key(), *MONTH)
        assert len(back) == 2000 and proxy.requests["GET"] >= 1 and proxy.bytes_in > 0
        pd.testing.assert_frame_equal(back, writer.read(key(), *MONTH))
        proxy.reset()
        reader.read(key(), *MONTH)
        assert proxy.snapshot()["total"] == 0, "a warm read asks S3 for nothing"
    with pytest.raises(StoreError, match="keeps its data in s3:"):
        DuckDBDataStorage(lake_store, cache_dir=tmp_path / "x", data_path=str(tmp_path / "elsewhere")).read(
            key(), *MONTH)


# -- every command -------------------------------------------------------------------------------------------
def test_every_command_works_on_a_ducklake_store(lake_store: str, tmp_path: Path) -> None:
    csv = tmp_path / "SPY_1d_2019.csv"
    days = pd.bdate_range("2019-01-02", periods=60)
    pd.DataFrame({"Date": days.strftime("%Y-%m-%d"), "Open": 10.0, "High": 11.0, "Low": 9.0, "Close": 10.5,
                  "Adj Close": 10.5, "Volume": 1000}).to_csv(csv, index=False)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert "60 added" in run("ingest", str(csv), "--store", lake_store).replace(",", "")
    status = json.loads(run("db-status", "--store", lake_store, "--json"))
    assert status["totals"]["rows"] == 60
    counted = json.loads(run("db-query", "SELECT count(*) AS n FROM market_data", "--format", "json", "--store",
                             lake_store))
    assert counted == [{"n": 60}]
    assert "60 rows" in run("export", str(tmp_path / "spy.csv"), "--symbol", "SPY", "--store", lake_store)
    assert "1 file(s) of 1 series checked: 0 error(s)" in run("maintain", "verify", "--store", lake_store)
    compacted = run("maintain", "compact", "--store", lake_store)
    assert "rewrote 0" in compacted and "DuckLake" in compacted
    assert "removed 0" in run("maintain", "clean-tmp", "--store", lake_store)
    assert "1 series: removed 0 file(s), rewrote 1" in run("maintain", "prune", "--before", "2019-02-01", "--yes",
                                                           "--store", lake_store)
    remaining = json.loads(run("db-status", "--store", lake_store, "--json"))["totals"]["rows"]
    assert remaining == len([d for d in days if d >= pd.Timestamp("2019-02-01")])
    local = tmp_path / "local"
    assert "pushed 1 range(s)" in run("sync", lake_store, str(local))
    assert "pushed 0 range(s)" in run("sync", lake_store, str(local))
    assert DuckDBDataStorage(local).status()[0].rows == remaining


# -- the servers ---------------------------------------------------------------------------------------------
def test_the_watchdog_stops_postgresql_when_the_process_that_started_it_dies(pg_cluster) -> None:
    code = textwrap.dedent("""
        import sys, time
        from lumibot_duckdb.testing.pgserver import postgres_cluster
        with postgres_cluster(max_lifetime=120) as cluster:
            print(cluster.port, cluster.folder, flush=True)
            time.sleep(600)
    """)
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    port, folder = starter.stdout.readline().split()
    from lumibot_duckdb.testing.pgserver import _ready

    assert _ready("127.0.0.1", int(port))
    os.kill(starter.pid, signal.SIGKILL)
    starter.wait()
    deadline = time.monotonic() + 20
    while (_ready("127.0.0.1", int(port)) or Path(folder).exists()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ready("127.0.0.1", int(port)), "PostgreSQL outlived the process that started it"
    assert not Path(folder).exists(), "its folder is removed too"


# -- backtests -----------------------------------------------------------------------------------------------
@pytest.mark.backtest
@pytest.mark.parametrize("name", ["polygon", "yahoo", "alpaca", "ccxt"])
def test_backtests_on_a_ducklake_store_match_the_folder_store(name: str, lake_store: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The conformance scenario: a writer fills the lake from the provider; a fresh machine (empty mirror) then
    backtests from it asking the provider nothing, cold and warm, with the fills and final value of the folder."""
    from test_conformance import momentum, run

    from lumibot_duckdb.testing.kits import kit

    scenario = momentum(kit(name))
    folder = run(scenario, "duckdb", "cold", tmp_path / "folder")
    monkeypatch.setenv("LUMIBOT_DUCKDB_STORE", lake_store)
    written = run(scenario, "duckdb", "cold", tmp_path / "writer")
    cold = run(scenario, "duckdb", "cold", tmp_path / "reader")
    warm = run(scenario, "duckdb", "warm", tmp_path / "reader")
    assert written.requests == folder.requests and folder.provider_requests > 0
    assert cold.provider_requests == 0 == warm.provider_requests, (cold.requests, warm.requests)
    for result in (written, cold, warm):
        assert (result.fills, result.final_value) == (folder.fills, folder.final_value), result.phase


def test_threads_of_one_process_share_a_store(lake_store: str) -> None:
    store = DuckDBDataStorage(lake_store)
    errors: list[BaseException] = []

    def fill(symbol: str) -> None:
        try:
            for day in range(3):
                store.write(key(symbol), make_bars(f"2024-01-0{day + 2} 14:30", periods=50, seed=day))
                assert len(store.read(key(symbol), *MONTH)) == 50 * (day + 1)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fill, args=(s,)) for s in ("AAA", "BBB", "CCC")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:1]
    assert lake_counts(store)[:2] == (450, 450)
