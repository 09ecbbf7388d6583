"""The public surface stays small and importable; importing the package does not import Lumibot."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lumibot_duckdb


def test_all_is_small_sorted_and_resolvable() -> None:
    assert lumibot_duckdb.__all__ == sorted(lumibot_duckdb.__all__)
    assert len(lumibot_duckdb.__all__) <= 20
    for name in lumibot_duckdb.__all__:
        assert getattr(lumibot_duckdb, name) is not None


def test_errors_share_one_root_and_the_builtins_callers_expect() -> None:
    root = lumibot_duckdb.LumibotDuckDBError
    for name in ("ConfigError", "StoreError", "CorruptFileError", "StoreLockTimeout", "BarsValidationError",
                 "ProviderDataError"):
        assert issubclass(getattr(lumibot_duckdb, name), root)
    assert issubclass(lumibot_duckdb.ConfigError, ValueError)
    assert issubclass(lumibot_duckdb.StoreLockTimeout, TimeoutError)


def test_import_is_light() -> None:
    code = "import sys, lumibot_duckdb; print('lumibot' in sys.modules, 'duckdb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False", "importing lumibot_duckdb must not import Lumibot"


@pytest.mark.parametrize("name", ["PolygonDataBacktesting", "YahooDataBacktesting", "AlpacaBacktesting",
                                  "CcxtBacktesting"])
def test_data_source_class_keeps_lumibots_name_and_source(name: str) -> None:
    import lumibot.backtesting

    legacy = getattr(lumibot.backtesting, name)
    ours = getattr(lumibot_duckdb, name)
    assert ours.__name__ == legacy.__name__ and ours.SOURCE == legacy.SOURCE and issubclass(ours, legacy)
    assert issubclass(ours, lumibot_duckdb.EnhancedDataSourceBacktesting)
