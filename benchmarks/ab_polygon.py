"""A/B benchmark: Lumibot's Polygon path beside the DuckDB path, same strategy, same provider data.

Each run is a fresh Python process, offline (Polygon is emulated at its HTTP seam by
``lumibot_duckdb.testing``). For every repetition a new pair of empty cache folders is used and the
runs go cold → warm → shifted (window moved later) on each variant; fills and final portfolio
value are compared for every phase. Reported per (scenario, phase, variant): median and min–max
over the repetitions of startup + backtest time (the process from its start: what a user waits for), backtest
wall time, data-layer time (time inside Lumibot's Polygon seam,
``polygon_helper.get_price_data_from_polygon``, for both paths), peak RSS, provider requests,
days asked for, bytes on disk and bytes per bar.

Reproduce (about 45 minutes on 2 cores for both scenarios at n=3)::

    python3 dev.py bench benchmarks/ab_polygon.py --scenario all --repeat 3
    python3 dev.py bench benchmarks/ab_polygon.py --scenario minute --repeat 1   # one scenario, quicker

Results are printed and written to ``benchmarks/results/ab_polygon.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from lumibot_duckdb.ab.harness import RunResult, Scenario, compare, run_session

SYMBOLS_20 = tuple(f"S{i:02d}" for i in range(20))
SCENARIOS = {
    # 1 symbol x 1 year of minute bars: an SMA strategy stepping every minute of 2023.
    "minute": Scenario("1 symbol x 1y minute (SMA)", "minute_sma",
                       {"symbol": "AAA", "fast": 10, "slow": 30, "quantity": 10}, "2023-01-03", "2024-01-01",
                       shift_days=30),
    # 20 symbols x 1 year of daily bars: momentum rebalance every 5 days over 20 symbols.
    "daily20": Scenario("20 symbols x 1y daily (momentum)", "momentum",
                        {"symbols": list(SYMBOLS_20), "lookback": 20, "top": 5, "period": 5},
                        "2023-01-03", "2024-01-01", shift_days=30),
}
FIGURES = {
    "total_seconds": ("startup + backtest s", "{:.2f}"),
    "wall_seconds": ("backtest wall s", "{:.1f}"),
    "data_layer_seconds": ("data layer s", "{:.2f}"),
    "peak_rss_mb": ("peak RSS MB", "{:.0f}"),
    "provider_requests": ("provider requests", "{:.0f}"),
    "requested_days": ("days asked", "{:.0f}"),
    "bytes_on_disk": ("on disk MB", "{:.1f}"),
    "bytes_per_bar": ("bytes/bar", "{:.1f}"),
}


def value(result: RunResult, name: str) -> float:
    raw = getattr(result, name)
    return raw / 1e6 if name == "bytes_on_disk" else float(raw)


def summarize(sessions: list[list[RunResult]]) -> str:
    """``sessions``: one list of runs per (repetition, scenario)."""
    repeats = max(Counter(runs[0].scenario for runs in sessions).values(), default=0)
    groups: dict[tuple[str, str, str], list[RunResult]] = defaultdict(list)
    for runs in sessions:
        for r in runs:
            groups[(r.scenario, r.phase, r.variant)].append(r)
    lines = [f"n={repeats} repetition(s) per row; cells are median [min–max].", "",
             "| scenario | phase | variant | " + " | ".join(label for label, _ in FIGURES.values()) + " |",
             "|---|---|---|" + "---|" * len(FIGURES)]
    for (scenario, phase, variant), runs in groups.items():
        cells = []
        for name, (_, fmt) in FIGURES.items():
            values = [value(r, name) for r in runs]
            med = statistics.median(values)
            cells.append(fmt.format(med) if len(values) == 1 else
                         f"{fmt.format(med)} [{fmt.format(min(values))}–{fmt.format(max(values))}]")
        lines.append(f"| {scenario} | {phase} | {variant} | " + " | ".join(cells) + " |")
    lines += ["", "Ratios DuckDB / legacy (median of per-repetition ratios):", ""]
    for (scenario, phase, variant), runs in groups.items():
        if variant != "duckdb" or (scenario, phase, "legacy") not in groups:
            continue
        legacy = groups[(scenario, phase, "legacy")]
        parts = []
        for name in ("total_seconds", "wall_seconds", "data_layer_seconds", "peak_rss_mb", "bytes_per_bar"):
            ratios = [value(o, name) / value(L, name) for o, L in zip(runs, legacy) if value(L, name)]
            if ratios:
                parts.append(f"{FIGURES[name][0]} {statistics.median(ratios):.2f}x "
                             f"[{min(ratios):.2f}–{max(ratios):.2f}]")
        lines.append(f"- {scenario} / {phase}: " + "; ".join(parts))
    lines += ["", "Parity (every repetition):", ""]
    for runs in sessions:
        for p in compare(runs):
            state = "identical" if p.identical else ("declared difference" if p.declared else "DIFFERENT")
            lines.append(f"- {p.scenario} / {p.phase}: {state}, {p.fills} fills, final value "
                         f"legacy {p.legacy_value:,.2f} / DuckDB {p.duckdb_value:,.2f}"
                         + (f" ({p.detail})" if not p.identical else ""))
    return "\n".join(lines)


def compact(result: RunResult) -> dict[str, object]:
    """A run for the results file: the fills as a count and a digest (they are compared in full above)."""
    record = dataclasses.asdict(result)
    fills = record.pop("fills")
    record["fill_count"] = len(fills)
    record["fills_sha256"] = hashlib.sha256(json.dumps(fills).encode()).hexdigest()
    return record


def machine() -> str:
    from importlib.metadata import version

    packages = ", ".join(f"{p} {version(p)}" for p in ("lumibot", "duckdb", "pandas", "pyarrow"))
    return (f"Measured {datetime.date.today()} on {os.cpu_count()} CPUs, {platform.machine()}, "
            f"Python {platform.python_version()}, {packages}; offline, Polygon emulated at its HTTP seam.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ab_polygon")
    args = parser.parse_args()
    chosen = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    sessions: list[list[RunResult]] = []
    for rep in range(args.repeat):
        for name in chosen:
            with tempfile.TemporaryDirectory(prefix=f"ab-{name}-") as folder:
                runs = run_session(SCENARIOS[name], Path(folder))
            sessions.append(runs)
            print(f"rep {rep + 1}/{args.repeat} {name}: " + ", ".join(
                f"{r.variant}/{r.phase} {r.wall_seconds:.1f}s" for r in runs), file=sys.stderr, flush=True)
    return publish(sessions, args.out, machine())


def publish(sessions: list[list[RunResult]], out: Path, header: str) -> int:
    """Print the summary, write ``out``.md and .json; exit status 1 if a difference is not declared."""
    report = header + "\n\n" + summarize(sessions)
    print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps([[compact(r) for r in runs] for runs in sessions], indent=1))
    out.with_suffix(".md").write_text(report + "\n")
    undeclared = [p for runs in sessions for p in compare(runs) if not (p.identical or p.declared)]
    return 1 if undeclared else 0


if __name__ == "__main__":
    raise SystemExit(main())
