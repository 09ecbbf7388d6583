"""A throw-away PostgreSQL cluster on loopback for tests and benchmarks of the DuckLake store (its catalog).

>>> with postgres_cluster(tmp) as cluster:                       # doctest: +SKIP
...     libpq = cluster.create_database("lake")                   # "dbname=lake host=127.0.0.1 port=… user=lake"
...     store = DuckDBDataStorage(f"ducklake:postgres:{libpq}", data_path=tmp / "data")

* The server binaries come from the system's packages (Debian: ``apt-get install postgresql``, found under
  ``/usr/lib/postgresql/<version>/bin``; or ``LUMIBOT_DUCKDB_PG_BIN``, or ``initdb`` on the ``PATH``).
  :func:`pg_binaries` is None where there are none (tests skip, saying so).
* ``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` user (``runuser``).
* The server listens on 127.0.0.1 and a free port only (and a socket in its own folder), with ``fsync=off``
  and trust authentication: a test cluster, never a place for data. It is stopped on exit; a detached
  watchdog stops it too, and removes its folder, when the process that started it dies (even by SIGKILL)
  or when ``max_lifetime`` runs out.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lumibot_duckdb.testing.s3server import WATCHDOG, free_port

ENV_PG_BIN = "LUMIBOT_DUCKDB_PG_BIN"
USER = "lake"


def pg_binaries() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (newest version first), or None when there is none."""
    configured = os.environ.get(ENV_PG_BIN, "").strip()
    candidates = [configured] if configured else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).parent))
    for folder in candidates:
        if (Path(folder) / "initdb").exists() and (Path(folder) / "postgres").exists():
            return Path(folder)
    return None


