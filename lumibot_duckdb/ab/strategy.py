"""The user's strategy, as the A/B harness runs it: a file (or module) and its parameters.

A strategy is named the way a user has it:

* ``path/to/file.py``: the one ``Strategy`` subclass defined in that file (or, if it defines none,
  the one it imports, e.g. Lumibot's ``classic_60_40.py`` imports ``DriftRebalancer``);
* ``path/to/file.py:ClassName``: that class of the file;
* ``package.module:ClassName``: an importable class;
* a sample strategy of :mod:`lumibot_duckdb.testing.strategies` by name (``momentum``…).

A file is loaded as Python runs a script (its folder first on ``sys.path``, so its own imports work),
under a module name of its own, so its ``if __name__ == "__main__":`` block does not run.

Parameters cross into the fresh process of each run as JSON. Values Lumibot strategies use that JSON
lacks are written as tagged objects: ``{"$asset": "SPY"}`` (``"type": "crypto"``, ``"quote"``…: the
``Asset`` keywords), ``{"$decimal": "0.6"}``, ``{"$tuple": [...]}``, ``{"$datetime": "2024-01-02T09:30"}``,
``{"$date": "2024-01-02"}`` and ``{"$enum": "lumibot.entities.Order.OrderType.MARKET"}``. A parameters
file (``.json``, or a ``.py`` defining ``parameters = {...}`` like Lumibot's ``*_config.py``) is read in
each run, so anything Python can build is allowed there.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lumibot_duckdb.errors import ConfigError

TAGS = ("$asset", "$decimal", "$tuple", "$datetime", "$date", "$enum")


# -- the strategy class ---------------------------------------------------------------------------------
def split_spec(spec: str) -> tuple[str, str]:
    """``"file.py:Class"`` -> ``("file.py", "Class")``; ``"file.py"`` -> ``("file.py", "")``."""
    head, sep, tail = spec.rpartition(":")
    if sep and head.endswith(".py") and tail.isidentifier():
        return head, tail
    return spec, ""


def is_file_spec(spec: str) -> bool:
    """Whether ``spec`` names a Python file (``file.py`` or ``file.py:Class``) rather than a module or sample."""
    return split_spec(spec)[0].endswith(".py")


def resolve_spec(spec: str) -> str:
    """``spec`` with a file path made absolute (each run starts in its own folder); checks the file exists."""
    if not is_file_spec(spec):
        return spec
    path, name = split_spec(spec)
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"Strategy file {path!r} not found (from {Path.cwd()}). Pass path/to/file.py or "
                          "path/to/file.py:ClassName.")
    absolute = str(file.resolve())
    return f"{absolute}:{name}" if name else absolute


def load_strategy(spec: str, samples: Mapping[str, type | Callable[[], type]] | None = None) -> type:
    """The ``Strategy`` subclass named by ``spec`` (see the module docstring); a sample may be a function
    giving its class (imported on first use, e.g. one of Lumibot's own examples)."""
    if samples and spec in samples:
        sample = samples[spec]
        return sample if isinstance(sample, type) else sample()
    if is_file_spec(spec):
        path, name = split_spec(spec)
        return _from_file(Path(path).expanduser(), name)
    module_name, _, name = spec.partition(":")
    if not name:
        raise ConfigError(f"Strategy {spec!r} is neither a .py file nor module:ClassName"
                          + (f" nor a sample ({', '.join(samples)})" if samples else "") + ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"Cannot import {module_name!r} for strategy {spec!r}: {exc}") from exc
    found = getattr(module, name, None)
    if not _is_strategy(found):
        raise ConfigError(f"{spec!r} is not a Lumibot Strategy subclass; {_choices(module)}")
    return found  # type: ignore[return-value]


def _from_file(path: Path, name: str) -> type:
    if not path.is_file():
        raise ConfigError(f"Strategy file {str(path)!r} not found.")
    path = path.resolve()
    module_name = f"lumibot_duckdb_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module = sys.modules.get(module_name)
    if module is None:
        folder = str(path.parent)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # as `python file.py` would: the file's own imports work
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"Cannot load {path} as Python.")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ConfigError(f"Importing the strategy file {path} failed: {type(exc).__name__}: {exc}") from exc
    if name:
        found = getattr(module, name, None)
        if not _is_strategy(found):
            raise ConfigError(f"{path.name} has no Strategy subclass {name!r}; {_choices(module)}")
        return found  # type: ignore[return-value]
    own = [c for c in _strategies(module) if c.__module__ == module.__name__]
    candidates = own or _strategies(module)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise ConfigError(f"{path.name} defines or imports no Lumibot Strategy subclass.")
    names = ", ".join(c.__name__ for c in candidates)
    raise ConfigError(f"{path.name} has {len(candidates)} Strategy subclasses ({names}); "
                      f"name one: {path.name}:{candidates[0].__name__}")


def _strategies(module: Any) -> list[type]:
    return [value for _, value in inspect.getmembers(module, _is_strategy)]


def _choices(module: Any) -> str:
    names = [c.__name__ for c in _strategies(module)]
    return f"its Strategy subclasses: {', '.join(names)}" if names else "it has no Strategy subclass"


