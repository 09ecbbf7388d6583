#!/usr/bin/env python3
"""Run the demo, the tests or the benchmarks from a fresh checkout, with nothing but Python 3.10+.

    python3 dev.py demo        offline A/B backtest, legacy Lumibot beside lumibot-duckdb
    python3 dev.py test        the test suite (DuckDB as Lumibot installs it, then the store tests on DuckDB 1.5)
    python3 dev.py test-team   the DuckLake (team mode) tests, in their own environment .venv-team with the
                               [team] extra (DuckDB 1.5.5 and its extension wheels); PostgreSQL's server
                               binaries from the system (apt-get install postgresql), else they skip
    python3 dev.py bench ...   a benchmark script from benchmarks/ (see benchmarks/README.md)

The first call creates ``.venv`` and installs the project with its test extras (and moto's S3 server
for the S3-store tests; Lumibot pulls ~320 packages, about 3 minutes); later calls reuse it and
reinstall only when pyproject.toml changed. Extra arguments go to the command (``python3 dev.py test -k store``).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
STAMP = VENV / ".lumibot-duckdb-installed"
TEAM_VENV = ROOT / ".venv-team"  # DuckDB 1.5.5 for DuckLake: never in .venv, whose DuckDB is Lumibot's
TEAM_PYTHON = TEAM_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
TEAM_STAMP = TEAM_VENV / ".lumibot-duckdb-installed"
# The team tests: DuckLake itself, and the store's checks on a DuckLake store (test_store.py's ducklake cases).
TEAM_TESTS = ["tests/test_ducklake.py", "tests/test_store.py"]
DUCKDB_15 = VENV / "duckdb-1.5"  # a second DuckDB beside the venv's, put first on PYTHONPATH
# The store is also checked on DuckDB 1.5 (the last series with offline extension wheels).
DUCKDB_15_TESTS = ["tests/test_store.py", "tests/test_polygon.py", "tests/test_coverage.py", "tests/test_query.py",
                   "tests/test_maintenance.py", "tests/test_analytics.py", "tests/test_ingest.py",
                   "tests/test_export.py", "tests/test_naming.py", "tests/test_time_rule.py"]


def run(*command: object, env: dict[str, str] | None = None) -> int:
    print("+", " ".join(str(c) for c in command), flush=True)
    return subprocess.call([str(c) for c in command], cwd=ROOT, env=env)


def ensure_environment() -> None:
    if sys.version_info < (3, 10):  # noqa: UP036 - this file also runs on an older python3 to say so
        sys.exit(f"lumibot-duckdb needs Python 3.10 or newer; this is {sys.version.split()[0]}.")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PYTHON.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not PYTHON.exists():
        print(f"Creating {VENV} …", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    code = run(PYTHON, "-m", "pip", "install", "--upgrade", "pip") or run(
        PYTHON, "-m", "pip", "install", "-e", f"{ROOT}[test,bench,s3-test]")
    if code:
        sys.exit(code)
    STAMP.write_text(wanted)


def ensure_team_environment() -> None:
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if TEAM_PYTHON.exists() and TEAM_STAMP.exists() and TEAM_STAMP.read_text() == wanted:
        return
    if not TEAM_PYTHON.exists():
        print(f"Creating {TEAM_VENV} …", flush=True)
        venv.EnvBuilder(with_pip=True).create(TEAM_VENV)
    code = run(TEAM_PYTHON, "-m", "pip", "install", "--upgrade", "pip") or run(
        TEAM_PYTHON, "-m", "pip", "install", "-e", f"{ROOT}[team,test,s3-test]")
    if code:
        sys.exit(code)
    TEAM_STAMP.write_text(wanted)


def test_team(args: list[str]) -> int:
    """The DuckLake tests in .venv-team (``-k ducklake`` of test_store.py; everything of test_ducklake.py)."""
    ensure_team_environment()
    if args:
        return run(TEAM_PYTHON, "-m", "pytest", *args)
    return run(TEAM_PYTHON, "-m", "pytest", "-q", *TEAM_TESTS, "-k", "ducklake")


def test(args: list[str]) -> int:
    code = run(PYTHON, "-m", "pytest", *args)
    if code or args:
        return code
    if not (DUCKDB_15 / "duckdb").exists():
        code = run(PYTHON, "-m", "pip", "install", "--quiet", "--target", DUCKDB_15, "duckdb>=1.5,<1.6")
        if code:
            return code
    env = {**os.environ, "PYTHONPATH": str(DUCKDB_15)}
    return run(PYTHON, "-m", "pytest", "-q", *DUCKDB_15_TESTS, env=env)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "test", "test-team", "bench"):
        print(__doc__)
        return 2
    if argv[0] == "test-team":
        return test_team(argv[1:])
    ensure_environment()
    command, rest = argv[0], argv[1:]
    if command == "demo":
        return run(BIN / "lumibot-duckdb", "demo", *rest)
    if command == "test":
        return test(rest)
    if not rest:
        print("usage: python3 dev.py bench benchmarks/<file>.py [args]  (see benchmarks/README.md)")
        return 2
    env = bench_environment()
    if Path(rest[0]).name.startswith("test_") or Path(rest[0]).is_dir():  # pytest-benchmark files
        return run(PYTHON, "-m", "pytest", "-p", "no:cacheprovider", *rest, env=env)
    return run(PYTHON, *rest, env=env)


def bench_environment() -> dict[str, str]:
    """Benchmarks run the package from compiled bytecode, as an installed wheel does.

    Lumibot comes from site-packages with its ``.pyc`` files; this checkout is installed in editable mode,
    so under ``PYTHONDONTWRITEBYTECODE`` (set on many CI machines) every fresh process of a benchmark would
    compile lumibot_duckdb from source again (~0.15 s per process on 2 cores), a cost no user pays. The
    bytecode goes where Python puts it by default (``__pycache__``, ignored by git).
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    run(PYTHON, "-m", "compileall", "-q", ROOT / "lumibot_duckdb", env=env)
    return env


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
