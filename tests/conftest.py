"""Test isolation: every cache, log and home folder in a temporary directory; no network, ever.

Lumibot reads ``LUMIBOT_CACHE_FOLDER`` and friends once, when it is first imported, so they are
set here, at the top of the first file pytest loads, before any test module imports Lumibot.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from lumibot_duckdb.testing.offline import isolated_environment

_SESSION = Path(tempfile.mkdtemp(prefix="lumibot-duckdb-tests-"))
(_SESSION / "home").mkdir()
_ISOLATED = isolated_environment(_SESSION)  # also drops the user's LUMIBOT_*/POLYGON_*/BACKTESTING_* settings
os.environ.clear()
os.environ.update(_ISOLATED)
os.environ["LUMIBOT_DUCKDB_RETRY_WAIT"] = "0"  # provider retries try again at once: no test sleeps
_REPO = Path(__file__).resolve().parent.parent

import pytest  # noqa: E402
from hypothesis.configuration import set_hypothesis_home_dir  # noqa: E402

set_hypothesis_home_dir(_SESSION / "hypothesis")  # its example database, not ./.hypothesis in the repo

from lumibot_duckdb.testing.market import SyntheticMarket  # noqa: E402
from lumibot_duckdb.testing.offline import NetworkGuard  # noqa: E402

SHARED_DATA = (_REPO.parent / "shared" / "data").resolve()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SESSION, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def run_in_scratch_folder():
    """Lumibot writes ./logs/ artefacts wherever the process runs (and Hypothesis its database)."""
    previous = Path.cwd()
    os.chdir(_SESSION)
    yield
    os.chdir(previous)


@pytest.fixture(autouse=True)
def no_network(request: pytest.FixtureRequest):
    """Fail any test that tries the network, even if the code under test swallowed the error."""
    guard = NetworkGuard().install()
    yield guard
    guard.uninstall()
    if guard.attempts and not request.node.get_closest_marker("network_attempt_expected"):
        pytest.fail(f"test tried the network: {guard.attempts[:3]}", pytrace=False)


@pytest.fixture
def naive_times_in_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """Naive times read as UTC: the store's rule reads them in Lumibot's default time zone
    (lumibot_duckdb.config.default_timezone), set to UTC here, for tests written before that rule."""
    import sys

    monkeypatch.setattr("lumibot_duckdb.config.LUMIBOT_DEFAULT_TIMEZONE", "UTC")
    constants = sys.modules.get("lumibot.constants")
    if constants is not None:
        monkeypatch.setattr(constants, "LUMIBOT_DEFAULT_TIMEZONE", "UTC")


@pytest.fixture(autouse=True)
def no_thread_left_running():
    """Fail a test that leaves a non-daemon thread running: the interpreter waits for such threads at exit,
    so one left behind makes the whole test run hang after its summary (as CI would, until its time limit)."""
    import threading
    import time
    from concurrent.futures import thread as pool_threads

    def blocking(t: threading.Thread) -> bool:  # (an executor's idle workers are woken and joined at exit)
        return not t.daemon and getattr(t, "_target", None) is not pool_threads._worker

    before = {t for t in threading.enumerate() if blocking(t)}
    yield
    deadline = time.monotonic() + 5.0
    while True:
        left = [t for t in threading.enumerate() if blocking(t) and t not in before and t.is_alive()]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if left:
        pytest.fail(f"non-daemon thread(s) left running: {[(t.name, getattr(t, '_target', None)) for t in left]}",
                    pytrace=False)


def pytest_report_header(config: pytest.Config) -> str:
    from importlib.metadata import version

    return ", ".join(f"{name} {version(name)}" for name in ("lumibot", "duckdb", "pandas", "pyarrow"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "network_attempt_expected: the test checks the network guard itself")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A ``not_applicable(reason=...)`` combination is reported as skipped, with its reason."""
    for item in items:
        marker = item.get_closest_marker("not_applicable")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"not applicable: {marker.kwargs['reason']}"))


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data`` (real market data); tests that need it skip with the reason when it is absent."""
    if not (SHARED_DATA / "SPY_1d_2019.csv").exists():
        pytest.skip(f"real market data not found at {SHARED_DATA} (the shared folder sits beside the repo in CI)")
    return SHARED_DATA


@pytest.fixture
def market() -> SyntheticMarket:
    return SyntheticMarket(seed=11)


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


S3_BUCKET = "lumibot-tests"


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 for the whole session (stopped by a watchdog if this process dies);
    boto3's standard chain points at it (``AWS_ENDPOINT_URL`` and test credentials), and the network guard
    lets connections to it through."""
    try:
        from lumibot_duckdb.testing.s3server import create_bucket, moto_server, s3_environment

        server = moto_server(max_lifetime=3 * 3600, log=_SESSION / "moto.log")
        endpoint = server.__enter__()
    except RuntimeError as exc:
        pytest.skip(f"no S3 server for the S3 backend tests: {exc}")
    saved = dict(os.environ)
    os.environ.update(s3_environment(endpoint))
    create_bucket(endpoint, S3_BUCKET)
    try:
        yield endpoint
    finally:
        os.environ.clear()
        os.environ.update(saved)
        server.__exit__(None, None, None)


@pytest.fixture
def s3_store(s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty S3 store (its own prefix) opened as a writer, its mirror in this test's folder; listings are
    never reused, so it behaves as a folder does for processes that share it."""
    import uuid

    monkeypatch.setenv("LUMIBOT_DUCKDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LUMIBOT_DUCKDB_STORE_ROLE", "write")
    monkeypatch.setenv("LUMIBOT_DUCKDB_S3_LISTING_TTL", "0")
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def pg_cluster():
    """A throw-away PostgreSQL cluster on 127.0.0.1 for the whole session (the DuckLake stores' catalogs; stopped
    by a watchdog if this process dies). Skips, saying why, without the [team] extra or PostgreSQL's binaries."""
    from lumibot_duckdb.errors import ConfigError
    from lumibot_duckdb.store.ducklake import require_extensions
    from lumibot_duckdb.testing.pgserver import pg_binaries, postgres_cluster

    try:
        require_extensions()
    except ConfigError as exc:
        pytest.skip(f"DuckLake store tests need the [team] extra (python3 dev.py test-team runs them): {exc}")
    if pg_binaries() is None:
        pytest.skip("no PostgreSQL server binaries for the DuckLake store tests (apt-get install postgresql; "
                    ".ci/run installs them)")
    try:
        cluster = postgres_cluster(max_lifetime=3 * 3600)
        running = cluster.__enter__()
    except RuntimeError as exc:
        pytest.skip(f"no PostgreSQL cluster for the DuckLake store tests: {exc}")
    try:
        yield running
    finally:
        cluster.__exit__(None, None, None)


@pytest.fixture
def lake_store(pg_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty DuckLake store: its own catalog database on the session's cluster, its data in this test's
    folder (``LUMIBOT_DUCKDB_DATA_PATH``), its mirror under ``LUMIBOT_DUCKDB_CACHE_DIR``."""
    import uuid

    libpq = pg_cluster.create_database(f"lake_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("LUMIBOT_DUCKDB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("LUMIBOT_DUCKDB_DATA_PATH", str(tmp_path / "lake-data"))
    return f"ducklake:postgres:{libpq}"


@pytest.fixture
def lumibot_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh legacy Lumibot cache for this test (Lumibot's Polygon helper reads the folder per call)."""
    from lumibot.tools import polygon_helper

    folder = tmp_path / "lumibot-cache"
    monkeypatch.setattr(polygon_helper, "LUMIBOT_CACHE_FOLDER", str(folder))
    return folder
