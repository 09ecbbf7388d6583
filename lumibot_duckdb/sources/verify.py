"""Verify mode: serve every answer from the store, and check it against what Lumibot's legacy path hands over.

Turn it on with ``LUMIBOT_USE_DUCKDB=verify`` (or ``use_duckdb="verify"`` on the data source, which
``run_backtest`` passes through). The backtest runs on the DuckDB path; at each provider seam (the
Lumibot function each vendor module diverts, see :mod:`lumibot_duckdb.sources.base`), after the store
has answered, the same request is also handed to Lumibot's own function, and the two frames are
compared bit for bit (:func:`first_difference`: index type, dtype, time zone, name and values;
columns, their order, dtypes and values; floats by their bits, NaN included). The backtest always
continues on the store's answer: the legacy answer is only compared, never served.

What is counted and written (:meth:`Verifier.summary`, the report file): answers checked, mismatches
(each with the series, the request, the range and the first difference; the first one also warns,
:class:`DuckDBVerifyWarning`), mismatches a vendor declares as a known legacy defect (CCXT's cache
rounds prices to 3 decimals), legacy calls that failed, and the time spent on the legacy path and
on comparing. Windows read again later from the store (a *roll*, Polygon and CCXT) are checked
against the slice of the legacy answer they stand for, which verify mode keeps for that purpose.

**Which legacy cache.** Every legacy call runs on a fresh, empty, throw-away cache folder (deleted
right after), never on the user's Lumibot cache: the user's cache is neither read (its warm paths
have known defects of their own, which would show up as noise) nor written. So the reference is
what Lumibot hands over on a cold cache, the same reference the A/B harness's ``legacy-fixed`` run
stands for. Legacy calls are serialized (they redirect Lumibot's module-level cache folder while
they run).

**What it costs, and when to turn it on.** Each checked request is also a cold legacy download: the
provider requests and the wall time of the legacy path on an empty cache (Yahoo's legacy path also
sleeps between requests), on top of the DuckDB path's; memory: the legacy frames of the series that
roll (what the legacy path itself would hold). Turn it on for a rollout: a few representative
backtests of each strategy, once per new version of Lumibot or of lumibot-duckdb, or when a result
looks wrong; then turn it off (``LUMIBOT_USE_DUCKDB=true``). It is not meant to stay on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Hashable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lumibot_duckdb.log import get_logger

log = get_logger(__name__)

KEPT_MISMATCHES = 200
"""Mismatches kept in the report with their details (all are counted)."""

_LEGACY_LOCK = threading.RLock()
"""Legacy calls redirect Lumibot's module-level cache folders: one at a time in a process."""


class DuckDBVerifyWarning(UserWarning):
    """Verify mode found an answer of the store that differs from what Lumibot's legacy path hands over.

    A ``UserWarning``, not a ``RuntimeWarning``: importing ``lumibot.tools.black_scholes`` (any options
    backtest) ignores every ``RuntimeWarning`` for the rest of the process.
    """


# -- comparing frames ---------------------------------------------------------------------------------
def first_difference(ours: Any, legacy: Any) -> str | None:
    """The first way ``ours`` differs from ``legacy``, in words; None when they are identical, bit for bit.

    Frames are compared by index (type, dtype with unit and time zone, the time zone's implementation,
    names, values) and columns (labels in order, dtypes, values). Floats are compared by their bits, so
    ``-0.0`` differs from ``0.0`` and NaN equals NaN only with the same payload; object columns by
    type and value.
    """
    if ours is None or legacy is None:
        if ours is None and legacy is None:
            return None
        return f"DuckDB answered {_rows(ours)}, legacy {_rows(legacy)}"
    if type(ours) is not type(legacy):
        return f"DuckDB answered a {type(ours).__name__}, legacy a {type(legacy).__name__}"
    if not isinstance(ours, pd.DataFrame):
        return None if _same_scalar(ours, legacy) else f"DuckDB answered {ours!r}, legacy {legacy!r}"
    found = _index_difference(ours.index, legacy.index)
    if found:
        return found
    if list(ours.columns) != list(legacy.columns):
        extra, missing = [c for c in ours.columns if c not in legacy.columns], \
            [c for c in legacy.columns if c not in ours.columns]
        if extra or missing:
            return f"columns differ: only DuckDB has {extra}, only legacy has {missing}"
        return f"column order differs: DuckDB {list(ours.columns)}, legacy {list(legacy.columns)}"
    if ours.columns.names != legacy.columns.names:
        return f"column axis names differ: DuckDB {ours.columns.names}, legacy {legacy.columns.names}"
    for position, name in enumerate(ours.columns):
        a, b = ours.iloc[:, position], legacy.iloc[:, position]
        if a.dtype != b.dtype:
            return f"column {name!r} dtype: DuckDB {a.dtype}, legacy {b.dtype}"
        row = _first_unequal(a.array, b.array)
        if row is not None:
            return (f"column {name!r} at {ours.index[row]} (row {row}): DuckDB {_show(a.iloc[row])}, "
                    f"legacy {_show(b.iloc[row])}")
    return None


