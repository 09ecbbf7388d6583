"""db-status and db-query: what the store holds, and SQL over it that can never change it."""

from __future__ import annotations

import io
import json
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from factories import key, make_bars

from lumibot_duckdb.cli import main
from lumibot_duckdb.errors import ConfigError
from lumibot_duckdb.sql.query import query, read_only_statement
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey


@pytest.fixture
def store(store_dir: Path):
    with DuckDBDataStorage(store_dir) as s:
        s.write(key("SPY"), make_bars(periods=120, seed=1))
        s.write(key("SPY"), make_bars(start="2024-01-03 14:30", periods=60, seed=2))  # a gap between the two
        s.write(SeriesKey("yahoo", "TLT", "day"), make_bars(start="2024-01-02", periods=20, freq="1D", seed=3))
        yield s


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def _files_snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()
            and ".locks" not in p.parts}


# -- db-status ---------------------------------------------------------------------------------------
def test_status_json_reports_series_sources_gaps_and_bytes(store: DuckDBDataStorage) -> None:
    code, out = run("db-status", "--store", store.root, "--json")
    assert code == 0, out
    doc = json.loads(out)
    assert doc["totals"]["series"] == 2 and doc["totals"]["rows"] == 200
    spy = next(s for s in doc["series"] if s["symbol"] == "SPY")
    assert spy["rows"] == 180 and spy["timeframe"] == "minute" and spy["source"] == "test"
    assert spy["coverage"] == [["2024-01-02T14:30:00+00:00", "2024-01-02T16:30:00+00:00"],
                               ["2024-01-03T14:30:00+00:00", "2024-01-03T15:30:00+00:00"]]
    assert spy["gaps"] == [["2024-01-02T16:30:00+00:00", "2024-01-03T14:30:00+00:00"]]
    on_disk = sum(f.stat().st_size for f in (store.root / "bars" / "test").rglob("*.parquet"))
    assert spy["bytes"] == on_disk and spy["bytes_per_bar"] == pytest.approx(on_disk / 180, abs=0.01)
    assert {s["source"]: s["rows"] for s in doc["sources"]} == {"test": 180, "yahoo": 20}
    assert doc["quarantined"] == [] and doc["temporary"] == []


def test_status_table_is_readable_and_lists_quarantine_and_leftovers(store: DuckDBDataStorage) -> None:
    (store.root / ".quarantine").mkdir()
    (store.root / ".quarantine" / "x__bars__a.parquet").write_bytes(b"junk")
    (store.root / ".quarantine" / "x__bars__a.parquet.reason.txt").write_text("unreadable: truncated\n")
    leftover = store.root / ".tmp" / "0123.parquet.part"
    leftover.write_bytes(b"x" * 10)
    import os
    os.utime(leftover, (0, 0))
    code, out = run("db-status", "--store", store.root)
    assert code == 0, out
    for text in ("2 series", "200 bars", "Sources", "Series", "SPY", "TLT", "yahoo", "minute", "day",
                 "1 quarantined file", "1 leftover temporary file", "clean-tmp"):
        assert text in out, (text, out)
    code, out = run("db-status", "--store", store.root, "--json")
    doc = json.loads(out)
    assert doc["quarantined"][0]["reason"] == "unreadable: truncated"
    assert doc["temporary"][0]["age_seconds"] > 3600


def test_status_of_a_missing_folder_is_an_error_not_a_new_store(tmp_path: Path) -> None:
    code, out = run("db-status", "--store", tmp_path / "nope")
    assert code == 1 and "No store at" in out and len(out.strip().splitlines()) == 1
    assert not (tmp_path / "nope").exists()


