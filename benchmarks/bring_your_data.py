"""Bring your data: importing Lumibot's own caches, fetching a universe, retries, progress (offline, emulated).

Parts (each writes its section of ``benchmarks/results/bring_your_data.{json,md}``; sections not run keep
their last figures):

* ``import``: Lumibot's legacy caches filled by its own cold runs of the universe benchmark's scenarios
  (``benchmarks/universe.py``: Polygon daily momentum and minute scan, CCXT minute scan; Yahoo and Alpaca
  daily momentum), then ``import_cache`` into a fresh store (``--repeat`` times, each into a new store:
  time median [min–max]), then the DuckDB path's warm run on the imported store beside Lumibot's warm
  run: provider requests and parity. ``--symbols N`` picks the universe size (the universe benchmark's is
  50), ``--end`` the last day (default its year).
* ``fetch``: ``fetch`` of ``--symbols`` symbols x a year of minute bars from the emulated Polygon
  (requests, time), then the minute-scan backtest over that year on the fetched store (requests, parity
  with a DuckDB cold run), then the same fetch interrupted halfway (Ctrl-C at the request halfway) and
  run again: what each asked.
* ``retry``: the emulated Polygon answering HTTP 500 twice then 200 (one series stored, one warning, the
  real waits), and one that keeps failing (the error text).
* ``capture``: the terminal lines of the progress bars, a cold fill inside a backtest and a fetch, each run
  on a pseudo-terminal (``script``), as a user sees them.

Reproduce::

    python3 dev.py bench benchmarks/bring_your_data.py --part import --symbols 10 --repeat 3
    python3 dev.py bench benchmarks/bring_your_data.py --part fetch --symbols 10
    python3 dev.py bench benchmarks/bring_your_data.py --part retry
    python3 dev.py bench benchmarks/bring_your_data.py --part capture

Caches live in ``--workdir`` (default ``$TMPDIR/lumibot-duckdb-bring-your-data``) and are reused.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "bring_your_data"
START, END = "2023-01-03", "2024-01-01"


# -- import -------------------------------------------------------------------------------------------
def import_scenarios(count: int, end: str) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from universe import UNIVERSE, _momentum, _scan

    from lumibot_duckdb.ab.harness import Scenario

    symbols = list(UNIVERSE[:count])
    daily = _momentum(count)
    return {
        f"polygon-daily{count}": dataclasses.replace(daily, end=end),
        f"polygon-minute{count}": dataclasses.replace(_scan("polygon", count, 390), end=end),
        f"ccxt-minute{count}": dataclasses.replace(_scan("ccxt", count, 1440, asset_type="crypto", quote="USDT"),
                                                   end=end),
        f"yahoo-daily{count}": Scenario(f"yahoo daily momentum x{count}", "momentum",
                                        {"symbols": symbols, "lookback": 20, "top": 5, "period": 5}, START, end,
                                        source="yahoo"),
        f"alpaca-daily{count}": Scenario(f"alpaca daily momentum x{count}", "momentum",
                                         {"symbols": symbols, "lookback": 20, "top": 5, "period": 5}, START, end,
                                         source="alpaca"),
    }


def run_import(workdir: Path, count: int, end: str, repeat: int, only: list[str]) -> list[dict[str, Any]]:
    from lumibot_duckdb.ab.harness import compare, run_subprocess
    from lumibot_duckdb.ingest.cache import import_cache

    rows = []
    for name, scenario in import_scenarios(count, end).items():
        if only and name not in only:
            continue
        folder = workdir / "import" / name
        marker = folder / "legacy" / ".filled"
        if not marker.exists():
            print(f"{name}: filling Lumibot's cache with a cold legacy run ...", flush=True)
            cold = run_subprocess(scenario, "legacy", "cold", folder / "legacy", fast=True, timeout=6 * 3600)
            marker.write_text(json.dumps(dataclasses.asdict(cold)))
        cold = json.loads(marker.read_text())
        legacy_warm = run_subprocess(scenario, "legacy", "warm", folder / "legacy", timeout=6 * 3600)
        cache = folder / "legacy" / "lumibot-cache"
        seconds, report = [], None
        for attempt in range(repeat):
            target = folder / f"imported-{attempt}"
            shutil.rmtree(target, ignore_errors=True)
            started = time.perf_counter()
            report = import_cache(target / "duckdb", cache, credentials=["offline-key"],
                                  include_rounded=scenario.source == "ccxt", progress=False)
            seconds.append(time.perf_counter() - started)
        assert report is not None
        default = (import_cache(folder / "default" / "duckdb", cache, credentials=["offline-key"], dry_run=True,
                                progress=False) if scenario.source == "ccxt" else None)
        ours = run_subprocess(scenario, "duckdb", "warm", folder / f"imported-{repeat - 1}", timeout=6 * 3600)
        (parity,) = compare([legacy_warm, ours])
        skipped: dict[str, int] = {}
        for item in report.items:
            for reason, n in item.skipped.items():
                skipped[reason] = skipped.get(reason, 0) + n
            if item.status == "skipped":
                skipped[f"whole file: {item.reason[:80]}"] = skipped.get(f"whole file: {item.reason[:80]}", 0) + 1
        row = {
            "scenario": name, "source": scenario.source, "symbols": count,
            "window": f"{scenario.start}..{scenario.end}",
            "legacy_cold_seconds": cold["wall_seconds"], "legacy_cache_bytes": cold["bytes_on_disk"],
            "legacy_cache_bars": cold["bars_on_disk"],
            "import_seconds": seconds, "files": len(report.items), "bars_imported": report.bars,
            "series_imported": sum(1 for i in report.items if i.status == "imported"),
            "skipped": skipped, "notes": sorted({n for i in report.items for n in i.notes})[:6],
            "default_without_rounded": (None if default is None else
                                        {"bars": default.bars, "skipped_files": sum(1 for i in default.items
                                                                                    if i.status == "skipped"),
                                         "reason": next((i.reason for i in default.items if i.reason), "")}),
            "duckdb_warm_requests": ours.requests, "duckdb_warm_seconds": ours.wall_seconds,
            "legacy_warm_requests": legacy_warm.requests, "legacy_warm_seconds": legacy_warm.wall_seconds,
            "fills": len(ours.fills), "legacy_final": legacy_warm.final_value, "duckdb_final": ours.final_value,
            "identical": parity.identical, "difference": parity.detail,
        }
        if not parity.identical:  # where a declared legacy defect applies: its reference
            reference = run_subprocess(scenario, "legacy-fixed", "cold", folder / "reference", fast=True,
                                       timeout=6 * 3600)
            row["reference_final"] = reference.final_value
            row["equals_reference"] = (reference.fills, reference.final_value) == (ours.fills, ours.final_value)
        print(json.dumps(row, default=str), flush=True)
        rows.append(row)
    return rows


# -- fetch --------------------------------------------------------------------------------------------
def run_fetch(workdir: Path, count: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    from universe import UNIVERSE, _scan

    from lumibot_duckdb.ab.harness import compare, run_subprocess
    from lumibot_duckdb.fetch import fetch
    from lumibot_duckdb.testing.market import SyntheticMarket
    from lumibot_duckdb.testing.polygon import serve_polygon

    symbols = list(UNIVERSE[:count])
    first, last = "2022-12-19", "2023-12-31"  # the year, plus the two weeks its first days read back
    folder = workdir / "fetch"
    shutil.rmtree(folder, ignore_errors=True)
    out: dict[str, Any] = {"symbols": count, "range": f"{first}..{last}", "timeframe": "minute"}
    with serve_polygon(SyntheticMarket(1)) as polygon:
        started = time.perf_counter()
        report = fetch(folder / "full" / "duckdb", source="polygon", symbols=symbols, timeframe="minute", start=first,
                       end=last, progress=False)
        out["fetch_seconds"] = time.perf_counter() - started
        out["fetch_requests"] = polygon.count("aggs")
        out["fetch_other_requests"] = polygon.count() - polygon.count("aggs")
        out["fetch_bars"] = report.bars
        out["fetch_ok"] = report.ok
        polygon.reset()
        again = fetch(folder / "full" / "duckdb", source="polygon", symbols=symbols, timeframe="minute", start=first,
                      end=last, progress=False)
        out["refetch_requests"] = polygon.count()
        out["refetch_statuses"] = sorted({s.status for s in again.series})
        # interrupted halfway (Ctrl-C when the request halfway is asked), then resumed
        polygon.reset()
        total = out["fetch_requests"]
        asked = {"n": 0}

        def interrupt(request: Any) -> Any:
            if request.kind == "aggs":
                asked["n"] += 1
                if asked["n"] == total // 2:
                    raise KeyboardInterrupt
            return None

        polygon.intercept(interrupt)
        first_run = fetch(folder / "interrupted" / "duckdb", source="polygon", symbols=symbols, timeframe="minute",
                          start=first, end=last, progress=False)
        out["interrupted_requests"] = polygon.count("aggs")
        out["interrupted_chunks_stored"] = sum(s.chunks for s in first_run.series)
        out["interrupted_statuses"] = [s.status for s in first_run.series]
        polygon.interceptors.clear()
        polygon.reset()
        resumed = fetch(folder / "interrupted" / "duckdb", source="polygon", symbols=symbols, timeframe="minute",
                        start=first, end=last, progress=False)
        out["resumed_requests"] = polygon.count("aggs")
        out["resumed_ok"] = resumed.ok
        out["resumed_asked_only_missing"] = out["resumed_requests"] == total - out["interrupted_chunks_stored"]
    print(json.dumps(out, default=str), flush=True)
    scan = _scan("polygon", count, 390)
    warm = run_subprocess(scan, "duckdb", "warm", folder / "full", timeout=6 * 3600)
    cold = run_subprocess(scan, "duckdb", "cold", folder / "cold", timeout=6 * 3600)
    (parity,) = compare([dataclasses.replace(cold, variant="legacy", phase="warm"), warm])  # (pairs by variant)
    out.update(backtest=scan.name, backtest_window=f"{scan.start}..{scan.end}", backtest_requests=warm.requests,
               backtest_seconds=warm.wall_seconds, cold_backtest_requests=cold.requests,
               cold_backtest_seconds=cold.wall_seconds, fills=len(warm.fills), final_value=warm.final_value,
               same_as_cold_backtest=parity.identical)
    print(json.dumps(out, default=str), flush=True)
    return out


# -- retry --------------------------------------------------------------------------------------------
def run_retry(workdir: Path) -> dict[str, Any]:
    import logging

    from lumibot_duckdb.fetch import fetch
    from lumibot_duckdb.testing.market import SyntheticMarket
    from lumibot_duckdb.testing.polygon import serve_polygon

    os.environ.pop("LUMIBOT_DUCKDB_RETRY_WAIT", None)  # the real waits
    folder = workdir / "retry"
    shutil.rmtree(folder, ignore_errors=True)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(f"{record.levelname} {record.getMessage()}")

    logging.getLogger("lumibot_duckdb").addHandler(Keep())
    logging.getLogger("lumibot_duckdb").setLevel(logging.INFO)
    out: dict[str, Any] = {}
    with serve_polygon(SyntheticMarket(1)) as polygon:
        polygon.fail("error", symbol="AAA", times=2)  # HTTP 500 twice, then 200
        started = time.perf_counter()
        report = fetch(folder / "flaky", source="polygon", symbols=["AAA"], timeframe="day", start="2024-01-02",
                       end="2024-01-31", progress=False)
        out["flaky"] = {"seconds": time.perf_counter() - started, "requests": polygon.count("aggs"),
                        "statuses": [s.status for s in report.series], "bars": report.bars, "retries":
                        report.series[0].retries, "log": list(records),
                        "warnings": sum(1 for r in records if r.startswith("WARNING"))}
        records.clear()
        polygon.reset()
        polygon.fail("error", symbol="BBB")  # every time
        started = time.perf_counter()
        report = fetch(folder / "down", source="polygon", symbols=["BBB"], timeframe="day", start="2024-01-02",
                       end="2024-01-31", progress=False)
        out["down"] = {"seconds": time.perf_counter() - started, "requests": polygon.count("aggs"),
                       "statuses": [s.status for s in report.series], "error": report.series[0].error,
                       "log": list(records)}
    print(json.dumps(out, indent=1, default=str), flush=True)
    return out


# -- capture ------------------------------------------------------------------------------------------
CAPTURE_BACKTEST = r"""
import os, sys, datetime as dt
from pathlib import Path
from lumibot_duckdb.testing.offline import isolated_environment
work = Path(sys.argv[1]); os.environ.update(isolated_environment(work)); os.chdir(work)
from lumibot_duckdb.testing.market import SyntheticMarket
from lumibot_duckdb.testing.polygon import serve_polygon
from lumibot_duckdb.testing.strategies import STRATEGIES
from lumibot_duckdb import PolygonDataBacktesting
from lumibot.backtesting import PolygonDataBacktesting as Legacy
with serve_polygon(SyntheticMarket(1)):
    for cls, extra in ((Legacy, {}), (PolygonDataBacktesting, {"use_duckdb": True})):
        print(f"--- {cls.__module__}.{cls.__name__}, cold cache, quiet_logs=False", file=sys.stderr, flush=True)
        STRATEGIES["minute_scan"].run_backtest(
            cls, dt.datetime(2024, 1, 2), dt.datetime(2024, 3, 1), benchmark_asset=None, risk_free_rate=0.0,
            show_plot=False, show_tearsheet=False, save_tearsheet=False, show_indicators=False,
            show_progress_bar=True, quiet_logs=False, save_stats_file=False, analyze_backtest=False,
            budget=100_000, polygon_api_key="offline-key",
            parameters={"symbols": ["AAA", "BBB"], "bars": 390, "top": 1, "period": 5}, **extra)