def _index_difference(a: pd.Index, b: pd.Index) -> str | None:
    if type(a) is not type(b):
        return f"index type: DuckDB {type(a).__name__}, legacy {type(b).__name__}"
    if a.dtype != b.dtype:
        return f"index dtype: DuckDB {a.dtype}, legacy {b.dtype}"
    tz_a, tz_b = getattr(a, "tz", None), getattr(b, "tz", None)
    if type(tz_a) is not type(tz_b):
        return (f"index time zone: DuckDB {tz_a} ({type(tz_a).__module__}), legacy {tz_b} "
                f"({type(tz_b).__module__})")
    if list(a.names) != list(b.names):
        return f"index name: DuckDB {list(a.names)}, legacy {list(b.names)}"
    if len(a) != len(b):
        only_ours, only_legacy = a.difference(b), b.difference(a)
        where = (f"; first only in DuckDB: {only_ours[0]}" if len(only_ours) else "") + \
                (f"; first only in legacy: {only_legacy[0]}" if len(only_legacy) else "")
        return f"{len(a)} rows from DuckDB, {len(b)} from legacy{where}"
    row = _first_unequal(a.array, b.array)
    if row is not None:
        return f"index at row {row}: DuckDB {a[row]}, legacy {b[row]}"
    return None


def _first_unequal(a: Any, b: Any) -> int | None:
    """Position of the first element of two same-length arrays that differs bit for bit, or None."""
    if len(a) == 0:
        return None
    if isinstance(a, pd.arrays.DatetimeArray | pd.arrays.TimedeltaArray | pd.arrays.PeriodArray):
        left, right = a.asi8, b.asi8
    elif isinstance(a, pd.arrays.NumpyExtensionArray):
        left, right = a.to_numpy(), b.to_numpy()
    elif isinstance(a, pd.api.extensions.ExtensionArray):  # nullable and arrow-backed types
        na_a, na_b = np.asarray(a.isna()), np.asarray(b.isna())
        differ = na_a != na_b
        both = ~(na_a | na_b)
        values_a, values_b = np.asarray(a[both], dtype=object), np.asarray(b[both], dtype=object)
        unequal = np.zeros(len(a), dtype=bool)
        unequal[both] = [not _same_scalar(x, y) for x, y in zip(values_a, values_b)]
        hits = np.flatnonzero(differ | unequal)
        return int(hits[0]) if len(hits) else None
    else:
        left, right = np.asarray(a), np.asarray(b)
    if left.dtype.kind == "f":
        width = {2: np.uint16, 4: np.uint32, 8: np.uint64}.get(left.dtype.itemsize)
        if width is not None:
            left, right = np.ascontiguousarray(left).view(width), np.ascontiguousarray(right).view(width)
    if left.dtype.kind == "O":
        return next((i for i, (x, y) in enumerate(zip(left, right)) if not _same_scalar(x, y)), None)
    hits = np.flatnonzero(left != right)
    return int(hits[0]) if len(hits) else None


def _same_scalar(x: Any, y: Any) -> bool:
    if type(x) is not type(y):
        return False
    if isinstance(x, float | np.floating):
        return bool(np.asarray(x).tobytes() == np.asarray(y).tobytes())
    try:
        equal = x == y
        return bool(equal) if not isinstance(equal, np.ndarray) else bool(equal.all())
    except (TypeError, ValueError):
        return x is y


def _show(value: Any) -> str:
    return repr(float(value)) if isinstance(value, np.floating) else repr(value)


def _rows(frame: Any) -> str:
    if frame is None:
        return "None"
    return f"{len(frame)} rows" if isinstance(frame, pd.DataFrame) else type(frame).__name__


def _span(frame: Any) -> tuple[str, str]:
    if isinstance(frame, pd.DataFrame) and len(frame) and isinstance(frame.index, pd.DatetimeIndex):
        return str(frame.index[0]), str(frame.index[-1])
    return "", ""


# -- the verifier -------------------------------------------------------------------------------------
@dataclass
class Mismatch:
    """One answer of the store that differs from the legacy path's."""

    series: str
    request: str
    first: str
    last: str
    rows_duckdb: int
    rows_legacy: int
    difference: str
    declared: str = ""
    """The known legacy defect that explains it, when the vendor declares one ("" = unexplained)."""