# -- db-query: read-only -------------------------------------------------------------------------------
REFUSED = {
    "INSERT": "INSERT INTO files VALUES (1)",
    "UPDATE": "UPDATE files SET rows = 0",
    "DELETE": "DELETE FROM files",
    "CREATE": "CREATE TABLE t AS SELECT 1",
    "CREATE VIEW": "CREATE VIEW v AS SELECT 1",
    "CREATE MACRO": "CREATE MACRO m(x) AS x",
    "DROP": "DROP VIEW market_data",
    "ALTER": "ALTER TABLE files RENAME TO f",
    "COPY TO": "COPY (SELECT 1) TO '/tmp/lumibot-duckdb-should-not-exist.csv'",
    "COPY FROM": "COPY files FROM '/etc/hosts'",
    "EXPORT": "EXPORT DATABASE '/tmp/lumibot-duckdb-should-not-exist'",
    "IMPORT": "IMPORT DATABASE '/tmp/x'",
    "ATTACH": "ATTACH '/tmp/lumibot-duckdb-should-not-exist.db' AS x",
    "DETACH": "DETACH x",
    "USE": "USE memory",
    "INSTALL": "INSTALL httpfs",
    "LOAD": "LOAD httpfs",
    "SET": "SET enable_external_access = true",
    "RESET": "RESET threads",
    "PRAGMA": "PRAGMA version",
    "CALL": "CALL pragma_version()",
    "CHECKPOINT": "CHECKPOINT",
    "VACUUM": "VACUUM",
    "ANALYZE": "ANALYZE",
    "BEGIN": "BEGIN TRANSACTION",
    "PREPARE": "PREPARE p AS SELECT 1",
    "EXECUTE": "EXECUTE p",
    "PIVOT (several statements)": "PIVOT files ON source USING count(*)",
    "EXPLAIN of COPY": "EXPLAIN COPY (SELECT 1) TO '/tmp/x.csv'",
    "EXPLAIN ANALYZE of INSERT": "EXPLAIN ANALYZE INSERT INTO files VALUES (1)",
    "multi: select then drop": "SELECT 1; DROP VIEW market_data",
    "multi: hidden in a comment line": "SELECT 1 -- harmless\n; COPY (SELECT 1) TO '/tmp/x.csv'",
    "multi: two selects": "SELECT 1; SELECT 2",
    "SELECT with COPY TO in a CTE": "WITH x AS (COPY (SELECT 1 AS a) TO '{root}/bars/evil.csv') SELECT 1",
    "SELECT with INSERT in a CTE": "WITH x AS (INSERT INTO files (source) VALUES ('x') RETURNING *) SELECT * FROM x",
    "SELECT with UPDATE in a subquery CTE": "SELECT * FROM files WHERE rows IN (WITH z AS (UPDATE files SET rows = 0 "
                                            "RETURNING rows) SELECT rows FROM z)",
    "SELECT with DELETE in a nested CTE": "SELECT * FROM (WITH y AS (DELETE FROM files RETURNING *) SELECT * FROM y)",
    "EXPLAIN of a SELECT with COPY": "EXPLAIN WITH x AS (COPY (SELECT 1) TO '{root}/x.csv') SELECT 1",
}


@pytest.mark.parametrize("sql", list(REFUSED.values()), ids=list(REFUSED))
def test_every_statement_that_could_change_anything_is_refused_before_it_runs(store: DuckDBDataStorage,
                                                                               sql: str) -> None:
    sql = sql.format(root=store.root)
    before = _files_snapshot(store.root)
    if sql == "PRAGMA version" and duckdb.__version__.startswith("1."):
        pytest.skip("DuckDB 1.x parses PRAGMA version as a SELECT of pragma_version(): read-only, allowed")
    # DuckDB 2 parses the hidden writes and we refuse them; DuckDB 1.5's parser already rejects a
    # CTE that is not a SELECT, and reads IMPORT's schema file while parsing (a missing file here).
    with pytest.raises(ConfigError, match="Refused" if duckdb.__version__.startswith("2.") else
                       "Refused|A CTE needs a SELECT|Cannot open file"):
        query(store, sql)
    code, out = run("db-query", sql, "--store", store.root)
    assert code == 1 and out.startswith("Error: ") and len(out.strip().splitlines()) == 1, out
    assert _files_snapshot(store.root) == before
    assert not Path("/tmp/lumibot-duckdb-should-not-exist.csv").exists()
    assert query(store, "SELECT count(*) AS n FROM market_data").table.to_pylist() == [{"n": 200}]
    assert query(store, "SELECT count(*) AS n FROM files").table.to_pylist() == [{"n": 3}]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_text('/etc/hosts')",
    "SELECT * FROM read_csv('/etc/hosts')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('https://example.com/x.parquet')",
    "SELECT * FROM read_text('{root}/../outside.txt')",
])
def test_select_shaped_reads_outside_the_store_are_refused(store: DuckDBDataStorage, sql: str,
                                                            no_network) -> None:
    (store.root.parent / "outside.txt").write_text("secret")
    with pytest.raises(ConfigError, match=r"Refused by the read-only connection"):
        query(store, sql.format(root=store.root))
    assert not no_network.attempts


def test_select_shaped_statements_that_are_allowed(store: DuckDBDataStorage) -> None:
    assert read_only_statement("  -- a comment\nWITH a AS (SELECT 1 AS x) SELECT * FROM a") .strip().endswith("a")
    assert query(store, "FROM symbols SELECT symbol ORDER BY symbol").table.column("symbol").to_pylist() == [
        "SPY", "TLT"]
    assert query(store, "DESCRIBE market_data").table.num_rows >= 18
    assert query(store, "SHOW TABLES").table.num_rows >= 5
    assert query(store, "EXPLAIN SELECT * FROM market_data").table.num_rows >= 1
    assert query(store, "SELECT * FROM query('SELECT 42 AS x')").table.to_pylist() == [{"x": 42}]
    with pytest.raises(ConfigError, match="single SELECT"):
        query(store, "SELECT * FROM query('DROP VIEW market_data')")
    files = query(store, "SELECT path FROM files LIMIT 1").table.column("path").to_pylist()
    # a bar file of the store itself is readable (decision: the store's own folder is fair game)
    assert query(store, "SELECT count(*) AS n FROM read_parquet(?)", params=files).table.num_rows == 1
    assert query(store, "SELECT ts FROM market_data WHERE symbol = ? ORDER BY ts LIMIT 1", params=["TLT"]).table \
        .num_rows == 1


