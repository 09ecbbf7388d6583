"""Naming a series: one resolver behind the Python API, the SQL macros and the command line.

Invariant: a read of a series the store does not hold is an error naming what it does hold for that symbol
(never an empty answer); a held series over a range without bars is an empty answer, and the CLI says so.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from factories import make_bars

from lumibot_duckdb.cli import main
from lumibot_duckdb.errors import ConfigError, SeriesNotFoundError, surface
from lumibot_duckdb.sql import analytics
from lumibot_duckdb.sql.export import export
from lumibot_duckdb.sql.query import query
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey
from lumibot_duckdb.store.naming import SeriesName, resolve

SPY = SeriesKey("ingest", "SPY", "day", quote="USD")          # what `lumibot-duckdb ingest SPY_1d.csv` stores
SPY_YAHOO = SeriesKey("yahoo", "SPY", "day")                  # what the Yahoo source stores (no quote)
SPY_MINUTE = SeriesKey("polygon", "SPY", "minute", quote="USD", adjustment="split")
BTC = SeriesKey("ccxt", "BTC", "minute", asset_type="crypto", quote="USDT", exchange="binance")


def daily(start: str = "2019-01-02", periods: int = 40) -> pd.DataFrame:
    """Daily bars at New York midnight (the store's convention for daily series)."""
    bars = make_bars(start, periods, freq="1D")
    bars.index = pd.date_range(start, periods=periods, freq="1D", tz="America/New_York").tz_convert("UTC")
    bars.index.name = "ts"
    return bars


@pytest.fixture
def store(store_dir: Path):
    with DuckDBDataStorage(store_dir) as db:
        db.write(SPY, daily())
        yield db


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


# -- the resolver ------------------------------------------------------------------------------------------
HELD = [SPY, SPY_YAHOO, SPY_MINUTE, BTC, SeriesKey("ingest", "TLT", "day", quote="USD")]


@pytest.mark.parametrize("timeframe", ["1d", "1D", "day", "daily", "Day", "1 day", "D"])
def test_timeframe_aliases_name_the_daily_series(timeframe: str) -> None:
    assert resolve(SeriesName("SPY", source="ingest", timeframe=timeframe), HELD) == SPY


@pytest.mark.parametrize(("timeframe", "expected"), [("1m", SPY_MINUTE), ("minute", SPY_MINUTE),
                                                     ("1Min", SPY_MINUTE)])
def test_minute_aliases_and_fields_left_out_match_what_is_held(timeframe: str, expected: SeriesKey) -> None:
    assert resolve(SeriesName("SPY", timeframe=timeframe), HELD) == expected  # quote, adjustment: whatever is held


def test_a_pair_is_named_either_way() -> None:
    assert resolve(SeriesName("BTC/USDT"), HELD) == BTC
    assert resolve(SeriesName("BTC", quote="usdt", exchange="Binance"), HELD) == BTC


@pytest.mark.parametrize(("name", "says"), [
    (SeriesName("SPYX", timeframe="day"), ["holds no series SPYX", "Did you mean SPY?"]),
    (SeriesName("spy", source="ingest", timeframe="day"), ["case-sensitive", "it holds SPY", "Write 'SPY'"]),
    (SeriesName("SPY", source="ingest", timeframe="minute"), ["For SPY it holds", str(SPY), "timeframe='day'"]),
    (SeriesName("SPY", source="ingest", timeframe="day", quote="EUR"), ["quote='USD'"]),
    (SeriesName("SPY", source="polygon", timeframe="minute", adjustment="raw"), ["adjustment='split'"]),
    (SeriesName("SPY", source="alpaca", timeframe="day"), ["source='ingest'"]),
])
def test_a_name_the_store_does_not_hold_says_what_it_holds_and_what_to_pass(name: SeriesName,
                                                                            says: list[str]) -> None:
    with pytest.raises(SeriesNotFoundError) as caught:
        resolve(name, HELD)
    for part in says:
        assert part in str(caught.value), (part, str(caught.value))
    assert isinstance(caught.value, LookupError) and isinstance(caught.value, ConfigError)


def test_hints_are_spelled_for_the_caller() -> None:
    name = SeriesName("SPY", source="ingest", timeframe="minute")
    for on, spelled in (("python", "timeframe='day'"), ("cli", "--timeframe day"), ("sql", "tf := 'day'")):
        with pytest.raises(SeriesNotFoundError, match=spelled):
            resolve(name, HELD, on=on)
    with surface("cli"), pytest.raises(SeriesNotFoundError, match="--timeframe day"):
        resolve(name, HELD)


def test_a_name_that_means_several_series_names_the_option_that_tells_them_apart() -> None:
    with pytest.raises(ConfigError, match=r"names 2 series.*source='ingest' or source='yahoo'"):
        resolve(SeriesName("SPY", timeframe="day"), HELD)


def test_an_empty_store_says_how_to_fill_it() -> None:
    with pytest.raises(SeriesNotFoundError, match=r"holds no series at all.*ingest"):
        resolve(SeriesName("SPY"), [])


# -- the Python API ----------------------------------------------------------------------------------------
def test_get_historical_prices_finds_an_ingested_series_with_any_timeframe_alias(store: DuckDBDataStorage) -> None:
    """Issue 15: quote='' by default and '1D'/'daily' gave empty frames on a store holding SPY."""
    for timeframe in ("day", "1D", "daily", "1d"):
        bars = store.get_historical_prices("SPY", "2019-01-01", "2019-02-01", timeframe, "ingest")
        assert len(bars) == 30, timeframe
    assert len(store.get_historical_prices("SPY", "2019-01-01", "2019-02-01", "day", "ingest", quote="USD")) == 30


def test_get_historical_prices_of_a_series_not_held_is_an_error(store: DuckDBDataStorage) -> None:
    with pytest.raises(SeriesNotFoundError, match=r"holds no series SPY \(source ingest, timeframe minute\)"):
        store.get_historical_prices("SPY", "2019-01-01", "2019-02-01", "minute", "ingest")
    with pytest.raises(SeriesNotFoundError, match="Write 'SPY'"):
        store.get_historical_prices("spy", "2019-01-01", "2019-02-01", "day", "ingest")
    with pytest.raises(SeriesNotFoundError, match="quote='USD'"):
        store.get_historical_prices("SPY", "2019-01-01", "2019-02-01", "day", "ingest", quote="EUR")


def test_a_held_series_over_a_range_without_bars_is_an_empty_frame(store: DuckDBDataStorage) -> None:
    assert store.get_historical_prices("SPY", "2030-01-01", "2030-02-01", "day", "ingest").empty


def test_lumibot_assets_are_named_by_symbol_and_type(store: DuckDBDataStorage) -> None:
    from lumibot.entities import Asset

    assert store.find_series(Asset("SPY")) == SPY
    with pytest.raises(SeriesNotFoundError, match="asset type crypto"):
        store.find_series(Asset("SPY", Asset.AssetType.CRYPTO))


def test_a_series_folder_without_files_is_not_held(store: DuckDBDataStorage) -> None:
    other = SeriesKey("ingest", "QQQ", "day", quote="USD")
    store.write(other, daily())
    store.remove(store.files(other))  # what a prune of every bar leaves: the folder, no coverage
    with pytest.raises(SeriesNotFoundError, match="holds no series QQQ"):
        store.find_series("QQQ")


def test_analytics_functions_refuse_unknown_series_with_python_options(store: DuckDBDataStorage) -> None:
    with pytest.raises(SeriesNotFoundError, match="timeframe='day'"):
        analytics.sma(store, "SPY", 5, timeframe="minute")
    with pytest.raises(SeriesNotFoundError, match="Write 'SPY'"):
        analytics.rsi(store, "spy", 14)
    assert len(analytics.rsi(store, "SPY", 14, timeframe="1D")) == 40
    assert analytics.sma(store, "SPY", 5, start="2030-01-01").empty  # held series, no bar in range


# -- SQL ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("sql", "says"), [
    ("SELECT * FROM sma('SPYX', 20)", "holds no series SPYX"),
    ("SELECT * FROM sma('spy', 20)", "Write 'SPY'"),
    ("SELECT * FROM rsi('SPY', 14, tf := 'minute')", "tf := 'day'"),
    ("SELECT * FROM ema('SPY', 5, src := 'polygon')", "src := 'ingest'"),
    ("SELECT * FROM rolling_corr('SPY', 'TLT', 5)", "holds no series TLT"),
    ("SELECT * FROM asof_align(['SPY', 'QQQ'])", "holds no series QQQ"),
    ("SELECT * FROM vwap(NULL, tf := 'minute')", "Timeframes held: day"),
    ("SELECT * FROM sma('SPY', 5, tf := 'weekly')", "Weekly bars are not stored"),
])
def test_sql_macros_raise_instead_of_returning_nothing(store: DuckDBDataStorage, sql: str, says: str) -> None:
    """Issue 15: sma('SPYX', 20), sma('spy', 20) and rsi('SPY', 14, tf := '1d') printed 0 rows."""
    with pytest.raises(ConfigError) as caught:
        query(store, sql)
    assert says in str(caught.value) and "Invalid Input Error" not in str(caught.value)