@dataclass
class VerifyState:
    """What a :class:`Verifier` counted (kept apart from it so the report can be written at exit)."""

    source: str
    report: Path
    started: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    checks: int = 0
    mismatches: int = 0
    declared: int = 0
    legacy_errors: int = 0
    unverified: int = 0
    legacy_calls: int = 0
    legacy_seconds: float = 0.0
    compare_seconds: float = 0.0
    details: list[Mismatch] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dirty: bool = True
    written: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "started": self.started, "checks": self.checks,
            "mismatches": self.mismatches, "unexplained": self.mismatches - self.declared,
            "declared": self.declared, "legacy_errors": self.legacy_errors, "unverified": self.unverified,
            "legacy_calls": self.legacy_calls, "legacy_seconds": round(self.legacy_seconds, 6),
            "compare_seconds": round(self.compare_seconds, 6),
            "cache": "every legacy call ran on an empty throw-away cache folder (Lumibot's cold path); "
                     "the user's Lumibot cache was neither read nor written",
            "mismatch_details": [asdict(m) for m in self.details],
            "legacy_error_details": list(self.errors),
        }

    def write(self) -> None:
        """Write the report (whole, in one rename); a failure is logged, never raised into the backtest."""
        try:
            self.report.parent.mkdir(parents=True, exist_ok=True)
            partial = self.report.with_name(self.report.name + f".{os.getpid()}.tmp")
            partial.write_text(json.dumps(self.as_dict(), indent=1, default=str))
            os.replace(partial, self.report)
            self.dirty, self.written = False, time.monotonic()
        except OSError as exc:
            log.warning("lumibot-duckdb verify: could not write the report %s: %s", self.report, exc)


def _write_at_exit(state: VerifyState) -> None:
    if state.dirty and state.checks:
        state.write()


