"""Per-call cost of ``get_historical_prices`` and ``get_last_price``: Lumibot's legacy path beside the DuckDB path.

One data source per variant, built directly (no strategy, no broker), on the same emulated provider data
(the first pass fills the caches and is not timed). The clock then steps one trading day at a time through
2023 at 10:00 New York (CCXT: 00:00 UTC, every day), and each call is timed on its own; the DuckDB path
pays its window rolls inside these calls and in the clock step (``_update_datetime``, timed as its own row).
Reported: median and mean µs per call, and the slowest call.

Reproduce::

    python3 dev.py bench benchmarks/per_call.py --repeat 3   # about 5 minutes a repetition on 2 cores

Results go to ``benchmarks/results/per_call.md``.
"""

from __future__ import annotations

import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CALLS = {
    "polygon": [("get_historical_prices(20, 'day')", "bars", 20, "day"),
                ("get_historical_prices(390, 'minute')", "bars", 390, "minute"),
                ("get_last_price", "price", None, None)],
    "ccxt": [("get_historical_prices(1440, 'minute')", "bars", 1440, "minute"),
             ("get_last_price", "price", None, None)],
}
STEP = "clock step (_update_datetime)"


def measure(source_name: str, variant: str, workdir: Path, symbols: int = 5) -> list[str]:
    import pandas as pd
    from lumibot.entities import Asset

    from lumibot_duckdb.ab.harness import Scenario
    from lumibot_duckdb.testing.kits import kit
    from lumibot_duckdb.testing.market import SyntheticMarket
    from lumibot_duckdb.testing.offline import offline

    source = kit(source_name)
    crypto = source_name == "ccxt"
    scenario = Scenario("per call", "momentum", {}, "2023-01-03", "2024-01-01", source=source_name)
    options = dict(source.backtest_kwargs(variant, scenario))
    cls = source.legacy_class if variant == "legacy" else source.duckdb_class
    if variant == "duckdb":
        options.update(use_duckdb=True, cache_dir=str(workdir / "duckdb"))
    quote = Asset("USDT", "crypto") if crypto else None
    assets = [Asset(f"U{i:03d}", "crypto" if crypto else "stock") for i in range(symbols)]
    start, end = dt.datetime(2023, 1, 3), dt.datetime(2024, 1, 1)
    if crypto:
        clocks = pd.date_range("2023-01-04", "2023-12-30", freq="D", tz="America/New_York")
    else:
        import pandas_market_calendars as mcal

        days = mcal.get_calendar("NYSE").valid_days("2023-01-04", "2023-12-29")
        clocks = [pd.Timestamp(d.date()).tz_localize("America/New_York") + pd.Timedelta(hours=10) for d in days]
    lines = []
    with source.legacy_cache_folder(workdir / "lumibot-cache"), offline(), \
            source.serve(SyntheticMarket(1), fast=True):
        for timed in (False, True):
            data_source = cls(datetime_start=start, datetime_end=end, **options)
            costs: dict[str, list[float]] = {label: [] for label, *_ in CALLS[source_name]}
            costs[STEP] = []
            for clock in clocks:
                began = time.perf_counter()
                data_source._update_datetime(clock.to_pydatetime())  # as the backtest loop does
                costs[STEP].append(time.perf_counter() - began)
                for asset in assets:
                    for label, kind, length, timestep in CALLS[source_name]:
                        extra = {"quote": quote} if quote is not None else {}
                        began = time.perf_counter()
                        if kind == "bars":
                            data_source.get_historical_prices(asset, length, timestep, **extra)
                        else:
                            data_source.get_last_price(asset, **extra)
                        costs[label].append(time.perf_counter() - began)
            if timed:
                for label, values in costs.items():
                    micro = [v * 1e6 for v in values]
                    lines.append(f"| {source_name} | {label} | {variant} | {len(micro)} | "
                                 f"{statistics.median(micro):,.0f} | {statistics.fmean(micro):,.0f} | "
                                 f"{max(micro) / 1000:,.1f} |")
    return lines


def spread(values: list[float]) -> str:
    """``median [min–max]`` (just the median for one value)."""
    middle = statistics.median(values)
    return f"{middle:,.0f}" if len(values) == 1 else f"{middle:,.0f} [{min(values):,.0f}–{max(values):,.0f}]"


def report(runs: dict[tuple[str, str, str], list[tuple[float, float, float, int]]], repeat: int) -> str:
    """Per call and variant: the median of the runs' medians [min–max], of their means, the slowest call;
    and DuckDB / legacy as the median of per-run ratios of medians [min–max]."""
    lines = [f"Per-call cost, µs (5 symbols, one call per symbol per trading day of 2023; the DuckDB path's "
             f"window rolls are inside its calls and clock steps). {repeat} run(s) per variant, legacy and DuckDB "
             f"alternating; median of the runs' medians [min–max].", "",
             "| source | call | calls | legacy median µs | DuckDB median µs | ratio (median of runs) | "
             "legacy mean µs | DuckDB mean µs | slowest ms legacy / DuckDB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (source_name, label, variant), legacy in runs.items():
        if variant != "legacy" or (source_name, label, "duckdb") not in runs:
            continue
        ours = runs[(source_name, label, "duckdb")]
        ratios = [b[0] / a[0] for a, b in zip(legacy, ours)]
        lines.append(f"| {source_name} | {label} | {legacy[0][3]} | {spread([r[0] for r in legacy])} | "
                     f"{spread([r[0] for r in ours])} | {statistics.median(ratios):.2f}x "
                     f"[{min(ratios):.2f}–{max(ratios):.2f}] | {statistics.median([r[1] for r in legacy]):,.0f} | "
                     f"{statistics.median([r[1] for r in ours]):,.0f} | {max(r[2] for r in legacy):,.1f} / "
                     f"{max(r[2] for r in ours):,.1f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if os.environ.get("LUMIBOT_DUCKDB_PER_CALL_CHILD") != "1":
        import argparse

        from lumibot_duckdb.ab.harness import child_environment

        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--repeat", type=int, default=1, help="runs per variant (legacy and DuckDB alternate)")
        args = parser.parse_args()
        workdir = Path(tempfile.mkdtemp(prefix="per-call-"))
        runs: dict[tuple[str, str, str], list[tuple[float, float, float, int]]] = {}
        for _ in range(args.repeat):
            for source_name in CALLS:
                for variant in ("legacy", "duckdb"):
                    env = {**child_environment(workdir / variant), "LUMIBOT_DUCKDB_PER_CALL_CHILD": "1"}
                    done = subprocess.run([sys.executable, __file__, source_name, variant, str(workdir / variant)],
                                          env=env, capture_output=True, text=True, cwd=workdir, check=False)
                    if done.returncode:
                        print(done.stderr[-3000:])
                        return done.returncode
                    for line in done.stdout.splitlines():
                        if line.startswith("|"):
                            cells = [c.strip().replace(",", "") for c in line.strip("|").split("|")]
                            runs.setdefault((cells[0], cells[1], cells[2]), []).append(
                                (float(cells[4]), float(cells[5]), float(cells[6]), int(cells[3])))
                            print(line, flush=True)
        text = report(runs, args.repeat)
        out = Path(__file__).parent / "results" / "per_call.md"
        out.write_text(text)
        print(text)
        return 0
    source_name, variant, workdir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    print("\n" + "\n".join(measure(source_name, variant, workdir)))  # (Lumibot's banner may end without one)
    return 0


if __name__ == "__main__":
    sys.exit(main())
