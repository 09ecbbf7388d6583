"""Configuration: explicit keyword arguments first, then environment variables, read once per object.

Nothing here runs at import time; :meth:`Settings.resolve` is called when a data source or a store
is built.

**The environment is Lumibot's.** Lumibot loads ``.env`` (and ``.env.local`` beside it) when it is
imported: the first folder upward from the script's folder that holds a ``.env``, else the first
upward from the current folder; ``.env`` never overrides a variable already set, ``.env.local``
does; ``LUMIBOT_DISABLE_DOTENV`` skips both, ``LUMIBOT_DISABLE_DOTENV_LOCAL`` the local one.
:func:`lumibot_environment` applies the same files with the same precedence when Lumibot has not
been imported (the command line, a script that only uses the store), so a backtest and
``lumibot-duckdb db-status`` agree on the store folder.

**Naive times** (no time zone) are read everywhere in Lumibot's default time zone,
:func:`default_timezone` (``America/New_York``), as Lumibot itself reads them.

Environment variables:

``LUMIBOT_USE_DUCKDB``
    ``true/false/1/0/yes/no/on/off`` (any case). Default: on. ``verify`` is on, and also checks
    every answer the store gives against what Lumibot's legacy path hands over for the same
    request (:mod:`lumibot_duckdb.sources.verify`; it costs the legacy path's requests and time).
``LUMIBOT_DUCKDB_CACHE_DIR``
    The local cache folder: the bar store itself, unless ``LUMIBOT_DUCKDB_STORE`` names another place
    (then it holds this machine's mirror of that store). Default: ``<Lumibot cache folder>/duckdb``.
``LUMIBOT_DUCKDB_STORE``
    Where the bar store is: a folder, or ``s3://bucket/prefix`` (a team's store on S3 or an
    S3-compatible service; credentials and endpoint from boto3's standard chain: ``AWS_*``
    variables, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``). Default: the local cache folder.
    ``ducklake:postgres:<libpq string>`` is a team's store on DuckLake (a PostgreSQL catalog; needs the
    ``[team]`` extra; :mod:`lumibot_duckdb.store.ducklake`).
``LUMIBOT_DUCKDB_DATA_PATH``
    Where a DuckLake store keeps its Parquet files: ``s3://bucket/prefix/`` (credentials and endpoint as
    above) or a folder (one machine). Needed when the catalog is new; later it is read from the catalog.
``LUMIBOT_DUCKDB_STORE_ROLE``
    ``read`` (default) or ``write``. A reader never writes to a shared (S3) store: gaps it fetches are
    kept on this machine. A writer publishes them. No effect on a folder store.
``LUMIBOT_DUCKDB_S3_LISTING_TTL``
    Seconds a series' S3 listing is reused (in memory and by the next process on this machine) before
    listing again; never reused inside a writer's lease. Default 300; 0 lists on every lookup.
``LUMIBOT_DUCKDB_S3_LEASE_TTL``
    Seconds a writer's lease on a series lives without renewal (renewed every third of it while a fill
    runs); a lease older than this, left by a writer that died, is taken over. Default 30.
``LUMIBOT_DUCKDB_STRICT``
    Same values as above. When on, a store failure raises instead of falling back to the
    legacy path. Default: off.
``LUMIBOT_DUCKDB_MAX_MEMORY``
    Budget for the bars a data source holds in memory: bytes, or with a unit (``512MB``,
    ``2GiB``). When the windows of all series exceed it, the least recently used are dropped
    (and read again from the store when next used). Default: no budget; windows are bounded anyway.
    Polygon also reads Lumibot's own ``POLYGON_MAX_MEMORY_BYTES`` (passed to it as ``max_memory``).
``LUMIBOT_DUCKDB_RETRIES``
    Attempts per provider request when the provider fails in a way worth trying again (HTTP 5xx or
    429, a timeout, a dropped connection): a whole number, at least 1. Default: 5.
``LUMIBOT_DUCKDB_RETRY_WAIT``
    The longest wait between two attempts, in seconds (waits grow 1, 2, 4… s with jitter up to it;
    a rate-limited request waits what the provider asks, up to it). ``0`` retries at once. Default: 60.
``LUMIBOT_DUCKDB_PROGRESS``
    ``on``/``off`` forces the progress bar of cold fills and ``fetch``; unset (or ``auto``), a bar is
    shown on a terminal, and inside a backtest only when Lumibot's quiet logs are off
    (``BACKTESTING_QUIET_LOGS``, ``quiet_logs=``) and its progress bar is on
    (``BACKTESTING_SHOW_PROGRESS_BAR``, ``show_progress_bar=``).
``LUMIBOT_DUCKDB_VERIFY_REPORT``
    Where verify mode writes its report (JSON). Default:
    ``logs/lumibot-duckdb-verify-<source>-<time>-<pid>.json`` under the working directory, beside
    Lumibot's own backtest logs.
    Units: ``KB``/``MB``/``GB`` are powers of 1000, ``KiB``/``MiB``/``GiB`` powers of 1024 (sizes
    printed by the command line use the latter).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lumibot_duckdb.errors import ConfigError

ENV_USE_DUCKDB = "LUMIBOT_USE_DUCKDB"
ENV_CACHE_DIR = "LUMIBOT_DUCKDB_CACHE_DIR"
ENV_STRICT = "LUMIBOT_DUCKDB_STRICT"
ENV_MAX_MEMORY = "LUMIBOT_DUCKDB_MAX_MEMORY"
ENV_RETRIES = "LUMIBOT_DUCKDB_RETRIES"
ENV_RETRY_WAIT = "LUMIBOT_DUCKDB_RETRY_WAIT"
ENV_PROGRESS = "LUMIBOT_DUCKDB_PROGRESS"
DEFAULT_RETRIES = 5
DEFAULT_RETRY_WAIT = 60.0
ENV_VERIFY_REPORT = "LUMIBOT_DUCKDB_VERIFY_REPORT"
VERIFY = "verify"
"""The value of ``use_duckdb`` / ``LUMIBOT_USE_DUCKDB`` that turns verify mode on."""
ENV_STORE = "LUMIBOT_DUCKDB_STORE"
ENV_STORE_ROLE = "LUMIBOT_DUCKDB_STORE_ROLE"
ENV_DATA_PATH = "LUMIBOT_DUCKDB_DATA_PATH"
ENV_LISTING_TTL = "LUMIBOT_DUCKDB_S3_LISTING_TTL"
ENV_LEASE_TTL = "LUMIBOT_DUCKDB_S3_LEASE_TTL"
ROLES = ("read", "write")
ENV_DISABLE_DOTENV = "LUMIBOT_DISABLE_DOTENV"
ENV_DISABLE_DOTENV_LOCAL = "LUMIBOT_DISABLE_DOTENV_LOCAL"
LUMIBOT_DEFAULT_TIMEZONE = "America/New_York"
"""Lumibot's default time zone (``lumibot.constants.LUMIBOT_DEFAULT_TIMEZONE``), the meaning of naive times."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(value: str | bool, *, name: str) -> bool:
    """Read a boolean flag the way users write it; anything else is a :class:`ConfigError` naming ``name``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigError(
        f"{name}={value!r} is not a boolean. Use one of true/false, 1/0, yes/no, on/off "
        f"(or unset {name} for the default)."
    )


_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(value: str | int | float | None, *, name: str) -> int | None:
    """A memory size as users write it (``2000000000``, ``512MB``, ``1.5 GiB``); empty/0/None/"none" = no budget.

    Anything else that is not a finite number of at least one byte (``1e400``, ``nan``, ``-5``, ``0.5``) is a
    :class:`ConfigError` naming ``name``."""
    if value is None or isinstance(value, bool):
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} is not a memory size. Use bytes or a unit, e.g. 512MB or 2GiB.")
        return None
    if isinstance(value, (int, float)):
        amount = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "").replace("_", "")
        if text in ("", "none", "off", "0"):
            return None
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        try:
            amount = float(number) * _UNITS[unit]
        except (KeyError, ValueError):
            raise ConfigError(
                f"{name}={value!r} is not a memory size. Use bytes or a number with a unit "
                f"(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 512MB or 2GiB; 0 or empty for no budget."
            ) from None
    if not math.isfinite(amount) or amount < 0:
        raise ConfigError(f"{name}={value!r} is not a memory size: it must be a finite, positive number of bytes "
                          "(e.g. 512MB or 2GiB; 0 or empty for no budget).")
    if amount == 0:
        return None
    if amount < 1:
        raise ConfigError(f"{name}={value!r} is less than one byte: give bytes or a unit (e.g. 0.5GB or 512MB); "
                          "0 or empty means no budget.")
    return int(amount)


def parse_seconds(value: str | float | None, *, name: str, default: float, minimum: float = 0.0) -> float:
    """A duration in seconds (``"300"``, ``2.5``); empty/None = ``default``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = float("nan")
    if not seconds >= minimum or seconds == float("inf"):
        raise ConfigError(f"{name}={value!r} is not a number of seconds of at least {minimum:g}; unset {name} "
                          f"for the default ({default:g}).")
    return seconds


