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
    ``true/false/1/0/yes/no/on/off`` (any case). Default: on.
``LUMIBOT_DUCKDB_CACHE_DIR``
    Folder of the bar store. Default: ``<Lumibot cache folder>/duckdb``.
``LUMIBOT_DUCKDB_STRICT``
    Same values as above. When on, a store failure raises instead of falling back to the
    legacy path. Default: off.
``LUMIBOT_DUCKDB_MAX_MEMORY``
    Budget for the bars a data source holds in memory: bytes, or with a unit (``512MB``,
    ``2GiB``). When the windows of all series exceed it, the least recently used are dropped
    (and read again from the store when next used). Default: no budget; windows are bounded anyway.
    Polygon also reads Lumibot's own ``POLYGON_MAX_MEMORY_BYTES`` (passed to it as ``max_memory``).
    Units: ``KB``/``MB``/``GB`` are powers of 1000, ``KiB``/``MiB``/``GiB`` powers of 1024 (sizes
    printed by the command line use the latter).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lumibot_duckdb.errors import ConfigError

ENV_USE_DUCKDB = "LUMIBOT_USE_DUCKDB"
ENV_CACHE_DIR = "LUMIBOT_DUCKDB_CACHE_DIR"
ENV_STRICT = "LUMIBOT_DUCKDB_STRICT"
ENV_MAX_MEMORY = "LUMIBOT_DUCKDB_MAX_MEMORY"
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
    """A memory size as users write it (``2000000000``, ``512MB``, ``1.5 GiB``); empty/0/None/"none" = no budget."""
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
    if amount != amount or amount < 0:
        raise ConfigError(f"{name}={value!r} is not a memory size: it must be a positive number of bytes.")
    return int(amount) or None


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
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Apply the precedence: explicit argument, then environment (with Lumibot's ``.env`` files, see
        :func:`lumibot_environment`), then default."""
        env = lumibot_environment() if environ is None else environ

        if use_duckdb is None:
            raw = env.get(ENV_USE_DUCKDB)
            enabled = True if raw is None or raw.strip() == "" else parse_bool(raw, name=ENV_USE_DUCKDB)
        else:
            enabled = parse_bool(use_duckdb, name="use_duckdb")

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
        return cls(use_duckdb=enabled, cache_dir=folder.expanduser(), strict=is_strict, max_memory=budget,
                   cache_dir_from=origin)