def _is_strategy(value: Any) -> bool:
    from lumibot.strategies import Strategy

    return isinstance(value, type) and issubclass(value, Strategy) and value is not Strategy \
        and not value.__module__.startswith("lumibot.strategies")


# -- parameters -----------------------------------------------------------------------------------------
def parse_assignment(text: str) -> tuple[str, Any]:
    """``name=value`` from the command line: the value as JSON (tags allowed), else the plain string."""
    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--param {text!r}: write name=value (value as JSON, e.g. symbols='[\"SPY\",\"TLT\"]').")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # symbol=SPY: a string, as the user meant
    decode(value)  # a malformed tag is an error now, not in every run
    return name.strip(), value


def decode(value: Any) -> Any:
    """JSON parameters -> Python: tagged objects become Assets, Decimals, tuples, datetimes, enum members."""
    if isinstance(value, list):
        return [decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    tags = [k for k in value if k in TAGS]
    if not tags:
        return {k: decode(v) for k, v in value.items()}
    tag = tags[0]
    body = value[tag]
    try:
        if tag == "$asset":
            from lumibot.entities import Asset

            options = {k: decode(v) for k, v in value.items() if k != tag}
            if "type" in options:
                options["asset_type"] = options.pop("type")
            return Asset(str(body), **options)
        if tag == "$decimal":
            return decimal.Decimal(str(body))
        if tag == "$tuple":
            return tuple(decode(v) for v in body)
        if tag == "$datetime":
            return dt.datetime.fromisoformat(str(body))
        if tag == "$date":
            return dt.date.fromisoformat(str(body))
        return _enum(str(body))
    except ConfigError:
        raise
    except Exception as exc:  # any bad tag body is the user's input: say which
        raise ConfigError(f"Parameter value {value!r}: {tag} could not be read ({type(exc).__name__}: {exc}).") \
            from exc


def _enum(path: str) -> Any:
    module_path, _, member = path.rpartition(".")
    owner_path = module_path
    attributes: list[str] = []
    while owner_path:
        try:
            owner: Any = importlib.import_module(owner_path)
            break
        except ImportError:
            owner_path, _, attribute = owner_path.rpartition(".")
            attributes.insert(0, attribute)
    else:
        raise ConfigError(f"$enum {path!r}: no importable module in it.")
    for attribute in attributes:
        owner = getattr(owner, attribute)
    found = getattr(owner, member)
    if not isinstance(found, enum.Enum):
        raise ConfigError(f"$enum {path!r} is not an enum member.")
    return found


def encode(value: Any) -> Any:
    """Python parameters -> tagged JSON (the inverse of :func:`decode`), for a run in a fresh process."""
    entities = sys.modules.get("lumibot.entities")  # an Asset exists only if Lumibot is imported already
    if entities is not None and isinstance(value, entities.Asset):
        tagged: dict[str, Any] = {"$asset": value.symbol, "type": str(value.asset_type)}
        for name in ("expiration", "strike", "right", "multiplier"):
            item = getattr(value, name, None)
            if item not in (None, "", 1) or (name == "multiplier" and item not in (None, 1)):
                tagged[name] = encode(item)
        return tagged
    if isinstance(value, enum.Enum):
        return {"$enum": f"{type(value).__module__}.{type(value).__qualname__}.{value.name}"}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, tuple):
        return {"$tuple": [encode(v) for v in value]}
    if isinstance(value, dt.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ConfigError(f"Parameter dict keys must be strings to reach the run's process: {value!r}")
        return {k: encode(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ConfigError(f"Parameter value {value!r} ({type(value).__name__}) cannot be passed to a fresh process; "
                      "put it in a parameters file (.py) instead.")


def read_parameters_file(path: str | Path) -> dict[str, Any]:
    """``parameters`` of a ``.py`` file (as Lumibot's ``ConfigsHelper`` reads ``*_config.py``) or a ``.json`` file."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"Parameters file {str(path)!r} not found.")
    if file.suffix == ".json":
        try:
            document = json.loads(file.read_text())
        except ValueError as exc:
            raise ConfigError(f"Parameters file {file} is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise ConfigError(f"Parameters file {file} must hold one JSON object, not a {type(document).__name__}.")
        return dict(decode(document))
    if file.suffix != ".py":
        raise ConfigError(f"Parameters file {file}: use a .json file or a .py file defining `parameters = {{...}}`.")
    spec = importlib.util.spec_from_file_location(f"lumibot_duckdb_parameters_{file.stem}", file.resolve())
    if spec is None or spec.loader is None:
        raise ConfigError(f"Cannot load {file} as Python.")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"Reading the parameters file {file} failed: {type(exc).__name__}: {exc}") from exc
    found = getattr(module, "parameters", None)
    if not isinstance(found, dict):
        raise ConfigError(f"{file} defines no `parameters` dict.")
    return dict(found)


def parameters_of(raw: Mapping[str, Any], file: str = "") -> dict[str, Any]:
    """The parameters a run passes to ``run_backtest``: the file's, then ``raw`` (decoded) over them."""
    merged = read_parameters_file(file) if file else {}
    merged.update({k: decode(v) for k, v in raw.items()})
    return merged
