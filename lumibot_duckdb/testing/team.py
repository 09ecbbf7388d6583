"""A team's store under load: writer and reader processes on one shared store, for tests and benchmarks.

The provider is deterministic (each bar a pure function of symbol and minute) and slow (``latency``
seconds per request); symbol ``LATE`` answers every range with no bars. Every fetch is appended to a log
file (one line, ``O_APPEND``), so a run can count how often each gap was asked for.

* :func:`race_plan` - the gaps of 4 writers: the same gap for all four at once, an empty gap for all four,
  two series of their own for two periods each, and a range overlapping what is stored (19 distinct gaps).
* ``python -m lumibot_duckdb.testing.team writer|reader|holder SPEC`` runs one process of a race and prints
  its report as one JSON line (:func:`run_writer`, :func:`run_reader`, :func:`run_holder`).
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
import traceback
from typing import Any

import numpy as np
import pandas as pd

from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey, missing_ranges

EMPTY_SYMBOL = "LATE"


def series(symbol: str) -> SeriesKey:
    return SeriesKey("team", symbol, "minute", quote="USD")


def provider_bars(symbol: str, interval: Interval) -> pd.DataFrame:
    """Every minute of ``interval``, values a pure function of (symbol, minute); nothing for :data:`EMPTY_SYMBOL`."""
    if symbol == EMPTY_SYMBOL:
        index = pd.DatetimeIndex([], tz="UTC", name="ts")
    else:
        index = pd.date_range(interval.start, interval.end, freq="1min", inclusive="left", name="ts")
    minutes = (index.asi8 // 60_000_000_000).astype("float64")
    base = 10.0 + sum(map(ord, symbol)) % 97
    close = base + (minutes * 7919.0 % 10007.0) / 1000.0
    return pd.DataFrame({"open": close - 0.01, "high": close + 0.02, "low": close - 0.02, "close": close,
                         "volume": minutes % 1000.0 + 1.0}, index=index)


def race_plan(periods: list[str], *, writers: int = 4) -> list[list[tuple[str, str, str]]]:
    """Per writer, the ``(symbol, start, end)`` ranges it fills, in order. ``periods`` are 3 boundaries of two
    consecutive periods (e.g. months): ``[p0, p1, p2]``."""
    p0, p1, p2 = (pd.Timestamp(p, tz="UTC") for p in periods)
    middle = lambda a, b: (a + (b - a) / 2).floor("min").isoformat()  # noqa: E731
    plans = []
    for w in range(writers):
        plan = [("AAA", p0.isoformat(), p1.isoformat()), (EMPTY_SYMBOL, p0.isoformat(), p1.isoformat())]
        for own in (f"W{w}A", f"W{w}B"):
            plan += [(own, p0.isoformat(), p1.isoformat()), (own, p1.isoformat(), p2.isoformat())]
        plan.append(("AAA", middle(p0, p1), middle(p1, p2)))  # overlaps AAA's first period: only the rest is new
        plans.append(plan)
    return plans


def expected_gaps(plans: list[list[tuple[str, str, str]]]) -> set[tuple[str, str, str]]:
    """The distinct gaps a race of ``plans`` must fetch, each exactly once."""
    covered: dict[str, list[Interval]] = {}
    gaps = set()
    for step in range(max(len(p) for p in plans)):
        for plan in plans:
            if step >= len(plan):
                continue
            symbol, start, end = plan[step]
            for gap in missing_ranges(covered.get(symbol, []), Interval(start, end)):
                gaps.add((symbol, gap.start.isoformat(), gap.end.isoformat()))
                covered.setdefault(symbol, []).append(gap)
    return gaps


def _ready_set_go(spec: dict[str, Any]) -> None:
    """Say "ready" on stdout, then wait for the file ``spec["go"]`` (so every process starts at once)."""
    print("ready", flush=True)
    while not os.path.exists(spec["go"]):
        time.sleep(0.005)


def _stopped(spec: dict[str, Any]) -> bool:
    return os.path.exists(spec["stop"])


def run_writer(spec: dict[str, Any]) -> dict[str, Any]:
    """Fill ``spec["plan"]`` as a backtest's fill does: take the series' lock, fetch only what is missing."""
    store = DuckDBDataStorage(spec["store"], role="write", cache_dir=spec.get("cache"))
    _ready_set_go(spec)
    errors: list[str] = []
    fetched = 0
    commits: list[float] = []
    for symbol, start, end in spec["plan"]:
        try:
            with store.writer(series(symbol)) as writer:
                for gap in writer.missing(Interval(start, end)):
                    time.sleep(spec.get("latency", 0.0))
                    bars = provider_bars(symbol, gap)
                    with open(spec["log"], "a") as log:
                        log.write(json.dumps([symbol, gap.start.isoformat(), gap.end.isoformat(), os.getpid()]) + "\n")
                    started = time.perf_counter()
                    writer.write(bars, covered=gap)
                    commits.append(time.perf_counter() - started)
                    fetched += 1
        except Exception:  # noqa: BLE001 - every failure is reported, none ends the race
            errors.append(traceback.format_exc(limit=3))
    stats = store.remote_stats()
    waits = stats.get("lease_waits", stats.get("lock_waits", []))
    return {"role": "writer", "fetched": fetched, "errors": errors, "lease_waits": waits, "commit_seconds": commits,
            "requests": stats.get("total", 0)}


def run_reader(spec: dict[str, Any]) -> dict[str, Any]:
    """Until the file ``spec["stop"]`` exists: pick a series and a period, read every covered part of it, and
    check that it holds every bar the provider has for it, once, exactly (readers only ever see whole files)."""
    store = DuckDBDataStorage(spec["store"], role="read", cache_dir=spec.get("cache"))
    rng = random.Random(spec.get("seed", 0))
    _ready_set_go(spec)
    reads = checked_bars = 0
    errors: list[str] = []
    bad: list[str] = []
    while not _stopped(spec):
        symbol = rng.choice(spec["symbols"])
        start, end = rng.choice(spec["ranges"])
        wanted = Interval(start, end)
        try:
            for run in store.coverage(series(symbol)):
                part = run.intersection(wanted)
                if part is None:
                    continue
                got = store.read(series(symbol), part.start, part.end)
                want = provider_bars(symbol, part)
                reads += 1
                checked_bars += len(got)
                if len(got) != len(want) or not got.index.is_unique or not (
                        np.array_equal(got.index.asi8, want.index.as_unit("us").asi8)
                        and np.array_equal(got["close"].to_numpy(), want["close"].to_numpy())):
                    bad.append(f"{symbol} {part}: {len(got)} bars, expected {len(want)}")
        except Exception:  # noqa: BLE001 - counted and reported
            errors.append(traceback.format_exc(limit=3))
        time.sleep(spec.get("pause", 0.0))
    return {"role": "reader", "reads": reads, "bars": checked_bars, "bad": bad, "errors": errors}


def run_holder(spec: dict[str, Any]) -> dict[str, Any]:
    """Take a series' lease, publish one range, say "holding" on stdout, then hang (to be killed)."""
    store = DuckDBDataStorage(spec["store"], role="write")
    symbol, start, end = spec["publish"]
    with store.writer(series(symbol)) as writer:
        writer.write(provider_bars(symbol, Interval(start, end)), covered=(start, end))
        print("holding", flush=True)
        time.sleep(spec.get("hang", 600))
    return {"role": "holder"}


def main(argv: list[str]) -> int:
    role, spec = argv[0], json.loads(argv[1])
    report = {"writer": run_writer, "reader": run_reader, "holder": run_holder}[role](spec)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
