"""Ingest throughput: rows/s, bytes on disk per bar, peak memory, and the second ingest adding 0 rows.

Two inputs:

* the real files of ``../shared/data`` (3 daily CSVs of 252 bars, two minute CSVs: 1,794 and 30,397 bars);
* a generated CSV of ``--rows`` (default 10,000,000) minute bars of one symbol, every minute of the day
  (as crypto dumps are), with naive ISO timestamps: written once into a temporary folder.

Each measured run is a fresh Python process (so its peak RSS is its own) ingesting into an empty
store; then the same files are ingested again into that store, which must add 0 rows. Printed:
median (min–max) over ``--rounds`` of wall time and rows/s, bytes on disk per bar, peak RSS, and
the second ingest's time and rows added. The answers are checked: rows added equal rows read on
the first ingest, 0 on the second, and the store's row count equals the file's.

Reproduce (about 10 minutes on 2 cores; needs ~1.5 GB free in the temporary folder)::

    python3 dev.py bench benchmarks/bench_ingest.py --rounds 3
    python3 dev.py bench benchmarks/bench_ingest.py --rows 1000000 --rounds 1   # quick look
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

_CHILD = r"""
import json, resource, sys, time
from lumibot_duckdb.ingest.load import ingest
from lumibot_duckdb.store import DuckDBDataStorage
store, paths, options = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])


def peak_mb():
    # VmHWM: this process's own peak. (ru_maxrss survives exec on Linux: it would report the parent's peak,
    # e.g. the ~1 GB of generating the 10M-bar file.)
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


started = time.perf_counter()
report = ingest(store, paths, progress=False, **options)
run = {"seconds": time.perf_counter() - started, "rows_read": report.rows_read, "rows_added": report.rows_added,
       "rows_present": report.rows_present, "conflicts": report.conflicts,
       "peak_rss_mb": peak_mb()}  # (the ingest alone)
with DuckDBDataStorage(store) as db:
    status = db.status()
print(json.dumps({"run": run, "bytes": sum(s.bytes for s in status), "rows": sum(s.rows for s in status),
                  "files": sum(s.files for s in status)}))
"""


def generate_minutes(path: Path, rows: int, *, seed: int = 7, block: int = 2_000_000) -> int:
    """``rows`` minute bars of a random walk from 2005-01-01 00:00, written as CSV block by block."""
    rng = np.random.default_rng(seed)
    start = np.datetime64("2005-01-01T00:00", "m")
    price = 100.0
    schema = pa.schema([("timestamp", pa.string()), ("open", pa.float64()), ("high", pa.float64()),
                        ("low", pa.float64()), ("close", pa.float64()), ("volume", pa.float64())])
    with pacsv.CSVWriter(str(path), schema, write_options=pacsv.WriteOptions(quoting_style="none")) as writer:
        for first in range(0, rows, block):
            n = min(block, rows - first)
            stamps = (start + np.arange(first, first + n)).astype("datetime64[s]")
            close = price * np.exp(np.cumsum(rng.normal(0, 5e-4, n)))
            open_ = np.concatenate([[price], close[:-1]])
            spread = np.abs(rng.normal(0, 2e-4, n)) * close
            high = np.round(np.maximum(open_, close) + spread, 4)
            low = np.round(np.minimum(open_, close) - spread, 4)
            open_, close = np.round(open_, 4), np.round(close, 4)
            high, low = np.maximum(high, np.maximum(open_, close)), np.minimum(low, np.minimum(open_, close))
            volume = rng.integers(1, 5_000, n).astype("float64")
            text = np.datetime_as_string(stamps, unit="s")
            table = pa.table([pa.array(np.char.replace(text, "T", " ")), open_, high, low, close, volume],
                             schema=schema)
            writer.write_table(table)
            price = float(close[-1])
    return rows


def measure(label: str, paths: list[Path], options: dict[str, str], rounds: int, work: Path) -> dict[str, object]:
    results = []
    for round_ in range(rounds):
        store = work / f"store-{re.sub(r'[^A-Za-z0-9]+', '-', label).strip('-')}-{round_}"  # (a label has a "/")
        runs, result = [], {}
        for _attempt in ("first", "second"):  # each in a fresh process: its own peak RSS
            out = subprocess.run([sys.executable, "-c", _CHILD, str(store), json.dumps([str(p) for p in paths]),
                                  json.dumps(options)], capture_output=True, text=True, check=False)
            if out.returncode:
                raise SystemExit(f"{label}: ingest failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs.append(result.pop("run"))
        result["runs"] = runs
        first, second = runs
        assert first["rows_added"] == first["rows_read"] == result["rows"], result
        assert second["rows_added"] == 0 and second["rows_present"] == second["rows_read"], result
        results.append(result)
        subprocess.run(["rm", "-rf", str(store)], check=True)
    rows = results[0]["runs"][0]["rows_read"]
    first_s = [r["runs"][0]["seconds"] for r in results]
    second_s = [r["runs"][1]["seconds"] for r in results]
    return {"label": label, "rows": rows, "n": rounds, "input_bytes": sum(p.stat().st_size for p in paths),
            "first_s": first_s, "rows_per_s": [rows / s for s in first_s], "second_s": second_s,
            "second_added": [r["runs"][1]["rows_added"] for r in results],
            "bytes_per_bar": results[0]["bytes"] / results[0]["rows"], "store_files": results[0]["files"],
            "peak_rss_mb": [r["runs"][0]["peak_rss_mb"] for r in results],
            "second_peak_rss_mb": [r["runs"][1]["peak_rss_mb"] for r in results]}


def _spread(values: list[float], fmt: str) -> str:
    median = statistics.median(values)
    return f"{median:{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def render(result: dict[str, object]) -> str:
    r = result
    return "\n".join([
        f"{r['label']}: {r['rows']:,} rows, {r['input_bytes'] / 1e6:,.1f} MB of input, n={r['n']}",
        f"  first ingest   {_spread(r['first_s'], '.2f')} s, {_spread(r['rows_per_s'], ',.0f')} rows/s",
        f"  on disk        {r['bytes_per_bar']:.1f} bytes/bar in {r['store_files']} file(s)",
        f"  peak RSS       {_spread(r['peak_rss_mb'], ',.0f')} MB (the ingest's whole process: Python, pandas, Arrow)",
        f"  second ingest  {_spread(r['second_s'], '.2f')} s, rows added {r['second_added']}, peak RSS "
        f"{_spread(r['second_peak_rss_mb'], ',.0f')} MB (it compares every row with the stored bars)",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-generated", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        work = Path(tmp)
        figures = []
        if SHARED.is_dir():
            figures.append(measure("shared/data (5 CSV files)", sorted(SHARED.glob("*.csv")), {}, args.rounds, work))
            print(render(figures[-1]), flush=True)
        else:
            print(f"skipped shared/data: {SHARED} not found")
        if not args.skip_generated:
            path = work / "BTC_1m_synthetic.csv"
            started = time.perf_counter()
            generate_minutes(path, args.rows)
            print(f"generated {args.rows:,} minute bars ({path.stat().st_size / 1e6:,.0f} MB) in "
                  f"{time.perf_counter() - started:.1f} s", flush=True)
            figures.append(measure(f"generated minute CSV ({args.rows:,} bars)", [path],
                                   {"asset_type": "crypto", "quote": "USDT", "timezone": "UTC"},  # (stamps in UTC)
                                   args.rounds, work))
            print(render(figures[-1]), flush=True)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