def _version(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


@dataclass
class Cluster:
    """A running test cluster: connect as :data:`USER` on ``host:port`` (trust authentication)."""

    host: str
    port: int
    folder: Path
    pid: int

    def libpq(self, dbname: str = "postgres") -> str:
        """The libpq connection string of ``dbname`` on this cluster."""
        return f"dbname={dbname} host={self.host} port={self.port} user={USER}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` (nothing if it exists); returns its libpq string."""
        import psycopg2

        con = psycopg2.connect(self.libpq(), connect_timeout=10)
        try:
            con.autocommit = True
            with con.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            con.close()
        return self.libpq(name)


def _as_owner(command: list[str]) -> list[str]:
    """``command`` run as the ``postgres`` user when this process is root (initdb refuses root)."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def _ready(host: str, port: int) -> bool:
    try:
        import psycopg2

        psycopg2.connect(f"dbname=postgres host={host} port={port} user={USER}", connect_timeout=2).close()
        return True
    except Exception:  # noqa: BLE001 - not up yet
        return False


@contextlib.contextmanager
def postgres_cluster(parent: str | os.PathLike[str] | None = None, *, max_lifetime: float = 1800.0,
                     max_connections: int = 200) -> Iterator[Cluster]:
    """A new cluster for the duration of the block (its folder under ``parent``, default a temporary one).

    Raises ``RuntimeError`` when there are no PostgreSQL binaries or the server does not come up in 60 s.
    """
    binaries = pg_binaries()
    if binaries is None:
        raise RuntimeError("no PostgreSQL server binaries (initdb, postgres): apt-get install postgresql, or set "
                           f"{ENV_PG_BIN} to the folder holding them")
    folder = Path(tempfile.mkdtemp(prefix="lumibot-duckdb-pg-", dir=parent))
    data, sockets = folder / "data", folder / "sock"
    sockets.mkdir()
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("postgres")
        for path in (folder, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        os.chmod(folder, 0o755)
    log = folder / "initdb.log"
    with open(log, "wb") as sink:
        done = subprocess.run(_as_owner([str(binaries / "initdb"), "-D", str(data), "-U", USER, "--auth=trust",
                                         "-E", "UTF8", "--no-instructions", "--no-sync"]),
                              stdout=sink, stderr=subprocess.STDOUT, timeout=120, check=False)
    if done.returncode:
        text = log.read_text(errors="replace")[-2000:]
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({done.returncode}): {text}")
    from lumibot_duckdb.testing.offline import allow_loopback

    server: subprocess.Popen[Any] | None = None
    for _ in range(5):
        port = free_port()
        allow_loopback(port)
        with open(folder / "server.log", "ab") as sink:  # (the server keeps its own copy of the descriptor)
            command = [str(binaries / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                       "-k", str(sockets), "-c", "fsync=off", "-c", "synchronous_commit=off",
                       "-c", "full_page_writes=off", "-c", f"max_connections={max_connections}",
                       "-c", "shared_buffers=32MB", "-c", "logging_collector=off"]
            server = subprocess.Popen(_as_owner(command),
                stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
        watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(server.pid),
                                     str(max_lifetime), "SIGINT", str(folder)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while server.poll() is None and time.monotonic() < deadline and not _ready("127.0.0.1", port):
            time.sleep(0.1)
        if server.poll() is None and _ready("127.0.0.1", port):
            break
        _stop(server)
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(5)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(f"PostgreSQL did not start on 127.0.0.1 (5 tries); see {folder / 'server.log'}")
    assert server is not None
    try:
        yield Cluster("127.0.0.1", port, folder, server.pid)
    finally:
        _stop(server)
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(5)
        shutil.rmtree(folder, ignore_errors=True)


def _stop(process: subprocess.Popen[Any]) -> None:
    for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGKILL, 5.0)):  # SIGINT: fast shutdown
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)


class PgProxy:
    """A TCP proxy in front of a PostgreSQL server, in threads of this process: counts what goes through.

    ``bytes_in`` is what the server sent (catalog reads), ``bytes_out`` what clients sent; ``messages`` counts
    the clients' protocol messages by type (``Q`` a simple query, ``P`` a statement prepared, ``B``/``E`` bound
    and executed, ``d`` COPY data…), ``connections`` the connections opened. :attr:`statements` is ``Q + P``.
    Point clients at :attr:`port` on 127.0.0.1 with ``sslmode=disable``.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.bytes_in = 0
        self.bytes_out = 0
        self.connections = 0
        self.messages: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.port = 0

    @property
    def statements(self) -> int:
        return self.messages["Q"] + self.messages["P"]

    def reset(self) -> None:
        with self._lock:
            self.bytes_in = self.bytes_out = self.connections = 0
            self.messages.clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out, "connections": self.connections,
                    "statements": self.statements, "messages": dict(self.messages)}

    def __enter__(self) -> PgProxy:
        from lumibot_duckdb.testing.offline import allow_loopback

        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        allow_loopback(self.port)
        allow_loopback(self.target[1])
        threading.Thread(target=self._accept, name="pg-proxy", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
            self._listener = None

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=30)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, from_client: bool) -> None:
        buffer = b""
        started = False  # the startup message (and an SSL/GSS request before it) has no type byte
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
                with self._lock:
                    if from_client:
                        self.bytes_out += len(data)
                    else:
                        self.bytes_in += len(data)
                if not from_client:
                    continue
                buffer += data
                while True:
                    if not started:
                        if len(buffer) < 8:
                            break
                        length = int.from_bytes(buffer[:4], "big")
                        code = int.from_bytes(buffer[4:8], "big")
                        if len(buffer) < length:
                            break
                        buffer = buffer[length:]
                        started = code not in (80877103, 80877104)  # SSLRequest / GSSENCRequest come first
                        continue
                    if len(buffer) < 5:
                        break
                    length = int.from_bytes(buffer[1:5], "big")
                    if len(buffer) < 1 + length:
                        break
                    kind = chr(buffer[0])
                    buffer = buffer[1 + length:]
                    with self._lock:
                        self.messages[kind] += 1
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    end.close()
