"""A/B runs against the real provider: the user's credentials, throw-away caches, requests counted on the wire.

The environment of each run is the user's (``os.environ``, then the ``.env`` Lumibot would load for
the strategy file: searched from the file's folder upwards, then from the working directory upwards,
never overriding a variable already set; ``.env.local`` beside it overrides), with everything the A/B
harness must control replaced: every cache folder (Lumibot's, its trading-day calendars', the
store's, ``XDG_CACHE_HOME``) points into the run's own folder, Lumibot's remote (S3) backtest cache
is off, the data source and the backtest dates come from the command line, and ``.env`` is not read
again by the run. So cold runs start empty, warm runs reuse what the cold run filled, and the user's
own caches are never read or written.

Provider requests are counted below every vendor client: each HTTP request urllib3 sends (Polygon's
client, alpaca-py and ccxt through ``requests``) and each curl_cffi request (yfinance), by host.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lumibot_duckdb.errors import ConfigError

CONTROLLED = ("BACKTESTING_START", "BACKTESTING_END", "BACKTESTING_DATA_SOURCE", "LUMIBOT_USE_DUCKDB",
              "LUMIBOT_DUCKDB_CACHE_DIR", "LUMIBOT_DUCKDB_VERIFY_REPORT", "LUMIBOT_CACHE_FOLDER",
              "LUMIBOT_TRADING_DAYS_CACHE_DIR", "LUMIBOT_CACHE_BACKEND", "LUMIBOT_CACHE_MODE", "IS_BACKTESTING")
"""Variables of the user's environment the harness replaces in every run."""

CREDENTIALS: dict[str, tuple[tuple[str, ...], ...]] = {
    "polygon": (("POLYGON_API_KEY",),),
    "alpaca": (("ALPACA_API_KEY", "ALPACA_API_SECRET"), ("ALPACA_OAUTH_TOKEN",),
               ("ALPACA_TEST_API_KEY", "ALPACA_TEST_API_SECRET")),
    "yahoo": (),
    "ccxt": (),
}
"""Per source, the alternative sets of variables that make a credential (any one set is enough)."""


def find_dotenv(start: Path) -> Path | None:
    """The ``.env`` Lumibot's ``find_and_load_dotenv`` finds from ``start``: the first one in it or a parent."""
    current = start.resolve()
    if current.is_file():
        current = current.parent
    while True:
        candidate = current / ".env"
        if candidate.is_file():
            return candidate
        if current.parent == current:
            return None
        current = current.parent


