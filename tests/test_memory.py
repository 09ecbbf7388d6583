"""The Arrow memory pool the package works in (lumibot_duckdb.store.memory).

Each check runs in a fresh process: pyarrow's pools count from the process's start.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parent.parent

_WORK = """
    import json, sys
    import numpy as np, pandas as pd, pyarrow as pa
    from lumibot_duckdb import DuckDBDataStorage
    from lumibot_duckdb.ingest.load import ingest
    from lumibot_duckdb.store import SeriesKey
    from lumibot_duckdb.store.memory import arrow_pool
    folder = sys.argv[1]
    # 400,000 minute bars as pandas writes them: several blocks of 1 MiB, several files
    index = pd.date_range("2022-01-01", periods=400_000, freq="1min")
    close = 100 + np.cumsum(np.random.default_rng(3).normal(0, 0.01, len(index)))
    pd.DataFrame({"open": close, "high": close + 0.01, "low": close - 0.01, "close": close, "volume": 10.0},
                 index=pd.Index(index, name="timestamp")).to_csv(folder + "/BTC_1m.csv")
    report = ingest(folder + "/store", [folder + "/BTC_1m.csv"], asset_type="crypto", quote="USDT",
                    timezone="UTC", progress=False, chunk_bytes=1 << 20)
    store = DuckDBDataStorage(folder + "/store")
    key = SeriesKey("ingest", "BTC", "minute", asset_type="crypto", quote="USDT")
    bars = store.read(key, "2021-12-31", "2023-01-01")
    print(json.dumps({"rows": [report.rows_added, len(bars)], "pool": arrow_pool().backend_name,
                      "ours": arrow_pool().max_memory(), "default": pa.default_memory_pool().max_memory()}))
"""


def _work(folder: Path, **env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    environment.update(env, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(_WORK), str(folder)], capture_output=True,
                          text=True, timeout=300, env=environment, cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _has_jemalloc() -> bool:
    try:
        pa.jemalloc_memory_pool()
    except (NotImplementedError, AttributeError, pa.ArrowException):
        return False
    return True


@pytest.mark.skipif(not _has_jemalloc(), reason="this pyarrow is built without jemalloc: the package uses "
                                                "pyarrow's default pool, nothing to tell apart")
def test_an_ingest_and_a_read_allocate_from_the_package_pool_not_the_default_one(tmp_path: Path) -> None:
    """CSV parsing, the values' copy, the Parquet writer and reader all allocate from jemalloc's pool: pyarrow's
    default one (mimalloc), which keeps what it freed, is not where the bytes go (it held ~60 MB of an ingest's
    blocks before, each block faulting its pages in again after they were given back)."""
    figures = _work(tmp_path)
    assert figures["rows"] == [400_000, 400_000]
    assert figures["pool"] == "jemalloc"
    assert figures["ours"] > 8 << 20, figures  # (several blocks of bars went through it)
    assert figures["default"] < figures["ours"] / 20, figures  # (20 MB of 39 before; ~1.2 MB now, small buffers)


def test_a_pool_the_user_chose_is_the_one_used(tmp_path: Path) -> None:
    """ARROW_DEFAULT_MEMORY_POOL is the user's choice for the whole process: the package then allocates there
    too, with the same answers."""
    figures = _work(tmp_path, ARROW_DEFAULT_MEMORY_POOL="system")
    assert figures["rows"] == [400_000, 400_000]
    assert figures["pool"] == "system"
    assert figures["ours"] == figures["default"] > 8 << 20
