"""Team mode on DuckLake: many writers, one catalog in PostgreSQL, bars and coverage committed together.

::

    LUMIBOT_DUCKDB_STORE="ducklake:postgres:dbname=lake host=db.example port=5432 user=research"
    LUMIBOT_DUCKDB_DATA_PATH="s3://team-bars/lake/"     # or a folder, for one machine

DuckLake (DuckDB's lakehouse format) keeps the store's tables as Parquet files under the data path and
their catalog (snapshots, files, statistics) in PostgreSQL, with ACID snapshots: a reader always sees a
whole commit. The store's tables in the lake:

* ``bars``: every bar of every series, the store's schema plus ``token`` (the answer it belongs to),
  partitioned by ``(symbol, year(ts))`` so a read prunes to its series' files of the years it asks; written
  with the store's Parquet choices (zstd, 16,384-row groups).
* ``coverage``: one row per published answer (series, partition, ``[start, end)``, token, bars, a digest of
  its bars, the footer marks it was published with, writer, time). It is written **in the same transaction
  as its bars**, so coverage never claims bars that are not there; an empty answer is a row with 0 bars.
  It plays the part the file names play in a folder: a row is a "file" of the
  :class:`~lumibot_duckdb.store.interface.Backend` contract.
* ``quarantine``: answers set aside as damaged, with the reason (their bars stay in ``bars``, unread).

Notes (small JSON documents) are a table of the catalog database itself (schema ``lumibot_duckdb``).

**One writer per series**: a PostgreSQL advisory lock (``pg_advisory_lock(<class>, <hash of the series>)``)
on a dedicated connection of its own, taken before a writer looks for gaps and held until it is done.
DuckLake has no primary keys: without the lock, two writers filling the same gap would both append it
(measured: readers then see 4x the bars). The lock dies with its connection, so a writer killed mid-fill
frees it at once; what it had not committed is invisible (its Parquet file, if any, is an orphan that
``maintain compact`` removes). As a second line of defence, a read of answers that overlap keeps, per
timestamp, the bar of the newest answer (as the folder store does).

**Reads** go through a local mirror, as on S3: the bars of the answers a read needs are fetched from the
lake in one query (pruned by series, year and time), checked against the row count and digest their writer
committed, and written as sealed Parquet files under ``<cache>/ducklake/<catalog>/mirror/``, which the
store's integrity checks and its pyarrow read path then use unchanged. Answers never change once committed
(compaction commits new ones and removes the old), so a mirror copy stays valid. **Integrity** is kept as
follows: a mirror file carries the CRC-32 of its own bytes in its name and the series and range in its footer
(the folder store's seal: local damage is found and the copy fetched again); the lake's content is checked
against the digest of the bars written in the same transaction as them (damage in the lake is set aside in
``quarantine`` and its range fetched again).

**Conflicts**: DuckLake detects write conflicts per table, so a commit can fail when another writer commits
to the same table at the same moment (e.g. a delete meanwhile); every write here is one transaction, retried
on a conflict (``_COMMIT_ATTEMPTS``). **Upkeep** (:meth:`DuckLakeBackend.upkeep`, run by ``maintain compact``):
DuckLake's ``merge_adjacent_files``, ``expire_snapshots``, ``cleanup_old_files`` and
``delete_orphaned_files``, each retried on conflicts, safe while writers commit (a grace period keeps the
files of snapshots and transactions still in use).

Requires DuckDB 1.5.x with the extension wheels (``pip install "lumibot-duckdb[team]"``): DuckLake, httpfs
and postgres are DuckDB extensions, loaded here offline from the installed wheels (never downloaded).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import hashlib
import importlib.util
import json
import os
import random
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lumibot_duckdb.config import is_ducklake
from lumibot_duckdb.errors import ConfigError, CorruptFileError, StoreError, StoreLockTimeout
from lumibot_duckdb.log import get_logger
from lumibot_duckdb.store.coverage import Interval, SeriesKey, utc
from lumibot_duckdb.store.integrity import COVERAGE_MARK, SERIES_MARK
from lumibot_duckdb.store.local import BarFile, LocalFolder, file_name, new_token, read_footer
from lumibot_duckdb.store.schema import ARROW_SCHEMA, KEY_COLUMNS, VALUE_COLUMNS

if TYPE_CHECKING:
    import duckdb

log = get_logger(__name__)

SCHEME = "ducklake:"
CATALOG = "lake"
"""The name the lake is attached under in DuckDB (``lake.bars``, ``lake.coverage``)."""
EXTRA = 'pip install "lumibot-duckdb[team]"'
LOCK_CLASS = 0x4C44
"""The first key of every advisory lock this store takes (the second is a hash of the series)."""
UPKEEP_GRACE = dt.timedelta(hours=1)
"""How old a snapshot, a replaced file or an unreferenced file must be before upkeep removes it."""
_COMMIT_ATTEMPTS = 30
_WHEELS = {"httpfs": "duckdb_extension_httpfs", "ducklake": "duckdb_extension_ducklake",
           "postgres_scanner": "duckdb_extension_postgres"}
_VALUE_SQL = {"trade_count": "BIGINT", "metadata": "VARCHAR"}
_SYSTEM_MARKS = (b"lumibot_duckdb.schema", SERIES_MARK, COVERAGE_MARK)
_MIRROR_KEEP = dt.timedelta(hours=1)


def parse_location(location: str) -> str:
    """``ducklake:postgres:<libpq string>`` -> the libpq string; a :class:`ConfigError` says what is wrong."""
    rest = location[len(SCHEME):] if is_ducklake(location) else ""
    kind, sep, libpq = rest.partition(":")
    if kind.lower() != "postgres" or not sep or not libpq.strip():
        raise ConfigError(
            f"{location!r} is not a DuckLake store this package opens: write ducklake:postgres:<libpq string>, "
            "e.g. ducklake:postgres:dbname=lake host=db.example user=research (a PostgreSQL catalog: the one "
            "DuckLake catalog many processes and machines can share; password from PGPASSWORD or ~/.pgpass).")
    return libpq.strip()


def _redacted(libpq: str) -> str:
    return " ".join(p for p in libpq.split() if not p.lower().startswith("password="))


# -- DuckDB with the extensions, offline ------------------------------------------------------------------
def require_extensions() -> dict[str, Path]:
    """The extension files of the installed wheels, by DuckDB's name; a :class:`ConfigError` naming the extra
    when DuckDB is not the version they were built for or a wheel is missing."""
    import duckdb

    version = duckdb.__version__
    found: dict[str, Path] = {}
    missing = []
    for name, module in _WHEELS.items():
        spec = importlib.util.find_spec(module)
        files = glob.glob(os.path.join(os.path.dirname(spec.origin or ""), "extensions", "v*",
                                       "*.duckdb_extension")) if spec is not None and spec.origin else []
        if not files:
            missing.append(module.replace("_", "-"))
        else:
            found[name] = Path(files[0])
    built_for = {p.parent.name.lstrip("v") for p in found.values()}
    if missing or built_for != {version}:
        why = (f"the extension wheels {', '.join(missing)} are not installed (this is DuckDB {version})" if missing
               else f"they are built for DuckDB {', '.join(sorted(built_for))} and this is DuckDB {version}")
        raise ConfigError(
            f"A DuckLake store needs DuckDB's ducklake, httpfs and postgres extensions, loaded from their wheels "
            f"(never downloaded), but {why}. Install the team extra in its own environment: {EXTRA} (it holds "
            "DuckDB to 1.5.x, the newest series with extension wheels; DuckDB 2.0 cannot load them).")
    return found


def extension_directory(cache_dir: Path) -> Path:
    """A folder laid out as DuckDB expects (``<root>/v<version>/<platform>/<name>.duckdb_extension``), of
    symbolic links to the wheels' files (no copy); DuckDB loads and autoloads from it."""
    import duckdb

    files = require_extensions()
    probe = duckdb.connect(":memory:")
    try:
        row = probe.execute("PRAGMA platform").fetchone()
        platform = str(row[0]) if row else "linux_amd64"
    finally:
        probe.close()
    root = Path(cache_dir) / "duckdb-extensions"
    folder = root / f"v{duckdb.__version__}" / platform
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in files.items():
        link = folder / f"{name}.duckdb_extension"
        if link.is_symlink() and os.readlink(link) == str(target):
            continue
        temporary = folder / f".{name}.{new_token()}"
        os.symlink(target, temporary)
        os.replace(temporary, link)
    return root


