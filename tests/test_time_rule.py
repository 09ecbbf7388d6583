"""One rule for naive times: everywhere, a time without a zone is in Lumibot's default time zone (New York).

Invariant: the same naive time names the same instant in the store API, ingest, export, prune, pandas_data,
the analytics functions and the SQL macros; tables say which zone they show times in, daily bars as dates.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from factories import make_bars

from lumibot_duckdb.cli import main
from lumibot_duckdb.config import default_timezone
from lumibot_duckdb.ingest.load import ingest
from lumibot_duckdb.sources.pandas_data import pandas_data
from lumibot_duckdb.sql import analytics
from lumibot_duckdb.sql.export import export
from lumibot_duckdb.sql.query import query
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey
from lumibot_duckdb.store.maintenance import prune
from lumibot_duckdb.store.naming import parse_time

KEY = SeriesKey("ingest", "AAA", "minute", quote="USD")
NAIVE = "2024-01-02 10:00"                            # New York time ...
INSTANT = pd.Timestamp("2024-01-02 15:00", tz="UTC")  # ... is this instant: the 31st of the bars below
BEFORE = 30                                           # bars from 14:30 UTC (09:30 New York) before it


@pytest.fixture
def store(store_dir: Path):
    with DuckDBDataStorage(store_dir) as db:
        db.write(KEY, make_bars("2024-01-02 14:30", 100))
        yield db


def test_the_zone_is_lumibots_own() -> None:
    from lumibot.constants import LUMIBOT_DEFAULT_TIMEZONE

    assert default_timezone() == LUMIBOT_DEFAULT_TIMEZONE == "America/New_York"
    assert parse_time(NAIVE) == INSTANT
    assert parse_time(dt.date(2024, 7, 1)) == pd.Timestamp("2024-07-01 04:00", tz="UTC")  # a date: local midnight
    assert parse_time("2024-01-02 15:00+00:00") == parse_time("2024-01-02Z") + pd.Timedelta(hours=15) == INSTANT
    assert Interval(NAIVE, "2024-01-02 11:00") == Interval(INSTANT, INSTANT + pd.Timedelta(hours=1))


def test_the_store_api_reads_naive_bounds_in_new_york(store: DuckDBDataStorage) -> None:
    assert store.read(KEY, "2024-01-02", NAIVE).index[-1] == INSTANT - pd.Timedelta(minutes=1)
    assert len(store.get_historical_prices("AAA", "2024-01-02", NAIVE, "1m", "ingest")) == BEFORE
    assert store.missing_ranges(KEY, "2024-01-02 09:00", "2024-01-02 09:30") == [
        Interval("2024-01-02 14:00Z", "2024-01-02 14:30Z")]


def test_naive_bars_and_covered_ranges_are_new_york_time(store_dir: Path) -> None:
    bars = make_bars("2024-01-02 14:30", 10)
    bars.index = bars.index.tz_convert("America/New_York").tz_localize(None)  # 09:30 … naive
    with DuckDBDataStorage(store_dir) as db:
        db.store_ohlcv_data("NAIVE", bars, "test", "minute", covered=("2024-01-02 09:30", "2024-01-02 09:40"))
        key = db.find_series("NAIVE")
        assert db.read(key, "2024-01-02", "2024-01-03").index[0] == pd.Timestamp("2024-01-02 14:30", tz="UTC")
        assert db.coverage(key) == [Interval("2024-01-02 14:30Z", "2024-01-02 14:40Z")]


def test_export_prune_pandas_data_and_analytics_agree(store: DuckDBDataStorage, tmp_path: Path) -> None:
    result = export(store, KEY, tmp_path / "head.csv", end=NAIVE)
    assert result.rows == BEFORE
    frames = pandas_data(store, ["AAA"], timeframe="minute", end=NAIVE)
    assert len(frames[0].df) == BEFORE and str(frames[0].df.index.tz) == "America/New_York"
    assert analytics.sma(store, "AAA", 5, timeframe="minute", as_of=NAIVE).index[-1] == INSTANT
    assert analytics.sma(store, "AAA", 5, timeframe="minute", start=NAIVE).index[0] == INSTANT
    assert prune(store, before=NAIVE, symbol="AAA", dry_run=True).bars_removed == BEFORE


@pytest.mark.parametrize(("as_of", "last"), [
    (f"'{NAIVE}'", INSTANT),                                    # naive text: New York
    (f"TIMESTAMP '{NAIVE}'", INSTANT),                           # naive timestamp: New York
    ("TIMESTAMPTZ '2024-01-02 15:00:00+00'", INSTANT),           # an instant is an instant
    ("'2024-01-02 10:00-05:00'", INSTANT),
    ("'2024-01-02 09:59'", INSTANT - pd.Timedelta(minutes=1)),
])
def test_sql_macros_read_as_of_with_the_same_rule(store: DuckDBDataStorage, as_of: str, last: pd.Timestamp) -> None:
    rows = query(store, f"SELECT max(ts) AS t FROM sma('AAA', 5, tf := 'minute', as_of := {as_of})")
    assert pd.Timestamp(rows.table.to_pylist()[0]["t"]) == last


def test_ingest_reads_naive_times_in_new_york_crypto_included(tmp_path: Path, store_dir: Path) -> None:
    bars = make_bars("2024-01-02 14:30", 20)
    frame = pd.DataFrame({"time": bars.index.tz_convert("America/New_York").strftime("%Y-%m-%d %H:%M"),
                          **{c: bars[c].round(6) for c in ("open", "high", "low", "close", "volume")}})
    frame["high"], frame["low"] = frame[["open", "high", "close"]].max(axis=1), frame[["open", "low", "close"]].min(
        axis=1)
    path = tmp_path / "BTC_1m.csv"
    frame.to_csv(path, index=False)
    report = ingest(store_dir, path, asset_type="crypto", quote="USDT")
    assert any("naive timestamps read in America/New_York" in n and "timezone='UTC'" in n
               for n in report.files[0].notes)
    with DuckDBDataStorage(store_dir) as db:
        assert db.read(db.find_series("BTC"), "2024-01-02", "2024-01-03").index[0] == bars.index[0]


def test_tables_name_their_zone_and_show_daily_bars_as_dates(store: DuckDBDataStorage) -> None:
    day = SeriesKey("ingest", "DDD", "day", quote="USD")
    bars = make_bars("2019-01-02", 5, freq="1D")
    bars.index = pd.date_range("2019-01-02", periods=5, freq="1D", tz="America/New_York").tz_convert("UTC")
    store.write(day, bars)
    out = CliRunner().invoke(main, ["db-status", "--store", str(store.root)]).output
    assert "Times in America/New_York" in out and "covered until" in out and "up to, not including" in out
    row = next(line for line in out.splitlines() if "DDD" in line)
    assert "2019-01-02" in row and "2019-01-07" in row and "05:00" not in row
    minute = next(line for line in out.splitlines() if "AAA" in line)
    assert "2024-01-02 09:30" in minute and "2024-01-02 11:10" in minute  # New York, not 14:30 UTC
    out = CliRunner().invoke(main, ["db-query", "SELECT ts, close FROM market_data WHERE symbol = 'DDD'",
                                    "--store", str(store.root)]).output
    assert "Times in America/New_York" in out and "│ 2019-01-02 │" in out and "05:00" not in out
    out = CliRunner().invoke(main, ["db-query", "SELECT ts FROM market_data WHERE symbol = 'AAA' LIMIT 1",
                                    "--store", str(store.root)]).output
    assert "2024-01-02 09:30" in out
    csv = CliRunner().invoke(main, ["db-query", "SELECT ts FROM market_data WHERE symbol = 'DDD' LIMIT 1",
                                    "--format", "csv", "--store", str(store.root)]).output
    assert "2019-01-02 05:00:00+00:00" in csv  # machine formats keep UTC, with its offset


def test_forget_empty_reads_its_bounds_with_the_same_rule(store_dir: Path) -> None:
    """An empty answer stored for 10:00-11:00 New York is forgotten by --start/--end written naive in New York."""
    from lumibot_duckdb.store.maintenance import forget_empty

    hour = Interval(INSTANT, INSTANT + pd.Timedelta(hours=1))
    with DuckDBDataStorage(store_dir) as db:
        db.write(KEY, make_bars(INSTANT, 0), covered=(hour.start, hour.end))
        report = forget_empty(db, symbol="AAA", start=NAIVE, end="2024-01-02 11:00", dry_run=True)
        assert report.files_removed == 1 and len(report.ranges) == 1, report
        later = forget_empty(db, symbol="AAA", start="2024-01-02 15:00", end="2024-01-02 16:00", dry_run=True)
        assert later.files_removed == 0, later  # (those are UTC's numbers: 3 p.m. New York is after the hour)
