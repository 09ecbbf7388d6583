"""Benchmarks run apart from the tests (``python3 dev.py bench benchmarks/...``), offline, caches in a temp folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

_SCRATCH = Path(tempfile.mkdtemp(prefix="lumibot-duckdb-bench-"))
atexit.register(shutil.rmtree, _SCRATCH, ignore_errors=True)  # (each run left its folder behind)
os.environ.update(
    LUMIBOT_CACHE_FOLDER=str(_SCRATCH / "lumibot-cache"),
    LUMIBOT_TRADING_DAYS_CACHE_DIR=str(_SCRATCH / "trading-days"),
    LUMIBOT_DISABLE_DOTENV="true",
    LUMIBOT_LOG_LEVEL="ERROR",
    HOME=str(_SCRATCH / "home"),
)


def pytest_configure(config) -> None:
    # Medians over enough rounds even for the slow variant (pytest-benchmark picks few rounds otherwise).
    if getattr(config.option, "benchmark_min_rounds", None) is not None and config.option.benchmark_min_rounds < 25:
        config.option.benchmark_min_rounds = 25


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """Ratios of each group's baseline (the ``legacy`` variant) to the others, from the medians."""
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, dict[str, float]] = {}
    for bench in session.benchmarks:
        variant = bench["params"].get("method", bench["name"]) if bench.get("params") else bench["name"]
        groups.setdefault(bench["group"] or "", {})[variant] = bench.stats.median
    terminalreporter.section("ratios: legacy median / variant median (higher = variant faster)")
    for group, medians in sorted(groups.items()):
        base = medians.get("legacy")
        if not base:
            continue
        cells = [f"{v} {base / m:.1f}x ({m * 1e3:.2f} ms)" for v, m in sorted(medians.items()) if v != "legacy"]
        terminalreporter.write_line(f"{group}: legacy {base * 1e3:.2f} ms; " + "; ".join(cells))
