"""The A/B result as text: the table of runs (medians and ranges over repetitions), ratios, verdicts.

Used by :meth:`lumibot_duckdb.ab.session.ABResult.text` and by the report (:mod:`.report`); it reads
a result through the few attributes :class:`Comparison` names.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from typing import Any, Protocol

from lumibot_duckdb.ab.harness import REFERENCE, VARIANTS, VERIFY, RunResult, Scenario

IDENTICAL, DECLARED, DIFFERENT = "identical", "declared", "different"
"""The verdicts of a phase, and of a whole comparison."""


class Comparison(Protocol):
    """What the text needs of a result (:class:`~lumibot_duckdb.ab.session.ABResult` has it)."""

    scenario: Scenario
    runs: list[RunResult]
    phases: list[Any]
    machine: dict[str, Any]

    @property
    def first_difference(self) -> Any: ...

    def verdict_line(self) -> str: ...


COLUMNS = ("phase", "variant", "n", "wall s", "data layer s", "peak RSS MB", "provider requests", "on disk", "fills",
           "final value")
"""The columns of the A/B table (``lumibot-duckdb ab`` and ``demo``)."""


def summary_rows(result: Comparison) -> list[dict[str, Any]]:
    """One row per (phase, variant): medians and ranges over the repetitions (what the table and the report show)."""
    rows = []
    order = [*VARIANTS, VERIFY, REFERENCE]
    variants = sorted({r.variant for r in result.runs}, key=lambda v: (order.index(v.split("#")[0]), v))
    for phase in dict.fromkeys(r.phase for r in result.runs):
        for variant in variants:
            runs = [r for r in result.runs if r.phase == phase and r.variant == variant]
            if not runs:
                continue
            kinds = dict.fromkeys(k for r in runs for k in r.requests)
            rows.append({
                "phase": phase, "variant": variant, "n": len(runs),
                "wall": _stats([r.wall_seconds for r in runs]),
                "data_layer": _stats([r.data_layer_seconds for r in runs]),
                "peak_rss": _stats([r.peak_rss_mb for r in runs]),
                "requests": {k: statistics.median(r.requests.get(k, 0) for r in runs) for k in kinds},
                "bytes": runs[0].bytes_on_disk, "bars": runs[0].bars_on_disk, "fills": len(runs[0].fills),
                "final_value": runs[0].final_value, "verify": runs[0].verify,
            })
    return rows


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def render_result(result: Comparison, *, width: int = 160) -> str:
    from rich.console import Console
    from rich.table import Table

    s = result.scenario
    where = "offline (emulated provider)" if s.offline else "the real provider"
    table = Table(title=f"A/B {s.name}: {s.start} .. {s.end}, {where}")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("phase", "variant", "provider requests") else "right")
    for row in summary_rows(result):
        requests = ", ".join(f"{k} {v:g}" for k, v in row["requests"].items() if v) or "0"
        table.add_row(row["phase"], row["variant"], str(row["n"]), _spread(row["wall"], 2),
                      _spread(row["data_layer"], 2), _spread(row["peak_rss"], 0), requests,
                      _size(row["bytes"]), str(row["fills"]), f"{row['final_value']:,.2f}")
    console = Console(width=width, record=True, file=open(os.devnull, "w"))
    console.print(table)
    for line in _legend(result):
        console.print(line, highlight=False)
    for line in _ratios(result):
        console.print(line)
    for verdict in result.phases:
        values = f"legacy {verdict.legacy_value:,.2f}, DuckDB {verdict.duckdb_value:,.2f}"
        words = {IDENTICAL: f"identical ({verdict.fills} fills, final value {verdict.duckdb_value:,.2f})",
                 DECLARED: f"declared difference: {values} = legacy with its declared defects fixed "
                           f"({'; '.join(verdict.explained_by)})",
                 DIFFERENT: f"DIFFERENT: {values}; {verdict.detail}; no declared legacy defect explains it",
                 }[verdict.verdict]
        console.print(f"parity {verdict.phase}: {words}", highlight=False)
    from lumibot_duckdb.ab.verify import costs

    for cost in costs(result.runs):
        console.print(cost.text(), highlight=False)
    console.print(f"verdict: {result.verdict_line()}", highlight=False)
    load, cpus = result.machine.get("load_average") or [float("nan")], result.machine.get("cpus") or 1
    if load[0] == load[0] and load[0] > cpus:  # timings of a busy machine vary more than the ratios suggest
        console.print(f"(timings measured on a busy machine: load average {load[0]:.1f} on {cpus} CPUs at the "
                      "start; --repeat N gives medians and ranges)", highlight=False)
    text = console.export_text()
    if result.first_difference is not None:
        text += "\n" + result.first_difference.text() + "\n"
    return text


def _of(runs: Sequence[RunResult], variant: str, phase: str) -> list[RunResult]:
    return sorted((r for r in runs if r.variant == variant and r.phase == phase), key=lambda r: r.repetition)


def _legend(result: Comparison) -> list[str]:
    """What the reference variants of the table are (Lumibot's legacy path with which defects patched)."""
    references = sorted({r.variant for r in result.runs if r.variant.startswith(REFERENCE)})
    if not references:
        return []
    from lumibot_duckdb.testing.kits import kit

    defects = list(kit(result.scenario.source).legacy_defects())
    lines = []
    for variant in references:
        _, _, number = variant.partition("#")
        patched = "every declared defect" if not number else f"only {defects[int(number) - 1]!r}"
        lines.append(f"{variant}: Lumibot's legacy path with {patched} patched (its own cold-filled cache)")
    return lines


def _ratios(result: Comparison) -> list[str]:
    lines = []
    for phase in dict.fromkeys(r.phase for r in result.runs):
        pairs = [(a, b) for a, b in zip(_of(result.runs, "legacy", phase), _of(result.runs, "duckdb", phase))]
        if not pairs:
            continue
        wall = [b.wall_seconds / a.wall_seconds for a, b in pairs if a.wall_seconds]
        rss = [b.peak_rss_mb / a.peak_rss_mb for a, b in pairs if a.peak_rss_mb]
        if wall and rss:
            lines.append(f"DuckDB / legacy, {phase}: wall {_ratio(wall)}, peak RSS {_ratio(rss)} (n={len(pairs)})")
    return lines


def _ratio(values: list[float]) -> str:
    median = statistics.median(values)
    return f"{median:.2f}x" if len(values) == 1 else f"{median:.2f}x [{min(values):.2f}-{max(values):.2f}]"


def _spread(stats: dict[str, float], digits: int) -> str:
    if stats["min"] == stats["max"]:
        return f"{stats['median']:.{digits}f}"
    return f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}-{stats['max']:.{digits}f}]"


def _size(count: int) -> str:
    n = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fill_words(fill: list[Any] | None) -> str:
    if fill is None:
        return "no such fill"
    when, symbol, side, quantity, price = fill
    return f"{when} {side} {quantity:g} {symbol} at {price!r}"


def cell(value: Any) -> str:
    """Every digit of a float (what the paths compare is the bits): the shortest repr that round-trips."""
    if isinstance(value, float):
        return repr(value) if value != int(value) or abs(value) >= 1e16 else f"{value:.1f}"
    return str(value)


def bar_at(rows: list[list[Any]], when: Any) -> int | None:
    """Index of the last bar starting at or before ``when`` (the bar a fill at ``when`` saw), or None."""
    if when is None or not rows:
        return None
    import pandas as pd

    try:
        stamp = pd.Timestamp(when)
        times = [pd.Timestamp(r[0]) for r in rows]
        if (stamp.tzinfo is None) != (times[0].tzinfo is None):
            return None
    except (TypeError, ValueError):
        return None
    before = [i for i, t in enumerate(times) if t <= stamp]
    return before[-1] if before else None
