"""``install()`` makes Lumibot build our class wherever it builds its own, and ``uninstall()`` undoes it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

import lumibot_duckdb
from lumibot_duckdb import ConfigError
from lumibot_duckdb.ab.harness import fills_of
from lumibot_duckdb.testing.market import SyntheticMarket
from lumibot_duckdb.testing.polygon import serve_polygon
from lumibot_duckdb.testing.strategies import BuyAndHold


@pytest.fixture
def installed():
    yield lumibot_duckdb.install()
    lumibot_duckdb.uninstall()


def test_install_points_lumibot_names_at_our_class(installed) -> None:
    import lumibot.backtesting
    import lumibot.strategies._strategy as strategy_module

    assert installed == ["PolygonDataBacktesting", "YahooDataBacktesting", "AlpacaBacktesting", "CcxtBacktesting"]
    for name in installed:
        assert getattr(lumibot.backtesting, name) is getattr(lumibot_duckdb, name)
        assert strategy_module._get_backtesting_class(name) is getattr(lumibot_duckdb, name)
    lumibot_duckdb.install()  # twice is harmless
    lumibot_duckdb.uninstall()
    for name in installed:
        assert getattr(lumibot.backtesting, name) is not getattr(lumibot_duckdb, name)
        assert strategy_module._get_backtesting_class(name).__module__.startswith("lumibot.backtesting.")


def test_install_one_source_leaves_the_others_alone() -> None:
    import lumibot.backtesting

    try:
        assert lumibot_duckdb.install("yahoo") == ["YahooDataBacktesting"]
        assert lumibot.backtesting.YahooDataBacktesting is lumibot_duckdb.YahooDataBacktesting
        assert lumibot.backtesting.PolygonDataBacktesting is not lumibot_duckdb.PolygonDataBacktesting
    finally:
        lumibot_duckdb.uninstall()


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ConfigError, match="polygon"):
        lumibot_duckdb.install("bloomberg")


@pytest.mark.backtest
def test_backtesting_data_source_env_builds_our_class(installed, tmp_path: Path, monkeypatch) -> None:
    """BACKTESTING_DATA_SOURCE=polygon wins over the class passed in code (Lumibot's rule) and now builds ours."""
    from lumibot.backtesting import YahooDataBacktesting

    monkeypatch.setenv("BACKTESTING_DATA_SOURCE", "polygon")
    monkeypatch.setenv("LUMIBOT_DUCKDB_CACHE_DIR", str(tmp_path / "store"))
    with serve_polygon(SyntheticMarket(3)) as polygon:
        _, strategy = BuyAndHold.run_backtest(
            YahooDataBacktesting, dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 20), benchmark_asset=None,
            risk_free_rate=0.0, show_plot=False, show_tearsheet=False, save_tearsheet=False, show_indicators=False,
            show_progress_bar=False, quiet_logs=True, save_stats_file=False, analyze_backtest=False, budget=10_000,
            polygon_api_key="k", parameters={"symbol": "AAA"})
    source = strategy.broker.data_source
    assert type(source) is lumibot_duckdb.PolygonDataBacktesting and source.use_duckdb
    assert polygon.count("aggs") > 0 and len(fills_of(strategy)) == 1
    assert (tmp_path / "store" / "bars").is_dir()
