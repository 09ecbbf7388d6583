"""Configuration: explicit keyword arguments first, then environment variables, read once per object.

Nothing here runs at import time; :meth:`Settings.resolve` is called when a data source or a store
is built.

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
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lumibot_duckdb.errors import ConfigError

ENV_USE_DUCKDB = "LUMIBOT_USE_DUCKDB"
ENV_CACHE_DIR = "LUMIBOT_DUCKDB_CACHE_DIR"
ENV_STRICT = "LUMIBOT_DUCKDB_STRICT"
ENV_MAX_MEMORY = "LUMIBOT_DUCKDB_MAX_MEMORY"

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


@dataclass(frozen=True)
class Settings:
    """The resolved switches of one data source or store."""

    use_duckdb: bool
    cache_dir: Path
    strict: bool
    max_memory: int | None = None

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
        """Apply the precedence: explicit argument, then environment, then default."""
        env = os.environ if environ is None else environ

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
        else:
            folder = Path(cache_dir)
        if max_memory is None:
            budget = parse_bytes(env.get(ENV_MAX_MEMORY), name=ENV_MAX_MEMORY)
        else:
            budget = parse_bytes(max_memory, name="max_memory")
        return cls(use_duckdb=enabled, cache_dir=folder.expanduser(), strict=is_strict, max_memory=budget)
