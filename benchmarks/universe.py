"""Universe benchmarks: memory and wall time of many symbols, Lumibot's legacy path beside the DuckDB path.

Three workloads on one year (2023), each run in fresh processes, offline (providers emulated at their
network seams by ``lumibot_duckdb.testing``), on a warm cache (filled once by a cold run per variant):

* ``polygon-daily10`` / ``polygon-daily50``: a plain daily momentum strategy over 10 / 50 symbols
  (20-day lookback, rebalance every 5 days, ``get_last_price`` to size orders). Lumibot's Polygon source
  prices assets from minute bars, so its legacy path holds every symbol's minute bars for the year.
* ``polygon-minute50``: 50 symbols, a daily-cadence strategy reading the last 390 minute bars of every
  symbol each day.
* ``polygon-daily200`` / ``polygon-minute200``: the daily momentum / the minute scan over 200 symbols,
  DuckDB path only (the legacy path would need about 18 GB / 26 GB here); the first run of the daily
  one fills the store with the 150 symbols more (a year of their minute bars), which the scan reads.
* ``alpaca-minute50``: the same on Alpaca (minute timestep, explicit config: Lumibot's Alpaca frames hold every
  trading minute of the backtest, forward-filled); ``alpaca-minute50-2m`` over January and February 2023 and
  ``alpaca-minute50-q1`` over the first quarter, so the growth of the memory with the backtest's length is
  visible in minutes (a cold fill of Jan-Feb takes about a minute per variant here).
* ``ccxt-minute50``: the same on CCXT, 24/7 minute candles (the last 1,440 each day), over the year;
  ``ccxt-minute50-2m`` over January and February 2023 only (its cold fills take minutes, not the year's
  half hour per variant).

Reported per run: peak RSS, data-held memory (peak minus the RSS right after importing Lumibot and the
data source), wall time of the backtest. Data-held is everything the run grows by, not only bars: Lumibot
4.6's ``backtesting/market_input_evidence.py`` keeps, on both paths, a record of every bar
``get_historical_prices`` returned to the strategy (up to 50,000 rows and a memo of as many serialized rows;
a minute scan of 50 symbols fills it in days: ~135 MB on the Alpaca scan over Jan-Feb, measured with
``--without-input-evidence``), so where legacy's bar frames are small the ratio of data-held is bounded by
that common part. DuckDB / legacy ratios (median of
per-repetition ratios); fills and final value compared for every repetition. Where a source has known
legacy cache defects (CCXT's cache rounds prices to 3 decimals; Alpaca's CSV re-read moves a few prices
by ~1e-14), Lumibot's legacy path with them fixed (``legacy-fixed``, its own cold-filled cache) is the
reference a declared difference must equal.

``--without-input-evidence`` runs both variants with that record not made (the harness's
``LUMIBOT_DUCKDB_AB_NO_INPUT_EVIDENCE``; it never changes a decision, so fills must stay the same), as scenarios
of their own (", without input evidence"): the data layers' own memory, side by side.

Reproduce (the first run of a scenario fills its caches: Polygon 50 symbols takes about 20 minutes on
the legacy path; warm repetitions are then a few minutes each)::

    python3 dev.py bench benchmarks/universe.py --scenario all --repeat 3
    python3 dev.py bench benchmarks/universe.py --scenario polygon-daily10 --repeat 1
    python3 dev.py bench benchmarks/universe.py --scenario polygon-daily50 --variant duckdb \\
        --env LUMIBOT_DUCKDB_MAX_MEMORY=256MB                # a memory budget for the DuckDB path

Caches live in ``--workdir`` (default ``$TMPDIR/lumibot-duckdb-universe``) and are reused across calls;
results go to ``benchmarks/results/universe.json`` and ``.md`` (scenarios not run keep their last figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
from pathlib import Path

from lumibot_duckdb.ab.harness import NO_INPUT_EVIDENCE, REFERENCE, RunResult, Scenario, compare, run_subprocess
from lumibot_duckdb.testing.kits import kit

START, END = "2023-01-03", "2024-01-01"
UNIVERSE = tuple(f"U{i:03d}" for i in range(200))


def _momentum(count: int) -> Scenario:
    return Scenario(f"polygon daily momentum x{count}", "momentum",
                    {"symbols": list(UNIVERSE[:count]), "lookback": 20, "top": 5, "period": 5}, START, END)


def _scan(source: str, count: int, bars: int, end: str = END, label: str = "", timestep: str = "",
          **crypto: str) -> Scenario:
    return Scenario(f"{source} minute scan x{count}{label}", "minute_scan",
                    {"symbols": list(UNIVERSE[:count]), "bars": bars, "top": 5, "period": 5, **crypto},
                    START, end, source=source, timestep=timestep)


SCENARIOS = {
    "polygon-daily10": _momentum(10),
    "polygon-daily50": _momentum(50),
    "polygon-minute50": _scan("polygon", 50, 390),
    # DuckDB only: on the legacy path these would need ~18 GB and ~26 GB (peak RSS grows ~84 MB and
    # ~130 MB a symbol on the legacy path here); the first fills the store the second reads
    "polygon-daily200": _momentum(200),
    "polygon-minute200": _scan("polygon", 200, 390),
    "alpaca-minute50": _scan("alpaca", 50, 390, timestep="minute"),  # (Alpaca is told its bars' timestep)
    "alpaca-minute50-2m": _scan("alpaca", 50, 390, end="2023-03-01", label=", Jan-Feb", timestep="minute"),
    "alpaca-minute50-q1": _scan("alpaca", 50, 390, end="2023-04-01", label=", Q1", timestep="minute"),
    "ccxt-minute50": _scan("ccxt", 50, 1440, label=", year", asset_type="crypto", quote="USDT"),
    "ccxt-minute50-2m": _scan("ccxt", 50, 1440, end="2023-03-01", label=", Jan-Feb", asset_type="crypto",
                              quote="USDT"),
}
DUCKDB_ONLY = {"polygon-daily200", "polygon-minute200"}
POLYGON_FILLERS = ("polygon-daily50", "polygon-minute50")
"""The cold runs that fill the Polygon folders; a superset serves the smaller runs."""


def cache_folder(workdir: Path, scenario: Scenario, variant: str) -> Path:
    return workdir / scenario.source / variant


def ensure_filled(workdir: Path, scenario: Scenario, variant: str, progress: bool = True) -> RunResult | None:
    """One cold run per scenario and variant on the shared cache folder (``fast``: no provider sleeps).

    Returns that run's result when the marker kept it (markers of older versions kept only its wall time).
    """
    folder = cache_folder(workdir, scenario, variant)
    marker = folder / (f".filled-{scenario.strategy}-{len(scenario.parameters['symbols'])}-{scenario.start}-"
                       f"{scenario.end}")
    if not marker.exists():
        if progress:
            print(f"filling {folder} with a cold run of {scenario.name} ({variant}) ...", flush=True)
        result = run_subprocess(scenario, variant, "cold", folder, fast=True, timeout=4 * 3600)
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(dataclasses.asdict(result)))
        if progress:
            print(f"  filled in {result.wall_seconds:.0f} s, peak RSS {result.peak_rss_mb:.0f} MB", flush=True)
    kept = json.loads(marker.read_text())
    return RunResult(**kept) if isinstance(kept, dict) else None


def reference(workdir: Path, scenario: Scenario) -> RunResult | None:
    """Where the source has known legacy defects (CCXT's 3-decimal cache), Lumibot's legacy path with
    them fixed, on its own cache: DuckDB must equal it wherever it differs from legacy (declared)."""
    if not kit(scenario.source).legacy_defects():
        return None
    result = ensure_filled(workdir, scenario, REFERENCE)
    if result is not None:
        detail = kit(scenario.source).describe_defects(cache_folder(workdir, scenario, "legacy"),
                                                       scenario.window("warm"))
        parts = detail.split("; ")
        rounded = sum(int(n) for n in re.findall(r"\((\d+) bars rounded", detail))
        result.detail = (f"{len(parts)} cached series like {parts[0]}; {rounded:,} bars rounded in all"
                         if len(parts) > 3 else detail)
    return result


def fill(workdir: Path, name: str, variants: list[str]) -> list[str]:
    """Fill the caches ``name`` reads, for the variants it runs on (returned)."""
    chosen = ["duckdb"] if name in DUCKDB_ONLY else variants
    for variant in chosen:
        polygon = SCENARIOS[name].source == "polygon" and name not in DUCKDB_ONLY
        for filler in POLYGON_FILLERS if polygon else (name,):
            ensure_filled(workdir, SCENARIOS[filler], variant)
    return chosen


def held_mb(result: RunResult) -> float:
    return result.peak_rss_mb - result.rss_after_import_mb


def run(names: list[str], variants: list[str], repeat: int, workdir: Path, env: dict[str, str],
        both: dict[str, str] | None = None) -> list[RunResult]:
    """Warm runs of each scenario (``env``: for the DuckDB runs; ``both``: for every run)."""
    results = []
    for name in names:
        scenario = SCENARIOS[name]
        chosen = fill(workdir, name, variants)
        if both and both.get(NO_INPUT_EVIDENCE) == "1":
            scenario = dataclasses.replace(scenario, name=scenario.name + ", without input evidence")
        ran = []
        for _ in range(repeat):
            for variant in chosen:
                extra = {**(both or {}), **(env if variant == "duckdb" else {})}
                result = run_subprocess(scenario, variant, "warm", cache_folder(workdir, scenario, variant),
                                        env=extra or None, timeout=4 * 3600)
                ran.append(result)
                print(f"{result.scenario:32} {variant:7} wall {result.wall_seconds:7.1f} s  peak "
                      f"{result.peak_rss_mb:6.0f} MB  held {held_mb(result):6.0f} MB  fills {len(result.fills)}  "
                      f"final {result.final_value:,.2f}", flush=True)
        pairs = zip([r for r in ran if r.variant == "legacy"], [r for r in ran if r.variant == "duckdb"])
        if any((a.fills, a.final_value) != (b.fills, b.final_value) for a, b in pairs):
            fixed = reference(workdir, scenario)  # what a declared difference must equal
            if fixed is not None:
                results.append(dataclasses.replace(fixed, scenario=scenario.name))
        results += ran
    return results


def summarize(results: list[RunResult]) -> str:
    by: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        by.setdefault((r.scenario, r.variant), []).append(r)
    figures = {"peak RSS MB": lambda r: r.peak_rss_mb, "data-held MB": held_mb,
               "RSS after import MB": lambda r: r.rss_after_import_mb, "wall s": lambda r: r.wall_seconds}
    lines = ["| scenario | variant | n | " + " | ".join(figures) + " | fills | final value |",
             "|---|---|---|" + "---|" * (len(figures) + 2)]
    for (scenario, variant), runs in by.items():
        cells = []
        for get in figures.values():
            values = [get(r) for r in runs]
            cells.append(f"{statistics.median(values):.1f} [{min(values):.1f}–{max(values):.1f}]")
        lines.append(f"| {scenario} | {variant} | {len(runs)} | " + " | ".join(cells)
                     + f" | {len(runs[0].fills)} | {runs[0].final_value:,.2f} |")
    lines += ["", "Ratios DuckDB / legacy (median of per-repetition ratios, min–max):", ""]
    for scenario in dict.fromkeys(r.scenario for r in results):
        pairs = list(zip(by.get((scenario, "legacy"), []), by.get((scenario, "duckdb"), [])))
        if not pairs:
            continue
        parts = []
        for label, get in figures.items():
            if label.startswith("RSS after"):
                continue
            ratios = [get(b) / get(a) for a, b in pairs if get(a)]
            parts.append(f"{label} {statistics.median(ratios):.3f}x [{min(ratios):.3f}–{max(ratios):.3f}]")
        lines.append(f"- {scenario}: " + "; ".join(parts))
    lines += ["", "Parity (every repetition):", ""]
    for parity in compare_all(results):
        lines.append(f"- {parity}")
    return "\n".join(lines)


def compare_all(results: list[RunResult]) -> list[str]:
    out = []
    fixed = {r.scenario: r for r in results if r.variant == REFERENCE}
    pairs = [pair for scenario in dict.fromkeys(r.scenario for r in results)  # repetition by repetition
             for pair in zip([r for r in results if r.scenario == scenario and r.variant == "legacy"],
                             [r for r in results if r.scenario == scenario and r.variant == "duckdb"])]
    for a, b in pairs:
        (parity,) = compare([a, b])
        values = (f"{parity.fills} fills, final value legacy {parity.legacy_value:,.2f} / "
                  f"DuckDB {parity.duckdb_value:,.2f}")
        ref = fixed.get(a.scenario)
        if parity.identical:
            verdict = "identical"
        elif ref is not None and ref.fills == b.fills and ref.final_value == b.final_value:
            verdict = (f"declared difference: DuckDB equals Lumibot's legacy path with its known defects fixed "
                       f"(final value {ref.final_value:,.2f}; {ref.detail})")
        else:
            verdict = f"DIFFERENT: {parity.detail}"
        out.append(f"{a.scenario}: {verdict} ({values})")
    return out


def machine() -> str:
    import duckdb
    import lumibot
    import pandas

    return (f"{datetime.date.today()} on {os.cpu_count()} CPUs, {platform.machine()}, Python "
            f"{platform.python_version()}, lumibot {getattr(lumibot, '__version__', '?')}, duckdb "
            f"{duckdb.__version__}, pandas {pandas.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="all", choices=[*SCENARIOS, "all"])
    parser.add_argument("--variant", default="both", choices=["legacy", "duckdb", "both"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lumibot-duckdb-universe")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the DuckDB runs")
    parser.add_argument("--fill-only", action="store_true", help="fill the caches and stop")
    parser.add_argument("--without-input-evidence", action="store_true",
                        help="both variants without Lumibot's record of the bars returned (memory diagnostic)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "universe")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    variants = ["legacy", "duckdb"] if args.variant == "both" else [args.variant]
    env = dict(item.split("=", 1) for item in args.env)
    if args.fill_only:
        for name in names:
            fill(args.workdir, name, variants)
            if args.variant == "both" and name not in DUCKDB_ONLY:
                reference(args.workdir, SCENARIOS[name])
        return 0
    both = {NO_INPUT_EVIDENCE: "1"} if args.without_input_evidence else None
    results = run(names, variants, args.repeat, args.workdir, env, both)
    kept = args.output.with_suffix(".json")
    if kept.exists():  # the scenarios not run this time keep their last figures
        ran = {r.scenario for r in results}
        results = [r for r in (RunResult(**d) for d in json.loads(kept.read_text())) if r.scenario not in ran] + results
    args.output.parent.mkdir(parents=True, exist_ok=True)  # kept before the summary is worked out
    args.output.with_suffix(".json").write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
    text = (f"Measured {machine()}; offline, providers emulated at their seams; warm caches (legacy-fixed: "
            f"the cold run that filled its cache).\n\n{summarize(results)}\n")
    print(text)
    args.output.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
