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
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lumibot_duckdb.errors import ConfigError

ENV_USE_DUCKDB = "LUMIBOT_USE_DUCKDB"
ENV_CACHE_DIR = "LUMIBOT_DUCKDB_CACHE_DIR"
ENV_STRICT = "LUMIBOT_DUCKDB_STRICT"

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

    @classmethod
    def resolve(
        cls,
        *,
        use_duckdb: bool | str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        strict: bool | str | None = None,
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
        return cls(use_duckdb=enabled, cache_dir=folder.expanduser(), strict=is_strict)
