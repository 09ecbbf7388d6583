"""An S3 service on loopback for tests and benchmarks: moto's server, a watchdog, and a counting proxy.

>>> with moto_server() as endpoint:                      # doctest: +SKIP
...     with S3Proxy(endpoint) as proxy:                  # counts requests and bytes
...         store = DuckDBDataStorage("s3://bars/team")   # with AWS_ENDPOINT_URL=proxy.url

* :func:`moto_server` starts ``python -m moto.server`` on 127.0.0.1 and a free port, waits until it
  answers, and stops it on exit. A detached watchdog process stops the server too when the process
  that started it dies (even by SIGKILL) or when ``max_lifetime`` runs out, so no test run leaves a
  server behind. Needs ``moto``, ``flask`` and ``flask-cors`` (the ``s3-test`` extra; not ``moto[server]``).
* :class:`S3Proxy` forwards HTTP to the server, counting requests per method and bytes each way;
  ``strip_conditions=True`` drops ``If-None-Match`` / ``If-Match`` request headers, which makes it a
  service that ignores conditional writes (as some S3-compatible services do).
* :func:`s3_environment` is what a process needs to reach it through boto3's standard chain.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

WATCHDOG = """
import os, shutil, signal, sys, time
parent, server, deadline = int(sys.argv[1]), int(sys.argv[2]), time.time() + float(sys.argv[3])
first = getattr(signal, sys.argv[4]) if len(sys.argv) > 4 else signal.SIGTERM  # (PostgreSQL: SIGINT, fast shutdown)
folder = sys.argv[5] if len(sys.argv) > 5 else ""  # removed if the parent died
def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of a dead parent counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return True
while alive(server):
    if not alive(parent) or time.time() > deadline:
        for sig in (first, signal.SIGKILL):
            try:
                os.killpg(server, sig)
            except ProcessLookupError:
                break
            time.sleep(1.5)
        break
    time.sleep(0.3)
if folder and not alive(parent):
    shutil.rmtree(folder, ignore_errors=True)
"""
"""A process that stops a test server's process group when the test process dies or the server outlives its
time: ``python -c WATCHDOG parent_pid server_pid max_seconds [FIRST_SIGNAL [folder]]``."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    try:
        with contextlib.closing(http.client.HTTPConnection(host, port, timeout=1.0)) as con:
            con.request("GET", "/")
            con.getresponse().read()
        return True
    except OSError:
        return False


@contextlib.contextmanager
def moto_server(*, max_lifetime: float = 1800.0, log: Path | None = None) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 for the duration of the block; yields its endpoint URL.

    Raises ``RuntimeError`` when moto is not installed or the server does not come up in 30 s.
    """
    try:
        import flask  # noqa: F401
        import moto  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"{exc.name} is not installed: pip install 'lumibot-duckdb[s3-test]' "
                           "(moto, flask, flask-cors)") from exc
    from lumibot_duckdb.testing.offline import allow_loopback

    for _ in range(5):
        port = free_port()
        allow_loopback(port)
        sink: Any = open(log, "ab") if log is not None else subprocess.DEVNULL  # closed below
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=sink, stderr=sink, start_new_session=True,
                                  env={**os.environ, "MOTO_PORT": str(port)})
        watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), str(server.pid),
                                     str(max_lifetime)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True)
        deadline = time.monotonic() + 30
        while server.poll() is None and time.monotonic() < deadline and not _answers("127.0.0.1", port):
            time.sleep(0.1)
        if server.poll() is None and _answers("127.0.0.1", port):
            break
        _stop(server)
        watchdog.wait(5)
        if sink is not subprocess.DEVNULL:
            sink.close()
    else:
        raise RuntimeError("moto's S3 server did not start on 127.0.0.1 (5 tries)")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(server)
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(5)
        if sink is not subprocess.DEVNULL:
            sink.close()


def _stop(process: subprocess.Popen[Any]) -> None:
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)


def s3_environment(endpoint: str) -> dict[str, str]:
    """Variables for boto3's standard chain to reach ``endpoint`` with moto's accepted test credentials."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "LUMIBOT_DUCKDB_OFFLINE_ALLOW": endpoint.rsplit("/", 1)[-1]}


def create_bucket(endpoint: str, bucket: str) -> None:
    """Create ``bucket`` on the server at ``endpoint`` (nothing if it exists)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1",
                          config=Config(s3={"addressing_style": "path"}))
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)


_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


class S3Proxy:
    """HTTP proxy in front of an S3 endpoint, in a thread of this process: counts what goes through.

    ``requests`` counts by kind (``LIST``, ``GET``, ``PUT``, ``DELETE``, ``HEAD``, ``POST``); ``bytes_in`` is
    response bodies (downloads), ``bytes_out`` request bodies (uploads). ``strip_conditions`` drops
    conditional-request headers, so the service behind it behaves as one that ignores them.
    """

    def __init__(self, target: str, *, strip_conditions: bool = False) -> None:
        self.target = target.rsplit("/", 1)[-1]
        self.strip_conditions = strip_conditions
        self.requests: Counter[str] = Counter()
        self.bytes_in = 0
        self.bytes_out = 0
        self._lock = threading.Lock()
        self._server: socketserver.ThreadingTCPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_in = self.bytes_out = 0

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests), "total": sum(self.requests.values()),
                    "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}

    def __enter__(self) -> S3Proxy:
        proxy = self
        host, port = self.target.split(":")

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                if proxy.strip_conditions:
                    headers = {k: v for k, v in headers.items() if k.lower() not in ("if-none-match", "if-match")}
                upstream = http.client.HTTPConnection(host, int(port), timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                kind = "LIST" if self.command == "GET" and "list-type=2" in self.path else self.command
                with proxy._lock:
                    proxy.requests[kind] += 1
                    proxy.bytes_out += len(body)
                    proxy.bytes_in += len(data)
                self.send_response_only(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in _HOP and (name.lower() != "content-length" or self.command == "HEAD"):
                        self.send_header(name, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        from lumibot_duckdb.testing.offline import allow_loopback

        allow_loopback(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, name="s3-proxy", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
