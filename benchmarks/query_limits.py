"""``db-query``'s limits on runaway statements: what they print, how long they run, how much memory they take.

Each statement runs as ``lumibot-duckdb db-query`` in a fresh process over a small store, with the default
limits (60 s, a quarter of the machine's memory at most 2 GiB for DuckDB, 4 GiB of spill files), in each
output format that matters for it; stdout is read and counted as it comes (as a pipe would be). Reported:
exit code, wall time, the child's peak RSS (``wait4``), bytes written to stdout, and the last line on stderr
(or the row-count line for a table).

Reproduce (about 5 minutes)::

    python3 benchmarks/query_limits.py            # results in benchmarks/results/query_limits.md
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STATEMENTS = [
    ("cartesian product of two million-row ranges", "SELECT count(*) FROM range(1000000) a, range(1000000) b",
     ("table",)),
    ("300 million rows", "SELECT * FROM range(300000000)", ("table", "csv", "json")),
    ("a hash aggregate that outgrows memory", "SELECT x % 100000000 AS k, count(*) FROM range(300000000) t(x) "
     "GROUP BY 1 ORDER BY 2 DESC LIMIT 3", ("table",)),
    ("every DuckDB type", "SELECT * FROM test_all_types()", ("json",)),
    ("a timestamp in year 290000", "SELECT TIMESTAMP '290000-01-01 00:00:00' AS t", ("table",)),
]


def run(store: Path, sql: str, fmt: str, extra: list[str]) -> str:
    command = [sys.executable, "-m", "lumibot_duckdb", "db-query", sql, "--store", str(store), "--format", fmt,
               *extra]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=store.parent)
    counted = [0]
    tail: list[bytes] = []

    def drain() -> None:
        assert process.stdout is not None
        while chunk := process.stdout.read(1 << 20):
            counted[0] += len(chunk)
            tail[:] = [(b"".join(tail) + chunk)[-400:]]

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    wall = time.perf_counter() - started
    assert process.stderr is not None
    err = process.stderr.read().decode().strip().splitlines()
    out = b"".join(tail).decode(errors="replace").strip().splitlines()
    said = err[-1] if err else (out[-1] if out else "")
    return (f"{process.returncode} | {wall:.1f} | {usage.ru_maxrss / 1024:,.0f} | {counted[0] / 1e6:,.1f} | "
            f"`{said[:160]}` |")


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="query-limits-"))
    try:
        import pandas as pd

        from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey

        store = work / "store"
        index = pd.date_range("2024-01-02", periods=10, freq="1D", tz="UTC")
        DuckDBDataStorage(store).write(SeriesKey("ingest", "SPY", "day", quote="USD"), pd.DataFrame(
            {"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10.0}, index=index))
        rows = []
        for label, sql, formats in STATEMENTS:
            for fmt in formats:
                rows.append(f"| {label} | `{sql}` | {fmt} | {run(store, sql, fmt, [])}")
                print(rows[-1], flush=True)
        text = "\n".join([
            "`db-query` with its default limits (60 s; DuckDB memory: a quarter of the machine's, at most 2 GiB; "
            "4 GiB of spill files), each in a fresh process; stdout drained as a pipe would. Machine: 2 cores "
            "shared with other jobs, 24 GiB. `python3 benchmarks/query_limits.py`.", "",
            "| statement | SQL | format | exit | wall s | peak RSS MB | stdout MB | last line |",
            "|---|---|---|---|---|---|---|---|", *rows, ""])
        (Path(__file__).parent / "results" / "query_limits.md").write_text(text)
        print(text)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
