"""What the read path's integrity checks cost: one file's check beside one window read, and whole backtests
before and after (a checkout without the checks beside this one, run in turn).

1. **One file** (this checkout, in process): CRC-32 of a year of minute bars (98,280 bars, one file), its
   footer, the scan of its timestamps (what a file without a checksum gets), Parquet's own page checksums
   verified with pyarrow (the alternative measured), beside reading one day and one month of it.
2. **Per call** (``benchmarks/per_call.py``'s measurement, DuckDB path only): µs per
   ``get_historical_prices`` / ``get_last_price`` call and per clock step, Polygon and CCXT, 5 symbols x 2023.
3. **Universe** (``benchmarks/universe.py``'s ``polygon-daily10``, DuckDB path only, warm, fresh processes):
   wall time, data-layer time, peak RSS.

Before and after alternate run by run (A B A B...), each on a store it filled itself; ratios are after / before,
the median of per-pair ratios [min-max].

Reproduce (``--before`` is a checkout of the commit before the checks, e.g. ``git archive ed5bfd7 | tar -x -C
/tmp/before``; about 40 minutes on 2 shared cores)::

    python3 benchmarks/integrity.py --before /tmp/before --repeat 3      # results in benchmarks/results/integrity.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
AFTER = HERE.parent


def one_file() -> list[str]:
    import zlib

    import numpy as np
    import pandas as pd
    import pyarrow.parquet as pq

    from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey, integrity

    work = Path(tempfile.mkdtemp(prefix="integrity-"))
    try:
        store = DuckDBDataStorage(work)
        index = pd.date_range("2023-01-03 14:30", periods=390 * 252, freq="1min", tz="UTC")
        rng = np.random.default_rng(0)
        price = 100 + np.cumsum(rng.normal(size=len(index))) * 0.01
        bars = pd.DataFrame({"open": price, "high": price + 0.1, "low": price - 0.1, "close": price,
                             "volume": rng.integers(1, 1000, len(index)).astype(float), "vwap": price,
                             "trade_count": rng.integers(1, 100, len(index))}, index=index)
        key = SeriesKey("polygon", "SPY", "minute", quote="USD", adjustment="split")
        store.write(key, bars, covered=("2023-01-01", "2024-01-01"))
        (bar_file,) = store.files(key)
        crc_path = work / "crc.parquet"
        pq.write_table(pq.read_table(bar_file.path), crc_path, write_page_checksum=True)
        unsealed = bar_file.token[:16] + "abcdef"

        def ms(function: object, n: int = 30) -> float:
            function()  # type: ignore[operator]
            times = []
            for _ in range(n):
                began = time.perf_counter()
                function()  # type: ignore[operator]
                times.append(time.perf_counter() - began)
            return statistics.median(times) * 1e3

        figures = {
            "CRC-32 of the file's bytes (sealed file: its whole check but the footer)":
                ms(lambda: zlib.crc32(bar_file.path.read_bytes())),
            "check of a sealed file (CRC-32, footer marks, schema)":
                ms(lambda: integrity.check_file(bar_file.path, key, bar_file.interval, bar_file.token)),
            "check of a file without checksum (footer marks, schema, timestamps scanned)":
                ms(lambda: integrity.check_file(bar_file.path, key, bar_file.interval, unsealed)),
            "a file already checked in this process (one stat)":
                ms(lambda: integrity.checked(bar_file.path, key, bar_file.interval, bar_file.token), 300),
            "alternative: Parquet page checksums verified by pyarrow (decodes every page)":
                ms(lambda: pq.read_table(crc_path, page_checksum_verification=True)),
            "store.read of one day": ms(lambda: store.read(key, "2023-06-01", "2023-06-02")),
            "store.read of one month": ms(lambda: store.read(key, "2023-06-01", "2023-07-01")),
        }
        lines = [f"One file: a year of minute bars, {len(bars):,} bars, {bar_file.size:,} bytes (median of 30, ms):",
                 "", "| operation | ms |", "|---|---|"]
        lines += [f"| {name} | {value:.3f} |" for name, value in figures.items()]
        return lines
    finally:
        shutil.rmtree(work, ignore_errors=True)


def per_call(tree: Path, workdir: Path) -> dict[tuple[str, str], float]:
    """One run of per_call.py's measurement with ``tree``'s code, DuckDB path: median µs per call label."""
    from lumibot_duckdb.ab.harness import child_environment

    found: dict[tuple[str, str], float] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    for source in ("polygon", "ccxt"):
        env = {**child_environment(workdir), "LUMIBOT_DUCKDB_PER_CALL_CHILD": "1", "PYTHONPATH": str(tree)}
        done = subprocess.run([sys.executable, str(tree / "benchmarks" / "per_call.py"), source, "duckdb",
                               str(workdir)], env=env, capture_output=True, text=True, cwd=workdir, check=False)
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        for line in done.stdout.splitlines():
            if line.startswith("|"):
                cells = [c.strip().replace(",", "") for c in line.strip("|").split("|")]
                found[(cells[0], cells[1])] = float(cells[4])
    return found


def ratio_cell(after: list[float], before: list[float]) -> str:
    ratios = [a / b for a, b in zip(after, before) if b]
    return f"{statistics.median(ratios):.3f}x [{min(ratios):.3f}–{max(ratios):.3f}]"


def spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):,.{digits}f} [{min(values):,.{digits}f}–{max(values):,.{digits}f}]"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="a checkout without the read-path checks")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: file, per-call, universe")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    trees = {"after": AFTER, "before": args.before.resolve()}
    work = Path(tempfile.mkdtemp(prefix="integrity-ab-"))
    started = time.perf_counter()
    lines = [f"Read-path integrity checks: cost. Machine: 2 cores shared with other jobs (figures are medians of "
             f"runs alternating before/after). `python3 benchmarks/integrity.py --before <checkout> --repeat "
             f"{args.repeat}`.", ""]
    try:
        if "file" not in skip:
            lines += [*one_file(), ""]
        if "per-call" not in skip:
            calls: dict[str, list[dict[tuple[str, str], float]]] = {"after": [], "before": []}
            for rep in range(args.repeat):
                for name, tree in trees.items():
                    calls[name].append(per_call(tree, work / f"per-call-{name}"))
                    print(f"per-call {name} {rep + 1}/{args.repeat}", flush=True)
            lines += [f"Per call (µs, median of each run's median; {args.repeat} runs each):", "",
                      "| source | call | before | after | after / before |", "|---|---|---|---|---|"]
            for label in calls["after"][0]:
                a = [run[label] for run in calls["after"]]
                b = [run[label] for run in calls["before"]]
                lines.append(f"| {label[0]} | {label[1]} | {spread(b)} | {spread(a)} | {ratio_cell(a, b)} |")
            lines.append("")
        if "universe" not in skip:
            sys.path.insert(0, str(HERE))
            from universe import SCENARIOS

            from lumibot_duckdb.ab.harness import run_subprocess

            scenario = SCENARIOS["polygon-daily10"]
            runs: dict[str, list[object]] = {"after": [], "before": []}
            for name, tree in trees.items():
                cold = run_subprocess(scenario, "duckdb", "cold", work / f"universe-{name}", fast=True,
                                      env={"PYTHONPATH": str(tree)}, timeout=4 * 3600)
                print(f"universe {name} filled in {cold.wall_seconds:.0f} s", flush=True)
            for rep in range(args.repeat):
                for name, tree in trees.items():
                    result = run_subprocess(scenario, "duckdb", "warm", work / f"universe-{name}",
                                            env={"PYTHONPATH": str(tree)}, timeout=4 * 3600)
                    runs[name].append(result)
                    print(f"universe {name} {rep + 1}/{args.repeat}: {result.wall_seconds:.1f} s", flush=True)
            same = all((a.fills, a.final_value) == (b.fills, b.final_value)  # type: ignore[attr-defined]
                       for a, b in zip(runs["after"], runs["before"]))
            lines += [f"Universe `polygon-daily10`, DuckDB path, warm ({args.repeat} runs each; fills and final value "
                      f"{'identical' if same else 'DIFFERENT'} before and after):", "",
                      "| figure | before | after | after / before |", "|---|---|---|---|"]
            for figure, get in (("wall s", lambda r: r.wall_seconds), ("data layer s", lambda r: r.data_layer_seconds),
                                ("peak RSS MB", lambda r: r.peak_rss_mb)):
                a = [get(r) for r in runs["after"]]
                b = [get(r) for r in runs["before"]]
                lines.append(f"| {figure} | {spread(b, 2)} | {spread(a, 2)} | {ratio_cell(a, b)} |")
            lines.append("")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lines.append(f"Total {time.perf_counter() - started:.0f} s.")
    text = "\n".join(lines) + "\n"
    (HERE / "results" / "integrity.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
