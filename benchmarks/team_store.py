"""A team's store on S3, measured on loopback (moto's S3 server on 127.0.0.1, started and stopped here).

1. **race**: 4 writer + 4 reader processes (``lumibot_duckdb.testing.team``) on one S3 store: month-sized gaps,
   a provider answering in ``--latency`` seconds; all four writers want the same month at once, then an empty
   month, then two series of their own for two months, then a range overlapping what is stored (19 distinct
   gaps). Reported: fetches per gap, errors, duplicate bars, lease waits (median, max), reads checked.
2. **backtests**: per scenario, each run a fresh process (the A/B harness), every S3 request through a counting
   proxy: Lumibot legacy cold; DuckDB on a folder, cold; DuckDB as an S3 *writer*, cold (fills the team store
   from the provider); DuckDB as an S3 *reader* on a fresh machine (empty mirror), cold; the same reader warm
   (listings fresh; listings expired, as the next day; listing TTL 0). S3 requests (LIST, GET, PUT, DELETE) and
   bytes, provider requests, wall, fills and final value.
3. **crash**: a writer SIGKILLed while holding a series' lease: the time until the next writer takes over
   (lease TTL 10 s and the default 30 s), and what a reader of that series saw meanwhile.

Reproduce (about 10 minutes on 2 cores)::

    python3 dev.py bench benchmarks/team_store.py                # needs the s3-test extra (moto, flask)
    python3 dev.py bench benchmarks/team_store.py --part race --latency 0.3

Results go to ``benchmarks/results/team_store.md`` and ``.json``. moto is an emulator: its request latency
is not S3's (timings are for comparison on this machine only); request, byte and correctness counts are.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import duckdb
from ab_polygon import machine
from ab_sources import scenarios

from lumibot_duckdb.ab.harness import RunResult, Scenario, finish, spawn
from lumibot_duckdb.store import DuckDBDataStorage, Interval
from lumibot_duckdb.testing.s3server import S3Proxy, create_bucket, moto_server, s3_environment
from lumibot_duckdb.testing.team import expected_gaps, race_plan, series

BUCKET = "team-bench"


def _team(role: str, spec: dict[str, Any], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "lumibot_duckdb.testing.team", role, json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _report(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=1800)
    if process.returncode != 0:
        raise RuntimeError(err[-3000:])
    return json.loads(out.strip().splitlines()[-1])


def race(endpoint: str, folder: Path, latency: float) -> dict[str, Any]:
    location = f"s3://{BUCKET}/race-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **s3_environment(endpoint), "LUMIBOT_DUCKDB_CACHE_DIR": str(folder / "cache"),
           "LUMIBOT_DUCKDB_S3_LISTING_TTL": "0"}
    plans = race_plan(["2024-01-01", "2024-02-01", "2024-03-01"])
    log, go, stop = folder / "fetches.jsonl", folder / "go", folder / "stop"
    symbols = sorted({s for plan in plans for s, _, _ in plan})
    common = {"store": location, "go": str(go), "stop": str(stop)}
    writers = [_team("writer", {**common, "plan": plan, "log": str(log), "latency": latency},
                     {**env, "LUMIBOT_DUCKDB_CACHE_DIR": str(folder / f"w{i}")}) for i, plan in enumerate(plans)]
    readers = [_team("reader", {**common, "symbols": symbols, "seed": i, "pause": 0.05,
                                "ranges": [["2024-01-01", "2024-02-01"], ["2024-01-15", "2024-02-15"],
                                           ["2024-02-01", "2024-03-01"]]},
                     {**env, "LUMIBOT_DUCKDB_CACHE_DIR": str(folder / f"r{i}")}) for i in range(4)]
    for process in writers + readers:
        if process.stdout.readline().strip() != "ready":
            raise RuntimeError(process.stderr.read())
    started = time.perf_counter()
    go.touch()
    wrote = [_report(w) for w in writers]
    wall = time.perf_counter() - started
    stop.touch()
    read = [_report(r) for r in readers]
    fetched = Counter(tuple(json.loads(line)[:3]) for line in log.read_text().splitlines())
    os.environ.update(s3_environment(endpoint))
    store = DuckDBDataStorage(location, cache_dir=folder / "check")
    paths = [str(f.path) for s in symbols for f in store.local_files(series(s))]
    rows, distinct = duckdb.connect().execute(
        "SELECT count(*), count(DISTINCT (symbol, ts)) FROM read_parquet(?)", [paths]).fetchone()
    waits = [w for r in wrote for w in r["lease_waits"]]
    return {"writers": len(writers), "readers": len(readers), "gaps_expected": len(expected_gaps(plans)),
            "gaps_fetched": len(fetched), "fetches_per_gap": sorted(set(fetched.values())),
            "unexpected_gaps": len(set(fetched) - expected_gaps(plans)),
            "errors": sum(len(r["errors"]) for r in wrote + read), "bad_reads": sum(len(r["bad"]) for r in read),
            "reads": sum(r["reads"] for r in read), "bars_checked": sum(r["bars"] for r in read),
            "bars_stored": rows, "duplicates": rows - distinct, "lease_waits": len(waits),
            "lease_wait_median": statistics.median(waits), "lease_wait_max": max(waits),
            "writer_requests": sum(r["requests"] for r in wrote), "wall_seconds": wall, "latency": latency}


def backtests(endpoint: str, folder: Path, chosen: list[Scenario]) -> list[dict[str, Any]]:
    rows = []
    with S3Proxy(endpoint) as proxy:
        base = {**s3_environment(proxy.url)}
        for scenario in chosen:
            location = f"s3://{BUCKET}/bt-{uuid.uuid4().hex[:8]}"
            where = folder / uuid.uuid4().hex[:8]
            runs: list[tuple[str, str, str, dict[str, str]]] = [
                ("legacy cold (provider)", "legacy", "cold", {}),
                ("folder cold (provider)", "duckdb", "cold", {}),
                ("S3 writer cold (provider, publishes)", "duckdb", "cold",
                 {"LUMIBOT_DUCKDB_STORE": location, "LUMIBOT_DUCKDB_STORE_ROLE": "write"}),
                ("S3 reader cold, fresh machine", "duckdb", "cold", {"LUMIBOT_DUCKDB_STORE": location}),
                ("S3 reader warm (mirror, listing TTL 300 s)", "duckdb", "warm", {"LUMIBOT_DUCKDB_STORE": location}),
                ("S3 reader warm (mirror, listings expired)", "duckdb", "warm", {"LUMIBOT_DUCKDB_STORE": location}),
                ("S3 reader warm (mirror, listing TTL 0)", "duckdb", "warm",
                 {"LUMIBOT_DUCKDB_STORE": location, "LUMIBOT_DUCKDB_S3_LISTING_TTL": "0"}),
            ]
            for label, variant, phase, extra in runs:
                workdir = where / ("reader" if "reader" in label else label.split()[0].lower())
                if "expired" in label:  # as the next day: cached listings and notes too old, the mirror kept
                    for cached in workdir.glob("duckdb/s3/*/*/listings/*") or []:
                        cached.unlink()
                    for cached in workdir.glob("duckdb/s3/*/*/notes/*") or []:
                        cached.unlink()
                proxy.reset()
                result: RunResult = finish(spawn(scenario, variant, phase, workdir, env={**base, **extra}),
                                           timeout=1800)
                traffic = proxy.snapshot()
                rows.append({"scenario": scenario.name, "run": label, "wall_seconds": result.wall_seconds,
                             "provider_requests": result.provider_requests, "s3_requests": traffic["total"],
                             "s3_by_method": traffic["requests"], "s3_bytes_down": traffic["bytes_in"],
                             "s3_bytes_up": traffic["bytes_out"], "fills": len(result.fills),
                             "final_value": result.final_value, "fills_list": result.fills})
                print(f"  {scenario.name} / {label}: {result.wall_seconds:.1f}s, provider {result.provider_requests}, "
                      f"S3 {traffic['total']} ({traffic['bytes_in']:,} B down)", file=sys.stderr, flush=True)
    return rows


def crash(endpoint: str, folder: Path, ttl: int) -> dict[str, Any]:
    location = f"s3://{BUCKET}/crash-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, **s3_environment(endpoint), "LUMIBOT_DUCKDB_CACHE_DIR": str(folder / f"holder{ttl}"),
           "LUMIBOT_DUCKDB_S3_LEASE_TTL": str(ttl)}
    month = ("2024-01-01", "2024-02-01")
    holder = _team("holder", {"store": location, "publish": ["AAA", *month]}, env)
    if holder.stdout.readline().strip() != "holding":
        raise RuntimeError(holder.stderr.read())
    os.environ.update(s3_environment(endpoint))
    os.environ["LUMIBOT_DUCKDB_S3_LEASE_TTL"] = str(ttl)
    os.environ["LUMIBOT_DUCKDB_S3_LISTING_TTL"] = "0"
    seen: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def read_meanwhile() -> None:
        reader = DuckDBDataStorage(location, role="read", cache_dir=folder / f"reader{ttl}")
        while not stop.is_set():
            try:
                seen.append(len(reader.read(series("AAA"), "2023-12-01", "2024-03-01")))
            except Exception as exc:  # noqa: BLE001 - reported
                errors.append(repr(exc))
            time.sleep(0.1)

    watcher = threading.Thread(target=read_meanwhile, daemon=True)
    watcher.start()
    time.sleep(1.0)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    killed = time.monotonic()
    taker = DuckDBDataStorage(location, role="write", cache_dir=folder / f"taker{ttl}", lock_timeout=600)
    with taker.writer(series("AAA")) as fill:
        took_over = time.monotonic() - killed
        missing = fill.missing(Interval("2023-12-01", "2024-03-01"))
    stop.set()
    watcher.join()
    return {"lease_ttl": ttl, "takeover_seconds": took_over, "takeovers": taker.remote_stats()["takeovers"],
            "reader_reads": len(seen), "reader_bar_counts": sorted(set(seen)), "reader_errors": len(errors),
            "objects_after": len(taker.files(series("AAA"))), "missing_after": [str(m) for m in missing]}


def render(result: dict[str, Any]) -> str:
    lines = [result["machine"], ""]
    if "race" in result:
        r = result["race"]
        lines += ["## Race: 4 writer + 4 reader processes on one S3 store", "",
                  "| writers | readers | gaps | fetches per gap | errors | bad reads | duplicates | lease waits "
                  "median / max | reads checked | bars stored | wall |",
                  "|---|---|---|---|---|---|---|---|---|---|---|",
                  f"| {r['writers']} | {r['readers']} | {r['gaps_fetched']} of {r['gaps_expected']} expected "
                  f"({r['unexpected_gaps']} unexpected) | {r['fetches_per_gap']} | {r['errors']} | {r['bad_reads']} | "
                  f"{r['duplicates']} | {r['lease_wait_median']:.2f} s / {r['lease_wait_max']:.2f} s "
                  f"(n={r['lease_waits']}) | {r['reads']:,} ({r['bars_checked']:,} bars) | {r['bars_stored']:,} | "
                  f"{r['wall_seconds']:.1f} s |", "",
                  f"Provider latency {r['latency']} s per request; gaps are months of minute bars (24/7).", ""]
    if "backtests" in result:
        lines += ["## Backtests from S3 (each run a fresh process; S3 requests counted by a proxy)", "",
                  "| scenario | run | wall s | provider requests | S3 requests | S3 bytes down | S3 bytes up | fills "
                  "| final value |", "|---|---|---|---|---|---|---|---|---|"]
        for row in result["backtests"]:
            methods = ", ".join(f"{k} {v}" for k, v in sorted(row["s3_by_method"].items()))
            lines.append(f"| {row['scenario']} | {row['run']} | {row['wall_seconds']:.2f} | {row['provider_requests']} "
                         f"| {row['s3_requests']}{f' ({methods})' if methods else ''} | {row['s3_bytes_down']:,} | "
                         f"{row['s3_bytes_up']:,} | {row['fills']} | {row['final_value']:,.2f} |")
        lines += ["", "Parity of the six DuckDB runs (folder, S3 writer, S3 reader cold and warm): " + "; ".join(
            f"{name}: {'identical' if ok else 'DIFFERENT'}" for name, ok in result["parity"].items()) + ".",
            "Legacy beside them: " + "; ".join(
                f"{name}: {'identical' if ok else 'differs (CCXT: the declared 3-decimal rounding of its cache)'}"
                for name, ok in result["legacy_identical"].items()) + ".", ""]
    if "crash" in result:
        lines += ["## A writer SIGKILLed while holding the lease", "",
                  "| lease TTL | takeover after the kill | reader meanwhile | objects after | missing after |",
                  "|---|---|---|---|---|"]
        for c in result["crash"]:
            lines.append(f"| {c['lease_ttl']} s | {c['takeover_seconds']:.1f} s | {c['reader_reads']} reads, "
                         f"{c['reader_errors']} errors, bars per read {c['reader_bar_counts']} | "
                         f"{c['objects_after']} | {c['missing_after']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["race", "backtests", "crash", "all"], default="all")
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--crash-repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "team_store")
    args = parser.parse_args()
    result: dict[str, Any] = {"machine": machine().replace("Polygon emulated at its HTTP seam",
                                                           "moto's S3 server and emulated providers on 127.0.0.1; "
                                                           "the machine was shared with other work")}
    with tempfile.TemporaryDirectory(prefix="team-store-") as tmp, moto_server(max_lifetime=7200) as endpoint:
        folder = Path(tmp)
        create_bucket(endpoint, BUCKET)
        if args.part in ("race", "all"):
            result["race"] = race(endpoint, folder / "race", args.latency)
            print(json.dumps(result["race"]), file=sys.stderr, flush=True)
        if args.part in ("backtests", "all"):
            chosen = [s for source in ("polygon", "yahoo", "alpaca", "ccxt") for s in scenarios(source)
                      if "momentum" in s.name or (source == "polygon" and "minute" in s.name)]
            rows = backtests(endpoint, folder / "bt", chosen)
            result["backtests"] = [{k: v for k, v in r.items() if k != "fills_list"} for r in rows]
            result["parity"] = {name: len({(json.dumps(r["fills_list"]), r["final_value"]) for r in rows
                                           if r["scenario"] == name and not r["run"].startswith("legacy")}) == 1
                                for name in dict.fromkeys(r["scenario"] for r in rows)}
            result["legacy_identical"] = {
                name: len({(json.dumps(r["fills_list"]), r["final_value"]) for r in rows if r["scenario"] == name}) == 1
                for name in result["parity"]}
        if args.part in ("crash", "all"):
            result["crash"] = [crash(endpoint, folder / "crash", 10) for _ in range(args.crash_repeat)]
            result["crash"].append(crash(endpoint, folder / "crash", 30))
    report = render(result)
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))
    args.out.with_suffix(".md").write_text(report)
    race_ok = "race" not in result or (result["race"]["fetches_per_gap"] == [1] and result["race"]["errors"] == 0
                                       and result["race"]["duplicates"] == 0 and result["race"]["bad_reads"] == 0)
    return 0 if race_ok and all(result.get("parity", {}).values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
