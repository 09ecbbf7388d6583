"""The damage matrix: each kind of damage to a store file, through a backtest, ``store.read`` and ``verify``.

For every kind of :mod:`lumibot_duckdb.store.damage` (in place on a file the store wrote, and as a file without
a checksum, as written before checksums or by another tool):

* **backtest**: a store filled by a cold backtest (a daily momentum strategy over three symbols, offline
  provider) has one file damaged, then the backtest runs again in a fresh process in strict mode (a store
  failure would raise instead of falling back to the legacy path, so a finished run had no fallback):
  detected and quarantined (a reason recorded), the range fetched again (provider requests, and the store
  covers the range again), fills and final value equal to the undamaged run's;
* **store.read**: on a small store, the read of the damaged range raises ``CorruptFileError`` with the expected
  reason, the file is in ``.quarantine/``, the next read serves every other bar;
* **verify**: ``maintain verify`` (before any read) reports the file, with the expected kind, and does not crash.

Reproduce (about 5 minutes on 2 shared cores; results in ``benchmarks/results/damage_matrix.md``)::

    python3 benchmarks/damage_matrix.py
    python3 benchmarks/damage_matrix.py --source ccxt --kinds bit-flip,duplicate-rows
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from lumibot_duckdb.ab.harness import Scenario, run_subprocess
from lumibot_duckdb.errors import CorruptFileError
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey, integrity, missing_ranges
from lumibot_duckdb.store.damage import KINDS, UNSEALED_MAYBE, Hit, damage, describe, reasons
from lumibot_duckdb.store.maintenance import verify

SPY, QQQ = SeriesKey("test", "SPY", "minute", quote="USD"), SeriesKey("test", "QQQ", "minute", quote="USD")


def _bars(start: str, periods: int, seed: int) -> pd.DataFrame:
    import numpy as np

    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=periods, freq="1min", tz="UTC", name="ts")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, periods)))
    return pd.DataFrame({"open": close, "high": close * 1.001, "low": close * 0.999, "close": close,
                         "volume": 100.0}, index=index)


def read_column(root: Path, kind: str, sealed: bool) -> tuple[str, str, Hit]:
    """(store.read outcome, verify outcome, what was damaged) on a small two-series store."""
    store = DuckDBDataStorage(root)
    store.write(SPY, _bars("2024-01-02 14:30", 390, 1))
    store.write(SPY, _bars("2024-01-03 14:30", 390, 2))
    store.write(QQQ, _bars("2024-01-02 14:30", 390, 3))
    hit = damage(store, SPY, kind, sealed=sealed, other=QQQ)
    integrity._CHECKED.clear()
    try:
        report = verify(store)
        found = sorted({p.kind for p in report.errors if p.path == str(hit.path)})
        checked = f"yes: {', '.join(found)}" if found else "no"
    except Exception as exc:  # noqa: BLE001 - the matrix records a crash instead of stopping
        checked = f"CRASH {type(exc).__name__}"
    try:
        store.read(SPY, "2024-01-01", "2024-02-01")
    except CorruptFileError as exc:
        quarantined = not hit.path.exists() and bool(exc.quarantined_to) and Path(exc.quarantined_to).exists()
        rest = len(store.read(SPY, "2024-01-01", "2024-02-01"))
        read = f"yes ({exc.reasons[0].split(':')[0]}); quarantined: {'yes' if quarantined else 'NO'}; {rest} bars left"
    except Exception as exc:  # noqa: BLE001
        read = f"CRASH {type(exc).__name__}: {exc}"
    else:
        read = "no (served)"
    store.close()
    return read, checked, hit


def backtest_column(template: Path, work: Path, scenario: Scenario, cold: object, source: str, kind: str,
                    sealed: bool) -> str:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(template, work)
    root = work / "duckdb"
    with DuckDBDataStorage(root) as store:
        keys = sorted(k for k in store.series() if k.source == source)
        target = next(k for k in keys if k.symbol == keys[0].symbol and k.timeframe == "day") if any(
            k.timeframe == "day" for k in keys) else keys[0]
        other = next(k for k in keys if k.symbol != target.symbol and k.timeframe == target.timeframe)
        hit = damage(store, target, kind, sealed=sealed, other=other, seed=11)
    try:
        warm = run_subprocess(scenario, "duckdb", "warm", work, env={"LUMIBOT_DUCKDB_STRICT": "1"})
    except RuntimeError as exc:
        return f"run FAILED (strict): {str(exc).splitlines()[-1][:120]}"
    with DuckDBDataStorage(root) as store:
        found = reasons(store)
        covered = not missing_ranges(store.coverage(target), hit.interval) if kind != "shifted-range" else True
    same = (warm.fills, warm.final_value) == (cold.fills, cold.final_value)  # type: ignore[attr-defined]
    detected = f"yes ({found[0].split(':')[0]})" if found else "no"
    if kind.startswith("other-series"):  # a file copied in beside the series' own, which is intact
        fetched = f"not needed: nothing lost ({warm.provider_requests} req.)"
    else:
        fetched = f"{'yes' if warm.provider_requests and covered else 'no'} ({warm.provider_requests} req.)"
    return f"{detected} | {'yes' if found else 'no'} | {fetched} | {'yes' if same else 'NO'} ({len(warm.fills)} fills)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="polygon", choices=["polygon", "yahoo", "alpaca", "ccxt"])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated damage kinds")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    work = Path(tempfile.mkdtemp(prefix="damage-matrix-"))
    started = time.perf_counter()
    crypto = args.source == "ccxt"
    scenario = Scenario("momentum x3", "momentum",
                        {"symbols": ["BTC", "ETH", "SOL"] if crypto else ["AAA", "BBB", "CCC"], "lookback": 5,
                         "top": 1, "period": 3, **({"asset_type": "crypto", "quote": "USDT"} if crypto else {})},
                        "2024-01-08", "2024-02-23", source=args.source)
    rows = []
    try:
        template = work / "template"
        cold = run_subprocess(scenario, "duckdb", "cold", template)
        for kind in kinds:
            for sealed in (True, False):
                read, checked, hit = read_column(work / "small", kind, sealed)
                shutil.rmtree(work / "small", ignore_errors=True)
                through = backtest_column(template, work / "run", scenario, cold, args.source, kind, sealed)
                expected = hit.expected or ("maybe (if decoding fails)" if not sealed and kind in UNSEALED_MAYBE
                                            else "none: only a checksum can tell")
                rows.append(f"| {kind} | {'in place' if sealed else 'no checksum'} | {expected} | {through} | "
                            f"{read} | {checked} |")
                print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    legend = "\n".join(f"- `{k}`: {describe(k)}" for k in kinds)
    text = "\n".join([
        f"Damage matrix, source {args.source}: {len(cold.fills)} fills in the undamaged run; "
        f"{time.perf_counter() - started:.0f} s. `python3 benchmarks/damage_matrix.py --source {args.source}`.", "",
        "| damage | file | expected check | backtest: detected | quarantined | fetched again | fills equal | "
        "store.read: detected; quarantined | verify: detected |",
        "|---|---|---|---|---|---|---|---|---|", *rows, "",
        "Backtests run in strict mode (a store failure raises instead of falling back to the legacy path): a "
        "finished run had no fallback.", "", legend, ""])
    suffix = "" if args.source == "polygon" else f"_{args.source}"
    output = args.output or Path(__file__).parent / "results" / f"damage_matrix{suffix}.md"
    output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
