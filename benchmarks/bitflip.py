"""Single-bit flips in the data pages (and footers) of valid store files: how many does the store catch?

For each trial a fresh copy of a valid file (a month of minute bars, 8,190 bars in 4 row groups, as a backtest's
fill writes it) gets one random bit flipped, then is read the way a backtest reads it (``store.read`` over its
range, in a process that has not checked it yet) and checked by ``maintain verify``. Outcomes:

* **detected**: the read raised ``CorruptFileError`` and set the file aside (with its reason);
* **served, same bars**: the flip changed nothing a reader sees (e.g. an unused statistics byte);
* **served, different bars**: the read returned other bars than were written, with no error. This must be 0.

Run for the files the store writes now (sealed: CRC-32 of the file in its name) and, for comparison, the same
files without the checksum (as written before it existed: only what decoding itself notices is caught).

Reproduce::

    python3 benchmarks/bitflip.py --flips 300          # about a minute; results in benchmarks/results/bitflip.md
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lumibot_duckdb.errors import CorruptFileError
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey, integrity
from lumibot_duckdb.store.damage import data_pages, flip_bit
from lumibot_duckdb.store.local import file_name
from lumibot_duckdb.store.maintenance import verify

KEY = SeriesKey("polygon", "AAA", "minute", quote="USD", adjustment="split")


def month_of_minutes(seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    index = pd.date_range("2024-01-02", periods=21 * 390, freq="1min", tz="UTC", name="ts")
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, len(index))))
    open_ = np.concatenate([[100.0], close[:-1]])
    high, low = np.maximum(open_, close) * 1.0005, np.minimum(open_, close) * 0.9995
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close,
                         "volume": rng.integers(1, 10_000, len(index)).astype(float), "vwap": (high + low) / 2,
                         "trade_count": rng.integers(1, 500, len(index))}, index=index)


def trial(root: Path, pristine: Path, token: str, where: str, rng: random.Random) -> tuple[str, str]:
    """One flip on a fresh store holding one copy of ``pristine``: (read outcome, verify outcome)."""
    if root.exists():
        shutil.rmtree(root)
    store = DuckDBDataStorage(root)
    folder = store.backend.series_dir(KEY) / "2024"
    folder.mkdir(parents=True)
    interval = Interval("2024-01-01", "2024-02-01")
    path = folder / file_name(interval, token)
    shutil.copyfile(pristine, path)
    expected = store.read(KEY, "2024-01-01", "2024-02-01")
    flip_bit(path, rng, where=where)
    integrity._CHECKED.clear()  # a process that has not checked this file yet
    checked = "found" if not verify(store).ok else "passed"
    try:
        served = store.read(KEY, "2024-01-01", "2024-02-01")
    except CorruptFileError:
        outcome = "detected"
    except Exception as exc:  # noqa: BLE001 - anything else is a crash the store should not let through
        outcome = f"crash {type(exc).__name__}"
    else:
        same = served.shape == expected.shape and served.equals(expected)
        outcome = "served, same bars" if same else "served, different bars"
    store.close()
    return outcome, checked


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flips", type=int, default=300, help="flips per file kind (sealed, unsealed)")
    parser.add_argument("--footer", type=int, default=60, help="flips in the footer per file kind")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "bitflip.md")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bitflip-"))
    started = time.perf_counter()
    try:
        source = DuckDBDataStorage(work / "source")
        source.write(KEY, month_of_minutes(), covered=("2024-01-01", "2024-02-01"))
        (bar_file,) = source.files(KEY)
        pristine = work / "pristine.parquet"
        shutil.copyfile(bar_file.path, pristine)
        lo, hi = data_pages(pristine)
        rows = []
        tallies: dict[tuple[str, str], collections.Counter[str]] = {}
        for kind, token in (("sealed", bar_file.token), ("unsealed", bar_file.token[:16] + "abcdef")):
            rng = random.Random(args.seed)
            for where, count in (("data", args.flips), ("footer", args.footer)):
                tally: collections.Counter[str] = collections.Counter()
                for _ in range(count):
                    outcome, checked = trial(work / "store", pristine, token, where, rng)
                    tally[outcome] += 1
                    tally[f"verify {checked}"] += 1
                tallies[(kind, where)] = tally
                detected = tally["detected"]
                rows.append(f"| {kind} | {where} pages | {count} | {detected} ({detected / count:.1%}) | "
                            f"{tally['served, same bars']} | {tally['served, different bars']} | "
                            f"{sum(v for k, v in tally.items() if k.startswith('crash'))} | "
                            f"{tally['verify found']} ({tally['verify found'] / count:.1%}) |")
                print(rows[-1], flush=True)
        text = "\n".join([
            f"Single-bit flips, one per trial, in a valid store file (a month of minute bars: "
            f"{pristine.stat().st_size:,} bytes, data pages at bytes {lo:,}-{hi:,}); seed {args.seed}; "
            f"{time.perf_counter() - started:.0f} s. `python3 benchmarks/bitflip.py --flips {args.flips}`.", "",
            "| file | flipped in | flips | read: detected, set aside | read: served, same bars | "
            "read: served, different bars | crashes | `verify` found |",
            "|---|---|---|---|---|---|---|---|", *rows, "",
            "Sealed files carry the CRC-32 of their bytes in their name: CRC-32 detects every single-bit error, so "
            "every flip that changes the file is found before a bar is served. Unsealed files (written before "
            "checksums) are caught only where decoding fails; `maintain seal` gives them the checksum.", ""])
        args.output.write_text(text)
        print(text)
        bad = sum(t["served, different bars"] + sum(v for k, v in t.items() if k.startswith("crash"))
                  for (kind, _), t in tallies.items() if kind == "sealed")
        return 1 if bad else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
