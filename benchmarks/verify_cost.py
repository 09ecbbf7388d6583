"""Verify mode's cost and findings: the demo scenario and the universe benchmark's 10-symbol run.

Each scenario runs cold (empty caches) and warm (the same caches again), in fresh processes, offline
(providers emulated at their seams), on three paths: Lumibot's legacy path, the DuckDB path, and the
DuckDB path in verify mode (``LUMIBOT_USE_DUCKDB=verify``: every answer of the store also checked, bit
for bit, against what Lumibot's legacy path hands over for the same request, on an empty throw-away
cache). Reported: answers checked, mismatches (unexplained / explained by a declared legacy defect),
legacy calls and their time, and wall time, provider requests and peak RSS of verify mode beside the
two paths; verify mode must serve the DuckDB path's fills exactly.

* ``demo``: ``lumibot-duckdb demo``'s scenario (daily momentum over 4 symbols, Jan-Mar 2024, Polygon).
* ``polygon-daily10``: ``benchmarks/universe.py``'s daily momentum over 10 symbols for 2023 (Polygon; the
  legacy path and verify mode hold a year of minute bars per symbol).

Reproduce::

    python3 dev.py bench benchmarks/verify_cost.py --scenario demo --repeat 3
    python3 dev.py bench benchmarks/verify_cost.py --scenario polygon-daily10 --repeat 1

Results go to ``benchmarks/results/verify_cost.json`` and ``.md`` (a scenario not run keeps its last figures).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

from lumibot_duckdb.ab.harness import Scenario, demo_scenario
from lumibot_duckdb.ab.session import run_scenario
from lumibot_duckdb.ab.verify import costs

sys.path.insert(0, str(Path(__file__).parent))
from universe import SCENARIOS as UNIVERSE
from universe import machine

SCENARIOS: dict[str, Scenario] = {"demo": demo_scenario("polygon"), "polygon-daily10": UNIVERSE["polygon-daily10"]}


def measure(name: str, repeat: int, workdir: Path) -> dict[str, object]:
    scenario = SCENARIOS[name]

    def progress(run: object) -> None:
        print(f"  {name:16} {run.variant:8} {run.phase:6} {run.wall_seconds:8.1f} s", flush=True)  # type: ignore[attr-defined]

    result = run_scenario(scenario, phases=("cold", "warm"), repeat=repeat, verify=True, workdir=workdir / name,
                          progress=progress)
    found = costs(result.runs)
    return {"scenario": name, "name": scenario.name, "verdict": result.verdict, "text": result.text(),
            "costs": [dataclasses.asdict(c) for c in found], "lines": [c.text() for c in found],
            "machine": result.machine}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="all", choices=[*SCENARIOS, "all"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the runs' caches here")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "verify_cost")
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    kept_path = args.output.with_suffix(".json")
    kept = {d["scenario"]: d for d in json.loads(kept_path.read_text())} if kept_path.exists() else {}
    with tempfile.TemporaryDirectory(prefix="lumibot-duckdb-verify-cost-") as scratch:
        workdir = args.workdir or Path(scratch)
        for name in names:
            kept[name] = measure(name, args.repeat, workdir)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    kept_path.write_text(json.dumps(list(kept.values()), indent=1))
    parts = [f"Measured {machine()}; offline, providers emulated at their seams; cold = empty caches, warm = the "
             "same caches again; verify = the DuckDB path with LUMIBOT_USE_DUCKDB=verify.\n"]
    for entry in kept.values():
        parts += [f"## {entry['name']}\n", "```", str(entry["text"]).rstrip(), "```", ""]
        parts += [f"- {line}" for line in entry["lines"]] + [""]  # type: ignore[union-attr]
    text = "\n".join(parts)
    args.output.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