def test_bad_sql_is_a_one_line_error_with_non_zero_exit(store: DuckDBDataStorage) -> None:
    for sql in ("SELEC 1", "SELECT * FROM nope", "SELECT nope FROM symbols", "", "   ;  "):
        code, out = run("db-query", sql, "--store", store.root)
        assert code == 1 and out.startswith("Error: ") and len(out.strip().splitlines()) == 1, (sql, out)
    code, out = run("db-query", "--store", store.root)
    assert code == 1 and "Give the SQL" in out
    code, out = run("db-query", "SELECT 1", "--format", "parquet", "--store", store.root)
    assert code == 1 and "--output" in out


def test_a_misspelt_name_gets_duckdbs_suggestion_and_the_views_never_an_internal_one(
        store: DuckDBDataStorage) -> None:
    expected = {
        "SELECT * FROM market_dat": ('Did you mean "market_data"?', "The store's views: market_data, symbols"),
        "SELECT * FROM barz": ("The store's views: market_data, symbols, data_sources, coverage, files.",),
        "SELECT closee FROM market_data": ('Candidate bindings: "close"',),
        "SELECT * FROM smaa('SPY', 5)": ('Did you mean "sma"?',),
    }
    for sql, wanted in expected.items():
        code, out = run("db-query", sql, "--store", store.root)
        assert code == 1 and len(out.strip().splitlines()) == 1, (sql, out)
        assert all(w in out for w in wanted) and "_bar" not in out, (sql, out)


# -- db-query: output ----------------------------------------------------------------------------------
def test_output_formats_carry_the_same_rows(store: DuckDBDataStorage, tmp_path: Path) -> None:
    sql = "SELECT ts, symbol, close, trade_count FROM market_data WHERE symbol = 'SPY' ORDER BY ts"
    expected = store.read(key("SPY"), "2024-01-01", "2024-02-01")
    code, out = run("db-query", sql, "--format", "json", "--store", store.root)
    assert code == 0
    rows = json.loads(out)
    assert len(rows) == 180 and rows[0]["ts"] == "2024-01-02T14:30:00+00:00"
    assert [r["close"] for r in rows] == expected["close"].tolist()

    code, out = run("db-query", sql, "--format", "csv", "--store", store.root)
    frame = pd.read_csv(io.StringIO(out), float_precision="round_trip")
    assert len(frame) == 180 and frame["close"].tolist() == expected["close"].tolist()
    assert pd.to_datetime(frame["ts"]).iloc[0] == pd.Timestamp("2024-01-02 14:30", tz="UTC")

    target = tmp_path / "out.parquet"
    code, out = run("db-query", sql, "--format", "parquet", "--output", target, "--store", store.root)
    assert code == 0 and "180 rows written" in out
    table = pq.read_table(target)
    assert table.num_rows == 180 and str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert table.column("trade_count").to_pylist() == expected["trade_count"].tolist()

    csv_file = tmp_path / "out.csv"
    code, _ = run("db-query", sql, "--format", "csv", "-o", csv_file, "--limit", "7", "--store", store.root)
    assert code == 0 and len(pd.read_csv(csv_file)) == 7


def test_table_output_is_limited_by_default_and_says_so(store: DuckDBDataStorage) -> None:
    code, out = run("db-query", "SELECT ts, close FROM market_data ORDER BY ts", "--store", store.root)
    assert code == 0 and "50 row(s); more exist" in out
    code, out = run("db-query", "SELECT ts FROM market_data", "--limit", "0", "--store", store.root)
    assert "200 row(s)" in out and "more exist" not in out
    code, out = run("db-query", "SELECT * FROM symbols", "--store", store.root)
    assert "SPY" in out and "TLT" in out and "2 row(s)" in out


def test_query_file_and_stdin(store: DuckDBDataStorage, tmp_path: Path) -> None:
    sql_file = tmp_path / "q.sql"
    sql_file.write_text("SELECT count(*) AS n FROM market_data;\n")
    code, out = run("db-query", "--file", sql_file, "--format", "json", "--store", store.root)
    assert code == 0 and json.loads(out) == [{"n": 200}]
    result = CliRunner().invoke(main, ["db-query", "--file", "-", "--format", "csv", "--store", str(store.root)],
                                input="SELECT 1 AS one")
    assert result.exit_code == 0 and result.output.splitlines() == ["one", "1"]