def _s3_secret(data_path: str) -> str | None:
    """A DuckDB S3 secret from boto3's standard chain (variables, profile, instance role; ``AWS_ENDPOINT_URL``
    for MinIO and other services), for a data path on S3."""
    if not data_path.lower().startswith("s3://"):
        return None
    import boto3

    session = boto3.session.Session()
    credentials = session.get_credentials()
    if credentials is None:
        raise StoreError(f"No usable AWS credentials for the data path {data_path}: set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (boto3's standard chain).")
    frozen = credentials.get_frozen_credentials()
    options = ["TYPE s3", f"KEY_ID {_literal(frozen.access_key)}", f"SECRET {_literal(frozen.secret_key)}",
               f"REGION {_literal(session.region_name or 'us-east-1')}"]
    if frozen.token:
        options.append(f"SESSION_TOKEN {_literal(frozen.token)}")
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options += [f"ENDPOINT {_literal(host.rstrip('/'))}", "URL_STYLE 'path'",
                    f"USE_SSL {'true' if scheme == 'https' else 'false'}"]
    return f"CREATE OR REPLACE SECRET lumibot_duckdb_s3 ({', '.join(options)})"


def _literal(text: str) -> str:
    """A SQL string literal (for the statements DuckDB takes no parameters in: ATTACH, CREATE SECRET)."""
    return "'" + str(text).replace("'", "''") + "'"


# -- the files of the contract: rows of the coverage table ------------------------------------------------
@dataclass(frozen=True)
class LakeBarFile(BarFile):
    """A published answer: a row of ``coverage``. ``path`` is its mirror copy on this machine (once
    :meth:`DuckLakeBackend.local` returned); ``token`` is that copy's seal, ``lake_token`` the answer's."""

    lake_token: str = ""
    rows: int = 0
    nbytes: int = 0
    digest: str = ""
    marks: str = "{}"

    @property
    def size(self) -> int:
        return self.nbytes


@dataclass
class LakeStats:
    """What this process asked of the lake."""

    statements: int = 0
    commits: int = 0
    conflicts: int = 0
    lock_waits: list[float] = field(default_factory=list)
    materialised: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"statements": self.statements, "commits": self.commits, "conflicts": self.conflicts,
                "lock_waits": list(self.lock_waits), "materialised": self.materialised}


