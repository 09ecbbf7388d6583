"""Export: a series or a query's result lands in a CSV/Parquet file whole or not at all, and a series
survives the round trip export → ingest unchanged."""

from __future__ import annotations

import json
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from factories import make_bars

from lumibot_duckdb.cli import main
from lumibot_duckdb.errors import ConfigError, StoreError
from lumibot_duckdb.ingest.load import ingest
from lumibot_duckdb.sql.export import export
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey

ALL = ("1900-01-01", "2200-01-01")
KEY = SeriesKey("ingest", "AAA", "minute", quote="USD")


@pytest.fixture
def store(store_dir):
    with DuckDBDataStorage(store_dir) as db:
        db.write(KEY, make_bars("2024-01-02 14:30", 500))
        db.write(SeriesKey("ingest", "BBB", "minute", quote="USD"), make_bars("2024-01-02 14:30", 200, seed=1))
        yield db


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_series_round_trips_through_export_and_ingest(store, tmp_path, fmt):
    path = tmp_path / f"AAA_1m.{fmt}"
    result = export(store, KEY, path)
    assert (result.rows, result.format) == (500, fmt) and result.bytes == path.stat().st_size
    report = ingest(tmp_path / "other", path)
    assert report.rows_added == 500
    with DuckDBDataStorage(tmp_path / "other") as other:
        pd.testing.assert_frame_equal(other.read(KEY, *ALL), store.read(KEY, *ALL))


def test_series_export_honours_start_and_end_and_leaves_out_empty_columns(store, tmp_path):
    path = tmp_path / "part.csv"
    export(store, KEY, path, start="2024-01-02 10:00", end="2024-01-02 11:00")  # naive: New York time
    frame = pd.read_csv(path)
    assert len(frame) == 60
    assert frame["ts"].iloc[0].startswith("2024-01-02 15:00:00")
    assert "adj_close" not in frame.columns and "vwap" in frame.columns


def test_query_result_is_streamed_to_the_file(store, tmp_path):
    path = tmp_path / "counts.parquet"
    result = export(store, "SELECT symbol, count(*) AS bars FROM market_data GROUP BY 1 ORDER BY 1", path)
    assert result.rows == 2
    assert pq.read_table(path).to_pydict() == {"symbol": ["AAA", "BBB"], "bars": [500, 200]}


@pytest.mark.parametrize("query", ["DROP VIEW market_data", "COPY market_data TO 'x.csv'",
                                   "SELECT 1; SELECT 2", "CREATE TABLE t AS SELECT 1"])
def test_only_one_select_is_exported(store, tmp_path, query):
    with pytest.raises(ConfigError, match="Refused"):
        export(store, query, tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_bad_requests_are_config_errors_and_write_nothing(store, tmp_path):
    with pytest.raises(ConfigError, match="SQL error"):
        export(store, "SELEKT nonsense", tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="query failed"):
        export(store, "SELECT no_such_column FROM market_data", tmp_path / "x.csv")
    with pytest.raises(ConfigError, match=r"holds no series.*For AAA it holds"):
        export(store, SeriesKey("ingest", "AAA", "day", quote="USD"), tmp_path / "x.csv")
    with pytest.raises(ConfigError, match="export format"):
        export(store, KEY, tmp_path / "x.xlsx")
    with pytest.raises(ConfigError, match="does not exist"):
        export(store, KEY, tmp_path / "missing" / "x.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_a_failed_write_leaves_the_previous_file_and_no_partial_file(store, tmp_path, monkeypatch):
    path = tmp_path / "AAA.csv"
    path.write_text("previous export\n")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(StoreError, match="No space left"):
        export(store, KEY, path)
    assert path.read_text() == "previous export\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def test_cli_export_series_and_query(store, store_dir, tmp_path):
    runner = CliRunner()
    assert "Example: lumibot-duckdb export" in runner.invoke(main, ["export", "--help"]).output
    out = tmp_path / "aaa.parquet"
    result = runner.invoke(main, ["export", str(out), "--symbol", "AAA", "--timeframe", "minute",
                                  "--store", str(store_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rows"] == 500 and pq.read_metadata(out).num_rows == 500
    result = runner.invoke(main, ["export", str(tmp_path / "q.csv"), "--query", "SELECT 42 AS answer",
                                  "--store", str(store_dir)])
    assert result.exit_code == 0 and "1 rows written" in result.output
    for bad in (["--symbol", "AAA", "--query", "SELECT 1"], [], ["--query", "DELETE FROM x"],
                ["--symbol", "ZZZ"]):
        result = runner.invoke(main, ["export", str(tmp_path / "bad.csv"), "--store", str(store_dir), *bad])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("Error:"), result.output


def test_query_export_cannot_write_files_through_a_hidden_copy(tmp_path) -> None:
    """``WITH x AS (COPY ... TO 'file') SELECT 1`` parses as a SELECT; export must refuse it like db-query."""
    from lumibot_duckdb import ConfigError, DuckDBDataStorage
    from lumibot_duckdb.sql.export import export

    store = DuckDBDataStorage(tmp_path / "store")
    target = tmp_path / "written-by-export.csv"
    with pytest.raises(ConfigError):
        export(store, f"WITH x AS (COPY (SELECT 42 AS a) TO '{target}') SELECT 1", tmp_path / "out.csv")
    assert not target.exists()
    assert not (tmp_path / "out.csv").exists()