def user_environment(strategy_file: Path | None = None, *, base: Mapping[str, str] | None = None,
                     cwd: Path | None = None) -> tuple[dict[str, str], list[Path]]:
    """The environment a backtest of ``strategy_file`` sees under Lumibot, and the dotenv files read for it.

    Lumibot looks for ``.env`` from the folder of the script being run, then from the working
    directory; values already in the environment win; ``.env.local`` next to it overrides
    (unless ``LUMIBOT_DISABLE_DOTENV_LOCAL``). ``LUMIBOT_DISABLE_DOTENV`` turns all of it off.
    """
    env = dict(os.environ if base is None else base)
    if _flag(env.get("LUMIBOT_DISABLE_DOTENV")):
        return env, []
    starts = [p for p in (strategy_file, cwd or Path.cwd()) if p is not None]
    found = next((f for f in (find_dotenv(Path(s)) for s in starts) if f is not None), None)
    if found is None:
        return env, []
    from dotenv import dotenv_values  # a Lumibot dependency

    read = [found]
    for name, value in dotenv_values(found).items():
        if value is not None:
            env.setdefault(name, value)
    local = found.with_name(".env.local")
    if local.is_file() and not _flag(env.get("LUMIBOT_DISABLE_DOTENV_LOCAL")):
        env.update({k: v for k, v in dotenv_values(local).items() if v is not None})
        read.append(local)
    return env, read


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def child_environment(workdir: Path, strategy_file: Path | None = None,
                      base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one run on the real provider, every cache inside ``workdir`` (see the module docstring)."""
    env, _ = user_environment(strategy_file, base=base)
    for name in CONTROLLED:
        env.pop(name, None)
    env.update(
        LUMIBOT_CACHE_FOLDER=str(workdir / "lumibot-cache"),
        LUMIBOT_TRADING_DAYS_CACHE_DIR=str(workdir / "trading-days"),
        LUMIBOT_DUCKDB_CACHE_DIR=str(workdir / "duckdb"),
        LUMIBOT_CACHE_BACKEND="local",
        LUMIBOT_CACHE_MODE="disabled",
        LUMIBOT_DISABLE_DOTENV="true",  # read above, once, by the rules Lumibot uses
        LUMIBOT_DISABLE_UI="true",
        LUMIBOT_LOG_LEVEL=env.get("LUMIBOT_LOG_LEVEL", "ERROR"),
        BACKTESTING_DATA_SOURCE="none",  # otherwise it overrides the class the harness passes
        XDG_CACHE_HOME=str(workdir / "home" / ".cache"),
        MPLCONFIGDIR=str(workdir / "home" / ".mpl"),
        PYTHONWARNINGS="ignore",
    )
    return env


def check_credentials(source: str, env: Mapping[str, str]) -> None:
    """A :class:`ConfigError` saying what to set when ``env`` holds no credential for ``source``."""
    choices = CREDENTIALS.get(source, ())
    if not choices or any(all(env.get(name) for name in names) for names in choices):
        return
    wanted = " or ".join("+".join(names) for names in choices)
    raise ConfigError(f"No {source} credentials: set {wanted} in the environment or in a .env file (found from "
                      "the strategy file's folder or the working directory, as Lumibot reads it), or pass "
                      "--offline to run on the built-in emulated provider.")


def backtest_kwargs(source: str, env: Mapping[str, str], scenario: Any) -> dict[str, Any]:
    """Keyword arguments of ``run_backtest`` for ``source`` on the real provider (credentials as Lumibot takes them)."""
    options: dict[str, Any] = {}
    if source == "alpaca":
        # an explicit paper config, as Lumibot's Alpaca examples pass it (explicit-config rules on both paths)
        if env.get("ALPACA_API_KEY") or env.get("ALPACA_OAUTH_TOKEN"):
            prefix = "ALPACA_"
        else:
            prefix = "ALPACA_TEST_"
        options["config"] = {"API_KEY": env.get(f"{prefix}API_KEY"), "API_SECRET": env.get(f"{prefix}API_SECRET"),
                             "OAUTH_TOKEN": env.get(f"{prefix}OAUTH_TOKEN"), "PAPER": True}
        if getattr(scenario, "timestep", ""):
            options["timestep"] = scenario.timestep
    elif source == "ccxt":
        from lumibot.entities import Asset

        options["exchange_id"] = "binance"
        options["quote_asset"] = Asset("USDT", "crypto")
    return options


class RequestCounter:
    """HTTP requests made inside :func:`counting_requests`, by host (what :class:`~.harness.RunResult` reports)."""

    def __init__(self) -> None:
        self.hosts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, host: str | None) -> None:
        with self._lock:
            name = host or "?"
            self.hosts[name] = self.hosts.get(name, 0) + 1

    def count(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(self.hosts.values()) if kind is None else self.hosts.get(kind, 0)

    def requested_days(self) -> int:
        """Not known on the wire (0)."""
        return 0

    def kinds(self) -> list[str]:
        with self._lock:
            return sorted(self.hosts)


@contextlib.contextmanager
def counting_requests() -> Iterator[RequestCounter]:
    """Count every HTTP request sent inside the block: urllib3 (and so ``requests``) and curl_cffi."""
    import urllib3.connectionpool

    counter = RequestCounter()
    undo: list[tuple[Any, str, Any]] = []
    pool = urllib3.connectionpool.HTTPConnectionPool
    urlopen = pool.urlopen

    def counted_urlopen(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        counter.add(getattr(self, "host", None))
        return urlopen(self, method, url, *args, **kwargs)

    undo.append((pool, "urlopen", urlopen))
    pool.urlopen = counted_urlopen  # type: ignore[method-assign]
    try:
        from curl_cffi import requests as curl_requests
    except ImportError:  # (yfinance brings it; without it nothing speaks through it)
        curl_requests = None  # type: ignore[assignment]
    if curl_requests is not None:
        session: Any = curl_requests.Session
        request = session.request

        def counted_request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            counter.add(urlparse(str(url)).hostname)
            return request(self, method, url, *args, **kwargs)

        undo.append((session, "request", request))
        session.request = counted_request
    try:
        yield counter
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)
