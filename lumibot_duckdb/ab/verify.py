"""Verify mode, measured: what ``LUMIBOT_USE_DUCKDB=verify`` found and what it cost, beside both paths.

``lumibot-duckdb ab STRATEGY --verify`` (or ``compare_strategy(..., verify=True)``) runs, in every
phase, the DuckDB path in verify mode next to the plain DuckDB path and Lumibot's legacy path
(:mod:`lumibot_duckdb.sources.verify` does the checking); :func:`costs` puts the three side by side:
answers checked, mismatches (unexplained, and explained by a declared legacy defect), the legacy
calls verify made and their time, and the run's wall time, provider requests and peak memory
against the DuckDB path's and the legacy path's. ``benchmarks/verify_cost.py`` measures it on the
demo scenario and the universe benchmark's 10-symbol run.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import Any

from lumibot_duckdb.ab.harness import VERIFY, RunResult


@dataclasses.dataclass
class VerifyCost:
    """Verify mode in one phase (medians over repetitions), beside the DuckDB and legacy paths."""

    phase: str
    n: int
    checks: int
    mismatches: int
    """Unexplained mismatches: each one is a difference between the store and the legacy path."""
    declared: int
    """Mismatches a declared legacy defect explains (CCXT's 3-decimal cache; Yahoo's forming bar)."""
    legacy_errors: int
    legacy_calls: int
    legacy_seconds: float
    compare_seconds: float
    wall: float
    wall_duckdb: float | None
    wall_legacy: float | None
    requests: float
    requests_duckdb: float | None
    requests_legacy: float | None
    peak_rss: float
    peak_rss_duckdb: float | None
    peak_rss_legacy: float | None
    same_fills: bool
    """Verify mode served what the DuckDB path serves: the same fills and final value (it must)."""

    def text(self) -> str:
        found = f"{self.checks} answers checked, {self.mismatches} mismatch(es)"
        if self.declared:
            found += f" (+{self.declared} explained by declared legacy defects)"
        if self.legacy_errors:
            found += f", {self.legacy_errors} legacy call(s) failed"
        legacy_wall = f"; legacy {self.wall_legacy:.2f} s" if self.wall_legacy is not None else ""
        legacy_requests = f"; legacy {self.requests_legacy:g}" if self.requests_legacy is not None else ""
        cost = (f"wall {self.wall:.2f} s ({_vs(self.wall, self.wall_duckdb, 's')}{legacy_wall}), "
                f"{self.legacy_calls} legacy calls taking {self.legacy_seconds:.2f} s, comparing "
                f"{self.compare_seconds:.3f} s, provider requests {self.requests:g} "
                f"({_extra(self.requests, self.requests_duckdb)}{legacy_requests}), "
                f"peak RSS {self.peak_rss:.0f} MB ({_vs(self.peak_rss, self.peak_rss_duckdb, 'MB')})")
        same = "" if self.same_fills else "; FILLS DIFFER from the DuckDB path's"
        return f"verify {self.phase} (n={self.n}): {found}; cost: {cost}{same}"


def costs(runs: Sequence[RunResult]) -> list[VerifyCost]:
    """:class:`VerifyCost` per phase of the ``verify`` runs among ``runs``."""
    found = []
    for phase in dict.fromkeys(r.phase for r in runs if r.variant == VERIFY):
        mine = [r for r in runs if r.variant == VERIFY and r.phase == phase]
        duck = [r for r in runs if r.variant == "duckdb" and r.phase == phase]
        legacy = [r for r in runs if r.variant == "legacy" and r.phase == phase]
        same = all(a.fills == b.fills and a.final_value == b.final_value
                   for a, b in zip(sorted(mine, key=_rep), sorted(duck, key=_rep)))
        found.append(VerifyCost(
            phase=phase, n=len(mine), checks=_int(mine, "checks"), mismatches=_int(mine, "unexplained"),
            declared=_int(mine, "declared"), legacy_errors=_int(mine, "legacy_errors"),
            legacy_calls=_int(mine, "legacy_calls"), legacy_seconds=_median(mine, lambda r: r.verify.get(
                "legacy_seconds", 0.0)), compare_seconds=_median(mine, lambda r: r.verify.get("compare_seconds", 0.0)),
            wall=_median(mine, _wall), wall_duckdb=_maybe(duck, _wall), wall_legacy=_maybe(legacy, _wall),
            requests=_median(mine, _requests), requests_duckdb=_maybe(duck, _requests),
            requests_legacy=_maybe(legacy, _requests), peak_rss=_median(mine, _rss), peak_rss_duckdb=_maybe(duck, _rss),
            peak_rss_legacy=_maybe(legacy, _rss), same_fills=same))
    return found


def _rep(run: RunResult) -> int:
    return run.repetition


def _wall(run: RunResult) -> float:
    return run.wall_seconds


def _rss(run: RunResult) -> float:
    return run.peak_rss_mb


def _requests(run: RunResult) -> float:
    return float(sum(run.requests.values()))


def _int(runs: Sequence[RunResult], key: str) -> int:
    """The largest count over repetitions (a mismatch in any repetition counts)."""
    return max((int(r.verify.get(key, 0)) for r in runs), default=0)


def _median(runs: Sequence[RunResult], get: Any) -> float:
    return float(statistics.median(get(r) for r in runs)) if runs else 0.0


def _maybe(runs: Sequence[RunResult], get: Any) -> float | None:
    return _median(runs, get) if runs else None


def _vs(value: float, base: float | None, unit: str) -> str:
    if not base:
        return "no DuckDB run"
    return f"{value / base:.2f}x the DuckDB path's {base:.2f} {unit}"


def _extra(value: float, base: float | None) -> str:
    if base is None:
        return "no DuckDB run"
    return f"{value - base:+g} over the DuckDB path's {base:g}"