def test_sql_macros_take_the_timeframe_aliases_and_pairs(store: DuckDBDataStorage) -> None:
    for tf in ("1d", "1D", "daily", "day"):
        assert query(store, f"SELECT count(rsi) AS n FROM rsi('SPY', 14, tf := '{tf}')").table.to_pylist() == [
            {"n": 26}], tf
    store.write(BTC, make_bars(periods=30))
    with DuckDBDataStorage(store.root) as fresh:
        for sym in ("BTC", "BTC/USDT"):
            rows = query(fresh, f"SELECT count(*) AS n FROM sma('{sym}', 5, tf := '1m')").table.to_pylist()
            assert rows == [{"n": 30}], sym
        wide = query(fresh, "SELECT count(close) AS n FROM asof_align(['BTC/USDT'], tf := 'minute')")
        assert wide.table.to_pylist() == [{"n": 30}]


def test_sql_on_an_empty_store_still_raises(store_dir: Path) -> None:
    with DuckDBDataStorage(store_dir) as empty, pytest.raises(ConfigError, match="holds no series at all"):
        query(empty, "SELECT * FROM sma('SPY', 5)")


# -- command line ------------------------------------------------------------------------------------------
def test_db_query_of_an_unknown_series_fails_and_an_empty_range_says_so(store: DuckDBDataStorage) -> None:
    code, out = run("db-query", "SELECT * FROM sma('SPYX', 20)", "--store", store.root)
    assert code == 1 and "holds no series SPYX" in out and "Did you mean SPY?" in out
    code, out = run("db-query", "SELECT * FROM sma('SPY', 20, since := '2030-01-01')", "--store", store.root)
    assert code == 0 and "0 rows: nothing matched" in out