def bars_digest(table: pa.Table) -> str:
    """A digest of the bars' values (timestamps and value columns), the same whatever Parquet writer or
    version encoded them: what a writer commits beside its bars and a reader checks them against."""
    h = hashlib.sha256()
    h.update(len(table).to_bytes(8, "little"))
    ts = table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
    h.update(np.ascontiguousarray(ts, dtype="<i8").tobytes())
    for name in (*VALUE_COLUMNS, "metadata"):
        column = table.column(name)
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        h.update(name.encode())
        h.update(np.packbits(valid).tobytes())
        if name == "metadata":
            for value in column.to_pylist():
                h.update(b"\x00" if value is None else value.encode() + b"\x01")
        elif name == "trade_count":
            values = pc.fill_null(column.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
            h.update(np.ascontiguousarray(values, dtype="<i8").tobytes())
        else:
            values = pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
            h.update(np.ascontiguousarray(values, dtype="<f8").tobytes())
    return h.hexdigest()[:32]


def _marks_json(metadata: dict[bytes, bytes] | None) -> str:
    extra = {k.decode("latin-1"): v.decode("latin-1") for k, v in (metadata or {}).items()
             if k not in _SYSTEM_MARKS}
    return json.dumps(extra, sort_keys=True)


def _marks_of(text: str) -> dict[bytes, bytes]:
    try:
        return {k.encode("latin-1"): v.encode("latin-1") for k, v in json.loads(text or "{}").items()}
    except (ValueError, AttributeError):
        return {}


_T = TypeVar("_T")


class DuckLakeBackend:
    """The DuckLake backend (:class:`~lumibot_duckdb.store.interface.Backend`) of ``ducklake:postgres:<libpq>``.

    ``data_path``: where the lake's Parquet files go (``s3://bucket/prefix/`` or a folder), required when the
    catalog is new (later it is read from the catalog; a different one is refused). ``cache_dir``: the local
    cache folder (the mirror, the extension links).
    """

    def __init__(self, location: str, *, data_path: str | None, cache_dir: Path) -> None:
        self.libpq = parse_location(location)
        self.location = f"{SCHEME}postgres:{_redacted(self.libpq)}"
        self.data_path = data_path or None
        if self.data_path and not self.data_path.lower().startswith("s3://"):
            self.data_path = str(Path(self.data_path).expanduser().resolve())
        self.cache_dir = Path(cache_dir)
        ident = hashlib.sha1(_redacted(self.libpq).encode()).hexdigest()[:16]
        self.root = self.cache_dir / "ducklake" / ident
        self.mirror = LocalFolder(self.root / "mirror")
        self.mirror.tmp = self.root / ".tmp"
        self.tmp = self.mirror.tmp
        self.quarantine_dir = self.root / ".quarantine"
        self.stats = LakeStats()
        self._lock = threading.Lock()
        self._db: duckdb.DuckDBPyConnection | None = None
        self._pid: int | None = None
        self._local = threading.local()
        self._notes_ready = False
        self._held: dict[SeriesKey, Any] = {}
        self._listings: dict[SeriesKey, tuple[int, list[tuple[Any, ...]]]] = {}
        self._snapshots: Any = None
        self._snapshots_pid: int | None = None
        self.writer_name = f"{socket.gethostname()}:{os.getpid()}"
        require_extensions()  # at once: a DuckDB without the extension wheels fails here, naming the extra

    def __repr__(self) -> str:
        return f"DuckLakeBackend({self.location!r}, data_path={self.data_path!r})"

    def ensure(self) -> None:
        for folder in (self.mirror.bars, self.tmp):
            folder.mkdir(parents=True, exist_ok=True)

    # -- connections ---------------------------------------------------------------------------------------
    def _cursor(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._db is None or self._pid != os.getpid():
                self._db, self._pid = self._connect(), os.getpid()
                self._local = threading.local()
            db = self._db
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = db.cursor()
        return cursor

    def _connect(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        root = extension_directory(self.cache_dir)
        con = duckdb.connect(":memory:", config={"extension_directory": str(root),
                                                 "autoinstall_known_extensions": False,
                                                 "autoload_known_extensions": True,
                                                 "python_enable_replacements": False})
        try:
            con.execute("SET TimeZone = 'UTC'")
            for name in ("httpfs", "postgres", "ducklake"):
                con.execute(f"LOAD {name}")
            catalog = self._catalog_data_path()
            if catalog is None:  # a new catalog: one process creates it (and the tables) while others wait
                with self._init_lock():
                    self._attach(con, self._catalog_data_path())
                    self._create_tables(con)
            else:
                self._attach(con, catalog)
                if not self._tables_exist(con):
                    with self._init_lock():
                        self._create_tables(con)
        except duckdb.Error as exc:
            con.close()
            raise StoreError(f"Could not open the DuckLake store {self.location}: {_first_line(exc)}. Check that "
                             "PostgreSQL answers (host, port, user; password in PGPASSWORD or ~/.pgpass) and "
                             "that the data path is reachable.") from exc
        except BaseException:
            con.close()
            raise
        return con

    def _attach(self, con: duckdb.DuckDBPyConnection, catalog: str | None) -> None:
        if self.data_path and catalog and catalog.rstrip("/") != self.data_path.rstrip("/"):
            raise StoreError(f"The catalog {self.location} keeps its data in {catalog}, not {self.data_path}: "
                             f"set LUMIBOT_DUCKDB_DATA_PATH={catalog} (or leave it unset) for this store.")
        path = catalog or self.data_path
        if path is None:
            raise StoreError(f"The DuckLake catalog {self.location} is new and no data path was given: set "
                             "LUMIBOT_DUCKDB_DATA_PATH to s3://BUCKET/PREFIX/ or a folder (data_path=).")
        secret = _s3_secret(path)
        if secret is not None:
            con.execute(secret)
        options = []
        if catalog is None:
            if not path.lower().startswith("s3://"):
                Path(path).mkdir(parents=True, exist_ok=True)
            options.append(f"DATA_PATH {_literal(path.rstrip('/') + '/')}")
        suffix = f" ({', '.join(options)})" if options else ""
        con.execute(f"ATTACH {_literal('ducklake:postgres:' + self.libpq)} AS {CATALOG}{suffix}")

    def _tables_exist(self, con: duckdb.DuckDBPyConnection) -> bool:
        names = {row[0] for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [CATALOG]).fetchall()}
        return {"bars", "coverage", "quarantine"} <= names

    @contextlib.contextmanager
    def _init_lock(self) -> Iterator[None]:
        """The catalog's own advisory lock, held while a process creates the catalog or the store's tables."""
        con = _pg_connect(self.libpq, f"lumibot-duckdb setup {os.getpid()}")
        try:
            with con.cursor() as cur:
                cur.execute("SET lock_timeout = '120s'")
                cur.execute("SELECT pg_advisory_lock(%s, 0)", (LOCK_CLASS,))
            yield
        finally:
            con.close()

    def _catalog_data_path(self) -> str | None:
        """The data path recorded in the catalog, or None for a new catalog."""
        with self._pg() as cur:
            cur.execute("SELECT to_regclass('public.ducklake_metadata') IS NOT NULL")
            if not cur.fetchone()[0]:
                return None
            cur.execute("SELECT value FROM public.ducklake_metadata WHERE key = 'data_path'")
            row = cur.fetchone()
        return str(row[0]) if row else None

    def _create_tables(self, con: duckdb.DuckDBPyConnection) -> None:
        keys = ", ".join(f"{k} VARCHAR NOT NULL" for k in KEY_COLUMNS)
        values = ", ".join(f"{v} {_VALUE_SQL.get(v, 'DOUBLE')}" for v in VALUE_COLUMNS)
        answer = (f"{keys}, partition VARCHAR NOT NULL, start TIMESTAMPTZ NOT NULL, \"end\" TIMESTAMPTZ NOT NULL, "
                  "token VARCHAR NOT NULL, bars BIGINT NOT NULL, bytes BIGINT NOT NULL, digest VARCHAR NOT NULL, "
                  "marks VARCHAR NOT NULL, writer VARCHAR, written_at TIMESTAMPTZ")
        existing = {row[0] for row in con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [CATALOG]).fetchall()}
        for attempt in range(_COMMIT_ATTEMPTS):
            try:
                if "bars" not in existing:
                    con.execute(f"CREATE TABLE IF NOT EXISTS {CATALOG}.bars (ts TIMESTAMPTZ NOT NULL, {keys}, "
                                f"{values}, metadata VARCHAR, token VARCHAR NOT NULL)")
                    con.execute(f"ALTER TABLE {CATALOG}.bars SET PARTITIONED BY (symbol, year(ts))")
                    con.execute(f"CALL {CATALOG}.set_option('parquet_row_group_size', 16384)")
                    con.execute(f"CALL {CATALOG}.set_option('parquet_compression', 'zstd')")
                if "coverage" not in existing:
                    con.execute(f"CREATE TABLE IF NOT EXISTS {CATALOG}.coverage ({answer})")
                if "quarantine" not in existing:
                    con.execute(f"CREATE TABLE IF NOT EXISTS {CATALOG}.quarantine ({answer}, reason VARCHAR, "
                                "set_aside_at TIMESTAMPTZ)")
                return
            except _conflicts() as exc:  # another process created them meanwhile
                self._backoff(attempt, exc)
                existing = {row[0] for row in con.execute(
                    "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [CATALOG]).fetchall()}

    @contextlib.contextmanager
    def _pg(self) -> Iterator[Any]:
        """A cursor of a short-lived PostgreSQL connection (autocommit)."""
        con = _pg_connect(self.libpq, "lumibot-duckdb")
        try:
            with con.cursor() as cur:
                yield cur
        finally:
            con.close()

    def _execute(self, sql: str, params: list[Any] | None = None) -> Any:
        self.stats.statements += 1
        return self._cursor().execute(sql, params or [])

    def _transaction(self, work: Callable[[duckdb.DuckDBPyConnection], _T], what: str) -> _T:
        """Run ``work`` in one DuckLake transaction, retried on a commit conflict."""
        import duckdb

        for attempt in range(_COMMIT_ATTEMPTS):
            cursor = self._cursor()
            try:
                cursor.execute("BEGIN TRANSACTION")
                result = work(cursor)
                cursor.execute("COMMIT")
                self.stats.commits += 1
                return result
            except _conflicts() as exc:
                with contextlib.suppress(duckdb.Error):
                    cursor.execute("ROLLBACK")
                self.stats.conflicts += 1
                self._backoff(attempt, exc)
            except duckdb.Error as exc:
                with contextlib.suppress(duckdb.Error):
                    cursor.execute("ROLLBACK")
                raise StoreError(f"Could not {what} in {self.location}: {_first_line(exc)}") from exc
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    cursor.execute("ROLLBACK")
                raise
        raise StoreError(f"Could not {what} in {self.location}: the commit conflicted with other writers "
                         f"{_COMMIT_ATTEMPTS} times in a row; run again.")

    def _backoff(self, attempt: int, exc: BaseException) -> None:
        if attempt + 1 >= _COMMIT_ATTEMPTS:
            raise StoreError(f"{self.location}: the commit kept conflicting with other writers "
                             f"({_first_line(exc)}); run again.") from exc
        time.sleep(min(1.0, 0.02 * 1.5 ** attempt) * (0.5 + random.random()))

    # -- series and files -----------------------------------------------------------------------------------
    def series(self) -> list[SeriesKey]:
        rows = self._execute(f"SELECT DISTINCT {', '.join(KEY_COLUMNS)} FROM {CATALOG}.coverage").fetchall()
        return sorted(SeriesKey(**dict(zip(KEY_COLUMNS, row))) for row in rows)

    def files(self, key: SeriesKey, within: Interval | None = None) -> list[BarFile]:
        """The answers of ``key`` (those overlapping ``within``), oldest first. The coverage rows are queried
        from the lake once per snapshot: a listing is reused while the catalog's newest snapshot is the one it
        was taken at (one indexed lookup in PostgreSQL), since any commit makes a new snapshot."""
        snapshot = self._snapshot()
        with self._lock:
            cached = self._listings.get(key)
        if snapshot is not None and cached is not None and cached[0] == snapshot:
            rows = cached[1]
        else:
            where, params = _key_filter(key)
            rows = [(p, Interval(utc(s), utc(e)), t, int(b), int(n), d, m) for p, s, e, t, b, n, d, m in self._execute(
                f"SELECT partition, start, \"end\", token, bars, bytes, digest, marks FROM {CATALOG}.coverage "
                f"WHERE {where} ORDER BY token", params).fetchall()]
            if snapshot is not None:
                with self._lock:
                    self._listings[key] = (snapshot, rows)
        if within is not None:
            rows = [row for row in rows if row[1].overlaps(within)]
        copies = {(f.interval, f.token[:16]): f for f in self.mirror.files(key, within)} if rows else {}
        found: list[BarFile] = []
        for partition, interval, token, bars, nbytes, digest, marks in rows:
            copy = copies.get((interval, token[:16]))
            path = copy.path if copy is not None else \
                self.mirror.series_dir(key) / partition / file_name(interval, token)
            found.append(LakeBarFile(path, key, partition, interval, copy.token if copy else token,
                                     lake_token=token, rows=bars, nbytes=nbytes, digest=digest, marks=marks))
        return found

    def _snapshot(self) -> int | None:
        """The catalog's newest snapshot id (None if it cannot be read: then nothing is reused)."""
        with self._lock:
            try:
                if self._snapshots is None or self._snapshots_pid != os.getpid() or self._snapshots.closed:
                    self._snapshots = _pg_connect(self.libpq, "lumibot-duckdb snapshots")
                    self._snapshots_pid = os.getpid()
                with self._snapshots.cursor() as cur:
                    cur.execute("SELECT max(snapshot_id) FROM public.ducklake_snapshot")
                    row = cur.fetchone()
            except Exception:  # noqa: BLE001 - no catalog yet, or a broken connection: list afresh
                self._snapshots = None
                return None
        return int(row[0]) if row and row[0] is not None else None

    def rewritable(self, files: list[BarFile]) -> list[BarFile]:
        return files

    def local(self, files: list[BarFile]) -> list[BarFile]:
        """Copy the bars of ``files`` the mirror lacks from the lake (one query per series), checked against
        the row count and digest committed with them, as sealed Parquet files; returns the files at their
        copies. Damage in the lake is set aside (``quarantine``) and raises :class:`CorruptFileError`."""
        todo = [f for f in files if isinstance(f, LakeBarFile) and not f.path.exists()]
        if not todo:
            return files
        done: dict[str, LakeBarFile] = {}
        by_key: dict[SeriesKey, list[LakeBarFile]] = {}
        for bar_file in todo:
            by_key.setdefault(bar_file.key, []).append(bar_file)
        damaged: list[tuple[LakeBarFile, str]] = []
        for key, group in by_key.items():
            tables = self._fetch(key, group, damaged)
            for bar_file in group:
                table = tables.get(bar_file.lake_token)
                if table is None:
                    continue
                done[bar_file.lake_token] = self._materialise(bar_file, table, damaged)
        if damaged:
            self._set_aside_in_lake(damaged)
        return [done.get(f.lake_token, f) if isinstance(f, LakeBarFile) else f for f in files]

    def _fetch(self, key: SeriesKey, group: list[LakeBarFile],
               damaged: list[tuple[LakeBarFile, str]]) -> dict[str, pa.Table]:
        """The bars of the answers in ``group`` still held (one snapshot: an answer compacted away since it was
        listed is left out, and the reader lists again), by token."""
        import duckdb

        wanted = [f for f in group if f.rows > 0]
        try:
            live, fetched = self._query_bars(key, group, wanted)
        except _conflicts():
            raise
        except duckdb.Error as exc:  # which answer's files cannot be read: each alone
            if len(wanted) <= 1:
                if wanted:
                    damaged.append((wanted[0], f"the lake cannot read its bars ({_first_line(exc)})"))
                return {}
            tables: dict[str, pa.Table] = {}
            for bar_file in wanted:
                tables.update(self._fetch(key, [bar_file], damaged))
            return tables
        tables = {f.lake_token: _empty_table() for f in group if f.rows == 0 and f.lake_token in live}
        if fetched is not None:
            tokens = fetched.column("token")
            for bar_file in wanted:
                if bar_file.lake_token in live:
                    tables[bar_file.lake_token] = fetched.filter(pc.equal(tokens, bar_file.lake_token)).drop(["token"])
        return tables

    def _query_bars(self, key: SeriesKey, group: list[LakeBarFile],
                    wanted: list[LakeBarFile]) -> tuple[set[str], pa.Table | None]:
        """In one snapshot: which tokens of ``group`` are still answers, and the bars of ``wanted``."""
        import duckdb

        where, params = _key_filter(key)
        cursor = self._cursor()
        cursor.execute("BEGIN TRANSACTION")
        try:
            live = {row[0] for row in cursor.execute(
                f"SELECT token FROM {CATALOG}.coverage WHERE {where} AND token IN (SELECT unnest(?))",
                [*params, [f.lake_token for f in group]]).fetchall()}
            fetched = None
            if wanted:
                start = min(f.interval.start for f in wanted)
                end = max(f.interval.end for f in wanted)
                columns = ", ".join(["ts", *VALUE_COLUMNS, "metadata", "token"])
                # year(ts) prunes partitions (DuckLake prunes on partition values and file statistics)
                result: Any = cursor.execute(
                    f"SELECT {columns} FROM {CATALOG}.bars WHERE {where} AND ts >= ? AND ts < ? "
                    "AND year(ts) BETWEEN ? AND ? AND token IN (SELECT unnest(?)) ORDER BY token, ts",
                    [*params, start.to_pydatetime(), end.to_pydatetime(), start.year,
                     (end - dt.timedelta(microseconds=1)).year, [f.lake_token for f in wanted]])
                fetched = result.fetch_arrow_table()  # (DuckDB 1.5: the only series DuckLake runs on here)
            cursor.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                cursor.execute("ROLLBACK")
            raise
        self.stats.statements += 2
        return live, fetched

    def _materialise(self, bar_file: LakeBarFile, rows: pa.Table,
                     damaged: list[tuple[LakeBarFile, str]]) -> LakeBarFile:
        table = _store_table(rows, bar_file.key, _marks_of(bar_file.marks))
        problem = None
        if len(table) != bar_file.rows:
            problem = f"the lake holds {len(table)} bar(s) of it, {bar_file.rows} were committed"
        elif bars_digest(table) != bar_file.digest:
            problem = "its bars in the lake do not match the digest committed with them"
        if problem is not None:
            damaged.append((bar_file, problem))
            return bar_file
        copy = self.mirror.publish(bar_file.key, bar_file.partition, table, bar_file.interval,
                                   published=bar_file.lake_token)
        self.stats.materialised += 1
        return replace(bar_file, path=copy.path, token=copy.token)

    def footer(self, bar_file: BarFile) -> pq.FileMetaData | None:
        """The footer of the file's mirror copy (made first if need be)."""
        if not bar_file.path.exists():
            try:
                bar_file = self.local([bar_file])[0]
            except CorruptFileError:
                return None
        return read_footer(str(bar_file.path))

    def strays(self) -> list[tuple[str, str, str]]:
        """Bars in the lake that no answer (and no set-aside answer) claims: never written by this store's
        transactions, so written around it; readers ignore them."""
        rows = self._execute(
            f"SELECT {', '.join(KEY_COLUMNS)}, count(*) FROM {CATALOG}.bars b WHERE NOT EXISTS "
            f"(SELECT 1 FROM {CATALOG}.coverage c WHERE c.token = b.token) AND NOT EXISTS "
            f"(SELECT 1 FROM {CATALOG}.quarantine q WHERE q.token = b.token) GROUP BY ALL").fetchall()
        return [("stray-rows", f"{self.location} {CATALOG}.bars {SeriesKey(**dict(zip(KEY_COLUMNS, row[:-1])))}",
                 f"{row[-1]} bar(s) no answer in {CATALOG}.coverage claims; readers ignore them")
                for row in rows]

    # -- writing --------------------------------------------------------------------------------------------
    def publish(self, key: SeriesKey, partition: str, table: pa.Table, interval: Interval, *,
                published: str | None = None) -> BarFile:
        """Commit ``table``'s bars and their coverage row in one transaction (retried on conflicts); the
        sealed copy is kept in the mirror."""
        self._check_lock(key)
        marks = _marks_json(table.schema.metadata)
        digest = bars_digest(table)
        copy = self.mirror.publish(key, partition, table, interval, published=published)
        token = copy.token
        nbytes = copy.size
        key_values = [key.as_dict()[k] for k in KEY_COLUMNS]
        values = ", ".join(["ts", *(f"CAST(? AS VARCHAR) AS {k}" for k in KEY_COLUMNS), *VALUE_COLUMNS, "metadata",
                            "CAST(? AS VARCHAR) AS token"])
        incoming = table.select(["ts", *VALUE_COLUMNS, "metadata"]).replace_schema_metadata(None)

        def work(cursor: duckdb.DuckDBPyConnection) -> None:
            if len(incoming):
                view = f"_incoming_{threading.get_ident()}"
                cursor.register(view, incoming)
                try:
                    cursor.execute(f"INSERT INTO {CATALOG}.bars SELECT {values} FROM {view}", [*key_values, token])
                finally:
                    cursor.unregister(view)
            cursor.execute(f"INSERT INTO {CATALOG}.coverage VALUES ({', '.join(['?'] * (len(KEY_COLUMNS) + 10))})",
                           [*key_values, partition, interval.start.to_pydatetime(), interval.end.to_pydatetime(),
                            token, len(incoming), nbytes, digest, marks, self.writer_name,
                            dt.datetime.now(dt.timezone.utc)])
            self.stats.statements += 3

        try:
            self._transaction(work, f"commit bars of {key}")
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                copy.path.unlink()
            raise
        return LakeBarFile(copy.path, key, partition, interval, token, lake_token=token, rows=len(incoming),
                           nbytes=nbytes, digest=digest, marks=marks)

    def remove(self, files: list[BarFile]) -> None:
        """Delete answers (their bars and coverage rows) in one transaction per series."""
        by_key: dict[SeriesKey, list[BarFile]] = {}
        for bar_file in files:
            by_key.setdefault(bar_file.key, []).append(bar_file)
        for key, group in by_key.items():
            self._check_lock(key)
            tokens = [getattr(f, "lake_token", "") or f.token for f in group]
            where, params = _key_filter(key)

            def work(cursor: duckdb.DuckDBPyConnection, where: str = where, params: list[Any] = params,
                     tokens: list[str] = tokens) -> None:
                for table in ("bars", "coverage"):
                    cursor.execute(f"DELETE FROM {CATALOG}.{table} WHERE {where} AND token IN (SELECT unnest(?))",
                                   [*params, tokens])
                self.stats.statements += 2

            self._transaction(work, f"remove {len(group)} answer(s) of {key}")
            self.mirror.remove(group)

    def quarantine(self, path: Path, reason: str) -> Path:
        """A damaged mirror copy: set aside on this machine (the lake's answer is sound; the next read makes a
        new copy)."""
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        return LocalFolder(self.root).quarantine(path, f"mirror copy: {reason}") if path.is_relative_to(self.root) \
            else LocalFolder(self.root).quarantine(path, reason)

    def _set_aside_in_lake(self, damaged: list[tuple[LakeBarFile, str]]) -> None:
        """Move damaged answers from ``coverage`` to ``quarantine`` (their bars stay, unread), then say so."""
        columns = ", ".join([*KEY_COLUMNS, "partition", "start", '"end"', "token", "bars", "bytes", "digest",
                             "marks", "writer", "written_at"])
        for bar_file, reason in damaged:
            where, params = _key_filter(bar_file.key)

            def work(cursor: duckdb.DuckDBPyConnection, where: str = where, params: list[Any] = params,
                     token: str = bar_file.lake_token, reason: str = reason) -> None:
                cursor.execute(f"INSERT INTO {CATALOG}.quarantine SELECT {columns}, ?, now() "
                               f"FROM {CATALOG}.coverage WHERE {where} AND token = ?", [reason, *params, token])
                cursor.execute(f"DELETE FROM {CATALOG}.coverage WHERE {where} AND token = ?", [*params, token])

            self._transaction(work, f"set aside a damaged answer of {bar_file.key}")
            log.warning("lumibot-duckdb: set aside the answer %s of %s (covering %s) in %s.quarantine: %s",
                        bar_file.lake_token, bar_file.key, bar_file.interval, CATALOG, reason)
        first, reason = damaged[0]
        more = f" and {len(damaged) - 1} more" if len(damaged) > 1 else ""
        raise CorruptFileError(
            f"{len(damaged)} damaged answer(s) of {first.key} set aside in {CATALOG}.quarantine of {self.location} "
            f"(first: {first.lake_token}, covering {first.interval}: {reason}{more}). Every other answer is intact; "
            "the range they covered is no longer marked as stored and is fetched again on the next request.",
            path=str(first.path), quarantined_to=f"{CATALOG}.quarantine",
            intervals=[f.interval for f, _ in damaged], reasons=[r for _, r in damaged])

    # -- the lock -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: SeriesKey, timeout: float = 600.0) -> Iterator[None]:
        """Hold ``key`` with a PostgreSQL advisory lock on a connection of its own (freed if the process dies)."""
        import psycopg2

        started = time.monotonic()
        con = _pg_connect(self.libpq, f"lumibot-duckdb lock {os.getpid()}")
        ident = _lock_id(key)
        try:
            with con.cursor() as cur:
                cur.execute("SET lock_timeout = %s", (f"{max(1, int(timeout * 1000))}ms",))
                try:
                    cur.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, ident))
                except psycopg2.errors.LockNotAvailable:
                    holder = self._holder(ident)
                    raise StoreLockTimeout(
                        f"Series {key} is held in {self.location} by {holder} for more than {timeout:.0f}s "
                        f"(advisory lock {LOCK_CLASS}/{ident}). A lock dies with its holder's connection; wait, "
                        "or run again later.") from None
            with self._lock:
                self.stats.lock_waits.append(time.monotonic() - started)
                self._held[key] = con
            try:
                yield
            finally:
                with self._lock:
                    self._held.pop(key, None)
                with contextlib.suppress(psycopg2.Error), con.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, ident))
        finally:
            con.close()

    def _holder(self, ident: int) -> str:
        with contextlib.suppress(Exception), self._pg() as cur:
            cur.execute("SELECT a.application_name, a.client_addr, a.pid FROM pg_locks l JOIN pg_stat_activity a "
                        "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objid = %s "
                        "AND l.granted", (LOCK_CLASS, ident & 0xFFFFFFFF))
            row = cur.fetchone()
            if row:
                return f"{row[0] or 'a session'} (from {row[1] or 'local'}, backend pid {row[2]})"
        return "another writer"

    def _check_lock(self, key: SeriesKey) -> None:
        """A writer whose lock connection broke (the lock is then gone) must not commit more."""
        with self._lock:
            con = self._held.get(key)
        if con is None:
            return
        try:
            with con.cursor() as cur:
                cur.execute("SELECT 1")
        except Exception as exc:
            raise StoreError(f"The lock of {key} in {self.location} was lost ({exc}); nothing more is committed "
                             "under it. Run again.") from exc

    # -- notes ----------------------------------------------------------------------------------------------
    def _notes_table(self, cur: Any) -> None:
        if not self._notes_ready:
            cur.execute("CREATE SCHEMA IF NOT EXISTS lumibot_duckdb")
            cur.execute("CREATE TABLE IF NOT EXISTS lumibot_duckdb.notes (name TEXT PRIMARY KEY, document TEXT "
                        "NOT NULL, written_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            self._notes_ready = True

    def notes(self) -> list[tuple[str, ...]]:
        with self._pg() as cur:
            cur.execute("SELECT to_regclass('lumibot_duckdb.notes') IS NOT NULL")
            if not cur.fetchone()[0]:
                return []
            cur.execute("SELECT name FROM lumibot_duckdb.notes ORDER BY name")
            return [tuple(row[0].split("/")) for row in cur.fetchall()]

    def read_json(self, *parts: str) -> object | None:
        with self._pg() as cur:
            cur.execute("SELECT to_regclass('lumibot_duckdb.notes') IS NOT NULL")
            if not cur.fetchone()[0]:
                return None
            cur.execute("SELECT document FROM lumibot_duckdb.notes WHERE name = %s", ("/".join(parts),))
            row = cur.fetchone()
        if row is None:
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            return None

    def write_json(self, document: object, *parts: str) -> None:
        text = json.dumps(document, indent=1, sort_keys=True, default=str)
        with self._pg() as cur:
            for attempt in range(5):
                try:
                    self._notes_table(cur)
                    break
                except Exception:
                    if attempt == 4:
                        raise
                    time.sleep(0.05)
            cur.execute("INSERT INTO lumibot_duckdb.notes (name, document) VALUES (%s, %s) ON CONFLICT (name) DO "
                        "UPDATE SET document = EXCLUDED.document, written_at = now()", ("/".join(parts), text))

    # -- upkeep ---------------------------------------------------------------------------------------------
    def lake_files(self) -> int:
        """Parquet data files the lake's current snapshot uses (of every table)."""
        return int(self._execute(
            "SELECT count(*) FROM (SELECT * FROM ducklake_list_files(?, 'bars') UNION ALL "
            "SELECT * FROM ducklake_list_files(?, 'coverage'))", [CATALOG, CATALOG]).fetchone()[0])

    def upkeep(self, grace: dt.timedelta = UPKEEP_GRACE) -> dict[str, Any]:
        """DuckLake's own maintenance, each step retried on conflicts with writers: merge adjacent small files,
        expire snapshots older than ``grace``, delete the files they alone used, and delete files no snapshot
        knows (left by writers that died) older than ``grace``. Returns what it did."""
        import duckdb

        before = self.lake_files()
        started = time.perf_counter()
        cutoff = dt.datetime.now(dt.timezone.utc) - grace
        steps = [("merge", f"CALL ducklake_merge_adjacent_files('{CATALOG}')", []),
                 ("expire", f"CALL ducklake_expire_snapshots('{CATALOG}', older_than => ?)", [cutoff]),
                 ("cleanup", f"CALL ducklake_cleanup_old_files('{CATALOG}', older_than => ?)", [cutoff]),
                 ("orphans", f"CALL ducklake_delete_orphaned_files('{CATALOG}', older_than => ?)", [cutoff])]
        done: dict[str, Any] = {"files_before": before}
        for name, sql, params in steps:
            for attempt in range(_COMMIT_ATTEMPTS):
                try:
                    rows = self._execute(sql, params).fetchall()
                    done[name] = len(rows)
                    break
                except _conflicts() as exc:
                    self.stats.conflicts += 1
                    self._backoff(attempt, exc)
                except duckdb.Error as exc:
                    raise StoreError(f"DuckLake upkeep ({name}) of {self.location} failed: {_first_line(exc)}") \
                        from exc
        done["files_after"] = self.lake_files()
        done["seconds"] = time.perf_counter() - started
        return done

    def prune_mirror(self, older_than: dt.timedelta = _MIRROR_KEEP) -> int:
        """Delete mirror copies of answers the lake no longer holds (compacted or removed elsewhere) that were
        last used more than ``older_than`` ago. Returns copies deleted."""
        held = {(k, row.lake_token[:16]) for k in self.series() for row in self.files(k)
                if isinstance(row, LakeBarFile)}
        cutoff = time.time() - older_than.total_seconds()
        removed = 0
        for key in self.mirror.series():
            stale = [f for f in self.mirror.files(key) if (key, f.token[:16]) not in held
                     and _mtime(f.path) < cutoff]
            self.mirror.remove(stale)
            removed += len(stale)
        return removed

    def close(self) -> None:
        import duckdb

        with self._lock:
            if self._snapshots is not None and self._snapshots_pid == os.getpid():
                with contextlib.suppress(Exception):
                    self._snapshots.close()
            self._snapshots = None
            if self._db is not None:
                with contextlib.suppress(duckdb.Error):
                    self._db.close()
            self._db = None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _conflicts() -> tuple[type[BaseException], ...]:
    import duckdb

    return (duckdb.TransactionException,)


def _key_filter(key: SeriesKey) -> tuple[str, list[Any]]:
    values = key.as_dict()
    return " AND ".join(f"{k} = ?" for k in KEY_COLUMNS), [values[k] for k in KEY_COLUMNS]


def _lock_id(key: SeriesKey) -> int:
    """The series' advisory-lock key: a signed 32-bit hash of its name (a collision only serialises two series)."""
    value = zlib.crc32(str(key).encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def _pg_connect(libpq: str, application: str) -> Any:
    try:
        import psycopg2
    except ImportError as exc:
        raise ConfigError(f"A DuckLake store needs psycopg2 for its lock and notes: {EXTRA}") from exc
    try:
        con = psycopg2.connect(libpq, application_name=application, connect_timeout=15, keepalives=1,
                               keepalives_idle=15, keepalives_interval=5, keepalives_count=3)
    except psycopg2.Error as exc:
        raise StoreError(f"Could not connect to the DuckLake catalog ({_redacted(libpq)}): {_first_line(exc)}. "
                         "Check host, port, user and the password (PGPASSWORD or ~/.pgpass).") from exc
    con.autocommit = True
    return con


def _empty_table() -> pa.Table:
    return pa.table({f.name: pa.array([], f.type) for f in ARROW_SCHEMA if f.name not in KEY_COLUMNS})


def _store_table(rows: pa.Table, key: SeriesKey, marks: dict[bytes, bytes]) -> pa.Table:
    """The lake's rows of one answer as the store's Arrow table (key columns back, the answer's marks)."""
    n = len(rows)
    columns: dict[str, Any] = {"ts": rows.column("ts").cast(pa.timestamp("us", tz="UTC"))}
    for name, value in key.as_dict().items():
        columns[name] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value]))
    for name in (*VALUE_COLUMNS, "metadata"):
        columns[name] = rows.column(name).cast(ARROW_SCHEMA.field(name).type)
    table = pa.Table.from_pydict(columns, schema=ARROW_SCHEMA)
    return table.replace_schema_metadata(marks or None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
