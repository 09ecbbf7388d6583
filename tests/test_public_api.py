"""The public surface stays small and importable; importing the package does not import Lumibot."""

from __future__ import annotations

import subprocess
import sys

import pytest

import lumibot_duckdb
from lumibot_duckdb.registry import SOURCES


def test_all_is_small_sorted_and_resolvable() -> None:
    assert lumibot_duckdb.__all__ == sorted(lumibot_duckdb.__all__)
    assert len(lumibot_duckdb.__all__) <= 24
    for name in lumibot_duckdb.__all__:
        assert getattr(lumibot_duckdb, name) is not None


def test_every_registered_source_is_exported() -> None:
    assert {spec.class_name for spec in SOURCES.values()} <= set(lumibot_duckdb.__all__)


@pytest.mark.parametrize(("old", "new"), [("lumibot_duckdb.query", "lumibot_duckdb.sql.query"),
                                          ("lumibot_duckdb.analytics", "lumibot_duckdb.sql.analytics"),
                                          ("lumibot_duckdb.offline_data", "lumibot_duckdb.sources.pandas_data"),
                                          ("lumibot_duckdb.maintenance", "lumibot_duckdb.store.maintenance"),
                                          ("lumibot_duckdb.sample.kits", "lumibot_duckdb.testing.kits")])
def test_moved_modules_still_import_from_their_old_path_with_a_deprecation_warning(old: str, new: str) -> None:
    code = (f"import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            f"try:\n    import {old}\nexcept DeprecationWarning as w:\n    print('warned', w)\n"
            f"warnings.simplefilter('ignore')\nimport importlib, sys\nm = importlib.import_module('{old}')\n"
            f"print(m is importlib.import_module('{new}'), m.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    parent, new_parent = old.rpartition(".")[0], new.rpartition(".")[0]  # a moved package warns first
    assert f"warned {old} moved to {new}" in out or f"warned {parent} moved to {new_parent}" in out
    assert f"True {new}" in out


def test_ingest_keeps_its_import_path_without_a_warning() -> None:
    code = ("import warnings; warnings.simplefilter('error')\n"
            "from lumibot_duckdb.ingest import ingest; print(ingest.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "lumibot_duckdb.ingest.load"


def test_errors_share_one_root_and_the_builtins_callers_expect() -> None:
    root = lumibot_duckdb.LumibotDuckDBError
    for name in ("ConfigError", "StoreError", "CorruptFileError", "StoreLockTimeout", "BarsValidationError",
                 "ProviderDataError", "ProviderRequestError"):
        assert issubclass(getattr(lumibot_duckdb, name), root)
    assert issubclass(lumibot_duckdb.ConfigError, ValueError)
    assert issubclass(lumibot_duckdb.StoreLockTimeout, TimeoutError)


def test_import_is_light() -> None:
    code = "import sys, lumibot_duckdb; print('lumibot' in sys.modules, 'duckdb' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False", "importing lumibot_duckdb must not import Lumibot"


@pytest.mark.parametrize("source", list(SOURCES))
def test_data_source_class_keeps_lumibots_name_and_source(source: str) -> None:
    import lumibot.backtesting

    spec = SOURCES[source]
    legacy = getattr(lumibot.backtesting, spec.class_name)
    ours = getattr(lumibot_duckdb, spec.class_name)
    assert legacy is spec.load_legacy() and ours is spec.load()
    assert ours.__name__ == legacy.__name__ and ours.SOURCE == legacy.SOURCE and issubclass(ours, legacy)
    assert issubclass(ours, lumibot_duckdb.EnhancedDataSourceBacktesting)
