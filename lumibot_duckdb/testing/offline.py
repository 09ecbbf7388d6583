"""Keep a process offline: no socket connects, no DNS, no libcurl transfers (yfinance uses curl_cffi).

Used by the test suite (every test) and by the A/B harness child processes, so that a run that
reaches for the network fails loudly instead of silently waiting on a closed network.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

_LUMIBOT_PREFIXES = ("BACKTESTING_", "POLYGON_", "LUMIBOT_", "ALPACA_", "IS_BACKTESTING")


def isolated_environment(folder: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with every Lumibot cache, artefact and home folder
    inside ``folder`` and every Lumibot/provider setting of the user removed.

    Lumibot reads these once, when it is imported: apply them to a child process, or to this one
    before importing Lumibot.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith(_LUMIBOT_PREFIXES)}
    home = folder / "home"
    env.update(
        LUMIBOT_CACHE_FOLDER=str(folder / "lumibot-cache"),
        LUMIBOT_TRADING_DAYS_CACHE_DIR=str(folder / "trading-days"),
        LUMIBOT_DUCKDB_CACHE_DIR=str(folder / "duckdb"),
        LUMIBOT_DISABLE_DOTENV="true",   # a .env found upwards could switch the data source
        LUMIBOT_DISABLE_UI="true",
        LUMIBOT_LOG_LEVEL="ERROR",
        BACKTESTING_DATA_SOURCE="none",  # otherwise it overrides the class passed in code
        POLYGON_API_KEY="offline-key",
        HOME=str(home),
        XDG_CACHE_HOME=str(home / ".cache"),
        MPLCONFIGDIR=str(home / ".mpl"),
    )
    return env


class NetworkBlocked(ConnectionError):
    """A network call was attempted while the network was blocked."""

    retryable = False  # never worth another try (lumibot_duckdb.sources.retry.transient)


ENV_ALLOW = "LUMIBOT_DUCKDB_OFFLINE_ALLOW"
"""``127.0.0.1:PORT[,127.0.0.1:PORT…]``: loopback servers a test started itself (an S3 server), still reachable."""


_STARTED: set[tuple[str, int]] = set()


def allow_loopback(port: int) -> None:
    """Let every guard of this process through to ``127.0.0.1:port``: a server this process started itself."""
    _STARTED.add(("127.0.0.1", int(port)))


def allowed_loopback(environ: Mapping[str, str] | None = None) -> frozenset[tuple[str, int]]:
    """The loopback addresses :data:`ENV_ALLOW` lets through (anything not on 127.0.0.1 is ignored)."""
    found = set()
    for item in (os.environ if environ is None else environ).get(ENV_ALLOW, "").split(","):
        host, _, port = item.strip().rpartition(":")
        if host == "127.0.0.1" and port.isdigit():
            found.add((host, int(port)))
    return frozenset(found)


class NetworkGuard:
    """Patches the network entry points; remembers every attempt, even ones the caller swallowed.

    ``allow`` (default: :func:`allowed_loopback`) lists ``(127.0.0.1, port)`` servers a parent process started;
    servers this process started register with :func:`allow_loopback`.
    """

    def __init__(self, allow: frozenset[tuple[str, int]] | None = None) -> None:
        self.attempts: list[str] = []
        self.allow = allowed_loopback() if allow is None else allow
        self._lock = threading.Lock()
        self._undo: list[tuple[Any, str, Any]] = []

    def _refuse(self, what: str) -> None:
        with self._lock:
            self.attempts.append(what)
        raise NetworkBlocked(f"network access blocked: {what}")

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self._undo.append((owner, name, owner.__dict__.get(name, getattr(owner, name))))
        setattr(owner, name, replacement)

    def install(self) -> NetworkGuard:
        guard = self

        def allowed(address: Any) -> bool:
            return isinstance(address, tuple) and (tuple(address[:2]) in guard.allow or tuple(address[:2]) in _STARTED)

        def connect(sock: socket.socket, address: Any, *args: Any) -> Any:
            if sock.family == getattr(socket, "AF_UNIX", object()) or allowed(address):
                return _original_connect(sock, address, *args)
            guard._refuse(f"socket connect to {address!r}")

        def connect_ex(sock: socket.socket, address: Any, *args: Any) -> Any:
            if sock.family == getattr(socket, "AF_UNIX", object()) or allowed(address):
                return _original_connect_ex(sock, address, *args)
            guard._refuse(f"socket connect_ex to {address!r}")

        def getaddrinfo(host: Any, port: Any = None, *args: Any, **kwargs: Any) -> Any:
            if allowed((host, int(port) if str(port).isdigit() else port)):
                return _original_getaddrinfo(host, port, *args, **kwargs)
            guard._refuse(f"DNS lookup of {host!r}")

        def create_connection(address: Any, *args: Any, **kwargs: Any) -> Any:
            if allowed(address):
                return _original_create_connection(address, *args, **kwargs)
            guard._refuse(f"create_connection to {address!r}")

        _original_connect = socket.socket.connect
        _original_connect_ex = socket.socket.connect_ex
        _original_getaddrinfo = socket.getaddrinfo
        _original_create_connection = socket.create_connection
        self._patch(socket.socket, "connect", connect)
        self._patch(socket.socket, "connect_ex", connect_ex)
        self._patch(socket, "getaddrinfo", getaddrinfo)
        self._patch(socket, "create_connection", create_connection)
        try:
            from curl_cffi import curl
            from curl_cffi import requests as curl_requests
        except ImportError:
            return self
        self._patch(curl.Curl, "perform", lambda *a, **k: guard._refuse("curl_cffi transfer"))
        for session in ("Session", "AsyncSession"):
            cls = getattr(curl_requests, session, None)
            if cls is not None:
                self._patch(cls, "request", lambda *a, **k: guard._refuse("curl_cffi request"))
        return self

    def uninstall(self) -> None:
        while self._undo:
            owner, name, original = self._undo.pop()
            setattr(owner, name, original)


@contextlib.contextmanager
def offline() -> Iterator[NetworkGuard]:
    """Block the network inside the block; the guard's ``attempts`` lists what was tried."""
    guard = NetworkGuard().install()
    try:
        yield guard
    finally:
        guard.uninstall()