S3_SCHEME = "s3://"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


def is_s3(location: object) -> bool:
    """True for an ``s3://`` location."""
    return isinstance(location, str) and location.lower().startswith(S3_SCHEME)


DUCKLAKE_SCHEME = "ducklake:"


def is_ducklake(location: object) -> bool:
    """True for a ``ducklake:`` location (a team's store on DuckLake)."""
    return isinstance(location, str) and location.lower().startswith(DUCKLAKE_SCHEME)


def is_remote(location: object) -> bool:
    """True for a store that is not a folder of this machine (S3 or DuckLake)."""
    return is_s3(location) or is_ducklake(location)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ``("bucket", "some/prefix")``; a :class:`ConfigError` says what is wrong."""
    if not is_s3(url):
        raise ConfigError(f"{url!r} is not an S3 location; write s3://BUCKET/PREFIX.")
    bucket, _, prefix = url[len(S3_SCHEME):].partition("/")
    prefix = "/".join(part for part in prefix.split("/") if part)
    if not _BUCKET.match(bucket):
        raise ConfigError(f"{url!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.' "
                          "and '-'); write s3://BUCKET/PREFIX.")
    if any(part in (".", "..") for part in prefix.split("/")):
        raise ConfigError(f"{url!r}: the prefix may not contain '.' or '..' segments.")
    return bucket, prefix


def parse_store(value: str | os.PathLike[str], *, name: str) -> str:
    """A store location as users write it: ``s3://bucket/prefix`` (checked) or a folder (``~`` expanded)."""
    text = os.fspath(value).strip() if isinstance(value, (str, os.PathLike)) else value
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{name}={value!r} is not a store location; give a folder or s3://BUCKET/PREFIX.")
    if is_ducklake(text):
        kind, sep, libpq = text[len(DUCKLAKE_SCHEME):].partition(":")
        if kind.lower() != "postgres" or not sep or not libpq.strip():
            raise ConfigError(f"{name}={text!r}: write ducklake:postgres:<libpq string> (e.g. ducklake:postgres:"
                              "dbname=lake host=db.example user=research), a DuckLake store with its catalog in "
                              "PostgreSQL, the catalog many processes and machines can share.")
        return f"{DUCKLAKE_SCHEME}postgres:{libpq.strip()}"
    scheme, sep, _ = text.partition("://")
    if sep:
        if scheme.lower() != "s3":
            raise ConfigError(f"{name}={text!r}: {scheme}:// stores are not supported; give a folder or "
                              "s3://BUCKET/PREFIX (MinIO and other S3-compatible services: set AWS_ENDPOINT_URL).")
        bucket, prefix = parse_s3_url(S3_SCHEME + text[len(scheme) + 3:])
        return f"{S3_SCHEME}{bucket}/{prefix}".rstrip("/")
    return str(Path(text).expanduser())