def test_export_names_a_series_like_everything_else(store: DuckDBDataStorage, tmp_path: Path) -> None:
    out = tmp_path / "spy.csv"
    code, text = run("export", out, "--symbol", "SPY", "--store", store.root)  # the one series of SPY
    assert code == 0 and "40 rows written" in text and str(SPY) in text
    code, text = run("export", out, "--symbol", "SPY", "--timeframe", "minute", "--store", store.root)
    assert code == 1 and "--timeframe day" in text and "timeframe=" not in text
    result = export(store, SeriesName("SPY", timeframe="1d"), tmp_path / "again.parquet")
    assert result.rows == 40 and result.series == str(SPY)
    with pytest.raises(SeriesNotFoundError, match="holds no series SPY"):
        export(store, SeriesKey("ingest", "SPY", "day"), tmp_path / "no-quote.csv")  # a key is exact


def test_export_of_a_held_series_over_an_empty_range_writes_the_header_and_says_why(store: DuckDBDataStorage,
                                                                                   tmp_path: Path) -> None:
    """Issue 15: it said "the series or query has no columns"."""
    out = tmp_path / "empty.csv"
    code, text = run("export", out, "--symbol", "SPY", "--start", "2030-01-01", "--end", "2030-02-01",
                     "--store", store.root)
    assert code == 0 and "0 rows written" in text and "has no bar from 2030-01-01 to 2030-02-01" in text
    assert "it covers 2019-01-02 to 2019-02-11 (exclusive)" in text
    assert out.read_text().splitlines() == ['"ts","open","high","low","close","volume"']
    result = export(store, "SELECT * FROM market_data WHERE false", tmp_path / "none.parquet")
    assert result.rows == 0 and "close" in __import__("pyarrow.parquet").parquet.read_schema(result.path).names


def test_db_status_filters_that_match_nothing_say_what_is_held(store: DuckDBDataStorage) -> None:
    code, out = run("db-status", "--symbol", "QQQ", "--store", store.root)
    assert code == 1 and "No series" in out and "--symbol QQQ" in out and "SPY" in out
    code, out = run("db-status", "--symbol", "spy", "--store", store.root)  # symbols match exactly
    assert code == 1 and "--symbol spy" in out and "SPY" in out
