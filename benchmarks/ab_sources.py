"""A/B benchmark over every source: Lumibot's legacy class beside lumibot-duckdb's, same strategy, same data.

For each source (Polygon, Yahoo, Alpaca, CCXT) and each strategy it supports — daily buy-and-hold,
daily momentum over 5 symbols, a minute SMA, and crypto where the source trades it — the runs go
cold → warm → shifted by a month, each in a fresh Python process, offline (every provider is
emulated at its network seam by ``lumibot_duckdb.testing``). Legacy runs keep Lumibot's own provider
sleeps (Yahoo's 2–5 s before each download, CCXT's 1 s every 10 pages): that is what users wait for.

Reported per (source, scenario, phase, variant): wall time, data-layer time, provider requests,
days asked for, bytes on disk and bytes per bar, peak RSS; then parity of every fill and the final
value. Differences are either identical, declared (DuckDB equals legacy with the kit's declared
legacy defects fixed) or a failure (exit status 1).

Reproduce (about 40 minutes on 2 cores at n=1)::

    python3 dev.py bench benchmarks/ab_sources.py --repeat 1
    python3 dev.py bench benchmarks/ab_sources.py --source alpaca --repeat 3

Results go to ``benchmarks/results/ab_sources.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ab_polygon import machine, publish

from lumibot_duckdb.ab.harness import RunResult, Scenario, run_session
from lumibot_duckdb.registry import SOURCES
from lumibot_duckdb.testing.kits import kit

MINUTE_SOURCES = ("polygon", "alpaca", "ccxt")  # Yahoo keeps 7 wall-clock days of minute bars only


def scenarios(source: str) -> list[Scenario]:
    """The strategies ``source`` supports, each over the same window on every source."""
    k = kit(source)
    crypto_only = "stock" not in k.asset_types
    names = ["BTC", "ETH", "SOL", "ADA", "XRP"] if crypto_only else ["AAA", "BBB", "CCC", "DDD", "EEE"]
    extra = {"asset_type": "crypto", "quote": k.default_quote or "USD"} if crypto_only else {}
    tag = f"{source}: "
    found = [
        Scenario(tag + "buy-and-hold daily", "buy_and_hold", {"symbol": names[0], **extra},
                 "2024-01-02", "2024-04-01", source=source, shift_days=30),
        Scenario(tag + "momentum daily x5", "momentum",
                 {"symbols": names, "lookback": 10, "top": 2, "period": 5, **extra},
                 "2024-01-02", "2024-04-01", source=source, shift_days=30),
    ]
    if source in MINUTE_SOURCES:
        found.append(Scenario(tag + "minute SMA, 1 week", "minute_sma",
                              {"symbol": names[0], "fast": 10, "slow": 30, "quantity": 1, **extra},
                              "2024-01-08", "2024-01-13", source=source, shift_days=30, timestep="minute"))
    if "crypto" in k.asset_types and not crypto_only:
        found.append(Scenario(tag + "crypto buy-and-hold daily", "buy_and_hold",
                              {"symbol": "BTC", "asset_type": "crypto", "quote": "USD"},
                              "2024-01-02", "2024-04-01", source=source, shift_days=30))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=[*SOURCES, "all"], default="all")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ab_sources")
    args = parser.parse_args()
    sources = list(SOURCES) if args.source == "all" else [args.source]
    sessions: list[list[RunResult]] = []
    for rep in range(args.repeat):
        for source in sources:
            for scenario in scenarios(source):
                with tempfile.TemporaryDirectory(prefix=f"ab-{source}-") as folder:
                    runs = run_session(scenario, Path(folder))
                sessions.append(runs)
                print(f"rep {rep + 1}/{args.repeat} {scenario.name}: " + ", ".join(
                    f"{r.variant}/{r.phase} {r.wall_seconds:.1f}s {r.provider_requests}req" for r in runs),
                    file=sys.stderr, flush=True)
    return publish(sessions, args.out,
                   machine().replace("Polygon emulated at its HTTP seam", "every provider emulated at its seam"))

if __name__ == "__main__":
    raise SystemExit(main())