def format_bytes(count: float) -> str:
    """A byte size for people, 1024-based and labelled so: ``512 B``, ``10.8 KiB``, ``1.5 GiB``
    (:func:`parse_bytes` reads ``KiB``/``MiB``… as powers of 1024 and ``KB``/``MB``… as powers of 1000)."""
    n = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"  # pragma: no cover - the loop always returns


def lumibot_cache_folder(environ: Mapping[str, str] | None = None) -> Path:
    """Lumibot's own cache folder, as Lumibot itself resolves it.

    If Lumibot is already imported its value wins (it is read once at Lumibot's import);
    otherwise the same rule is applied without importing Lumibot.
    """
    constants = sys.modules.get("lumibot.constants")
    if constants is not None:
        return Path(constants.LUMIBOT_CACHE_FOLDER)
    env = os.environ if environ is None else environ
    configured = env.get("LUMIBOT_CACHE_FOLDER")
    if configured:
        return Path(configured)
    import appdirs  # a Lumibot dependency; the same call Lumibot makes

    return Path(appdirs.user_cache_dir(appauthor="LumiWealth", appname="lumibot", version="1.0"))


def default_timezone() -> str:
    """The time zone naive times are read in: Lumibot's default (``lumibot.constants.LUMIBOT_DEFAULT_TIMEZONE``).

    Lumibot's value when Lumibot is imported, else the same constant (without importing Lumibot).
    """
    constants = sys.modules.get("lumibot.constants")
    return str(getattr(constants, "LUMIBOT_DEFAULT_TIMEZONE", LUMIBOT_DEFAULT_TIMEZONE))


