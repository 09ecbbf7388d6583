"""Two backtests in two processes on one store folder at the same time."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from lumibot_duckdb.ab.harness import Scenario, finish, run_subprocess, spawn

pytestmark = pytest.mark.backtest


def test_two_processes_backtest_on_one_store(tmp_path: Path) -> None:
    scenario = Scenario.momentum(symbols=("AAA", "BBB", "CCC"), start="2024-01-02", end="2024-02-15")
    alone = run_subprocess(scenario, "duckdb", "cold", tmp_path / "alone")

    shared = tmp_path / "shared"
    first, second = (spawn(scenario, "duckdb", "cold", shared) for _ in range(2))
    a, b = finish(first, timeout=600), finish(second, timeout=600)

    assert a.fills == b.fills == alone.fills and a.final_value == b.final_value == alone.final_value
    # The series lock made the second process wait and find the gaps filled: nothing fetched twice.
    assert a.requests["aggs"] + b.requests["aggs"] == alone.requests["aggs"]
    files = [str(p) for p in (shared / "duckdb" / "bars").rglob("*.parquet")]
    rows, distinct = duckdb.connect().execute(
        "SELECT count(*), count(DISTINCT (symbol, timeframe, ts)) FROM read_parquet(?)", [files]).fetchone()
    assert rows == distinct > 0, "no bar is stored twice"
