"""A/B benchmark on Lumibot's own example strategies, unchanged: legacy beside DuckDB, same emulated provider.

* ``simple-start``: ``lumibot/example_strategies/simple_start_single_file.py`` (a market order for SPY every
  180 minutes) on Polygon over February–March 2019, where the provider has SPY's daily bars but answers no
  minute bars (``lumibot_duckdb.testing.market:daily_bars_only``). Every quote the broker asks for a fill
  is a lookup of a series without bars: the DuckDB path once read the store again for each one.

Each run is a fresh process, offline; legacy and DuckDB alternate (cold, then warm on the same caches).
Reported: wall time of the backtest, data-layer time (Lumibot's seam on both paths, plus the DuckDB
path's work outside it), store reads, peak RSS; parity of every fill and the final value.

Reproduce (about 3 minutes at n=3)::

    python3 dev.py bench benchmarks/ab_examples.py --repeat 3

Results go to ``benchmarks/results/ab_examples.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ab_polygon import FIGURES, machine, publish

from lumibot_duckdb.ab.harness import RunResult, Scenario, run_session

SCENARIOS = {
    "simple-start": Scenario("simple_start_single_file, SPY daily bars only", "simple_start", {"symbol": "SPY"},
                             "2019-02-01", "2019-04-01", market="lumibot_duckdb.testing.market:daily_bars_only"),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ab_examples")
    args = parser.parse_args()
    FIGURES["store_reads"] = ("store reads", "{:.0f}")
    chosen = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    sessions: list[list[RunResult]] = []
    for rep in range(args.repeat):
        for name in chosen:
            with tempfile.TemporaryDirectory(prefix=f"ab-{name}-") as folder:
                runs = run_session(SCENARIOS[name], Path(folder), phases=("cold", "warm"))
            sessions.append(runs)
            print(f"rep {rep + 1}/{args.repeat} {name}: " + ", ".join(
                f"{r.variant}/{r.phase} {r.wall_seconds:.1f}s {r.store_reads} reads" for r in runs),
                file=sys.stderr, flush=True)
    return publish(sessions, args.out, machine())


if __name__ == "__main__":
    raise SystemExit(main())
