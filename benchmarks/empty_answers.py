"""Empty answers that heal: what the rule costs in provider requests, and what a healed run trades.

The scenario, on every source's offline provider: a provider outage answers "no bars" to every request of a
cold backtest (a daily buy-and-hold of one symbol, Jan 2-20 2024). Then:

1. **same day**, provider healthy again: the warm rerun asks nothing (the empty answers are remembered);
2. **a day later** (the rule's clock moved by :data:`lumibot_duckdb.store.answers.RECHECK_AFTER`): the rerun asks
   the empty ranges again, once, and trades as a run on a clean store does;
3. **later still**: the rerun asks nothing again (warm reruns ask nothing beyond the rule's horizon).

And when the provider answers empty the second time too (a symbol without bars): one request more, then the
range is trusted for good. Requests are the provider calls the offline fake counted (Lumibot's own included).

Reproduce (about a minute; in-process runs, so the rule's clock can be moved)::

    python3 benchmarks/empty_answers.py          # results in benchmarks/results/empty_answers.md
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

WORK = Path(tempfile.mkdtemp(prefix="empty-answers-"))


def main() -> int:
    from lumibot_duckdb.testing.offline import isolated_environment

    os.environ.update(isolated_environment(WORK))  # before Lumibot is imported (it reads its folders once)
    os.chdir(WORK)
    import pandas as pd

    from lumibot_duckdb.ab.harness import Scenario, run_here
    from lumibot_duckdb.store import answers

    started = time.perf_counter()
    real_now = answers.now
    rows = []
    for source in ("polygon", "yahoo", "alpaca", "ccxt"):
        crypto = source == "ccxt"
        scenario = Scenario("buy-and-hold", "buy_and_hold",
                            {"symbol": "BTC" if crypto else "AAA",
                             **({"asset_type": "crypto", "quote": "USDT"} if crypto else {})},
                            "2024-01-02", "2024-01-20", source=source)

        def run(phase: str, folder: str, fault: str | None = None, shift: pd.Timedelta | None = None,
                scenario: Scenario = scenario, source: str = source) -> object:
            answers.now = (lambda: real_now() + shift) if shift is not None else real_now
            try:
                return run_here(scenario, "duckdb", phase, WORK / source / folder, fast=True,
                                on_serve=(lambda p: p.fail(fault)) if fault else None)
            finally:
                answers.now = real_now

        clean = run("cold", "clean")
        outage = run("cold", "outage", fault="empty")
        same_day = run("warm", "outage")
        day = answers.RECHECK_AFTER + pd.Timedelta(minutes=1)
        healed = run("warm", "outage", shift=day)
        later = run("warm", "outage", shift=day * 30)
        run("cold", "never", fault="empty")
        second = run("warm", "never", fault="empty", shift=day)
        trusted = run("warm", "never", shift=day * 30)

        def cell(result: object, *, reference: object = clean) -> str:
            same = (result.fills, result.final_value) == (reference.fills, reference.final_value)  # type: ignore
            return f"{result.provider_requests} req., {len(result.fills)} fills{' (= clean)' if same else ''}"

        rows.append(f"| {source} | {cell(clean)} | {cell(outage)} | {cell(same_day)} | {cell(healed)} | "
                    f"{cell(later)} | {second.provider_requests} req., then {trusted.provider_requests} |")
        print(rows[-1], flush=True)
    text = "\n".join([
        f"Empty answers that heal (rule: asked again once, on the first request at least "
        f"{answers.RECHECK_AFTER} after the empty answer; then trusted). Daily buy-and-hold, Jan 2-20 2024, "
        f"offline providers; {time.perf_counter() - started:.0f} s. `python3 benchmarks/empty_answers.py`.", "",
        "| source | clean store, cold | outage (all answers empty), cold | same day, healthy | a day later, healthy "
        "| 30 days later | answered empty twice: a day later, then 30 days later |",
        "|---|---|---|---|---|---|---|", *rows, "",
        "Requests counted by the offline provider (every kind: bars, and e.g. Yahoo's info, CCXT's markets).", ""])
    out = Path(__file__).resolve().parent / "results" / "empty_answers.md"
    out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