"""

CAPTURE_FETCH = r"""
import os, sys
from pathlib import Path
from lumibot_duckdb.testing.offline import isolated_environment
work = Path(sys.argv[1]); os.environ.update(isolated_environment(work)); os.chdir(work)
from lumibot_duckdb.testing.market import SyntheticMarket
from lumibot_duckdb.testing.polygon import serve_polygon
from lumibot_duckdb.cli import main
with serve_polygon(SyntheticMarket(1)) as polygon:
    polygon.fail("error", symbol="CCC", times=2)
    main(["fetch", "--source", "polygon", "AAA", "BBB", "CCC", "--timeframe", "minute", "--start", "2023-01-01",
          "--end", "2023-12-31", "--store", str(work / "store")], standalone_mode=False)
"""


def run_capture(workdir: Path) -> dict[str, Any]:
    out = {}
    shown = {"cold fill inside a backtest": ("---", "Downloading and caching", "Fetching", "Progress |"),
             "fetch": ()}
    for name, code in (("cold fill inside a backtest", CAPTURE_BACKTEST), ("fetch", CAPTURE_FETCH)):
        folder = workdir / "capture" / re.sub(r"\W+", "-", name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        script = folder / "run.py"
        script.write_text(code)
        log = folder / "typescript"
        command = f"stty cols 120 rows 40; {sys.executable} {script} {folder}"  # a terminal of a real size
        subprocess.run(["script", "-qfec", command, str(log)], env={**os.environ, "PYTHONWARNINGS": "ignore"},
                       check=False, timeout=3600, stdout=subprocess.DEVNULL)
        out[name] = terminal_lines(log.read_bytes().decode("utf-8", "replace"), shown[name])
        print(f"== {name}\n" + "\n".join(out[name]), flush=True)
    return out


def terminal_lines(raw: str, only: tuple[str, ...] = ()) -> list[str]:
    """What a terminal shows: a carriage return redraws the line, so each bar keeps its last state (bars that
    shared a line, one after the other, each keep theirs). ``only``: keep the lines with one of these."""
    raw = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    lines: list[str] = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        last: dict[str, str] = {}
        for state in (s.rstrip() for s in line.split("\r")):
            if state.strip():
                label = state.split("%|", 1)[0].rsplit(":", 1)[0] if "%|" in state else state
                label = "Progress" if state.startswith("Progress |") else label
                last[label] = state
        lines += list(last.values())
    lines = [ln for ln in lines if not ln.startswith(("Script started", "Script done"))]
    return [ln for ln in lines if not only or any(word in ln for word in only)]


# -- report --------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} s [{min(values):.2f}–{max(values):.2f}], n={len(values)}"

    parts = [f"Measured {results.get('machine', '?')}; offline, providers emulated at their seams "
             "(lumibot_duckdb.testing). The machine was shared with other jobs: times are indicative, counts exact.",
             ""]
    rows = results.get("import") or []
    if rows:
        parts += ["## Import of Lumibot's legacy caches (import-cache), then the DuckDB warm run", "",
                  "| scenario | legacy cache (bars, bytes) | import time | files | series | bars imported | "
                  "left out | DuckDB warm requests | legacy warm requests | fills | final legacy warm / DuckDB | "
                  "parity |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            left = "; ".join(f"{n:,} {why}" for why, n in r["skipped"].items()) or "none"
            warm = sum(r["duckdb_warm_requests"].values())
            legacy = ", ".join(f"{k} {v}" for k, v in r["legacy_warm_requests"].items() if v) or "0"
            verdict = "identical" if r["identical"] else (
                f"declared: equals legacy-fixed ({r.get('reference_final', 0):,.2f})" if r.get("equals_reference")
                else f"DIFFERENT: {r['difference']}")
            parts.append(f"| {r['scenario']} ({r['window']}) | {r['legacy_cache_bars']:,}, "
                         f"{r['legacy_cache_bytes']:,} | {med(r['import_seconds'])} | {r['files']} | "
                         f"{r['series_imported']} | {r['bars_imported']:,} | "
                         f"{left} | {warm} | {legacy} | {r['fills']} | {r['legacy_final']:,.2f} / "
                         f"{r['duckdb_final']:,.2f} | {verdict} |")
        for r in rows:
            if r.get("default_without_rounded"):
                d = r["default_without_rounded"]
                parts.append(f"\n{r['scenario']} without `--include-rounded` (the default): {d['skipped_files']} "
                             f"file(s) skipped, {d['bars']:,} bars imported; the reason given: \"{d['reason']}\"")
            if r["notes"]:
                parts.append(f"\n{r['scenario']} notes: " + " / ".join(r["notes"]))
        parts.append("")
    f = results.get("fetch")
    if f:
        parts += ["## fetch of a universe (emulated Polygon)", "",
                  f"- fetch {f['symbols']} symbols x {f['range']} of minute bars: {f['fetch_requests']} aggregate "
                  f"requests ({f['fetch_other_requests']} other), {f['fetch_bars']:,} bars, "
                  f"{f['fetch_seconds']:.1f} s; "
                  f"the same fetch again: {f['refetch_requests']} requests ({', '.join(f['refetch_statuses'])}).",
                  f"- then the backtest {f['backtest']} over {f['backtest_window']} on the fetched store: requests "
                  f"{f['backtest_requests']}, {f['backtest_seconds']:.1f} s, {f['fills']} fills, final value "
                  f"{f['final_value']:,.2f}; a DuckDB cold run of it: requests {f['cold_backtest_requests']}, "
                  f"{f['cold_backtest_seconds']:.1f} s; same fills and final value: {f['same_as_cold_backtest']}.",
                  f"- interrupted (Ctrl-C at aggregate request {f['fetch_requests'] // 2} of {f['fetch_requests']}): "
                  f"{f['interrupted_requests']} requests made, {f['interrupted_chunks_stored']} chunks stored "
                  f"(series: {', '.join(f['interrupted_statuses'])}); run again: {f['resumed_requests']} requests "
                  f"(only the rest: {f['resumed_asked_only_missing']}), complete: {f['resumed_ok']}.", ""]
    r = results.get("retry")
    if r:
        parts += ["## Retries (emulated Polygon, real waits)", "",
                  f"- HTTP 500 twice, then 200: {r['flaky']['requests']} requests, {r['flaky']['seconds']:.1f} s, "
                  f"statuses {r['flaky']['statuses']}, {r['flaky']['bars']} bars stored, {r['flaky']['warnings']} "
                  "warning(s). Log:", "", "```", *r["flaky"]["log"], "```", "",
                  f"- HTTP 500 every time: {r['down']['requests']} requests, {r['down']['seconds']:.1f} s, statuses "
                  f"{r['down']['statuses']}. The error:", "", "```", r["down"]["error"], "```", "",
                  "Log:", "", "```", *r["down"]["log"], "```", ""]
    c = results.get("capture")
    if c:
        parts += ["## Progress, as a terminal shows it (captured on a pseudo-terminal)", ""]
        for name, lines in c.items():
            parts += [f"{name}:", "", "```", *lines, "```", ""]
    return "\n".join(parts)


def machine() -> str:
    import datetime
    import platform

    import duckdb
    import pandas

    try:
        from importlib.metadata import version

        lumibot_version = version("lumibot")
    except Exception:  # noqa: BLE001
        lumibot_version = "?"
    return (f"{datetime.date.today()} on {os.cpu_count()} CPUs, {platform.machine()}, Python "
            f"{platform.python_version()}, lumibot {lumibot_version}, duckdb {duckdb.__version__}, "
            f"pandas {pandas.__version__}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", choices=["import", "fetch", "retry", "capture"], required=True)
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--end", default=END, help="last day of the import scenarios (default: the year)")
    parser.add_argument("--scenario", action="append", default=[], help="import only these scenarios")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "lumibot-duckdb-bring-your-data")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    kept = RESULTS.with_suffix(".json")
    results = json.loads(kept.read_text()) if kept.exists() else {}
    if "fetch" in args.part or "retry" in args.part:  # Lumibot in this process: its folders inside the workdir
        from lumibot_duckdb.testing.offline import isolated_environment

        os.environ.update(isolated_environment(args.workdir / "in-process"))
        os.chdir(args.workdir)
    for part in args.part:
        if part == "import":
            fresh = run_import(args.workdir, args.symbols, args.end, args.repeat, args.scenario)
            ran = {r["scenario"] for r in fresh}
            results["import"] = [r for r in results.get("import", []) if r["scenario"] not in ran] + fresh
        elif part == "fetch":
            results["fetch"] = run_fetch(args.workdir, args.symbols)
        elif part == "retry":
            results["retry"] = run_retry(args.workdir)
        else:
            results["capture"] = run_capture(args.workdir)
    results["machine"] = machine()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(results, indent=1, default=str))
    RESULTS.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
