"""How far ahead of the clock a window of minute bars is read: wall time and memory of the choices.

A window holds the strategy's longest lookback behind the clock and a chunk ahead; a roll reads the
window again from the store when the clock nears its end. A short chunk holds less but rolls (and
rebuilds Lumibot's ``Data``) more often; a long one does the opposite. This runs the universe
benchmark's Polygon minute scan (daily cadence, the last 390 minute bars of each symbol each day, 2023)
over ``--symbols`` symbols on the DuckDB path, warm, once per chunk length, interleaved ``--repeat``
times, each in a fresh process with ``lumibot_duckdb.sources.window.AHEAD["minute"]`` set before the
backtest. Fills must be the same for every chunk length (the run fails otherwise). A chunk is never
shorter than twice the roll guard (12 days), so shorter settings are the same as 12.

Reproduce (uses and fills the universe benchmark's DuckDB cache folder)::

    python3 dev.py bench benchmarks/window_policy.py --symbols 10 --ahead 21 40 60 --repeat 1

Results go to ``benchmarks/results/window_policy.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import universe

from lumibot_duckdb.ab.harness import RunResult, child_environment, finish

CHILD = """
import sys
import pandas as pd
from lumibot_duckdb.sources import window
window.AHEAD["minute"] = pd.Timedelta(days=float(sys.argv[1]))
from lumibot_duckdb.ab.harness import main
sys.exit(main([sys.argv[2]]))
"""


def run(scenario: universe.Scenario, folder: Path, ahead: float) -> RunResult:
    spec = json.dumps({"scenario": dataclasses.asdict(scenario), "variant": "duckdb", "phase": "warm",
                       "workdir": str(folder), "fast": False})
    process = subprocess.Popen([sys.executable, "-c", CHILD, str(ahead), spec], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=child_environment(folder), cwd=folder)
    return finish(process, timeout=4 * 3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--ahead", type=float, nargs="+", default=[21, 40, 60], help="days")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lumibot-duckdb-universe")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "window_policy.md")
    args = parser.parse_args(argv)
    scenario = universe._scan("polygon", args.symbols, 390)
    for filler in universe.POLYGON_FILLERS:
        universe.ensure_filled(args.workdir, universe.SCENARIOS[filler], "duckdb")
    folder = universe.cache_folder(args.workdir, scenario, "duckdb")
    results: dict[float, list[RunResult]] = {ahead: [] for ahead in args.ahead}
    for _ in range(args.repeat):
        for ahead in args.ahead:
            result = run(scenario, folder, ahead)
            results[ahead].append(result)
            print(f"ahead {ahead:5.0f} d  wall {result.wall_seconds:7.1f} s  peak {result.peak_rss_mb:6.0f} MB  "
                  f"held {universe.held_mb(result):6.0f} MB  fills {len(result.fills)}", flush=True)
    first = next(iter(results.values()))[0]
    for runs in results.values():
        for r in runs:
            if (r.fills, r.final_value) != (first.fills, first.final_value):
                raise SystemExit(f"fills differ between chunk lengths: {r.final_value} != {first.final_value}")
    lines = [f"Measured {universe.machine()}; {scenario.name}, DuckDB path, warm store, n={args.repeat} per row "
             f"(median [min–max]); every run: {len(first.fills)} fills, final value {first.final_value:,.2f}.", "",
             "| minute chunk ahead, days | wall s | peak RSS MB | data-held MB |", "|---|---|---|---|"]
    for ahead, runs in results.items():
        cells = []
        for get in (lambda r: r.wall_seconds, lambda r: r.peak_rss_mb, universe.held_mb):
            values = [get(r) for r in runs]
            cells.append(f"{statistics.median(values):.1f} [{min(values):.1f}–{max(values):.1f}]")
        lines.append(f"| {ahead:g} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