def test_every_command_help_has_an_example() -> None:
    for command in (["db-status"], ["db-query"], ["maintain"], ["maintain", "compact"], ["maintain", "clean-tmp"],
                    ["maintain", "prune"], ["maintain", "verify"], ["maintain", "seal"], ["maintain", "forget-empty"]):
        code, out = run(*command, "--help")
        assert code == 0 and "Example" in out and "lumibot-duckdb" in out, command
    code, out = run("db-query", "--help")
    for macro in ("sma(", "ema(", "bollinger(", "rsi(", "vwap(", "volatility(", "rolling_corr(", "asof_align("):
        assert macro in out, macro


# -- db-query: bounded, and every value prints -----------------------------------------------------------
def test_a_runaway_statement_stops_at_the_time_limit_with_one_line(store: DuckDBDataStorage) -> None:
    import time

    started = time.perf_counter()
    code, out = run("db-query", "SELECT count(*) FROM range(1000000) a, range(1000000) b", "--timeout", "1",
                    "--store", store.root)
    assert code == 1 and out.startswith("Error: Stopped after") and "--timeout" in out
    assert len(out.strip().splitlines()) == 1 and time.perf_counter() - started < 15
    code, out = run("db-query", "SELECT x, md5(x::VARCHAR) FROM range(100000000) t(x)", "--format", "csv",
                    "--timeout", "1", "--store", store.root)
    assert code == 1 and "Stopped after" in out.strip().splitlines()[-1]  # (rows before it were written)


def test_the_memory_limit_bounds_duckdb_and_the_rows_held(store: DuckDBDataStorage) -> None:
    from lumibot_duckdb.errors import QueryLimitError
    from lumibot_duckdb.sql.query import Limits

    tight = Limits(memory=64 << 20, temp=1 << 20)
    with pytest.raises(QueryLimitError, match="memory limit"):
        query(store, "SELECT x, md5(x::VARCHAR) AS m FROM range(3000000) t(x)", limits=tight)
    with pytest.raises(QueryLimitError, match="memory limit"):
        query(store, "SELECT x % 1000000 AS k, list(x) FROM range(20000000) t(x) GROUP BY 1", limits=tight)
    code, out = run("db-query", "SELECT x FROM range(300000000) t(x)", "--memory-limit", "64MB", "--store",
                    store.root)
    assert code == 0 and "50 row(s); more exist" in out  # a table shows 50 rows: nothing more is held
    code, out = run("db-query", "SELECT 1", "--memory-limit", "1e400", "--store", store.root)
    assert code == 1 and "--memory-limit" in out and len(out.strip().splitlines()) == 1


def test_streamed_output_holds_no_result_in_memory(store: DuckDBDataStorage, tmp_path: Path) -> None:
    target = tmp_path / "big.parquet"
    code, out = run("db-query", "SELECT x FROM range(5000000) t(x)", "--format", "parquet", "-o", target,
                    "--memory-limit", "16MB", "--store", store.root)
    assert code == 0 and "5,000,000 rows written" in out and pq.read_metadata(target).num_rows == 5_000_000


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_every_value_duckdb_returns_prints(store: DuckDBDataStorage, fmt: str) -> None:
    code, out = run("db-query", "SELECT * FROM test_all_types()", "--format", fmt, "--store", store.root)
    assert code == 0, out
    if fmt == "json":
        rows = json.loads(out)
        assert len(rows) == 3 and rows[0]["date"] == "-5877641-06-25" and rows[1]["timestamp_tz"] is not None
        assert rows[1]["hugeint"] == 170141183460469231731687303715884105727 and rows[0]["bit"]
    sql = ("SELECT TIMESTAMP '290000-01-01 00:00:00' AS t, TIMESTAMPTZ '290000-01-01 00:00:00+00' AS tz, "
           "'infinity'::TIMESTAMP AS inf, DATE '-5000-01-01' AS d, TIME '24:00:00' AS midnight")
    code, out = run("db-query", sql, "--format", fmt, "--store", store.root)
    assert code == 0 and "290000-01-01" in out and "infinity" in out and "-5000-01-01" in out and "24:00:00" in out


def test_a_type_a_format_cannot_hold_is_a_one_line_error(store: DuckDBDataStorage, tmp_path: Path) -> None:
    code, out = run("db-query", "SELECT INTERVAL 1 DAY AS i", "--format", "parquet", "-o", tmp_path / "x.parquet",
                    "--store", store.root)
    assert code == 1 and out.startswith("Error: Cannot write the result as parquet") and "VARCHAR" in out
    assert len(out.strip().splitlines()) == 1 and not (tmp_path / "x.parquet").exists()