def default_report(source: str) -> Path:
    """``logs/lumibot-duckdb-verify-<source>-<time>-<pid>.json`` under the working directory."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("logs") / f"lumibot-duckdb-verify-{source}-{stamp}-{os.getpid()}.json"


class Verifier:
    """Checks the store's answers of one data source against Lumibot's legacy path (see the module docstring).

    ``isolate(folder)`` is a context manager that points the vendor's legacy cache at ``folder``;
    ``explain(ours, legacy)`` names the declared legacy defect that explains a difference, if any.
    """

    def __init__(self, source: str, *, report: Path | None, isolate: Callable[[Path], Any],
                 explain: Callable[[Any, Any], str | None] | None = None) -> None:
        self.state = VerifyState(source=source, report=Path(report) if report else default_report(source))
        self.isolate = isolate
        self.explain = explain
        self._frames: dict[Hashable, Any] = {}
        self._held: dict[Hashable, Hashable] = {}
        self._lock = threading.RLock()
        self._warned = False
        self._declared_logged: set[str] = set()
        weakref.finalize(self, _write_at_exit, self.state)

    # -- what users read -----------------------------------------------------------------------------
    @property
    def report(self) -> Path:
        return self.state.report

    @property
    def mismatches(self) -> int:
        return self.state.mismatches

    @property
    def unexplained(self) -> int:
        return self.state.mismatches - self.state.declared

    def summary(self) -> dict[str, Any]:
        """Counts and times so far (the report's content, without the mismatch details)."""
        with self._lock:
            document = self.state.as_dict()
        document.pop("mismatch_details")
        document.pop("legacy_error_details")
        document["report"] = str(self.state.report)
        return document

    def write(self) -> Path:
        """Write the report now; returns its path."""
        with self._lock:
            self.state.write()
        return self.state.report

    # -- checking --------------------------------------------------------------------------------------
    def legacy(self, call: Callable[[], Any], *, reuse: Hashable | None = None) -> Any:
        """``call()`` (a legacy-path request) on an empty throw-away cache; raises what it raises.

        ``reuse``: the request's identity; an answer still kept for :meth:`check_held` is not asked again.
        """
        if reuse is not None:
            with self._lock:
                if reuse in self._frames:
                    return self._frames[reuse]
        with _LEGACY_LOCK:
            folder = Path(tempfile.mkdtemp(prefix="lumibot-duckdb-verify-"))
            started = time.perf_counter()
            try:
                with self.isolate(folder):
                    return call()
            finally:
                with self._lock:
                    self.state.legacy_calls += 1
                    self.state.legacy_seconds += time.perf_counter() - started
                shutil.rmtree(folder, ignore_errors=True)

    def check(self, ours: Any, call: Callable[[], Any], *, series: str, request: str,
              select: Callable[[Any], Any] | None = None, reuse: Hashable | None = None,
              hold: Hashable | None = None) -> None:
        """Compare ``ours`` with the legacy answer to the same request (``select``-ed: the part ``ours`` stands for).

        ``reuse``: the request's identity (see :meth:`legacy`). ``hold``: keep the legacy answer under
        this key (replacing the one kept before) for :meth:`check_held`, the later reads of the same
        range from the store. Never raises: a legacy call that fails is counted and reported.
        """
        key = reuse if reuse is not None else ("request", series, request)
        try:
            legacy = self.legacy(call, reuse=key)
        except Exception as exc:  # noqa: BLE001 - the backtest goes on with the store's answer
            with self._lock:
                self.state.checks += 1
                self.state.legacy_errors += 1
                self.state.dirty = True
                if len(self.state.errors) < KEPT_MISMATCHES:
                    self.state.errors.append(f"{series} {request}: {type(exc).__name__}: {exc}")
            log.warning("lumibot-duckdb verify: the legacy path failed on %s %s (%s: %s); the store's answer "
                        "is used, unchecked.", series, request, type(exc).__name__, exc)
            self._flush()
            return
        if hold is not None:
            with self._lock:
                previous = self._held.get(hold)
                self._frames[key] = legacy
                self._held[hold] = key
                if previous is not None and previous != key and previous not in self._held.values():
                    self._frames.pop(previous, None)
        self._compare(ours, legacy if select is None else _selected(select, legacy), series=series, request=request)

    def check_held(self, ours: Any, *, hold: Hashable, select: Callable[[Any], Any], series: str,
                   request: str) -> None:
        """Compare a later read of the store (a window roll) with the slice of the legacy answer kept under ``hold``."""
        with self._lock:
            key = self._held.get(hold)
            legacy = self._frames.get(key) if key is not None else None
            if key is None:
                self.state.unverified += 1
                self.state.dirty = True
                return
        self._compare(ours, _selected(select, legacy), series=series, request=request)

    def _compare(self, ours: Any, legacy: Any, *, series: str, request: str) -> None:
        started = time.perf_counter()
        try:
            difference = first_difference(ours, legacy)
            declared = (self.explain(ours, legacy) or "") if difference and self.explain else ""
        except Exception as exc:  # noqa: BLE001 - a comparison bug must not stop the backtest
            difference, declared = f"could not compare ({type(exc).__name__}: {exc})", ""
        with self._lock:
            self.state.compare_seconds += time.perf_counter() - started
            self.state.checks += 1
            self.state.dirty = True
            if difference is None:
                self._flush_locked()
                return
            self.state.mismatches += 1
            self.state.declared += bool(declared)
            first, last = _span(ours if isinstance(ours, pd.DataFrame) and len(ours) else legacy)
            mismatch = Mismatch(series, request, first, last, len(ours) if isinstance(ours, pd.DataFrame) else 0,
                                len(legacy) if isinstance(legacy, pd.DataFrame) else 0, difference, declared)
            if len(self.state.details) < KEPT_MISMATCHES:
                self.state.details.append(mismatch)
            self.state.write()
            warn = not declared and not self._warned
            self._warned = self._warned or warn
            log_declared = declared and declared not in self._declared_logged
            if log_declared:
                self._declared_logged.add(declared)
        if warn:
            message = (f"lumibot-duckdb verify: the store's answer for {series} ({request}, {first} .. {last}) differs "
                       f"from what Lumibot's legacy path hands over: {difference}. The backtest continues on the "
                       f"store's answer; every mismatch is counted in {self.state.report}. Please report it with "
                       "that file.")
            log.info(message)  # (the warning is what the console shows; the log keeps it with the run's)
            warnings.warn(message, DuckDBVerifyWarning, stacklevel=2)
        elif log_declared:
            log.info("lumibot-duckdb verify: answers for %s differ from the legacy path by a declared legacy "
                     "defect (%s); counted in %s.", series, declared, self.state.report)

    def _flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if self.state.dirty and time.monotonic() - self.state.written > 5.0:
            self.state.write()


def _selected(select: Callable[[Any], Any], legacy: Any) -> Any:
    return legacy if legacy is None or not isinstance(legacy, pd.DataFrame) else select(legacy)


def between(frame: pd.DataFrame, start: Any, end: Any) -> pd.DataFrame:
    """Rows of ``frame`` with ``start <= index < end`` (both in the index's own time zone rule)."""
    index = frame.index
    lo, hi = pd.Timestamp(start), pd.Timestamp(end)
    if getattr(index, "tz", None) is None:
        lo = lo.tz_convert("UTC").tz_localize(None) if lo.tzinfo else lo
        hi = hi.tz_convert("UTC").tz_localize(None) if hi.tzinfo else hi
    return frame[(index >= lo) & (index < hi)]


@contextlib.contextmanager
def patched_attributes(*changes: tuple[Any, str, Any]) -> Iterator[None]:
    """Set each ``(owner, attribute, value)`` inside the block, restored after (a vendor's legacy cache folder)."""
    previous = [(owner, name, getattr(owner, name)) for owner, name, _ in changes]
    try:
        for owner, name, value in changes:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(previous):
            setattr(owner, name, value)