# -- .env, the way Lumibot reads it -----------------------------------------------------------------
_applied_to_process = False


def _flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in _TRUE  # Lumibot's _env_flag_enabled


def dotenv_files(start: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> list[Path]:
    """The files Lumibot's ``find_and_load_dotenv(start)`` loads, in order: the ``.env`` of the first folder
    upward from ``start`` that has one, then the ``.env.local`` beside it (unless
    ``LUMIBOT_DISABLE_DOTENV_LOCAL``). Empty when there is none."""
    env = os.environ if environ is None else environ
    current = Path(os.path.abspath(start))
    if current.is_file():
        current = current.parent
    for folder in (current, *current.parents):
        dotenv = folder / ".env"
        if dotenv.is_file():
            local = folder / ".env.local"
            return [dotenv, local] if local.is_file() and not _flag(env, ENV_DISABLE_DOTENV_LOCAL) else [dotenv]
    return []


def lumibot_start_folders() -> list[Path]:
    """Where Lumibot starts looking for ``.env``: the folder of the script being run, then the current folder."""
    script = sys.argv[0] if sys.argv and sys.argv[0] else ""
    return [Path(os.path.dirname(os.path.abspath(script))), Path.cwd()]


def find_dotenv(start: Sequence[str | os.PathLike[str]] | None = None,
                environ: Mapping[str, str] | None = None) -> list[Path]:
    """The ``.env`` files Lumibot would load searching from ``start`` (default :func:`lumibot_start_folders`):
    those of the first start folder where a search finds any; none with ``LUMIBOT_DISABLE_DOTENV``."""
    env = os.environ if environ is None else environ
    if _flag(env, ENV_DISABLE_DOTENV):
        return []
    for folder in lumibot_start_folders() if start is None else start:
        found = dotenv_files(folder, env)
        if found:
            return found
    return []


def _apply(files: Sequence[Path], environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with ``files`` applied as Lumibot applies them: ``.env`` under what is set, ``.env.local`` over."""
    from dotenv import dotenv_values  # python-dotenv, a Lumibot dependency

    merged = dict(environ)
    for path in files:
        try:
            values = {k: v for k, v in dotenv_values(path).items() if v is not None}
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"Cannot read {path}: {exc}. Fix or remove it, or set "
                              f"{ENV_DISABLE_DOTENV}=true.") from exc
        if path.name == ".env.local":
            merged.update(values)
        else:
            merged.update({k: v for k, v in values.items() if k not in merged})
    return merged


def lumibot_environment(environ: Mapping[str, str] | None = None, *,
                        start: Sequence[str | os.PathLike[str]] | None = None) -> Mapping[str, str]:
    """The environment a Lumibot backtest started here sees: ``environ`` (default ``os.environ``) plus the
    ``.env`` files Lumibot loads (:func:`find_dotenv`), unless they were loaded already (Lumibot is
    imported, or :func:`load_dotenv` ran) or ``LUMIBOT_DISABLE_DOTENV`` is set. Nothing is changed."""
    env = os.environ if environ is None else environ
    if environ is None and (_applied_to_process or "lumibot.credentials" in sys.modules):
        return env
    files = find_dotenv(start, env)
    return _apply(files, env) if files else env


def load_dotenv(start: Sequence[str | os.PathLike[str]] | None = None) -> list[Path]:
    """Load the ``.env`` files Lumibot would load (searching from ``start``) into ``os.environ``, with
    Lumibot's precedence; what a process entry point (the command line) does once at start-up, as
    importing Lumibot does. Returns the files loaded."""
    global _applied_to_process
    files = [] if "lumibot.credentials" in sys.modules else find_dotenv(start)
    if files:
        merged = _apply(files, os.environ)
        os.environ.update({k: v for k, v in merged.items() if os.environ.get(k) != v})
    _applied_to_process = True
    return files


@dataclass(frozen=True)
class Settings:
    """The resolved switches of one data source or store."""

    use_duckdb: bool
    cache_dir: Path
    strict: bool
    max_memory: int | None = None
    retries: int = DEFAULT_RETRIES
    """Attempts per provider request (``LUMIBOT_DUCKDB_RETRIES``)."""
    retry_wait: float = DEFAULT_RETRY_WAIT
    """Longest wait between attempts, in seconds (``LUMIBOT_DUCKDB_RETRY_WAIT``)."""
    verify: bool = False
    """Verify mode: serve from the store and check each answer against Lumibot's legacy path."""
    verify_report: Path | None = None
    """Where verify mode writes its report (None: the default under ``./logs``)."""
    store: str = ""
    """Where the store is: ``s3://bucket/prefix`` or a folder; empty = :attr:`cache_dir` (see :attr:`location`)."""
    store_role: str = "read"
    data_path: str = ""
    """Where a DuckLake store keeps its Parquet files (``LUMIBOT_DUCKDB_DATA_PATH``); empty: the catalog's."""
    listing_ttl: float = 300.0
    lease_ttl: float = 30.0

    @property
    def location(self) -> str:
        """The store's location: :attr:`store`, else the local cache folder."""
        return self.store or str(self.cache_dir)
    cache_dir_from: str = "default"
    """Where ``cache_dir`` came from: ``"cache_dir="`` (a keyword), ``"LUMIBOT_DUCKDB_CACHE_DIR"`` or ``"default"``."""

    @classmethod
    def resolve(
        cls,
        *,
        use_duckdb: bool | str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        strict: bool | str | None = None,
        max_memory: str | int | None = None,
        retries: int | str | None = None,
        retry_wait: float | str | None = None,
        verify_report: str | os.PathLike[str] | None = None,
        store: str | os.PathLike[str] | None = None,
        store_role: str | None = None,
        data_path: str | os.PathLike[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Apply the precedence: explicit argument, then environment (with Lumibot's ``.env`` files, see
        :func:`lumibot_environment`), then default."""
        env = lumibot_environment() if environ is None else environ

        if use_duckdb is None:
            raw = env.get(ENV_USE_DUCKDB)
            enabled, verify = (True, False) if raw is None or raw.strip() == "" else _switch(raw, ENV_USE_DUCKDB)
        else:
            enabled, verify = _switch(use_duckdb, "use_duckdb")

        if strict is None:
            raw = env.get(ENV_STRICT)
            is_strict = False if raw is None or raw.strip() == "" else parse_bool(raw, name=ENV_STRICT)
        else:
            is_strict = parse_bool(strict, name="strict")

        if cache_dir is None:
            raw = env.get(ENV_CACHE_DIR, "").strip()
            folder = Path(raw) if raw else lumibot_cache_folder(env) / "duckdb"
            origin = ENV_CACHE_DIR if raw else "default"
        else:
            folder, origin = Path(cache_dir), "cache_dir="
        if max_memory is None:
            budget = parse_bytes(env.get(ENV_MAX_MEMORY), name=ENV_MAX_MEMORY)
        else:
            budget = parse_bytes(max_memory, name="max_memory")
        attempts = _number(retries if retries is not None else env.get(ENV_RETRIES),
                           name="retries" if retries is not None else ENV_RETRIES, default=DEFAULT_RETRIES,
                           whole=True, least=1)
        wait = _number(retry_wait if retry_wait is not None else env.get(ENV_RETRY_WAIT),
                       name="retry_wait" if retry_wait is not None else ENV_RETRY_WAIT, default=DEFAULT_RETRY_WAIT,
                       whole=False, least=0)
        report_path = verify_report if verify_report is not None else (env.get(ENV_VERIFY_REPORT, "").strip() or None)
        if store is None:
            raw = env.get(ENV_STORE, "").strip()
            location = parse_store(raw, name=ENV_STORE) if raw else ""
        else:
            location = parse_store(store, name="store")
        role_name, raw_role = ("store_role", store_role) if store_role is not None else \
            (ENV_STORE_ROLE, env.get(ENV_STORE_ROLE, ""))
        role = str(raw_role).strip().lower() or "read"
        if role not in ROLES:
            raise ConfigError(f"{role_name}={raw_role!r} is not a store role; use read (never writes to a shared "
                              "store) or write (publishes what it fetches).")
        listing_ttl = parse_seconds(env.get(ENV_LISTING_TTL), name=ENV_LISTING_TTL, default=300.0)
        lease_ttl = parse_seconds(env.get(ENV_LEASE_TTL), name=ENV_LEASE_TTL, default=30.0, minimum=1.0)
        lake_data = os.fspath(data_path) if data_path is not None else env.get(ENV_DATA_PATH, "").strip()
        return cls(use_duckdb=enabled, cache_dir=folder.expanduser(), strict=is_strict, max_memory=budget,
                   retries=int(attempts), retry_wait=float(wait),
                   verify=verify, verify_report=Path(report_path).expanduser() if report_path else None,
                   store=location, store_role=role, data_path=lake_data, listing_ttl=listing_ttl, lease_ttl=lease_ttl,
                   cache_dir_from=origin)


def _number(value: object, *, name: str, default: float, whole: bool, least: float) -> float:
    """A count or a number of seconds as users write it; empty = ``default``; anything else names ``name``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    kind = "a whole number" if whole else "a number of seconds"
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value) if not isinstance(value, (int, float)) else value
        if whole and float(number) != int(float(number)):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not {kind}; use e.g. {int(default) if whole else default:g} "
                          f"(or unset {name} for the default).") from None
    if number != number or number < least:
        raise ConfigError(f"{name}={value!r}: it must be at least {least:g}.")
    return float(number)


def progress_wanted(explicit: bool | str | None = None, *, backtest: bool, stream: object = None,
                    environ: Mapping[str, str] | None = None) -> bool:
    """Whether to draw a progress bar: ``explicit``, else ``LUMIBOT_DUCKDB_PROGRESS``, else the defaults.

    Default: only on a terminal (``stream``, default stderr, is a TTY); inside a backtest
    (``backtest=True``) also only when Lumibot's quiet logs are off and its progress bar is on, read
    from the variables Lumibot's ``run_backtest`` sets for the run (``BACKTESTING_QUIET_LOGS``,
    ``BACKTESTING_SHOW_PROGRESS_BAR``), as its ThetaData downloader decides.
    """
    env = os.environ if environ is None else environ
    if explicit is None:
        raw = env.get(ENV_PROGRESS, "").strip().lower()
        explicit = None if raw in ("", "auto") else parse_bool(raw, name=ENV_PROGRESS)
    if explicit is not None:
        return parse_bool(explicit, name="progress")
    if backtest:
        if env.get("BACKTESTING_QUIET_LOGS", "true").strip().lower() in _TRUE:
            return False
        if env.get("BACKTESTING_SHOW_PROGRESS_BAR", "true").strip().lower() in _FALSE:
            return False
    target = sys.stderr if stream is None else stream
    try:
        return bool(target.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError):
        return False


def _switch(value: str | bool, name: str) -> tuple[bool, bool]:
    """``use_duckdb`` as users write it: a boolean, or ``verify`` (on, and checked against legacy)."""
    if isinstance(value, str) and value.strip().lower() == VERIFY:
        return True, True
    try:
        return parse_bool(value, name=name), False
    except ConfigError:
        raise ConfigError(f"{name}={value!r} is neither a boolean nor {VERIFY!r}. Use true/false (1/0, yes/no, "
                          f"on/off), or {VERIFY!r} to check every answer against Lumibot's legacy path.") from None
