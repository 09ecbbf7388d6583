"""A backtest runs offline from ingested files only (no API key, no network), and the store round trip
changes nothing: the same strategy fed the same CSVs directly through Lumibot's PandasData trades identically."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from lumibot_duckdb.ab.harness import fills_of
from lumibot_duckdb.errors import ConfigError
from lumibot_duckdb.ingest.load import ingest
from lumibot_duckdb.sources.pandas_data import pandas_data

SYMBOLS = ["SPY", "TLT", "GLD"]
START, END = dt.datetime(2019, 2, 4), dt.datetime(2019, 12, 31)


def backtest(data: list) -> tuple[list[list], float]:
    """MomentumRebalance on ``data`` through PandasDataBacktesting, headless (as lumibot_duckdb.ab.harness runs it)."""
    from lumibot.backtesting import PandasDataBacktesting

    from lumibot_duckdb.testing.strategies import MomentumRebalance

    _, strategy = MomentumRebalance.run_backtest(
        PandasDataBacktesting, START, END, pandas_data=data, benchmark_asset=None, risk_free_rate=0.0,
        show_plot=False, show_tearsheet=False, save_tearsheet=False, show_indicators=False,
        show_progress_bar=False, quiet_logs=True, save_stats_file=False, analyze_backtest=False, budget=100_000.0,
        parameters={"symbols": SYMBOLS, "lookback": 20, "top": 1, "period": 5},
    )
    return fills_of(strategy), float(strategy.portfolio_value)


def csv_data(folder: Path) -> list:
    """The reference: each CSV read by pandas and handed to Lumibot as it is (naive dates = New York)."""
    from lumibot.entities import Asset, Data

    result = []
    for symbol in SYMBOLS:
        # round_trip: pandas' default float parser can be one ulp off the correctly rounded value
        frame = pd.read_csv(folder / f"{symbol}_1d_2019.csv", index_col="Date", parse_dates=True,
                            float_precision="round_trip")
        frame = frame.rename(columns=str.lower)[["open", "high", "low", "close", "volume"]]
        result.append(Data(Asset(symbol, "stock"), frame, timestep="day", quote=Asset("USD", "forex")))
    return result


def test_backtest_from_ingested_files_equals_the_backtest_on_the_csvs(shared_data, store_dir):
    files = [shared_data / f"{symbol}_1d_2019.csv" for symbol in SYMBOLS]
    assert ingest(store_dir, files).rows_added == 3 * 252
    ours = backtest(pandas_data(str(store_dir), SYMBOLS, timeframe="day"))
    reference = backtest(csv_data(shared_data))
    fills, value = ours
    assert len(fills) >= 10, "the strategy should rebalance between SPY, TLT and GLD"
    assert {fill[1] for fill in fills} >= {"SPY", "TLT"}
    assert value != 100_000.0
    assert ours == reference


def test_pandas_data_hands_lumibot_the_stored_bars_in_new_york_time(shared_data, store_dir):
    ingest(store_dir, shared_data / "SPY_1d_2019.csv")
    (data,) = pandas_data(store_dir, ["SPY"], start="2019-03-01", end="2019-04-01")
    assert str(data.df.index.tz) == "America/New_York"
    assert data.df.index[0] == pd.Timestamp("2019-03-01", tz="America/New_York")
    assert len(data.df) == 21 and data.timestep == "day"


def test_a_series_not_in_the_store_is_named_with_what_is_there(shared_data, store_dir):
    ingest(store_dir, shared_data / "SPY_1d_2019.csv")
    with pytest.raises(ConfigError, match=r"holds no series SPY \(timeframe minute\).*ingest:stock:SPY/USD:day"):
        pandas_data(store_dir, ["SPY"], timeframe="minute")
    with pytest.raises(ConfigError, match=r"holds no series QQQ.*It holds 1 symbol\(s\): SPY"):
        pandas_data(store_dir, ["QQQ"])
    with pytest.raises(ConfigError, match="day or minute"):
        pandas_data(store_dir, ["SPY"], timeframe="hour")
