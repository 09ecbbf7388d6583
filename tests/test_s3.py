"""The store on S3: a team's shared store, read through a local mirror, each gap filled once.

On moto's S3 server on 127.0.0.1 (started by the session, stopped by a watchdog if the run dies; see
``tests/conftest.py``). A counting proxy (:class:`~lumibot_duckdb.testing.s3server.S3Proxy`) sits in front
of it where a test counts requests, and, with ``strip_conditions``, plays a service that ignores
conditional writes. The folder-backend checks of ``tests/test_store.py`` run on S3 too.

Invariants:
* a reader never writes to S3; what it fetches itself stays on its machine (and ``sync`` can publish it);
* published objects appear whole, never overwrite, and are downloaded once (a warm read asks for nothing
  but listings, or nothing while a listing is fresh);
* one writer per series (a lease on conditional writes), so 4 writers racing fill each gap once, readers
  only ever see whole files, and a writer killed holding a lease is taken over after its TTL;
* a service that ignores conditional writes gets no writer; damage is set aside, never served.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from click.testing import CliRunner
from factories import key, make_bars

from lumibot_duckdb import ConfigError, CorruptFileError, DuckDBDataStorage, Interval, StoreError
from lumibot_duckdb.cli import main as cli
from lumibot_duckdb.config import Settings
from lumibot_duckdb.store.local import LocalFolder
from lumibot_duckdb.store.sync import sync
from lumibot_duckdb.testing.s3server import S3Proxy, free_port
from lumibot_duckdb.testing.team import expected_gaps, race_plan, series

pytestmark = pytest.mark.usefixtures("naive_times_in_utc")  # (the times written naive here are UTC)


MONTH = ("2024-01-01", "2024-02-01")


# -- where the store is ------------------------------------------------------------------------------
def test_the_store_location_is_a_folder_or_s3(tmp_path: Path) -> None:
    env = {"LUMIBOT_DUCKDB_CACHE_DIR": str(tmp_path)}
    assert Settings.resolve(environ=env).location == str(tmp_path)
    assert Settings.resolve(environ={**env, "LUMIBOT_DUCKDB_STORE": "s3://team-bars/lumibot/"}).location == \
        "s3://team-bars/lumibot"
    assert Settings.resolve(store="S3://team-bars", environ=env).location == "s3://team-bars"
    assert Settings.resolve(store=tmp_path / "x", environ=env).location == str(tmp_path / "x")
    assert Settings.resolve(store="s3://team-bars/p", store_role="WRITE", environ=env).store_role == "write"
    assert Settings.resolve(environ=env).store_role == "read"
    for bad, message in [("gs://bucket/p", "not supported"), ("s3://A_b/p", "bucket name"), ("s3:///p", "bucket"),
                         ("s3://bucket/../x", "'..'")]:
        with pytest.raises(ConfigError, match=message):
            Settings.resolve(store=bad, environ=env)
    with pytest.raises(ConfigError, match="LUMIBOT_DUCKDB_STORE_ROLE"):
        Settings.resolve(environ={**env, "LUMIBOT_DUCKDB_STORE_ROLE": "admin"})
    with pytest.raises(ConfigError, match="LUMIBOT_DUCKDB_S3_LEASE_TTL"):
        Settings.resolve(environ={**env, "LUMIBOT_DUCKDB_S3_LEASE_TTL": "0.5"})
    assert isinstance(DuckDBDataStorage(tmp_path / "f").backend, LocalFolder), "the folder stays the default"


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture
def proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """Every request of this test goes through a counting proxy."""
    with S3Proxy(s3_endpoint) as counting:
        monkeypatch.setenv("AWS_ENDPOINT_URL", counting.url)
        yield counting


def writes(proxy: S3Proxy) -> int:
    return sum(n for kind, n in proxy.requests.items() if kind not in ("LIST", "GET", "HEAD"))


def spawn(role: str, spec: dict) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lumibot_duckdb.testing.team", role, json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def report_of(process: subprocess.Popen[str], timeout: float = 240) -> dict:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


# -- roles and the mirror ------------------------------------------------------------------------------
def test_a_reader_never_writes_and_keeps_what_it_fetched_on_its_machine(s3_store: str, proxy: S3Proxy,
                                                                        tmp_path: Path) -> None:
    team = DuckDBDataStorage(s3_store, role="write", cache_dir=tmp_path / "writer")
    team.write(key(), make_bars(periods=30))
    proxy.reset()
    reader = DuckDBDataStorage(s3_store, role="read", cache_dir=tmp_path / "reader")
    assert len(reader.read(key(), *MONTH)) == 30
    reader.write(key(), make_bars("2024-01-03 14:30", periods=20, seed=1))  # a gap its backtest needed
    reader.write_note({"checked": "2024-01-04"}, "test", "checked.json")
    with reader.writer(key()) as writer:
        writer.write(make_bars("2024-01-04 14:30", periods=9 * 20), covered=("2024-01-04 14:30Z", "2024-01-04 17:30Z"))
    assert len(reader.read(key(), *MONTH)) == 30 + 20 + 180
    assert reader.read_note("test", "checked.json") == {"checked": "2024-01-04"}
    assert writes(proxy) == 0, f"a reader wrote to S3: {dict(proxy.requests)}"
    assert team.coverage(key()) == [Interval("2024-01-02 14:30Z", "2024-01-02 15:00Z")], "S3 is as the writer left it"

    # What the reader fetched is a folder store of its own: sync publishes it, once.
    pushed = sync(DuckDBDataStorage(reader.root), team)
    assert (pushed.ranges, pushed.bars, pushed.notes) == (2, 200, 1)
    assert sync(DuckDBDataStorage(reader.root), team).ranges == 0
    other = DuckDBDataStorage(s3_store, role="read", cache_dir=tmp_path / "another")
    pd.testing.assert_frame_equal(other.read(key(), *MONTH), reader.read(key(), *MONTH))

    # A reader cannot delete team objects: "removing" them only stops this machine from using them.
    with reader.writer(key()) as writer:
        writer.discard()
    assert reader.read(key(), *MONTH).empty
    assert len(other.read(key(), *MONTH)) == 230


def test_a_warm_read_asks_s3_for_nothing_but_listings(s3_store: str, proxy: S3Proxy, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    team = DuckDBDataStorage(s3_store, role="write", cache_dir=tmp_path / "writer")
    symbols = ["AAA", "BBB", "CCC"]
    for i, symbol in enumerate(symbols):
        team.write(key(symbol), make_bars(periods=400, seed=i))
    sizes = sum(f.size for s in symbols for f in team.files(key(s)))
    monkeypatch.setenv("LUMIBOT_DUCKDB_S3_LISTING_TTL", "300")
    cache = tmp_path / "laptop"

    proxy.reset()
    cold = DuckDBDataStorage(s3_store, cache_dir=cache)
    frames = [cold.read(key(s), *MONTH) for s in symbols]
    assert proxy.requests == {"LIST": 3, "GET": 3}, "one LIST and one whole-object GET per series"
    assert sizes <= proxy.bytes_in < sizes + 6 * 2048

    proxy.reset()
    fresh = DuckDBDataStorage(s3_store, cache_dir=cache)  # as a new process on the same machine
    for symbol, frame in zip(symbols, frames):
        pd.testing.assert_frame_equal(fresh.read(key(symbol), *MONTH), frame)
    assert proxy.snapshot()["total"] == 0, "listings younger than the TTL and mirrored files: no request at all"

    monkeypatch.setenv("LUMIBOT_DUCKDB_S3_LISTING_TTL", "0")
    proxy.reset()
    always = DuckDBDataStorage(s3_store, cache_dir=cache)
    for symbol in symbols:
        always.read(key(symbol), *MONTH)
    assert proxy.requests == {"LIST": 3}, "TTL 0: one LIST per read, files still from the mirror"


def test_status_reads_only_footers(s3_store: str, proxy: S3Proxy, tmp_path: Path) -> None:
    team = DuckDBDataStorage(s3_store, role="write", cache_dir=tmp_path / "writer")
    team.write(key(), make_bars(periods=30_000))
    size = team.files(key())[0].size
    assert size > 256 * 1024
    proxy.reset()
    (status,) = DuckDBDataStorage(s3_store, cache_dir=tmp_path / "laptop").status()
    assert (status.rows, status.files, status.bytes) == (30_000, 1, size)
    assert proxy.requests == {"LIST": 2, "GET": 1} and proxy.bytes_in < 80 * 1024, "a LIST of bars/, a LIST of " \
        "the series, one ranged GET of the footer"


# -- conditional writes and leases ----------------------------------------------------------------------
def test_a_service_that_ignores_conditional_writes_gets_no_writer(s3_store: str, s3_endpoint: str, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    DuckDBDataStorage(s3_store, role="write", cache_dir=tmp_path / "good").write(key(), make_bars(periods=10))
    with S3Proxy(s3_endpoint, strip_conditions=True) as careless:
        monkeypatch.setenv("AWS_ENDPOINT_URL", careless.url)
        writer = DuckDBDataStorage(s3_store, role="write", cache_dir=tmp_path / "w")
        with pytest.raises(ConfigError, match=r"ignores conditional writes.*Open the store as a reader"):
            writer.write(key(), make_bars("2024-01-03 14:30", periods=10))
        assert careless.requests["PUT"] == 2 and careless.requests["DELETE"] == 1, "the probe, and nothing else"
        reader = DuckDBDataStorage(s3_store, role="read", cache_dir=tmp_path / "r")
        reader.write(key(), make_bars("2024-01-03 14:30", periods=10))
        assert len(reader.read(key(), *MONTH)) == 20
    assert len(DuckDBDataStorage(s3_store, cache_dir=tmp_path / "check").read(key(), *MONTH)) == 10


def test_a_killed_lease_holder_is_taken_over_after_its_ttl(s3_store: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUMIBOT_DUCKDB_S3_LEASE_TTL", "3")
    # (in UTC: the holder process reads naive times in New York)
    day = ("2024-01-02T00:00:00+00:00", "2024-01-03T00:00:00+00:00")
    holder = spawn("holder", {"store": s3_store, "publish": ["AAA", *day]})
    assert holder.stdout.readline().strip() == "holding", holder.stderr.read()
    seen: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def read_meanwhile() -> None:
        reader = DuckDBDataStorage(s3_store, role="read", cache_dir=tmp_path / "reader")
        while not stop.is_set():
            try:
                seen.append(len(reader.read(series("AAA"), "2024-01-01", "2024-01-05")))
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)
            time.sleep(0.05)

    watcher = threading.Thread(target=read_meanwhile, daemon=True)
    watcher.start()
    time.sleep(0.5)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    killed = time.monotonic()
    writer = DuckDBDataStorage(s3_store, role="write", cache_dir=tmp_path / "next", lock_timeout=30)
    with writer.writer(series("AAA")) as fill:
        took_over = time.monotonic() - killed
        assert fill.missing(Interval("2024-01-01", "2024-01-05")) == [
            Interval("2024-01-01", "2024-01-02"), Interval("2024-01-03", "2024-01-05")]
    stop.set()
    watcher.join()
    assert writer.remote_stats()["takeovers"] == 1
    assert 2.0 <= took_over <= 7.0, f"took over {took_over:.1f}s after the kill (TTL 3s, renewed every 1s)"
    assert not failures and seen and set(seen) == {1440}, "readers saw the published day whole, all along"
    assert len(writer.files(series("AAA"))) == 1, "nothing half-published"


def test_a_writer_that_lost_its_lease_publishes_nothing_more(s3_store: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LUMIBOT_DUCKDB_S3_LEASE_TTL", "3")
    store = DuckDBDataStorage(s3_store, role="write", cache_dir=tmp_path / "w")
    with store.writer(key()) as writer:
        writer.write(make_bars(periods=10))
        lease = [o["Key"] for o in store.backend.client.list_objects_v2(
            Bucket=store.backend.bucket, Prefix=store.backend.base + ".locks/")["Contents"]]
        assert len(lease) == 1
        store.backend.client.put_object(Bucket=store.backend.bucket, Key=lease[0], Body=b'{"owner": "someone"}')
        time.sleep(1.6)  # the next renewal finds the ETag changed
        with pytest.raises(StoreError, match=r"lease .* was lost"):
            writer.write(make_bars("2024-01-03 14:30", periods=10))
    assert len(store.files(key())) == 1


def test_four_writers_and_four_readers_fill_each_gap_once(s3_store: str, tmp_path: Path) -> None:
    plans = race_plan(["2024-01-02", "2024-01-03", "2024-01-04"])
    log, go, stop = tmp_path / "fetches.jsonl", tmp_path / "go", tmp_path / "stop"
    symbols = sorted({s for plan in plans for s, _, _ in plan})
    common = {"store": s3_store, "go": str(go), "stop": str(stop)}
    writers = [spawn("writer", {**common, "plan": plan, "log": str(log), "latency": 0.2}) for plan in plans]
    readers = [spawn("reader", {**common, "symbols": symbols, "seed": i, "pause": 0.02,
                                "ranges": [["2024-01-02", "2024-01-03"], ["2024-01-02 12:00", "2024-01-03 12:00"]]})
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
    assert not [b for r in read for b in r["bad"]], "readers only ever saw whole files"
    assert sum(r["reads"] for r in read) > 0
    store = DuckDBDataStorage(s3_store, cache_dir=tmp_path / "check")
    paths = [str(f.path) for s in symbols for f in store.local_files(series(s))]
    rows, distinct = duckdb.connect().execute(
        "SELECT count(*), count(DISTINCT (symbol, ts)) FROM read_parquet(?)", [paths]).fetchone()
    assert rows == distinct == 1440 * (1 + 4 * 4) + 720, "0 duplicates (AAA: a day and a half; LATE: none)"


# -- sync, damage, failures ----------------------------------------------------------------------------
def test_sync_pushes_only_what_the_target_lacks(s3_store: str, proxy: S3Proxy, tmp_path: Path) -> None:
    local = DuckDBDataStorage(tmp_path / "bars")
    local.write(key(), make_bars(periods=30))
    local.write(key(), make_bars("2024-01-03 14:30", periods=30))
    local.write(key("QQQ", timeframe="day"), make_bars("2024-01-02", periods=20, freq="1D"))
    local.write_note({"exchange": "x"}, "test", "markets.json")
    team = DuckDBDataStorage(s3_store, role="write", cache_dir=tmp_path / "cache")
    theirs = make_bars(periods=30, seed=7)
    team.write(key(), theirs)  # the team already holds the first range, with other bars

    report = sync(local, team)
    assert (report.series, report.series_pushed, report.ranges, report.bars, report.notes) == (2, 2, 2, 50, 1)
    assert team.read(key(), "2024-01-02", "2024-01-03")["close"].tolist() == theirs["close"].tolist()
    assert len(team.read(key("QQQ", timeframe="day"), *MONTH)) == 20
    assert team.read_note("test", "markets.json") == {"exchange": "x"}
    proxy.reset()
    again = sync(local, team)
    assert (again.ranges, again.notes, again.series_current) == (0, 0, 2)
    assert writes(proxy) == 0, "idempotent: nothing written the second time"


def test_a_damaged_object_is_set_aside_and_its_range_fetched_again(s3_store: str, tmp_path: Path) -> None:
    team = DuckDBDataStorage(s3_store, role="write", cache_dir=tmp_path / "writer")
    team.write(key(), make_bars(periods=30))
    team.write(key(), make_bars("2024-01-03 14:30", periods=30, seed=1))
    client, bucket = team.backend.client, team.backend.bucket
    first, second = sorted(team.files(key()), key=lambda f: f.interval.start)
    good = client.get_object(Bucket=bucket, Key=second.object_key)
    flipped = bytearray(good["Body"].read())
    flipped[len(flipped) // 3] ^= 0x10  # one bit, in a data page, under the published SHA-256
    client.put_object(Bucket=bucket, Key=second.object_key, Body=bytes(flipped), Metadata=good["Metadata"])

    reader = DuckDBDataStorage(s3_store, role="read", cache_dir=tmp_path / "reader")
    with pytest.raises(CorruptFileError, match="SHA-256"):
        reader.read(key(), *MONTH)
    assert reader.coverage(key()) == [first.interval], "this machine no longer uses it"
    assert len(client.list_objects_v2(Bucket=bucket, Prefix=team.backend.base + "bars/")["Contents"]) == 2, \
        "a reader leaves the team's objects alone"

    client.put_object(Bucket=bucket, Key=first.object_key, Body=b"not parquet at all")  # no checksum to check
    fresh = DuckDBDataStorage(s3_store, role="write", cache_dir=tmp_path / "another")
    with pytest.raises(CorruptFileError, match="SHA-256"):
        fresh.read(key(), *MONTH)
    with pytest.raises(CorruptFileError) as info:
        fresh.read(key(), *MONTH)
    assert Path(info.value.quarantined_to).exists()
    assert fresh.coverage(key()) == [] and fresh.read(key(), *MONTH).empty
    quarantined = client.list_objects_v2(Bucket=bucket, Prefix=team.backend.base + ".quarantine/")["Contents"]
    assert len(quarantined) == 4, "both objects moved aside on S3, each with its reason"


def test_an_unreachable_service_or_a_missing_bucket_is_a_store_error(s3_endpoint: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        DuckDBDataStorage("s3://no-such-bucket/x", cache_dir=tmp_path).coverage(key())
    from lumibot_duckdb.testing.offline import allow_loopback

    port = free_port()
    allow_loopback(port)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StoreError, match=r"Could not reach the S3 service.*AWS_ENDPOINT_URL"):
        DuckDBDataStorage("s3://some-bucket/x", cache_dir=tmp_path).coverage(key())


def test_the_watchdog_stops_the_server_when_the_process_that_started_it_dies(s3_endpoint: str) -> None:
    import socket

    from lumibot_duckdb.testing.offline import allow_loopback

    starter = subprocess.Popen([sys.executable, "-c", "import time\nfrom lumibot_duckdb.testing.s3server import "
                                "moto_server\nwith moto_server() as endpoint:\n    print(endpoint, flush=True)\n"
                                "    time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    port = int(starter.stdout.readline().strip().rsplit(":", 1)[1])
    allow_loopback(port)

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    assert listening()
    os.kill(starter.pid, signal.SIGKILL)
    starter.wait()
    deadline = time.monotonic() + 20
    while listening() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not listening(), "moto outlived the process that started it"


# -- every command ---------------------------------------------------------------------------------------
def test_every_command_works_on_an_s3_store(s3_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUMIBOT_DUCKDB_STORE_ROLE")  # the commands choose their role themselves
    csv = tmp_path / "SPY_1d_2019.csv"
    days = pd.bdate_range("2019-01-02", periods=60)
    pd.DataFrame({"Date": days.strftime("%Y-%m-%d"), "Open": 10.0, "High": 11.0, "Low": 9.0, "Close": 10.5,
                  "Adj Close": 10.5, "Volume": 1000}).to_csv(csv, index=False)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    assert "60 added" in run("ingest", str(csv), "--store", s3_store).replace(",", "")
    status = json.loads(run("db-status", "--store", s3_store, "--json"))
    assert status["location"] == s3_store and status["totals"]["rows"] == 60
    counted = json.loads(run("db-query", "SELECT count(*) AS n FROM market_data", "--format", "json", "--store",
                             s3_store))
    assert counted == [{"n": 60}]
    assert "60 rows" in run("export", str(tmp_path / "spy.csv"), "--symbol", "SPY", "--store", s3_store)
    assert "1 file(s) of 1 series checked: 0 error(s)" in run("maintain", "verify", "--store", s3_store)
    assert "rewrote 0" in run("maintain", "compact", "--store", s3_store)
    assert "removed 0" in run("maintain", "clean-tmp", "--store", s3_store)
    assert "1 series: removed 0 file(s), rewrote 1" in run("maintain", "prune", "--before", "2019-02-01", "--yes",
                                                           "--store", s3_store)
    remaining = json.loads(run("db-status", "--store", s3_store, "--json"))["totals"]["rows"]
    assert remaining == len([d for d in days if d >= pd.Timestamp("2019-02-01")])
    local = tmp_path / "local"
    assert "pushed 1 range(s)" in run("sync", s3_store, str(local))
    assert "pushed 0 range(s)" in run("sync", s3_store, str(local))
    assert DuckDBDataStorage(local).status()[0].rows == remaining


# -- backtests ---------------------------------------------------------------------------------------------
@pytest.mark.backtest
@pytest.mark.parametrize("name", ["polygon", "yahoo", "alpaca", "ccxt"])
def test_backtests_on_an_s3_store_match_the_folder_store(name: str, s3_store: str, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer fills the team's store from the provider; a fresh machine (empty mirror) then backtests from it
    asking the provider nothing, cold and warm, with the fills and final value of the folder store."""
    from test_conformance import momentum, run

    from lumibot_duckdb.testing.kits import kit

    scenario = momentum(kit(name))
    folder = run(scenario, "duckdb", "cold", tmp_path / "folder")
    monkeypatch.setenv("LUMIBOT_DUCKDB_STORE", s3_store)
    written = run(scenario, "duckdb", "cold", tmp_path / "writer")
    monkeypatch.setenv("LUMIBOT_DUCKDB_STORE_ROLE", "read")
    cold = run(scenario, "duckdb", "cold", tmp_path / "reader")
    warm = run(scenario, "duckdb", "warm", tmp_path / "reader")
    assert written.requests == folder.requests and folder.provider_requests > 0
    assert DuckDBDataStorage(s3_store, cache_dir=tmp_path / "look").series(), "the writer filled the S3 store"
    assert cold.provider_requests == 0 == warm.provider_requests, (cold.requests, warm.requests)
    for result in (written, cold, warm):
        assert (result.fills, result.final_value) == (folder.fills, folder.final_value), result.phase
