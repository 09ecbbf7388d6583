"""The A/B report to look at: one self-contained HTML page (plotly, inline) and the same charts as a PNG.

The page shows the verdict, both equity curves of every phase overlaid with their difference
(DuckDB − legacy), wall time, data-layer time and peak memory per phase and path (median, with the
min–max range over repetitions), provider requests per phase and path, the runs' table, the first
differing fill with the bars each path held around it, and verify mode's counts when it ran. plotly.js
is embedded (no network needed to open it); the result itself is embedded as JSON
(``<script id="ab-result" type="application/json">``), so the page is also a record of the run.

>>> write_html(result, "report.html"); write_png(result, "report.png")      # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lumibot_duckdb.ab.harness import REFERENCE, VERIFY, RunResult
from lumibot_duckdb.ab.session import ABResult
from lumibot_duckdb.ab.table import DECLARED, DIFFERENT, IDENTICAL, bar_at, summary_rows

MAX_POINTS = 5_000
"""Points drawn per equity curve (every k-th and the last when a curve has more; the difference's
extremes are computed on every point)."""
COLOURS = {"legacy": "#1f77b4", "duckdb": "#ff7f0e", REFERENCE: "#2ca02c", VERIFY: "#9467bd"}
VERDICT_COLOURS = {IDENTICAL: "#1b7f3b", DECLARED: "#9a6700", DIFFERENT: "#b42318"}


# -- the data the charts draw ---------------------------------------------------------------------------
def curve(run: RunResult) -> tuple[list[str], list[float]]:
    """A run's equity curve as (times, values): wall-clock time as the strategy saw it, portfolio value."""
    return [str(t)[:19] for t, _ in run.equity], [float(v) for _, v in run.equity]


def difference(legacy: RunResult, ours: RunResult) -> tuple[list[str], list[float]]:
    """DuckDB − legacy at every time both curves have (they share Lumibot's iteration times)."""
    theirs = {str(t): float(v) for t, v in legacy.equity}
    times, values = [], []
    for when, value in ours.equity:
        base = theirs.get(str(when))
        if base is not None:
            times.append(str(when)[:19])
            values.append(float(value) - base)
    return times, values


def thin(xs: Sequence[Any], ys: Sequence[Any], limit: int = MAX_POINTS) -> tuple[list[Any], list[Any]]:
    """Every k-th point and the last, at most about ``limit`` points."""
    if len(xs) <= limit:
        return list(xs), list(ys)
    step = math.ceil(len(xs) / limit)
    keep = list(range(0, len(xs), step))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _first(result: ABResult, variant: str, phase: str) -> RunResult | None:
    runs = [r for r in result.runs if r.variant == variant and r.phase == phase]
    return min(runs, key=lambda r: r.repetition) if runs else None


def _phases(result: ABResult) -> list[str]:
    return list(dict.fromkeys(r.phase for r in result.runs))


def _variants(result: ABResult) -> list[str]:
    present = dict.fromkeys(r.variant for r in result.runs)
    return [v for v in ("legacy", "duckdb", VERIFY) if v in present]


# -- plotly ---------------------------------------------------------------------------------------------
def figures(result: ABResult) -> dict[str, Any]:
    """The page's plotly figures: ``equity``, ``resources`` and ``requests``."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    phases = _phases(result)
    titles = []
    for phase in phases:
        titles += [f"{phase}: portfolio value", f"{phase}: DuckDB − legacy"]
    equity = make_subplots(rows=2 * len(phases), cols=1, subplot_titles=titles, vertical_spacing=0.06,
                           row_heights=[3, 1] * len(phases))
    for number, phase in enumerate(phases):
        row = 2 * number + 1
        for variant, label, dash in (("legacy", "legacy", "solid"), ("duckdb", "DuckDB", "dash"),
                                     (REFERENCE, "legacy, defects fixed", "dot")):
            run = _first(result, variant, phase)
            if run is None or not run.equity:
                continue
            xs, ys = thin(*curve(run))
            equity.add_trace(go.Scatter(x=xs, y=ys, name=f"{label} ({phase})", mode="lines",
                                        line={"color": COLOURS[variant], "dash": dash},
                                        meta={"phase": phase, "variant": variant, "kind": "equity"}), row=row, col=1)
        legacy, ours = _first(result, "legacy", phase), _first(result, "duckdb", phase)
        if legacy is not None and ours is not None:
            xs, ys = difference(legacy, ours)
            worst = max((abs(y) for y in ys), default=0.0)
            xs, ys = thin(xs, ys)
            equity.add_trace(go.Scatter(x=xs, y=ys, name=f"DuckDB − legacy ({phase}), max |Δ| {worst:,.6g}",
                                        mode="lines", line={"color": "#d62728"},
                                        meta={"phase": phase, "variant": "difference", "kind": "difference",
                                              "max_abs": worst}), row=row + 1, col=1)
    equity.update_layout(height=420 * len(phases), title="Equity curves, legacy beside DuckDB",
                         legend={"orientation": "h", "y": -0.04}, margin={"t": 70})

    rows = summary_rows(result)
    resources = make_subplots(rows=1, cols=3, subplot_titles=("wall time (s)", "data-layer time (s)",
                                                              "peak RSS (MB)"))
    requests = go.Figure()
    for variant in _variants(result):
        mine = [r for r in rows if r["variant"] == variant]
        xs = [r["phase"] for r in mine]
        for col, key in enumerate(("wall", "data_layer", "peak_rss"), 1):
            medians = [r[key]["median"] for r in mine]
            resources.add_trace(go.Bar(
                x=xs, y=medians, name=variant, legendgroup=variant, showlegend=col == 1,
                marker_color=COLOURS[variant],
                error_y={"type": "data", "symmetric": False, "array": [r[key]["max"] - r[key]["median"] for r in mine],
                         "arrayminus": [r[key]["median"] - r[key]["min"] for r in mine]},
                meta={"variant": variant, "kind": key}), row=1, col=col)
        totals = [sum(r["requests"].values()) for r in mine]
        hover = ["<br>".join(f"{k}: {v:g}" for k, v in r["requests"].items()) or "none" for r in mine]
        requests.add_trace(go.Bar(x=xs, y=totals, name=variant, marker_color=COLOURS[variant], hovertext=hover,
                                  meta={"variant": variant, "kind": "requests"}))
    resources.update_layout(barmode="group", height=420, title="Time and memory per phase and path "
                            "(median; bars show the min–max over repetitions)")
    requests.update_layout(barmode="group", height=380, title="Provider requests per phase and path",
                           yaxis_title="requests")
    return {"equity": equity, "resources": resources, "requests": requests}


# -- the page -------------------------------------------------------------------------------------------
def page(result: ABResult) -> str:
    """The report as one self-contained HTML document."""
    import plotly.io as pio

    charts = []
    for number, (name, figure) in enumerate(figures(result).items()):
        charts.append(pio.to_html(figure, include_plotlyjs=number == 0, full_html=False, div_id=f"chart-{name}",
                                  config={"responsive": True, "displaylogo": False}))
    s = result.scenario
    verdict = result.verdict
    facts = [("strategy", s.strategy), ("source", s.source + (" (offline, emulated provider)" if s.offline
                                                             else " (the real provider)")),
             ("window", f"{s.start} .. {s.end}" + (f", shifted by {s.shift_days} days" if any(
                 r.phase == "shifted" for r in result.runs) else "")),
             ("parameters", json.dumps(s.parameters) if s.parameters else "(the strategy's own)"),
             ("parameters file", s.parameters_file or "-"), ("budget", f"{s.budget:,.2f}"),
             ("quote asset", s.quote or "(source default)"), ("benchmark", s.benchmark or "none"),
             ("repetitions", str(result.scenario_repeat)),
             ("machine", ", ".join(f"{k} {v}" for k, v in result.machine.items()))]
    body = [
        f"<h1>A/B: {_e(s.name)}</h1>",
        f'<div class="verdict" style="border-color:{VERDICT_COLOURS[verdict]};color:{VERDICT_COLOURS[verdict]}">'
        f"{_e(result.verdict_line())}</div>",
        "<ul class=phases>" + "".join(f"<li><b>{_e(p.phase)}</b>: {_e(_phase_words(p))}</li>" for p in result.phases)
        + "</ul>",
        "<table class=facts>" + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts) + "</table>",
        charts[0],
        "<h2>Runs</h2>", _runs_table(result),
    ]
    if result.differences:
        body.append("<h2>First differing fill</h2>")
        body.extend(_difference_html(d) for d in result.differences)
    if any(r.variant == VERIFY and r.verify for r in result.runs):
        body.append("<h2>Verify mode</h2>" + _verify_html(result))
    body += charts[1:]
    record = json.dumps(_record(result), default=str).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>A/B {_e(s.name)}: {verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #1d2433; }}
.verdict {{ border: 3px solid; border-radius: 8px; padding: .8em 1em; font-size: 1.2em; font-weight: 600; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: .92em; }}
th, td {{ border: 1px solid #d0d7de; padding: .25em .6em; text-align: right; }}
th {{ background: #f6f8fa; }} .facts th, .facts td {{ text-align: left; }}
td.l {{ text-align: left; }} pre {{ background: #f6f8fa; padding: .6em; overflow-x: auto; }}
</style></head><body>
{chr(10).join(body)}
<script id="ab-result" type="application/json">{record}</script>
</body></html>
"""


def write_html(result: ABResult, path: str | Path) -> Path:
    """Write :func:`page` to ``path``; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page(result), encoding="utf-8")
    return target


def _record(result: ABResult) -> dict[str, Any]:
    document = result.to_dict()
    for run in document["runs"]:
        run.pop("around_fills", None)  # the first difference carries the bars that matter
    return document


def _phase_words(p: Any) -> str:
    if p.verdict == IDENTICAL:
        return f"identical: {p.fills} fills, final value {p.duckdb_value:,.2f}"
    if p.verdict == DECLARED:
        return (f"declared difference: legacy {p.legacy_value:,.2f}, DuckDB {p.duckdb_value:,.2f}, equal to legacy "
                f"with its declared defects fixed; explained by {'; '.join(p.explained_by)}")
    return f"DIFFERENT: legacy {p.legacy_value:,.2f}, DuckDB {p.duckdb_value:,.2f}; {p.detail}"


def _runs_table(result: ABResult) -> str:
    head = ("phase", "variant", "n", "wall s", "data layer s", "peak RSS MB", "provider requests", "bytes on disk",
            "fills", "final value")
    rows = []
    for r in summary_rows(result):
        requests = ", ".join(f"{k} {v:g}" for k, v in r["requests"].items() if v) or "0"
        cells = [r["phase"], r["variant"], r["n"], _spread(r["wall"], 2), _spread(r["data_layer"], 2),
                 _spread(r["peak_rss"], 0), requests, f"{r['bytes']:,}", r["fills"], f"{r['final_value']:,.2f}"]
        rows.append("<tr>" + "".join(f'<td{" class=l" if i in (0, 1, 6) else ""}>{_e(c)}</td>'
                                     for i, c in enumerate(cells)) + "</tr>")
    return ("<table class=runs><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows)
            + "</table>")


def _difference_html(d: Any) -> str:
    parts = [f"<p><b>{_e(d.phase)}</b>, fill #{d.index + 1}: legacy <code>{_e(d.legacy)}</code>, DuckDB "
             f"<code>{_e(d.duckdb)}</code>"
             + (f", legacy with its defects fixed <code>{_e(d.reference)}</code>" if d.reference else "") + "</p>",
             f"<p>{'Explained by the declared legacy defect(s): ' + _e('; '.join(d.explained_by)) if d.explained_by else 'No declared legacy defect explains it.'}</p>"]  # noqa: E501
    if d.equity_parts:
        parts.append(f"<p>The equity curves part at {_e(d.equity_parts)}.</p>")
    if d.defects_seen:
        parts.append(f"<p>Seen in the legacy cache: {_e(d.defects_seen)}</p>")
    for label, records in (("legacy", d.legacy_bars), ("DuckDB", d.duckdb_bars)):
        fill = d.legacy if label == "legacy" else d.duckdb
        for record in records:
            at = bar_at(record["rows"], fill[0] if fill else None)
            parts.append(f"<p>Bars {label} held in <code>{_e(record['held'])}</code> (bold: the bar at the fill):"
                         "</p><table><tr>" + "".join(f"<th>{_e(c)}</th>" for c in record["columns"]) + "</tr>"
                         + "".join(f"<tr{' style=font-weight:bold' if i == at else ''}>"
                                   + "".join(f"<td>{_e(_num(v))}</td>" for v in row) + "</tr>"
                                   for i, row in enumerate(record["rows"])) + "</table>")
        if not records:
            parts.append(f"<p>Bars {label} held: not recorded.</p>")
    return "\n".join(parts)


def _verify_html(result: ABResult) -> str:
    from lumibot_duckdb.ab.verify import costs

    head = ("phase", "n", "answers checked", "mismatches", "declared", "legacy errors", "legacy calls", "legacy s",
            "compare s", "wall s (DuckDB, legacy)", "requests (DuckDB, legacy)", "peak RSS MB (DuckDB)", "same fills")
    rows = []
    for c in costs(result.runs):
        cells = [c.phase, c.n, c.checks, c.mismatches, c.declared, c.legacy_errors, c.legacy_calls,
                 f"{c.legacy_seconds:.2f}", f"{c.compare_seconds:.3f}",
                 f"{c.wall:.2f} ({_opt(c.wall_duckdb, '.2f')}, {_opt(c.wall_legacy, '.2f')})",
                 f"{c.requests:g} ({_opt(c.requests_duckdb, 'g')}, {_opt(c.requests_legacy, 'g')})",
                 f"{c.peak_rss:.0f} ({_opt(c.peak_rss_duckdb, '.0f')})", "yes" if c.same_fills else "NO"]
        rows.append("<tr>" + "".join(f"<td>{_e(x)}</td>" for x in cells) + "</tr>")
    return ("<p>The DuckDB path in verify mode: every answer of the store also checked against what Lumibot's legacy "
            "path hands over (on an empty throw-away cache).</p><table><tr>"
            + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + "".join(rows) + "</table>")


def _opt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _spread(stats: dict[str, float], digits: int) -> str:
    if stats["min"] == stats["max"]:
        return f"{stats['median']:.{digits}f}"
    return f"{stats['median']:.{digits}f} [{stats['min']:.{digits}f}–{stats['max']:.{digits}f}]"


def _num(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _e(value: Any) -> str:
    return html.escape(str(value))


# -- reading a page back ----------------------------------------------------------------------------------
def plotted(page_text: str) -> dict[str, list[dict[str, Any]]]:
    """The traces each chart of a report page draws, by chart name (``equity``, ``resources``, ``requests``).

    Read from the page's ``Plotly.newPlot`` calls, the data a browser draws.
    """
    decoder = json.JSONDecoder()
    found: dict[str, list[dict[str, Any]]] = {}
    for match in re.finditer(r'Plotly\.newPlot\(\s*"chart-([a-z]+)",\s*', page_text):
        traces, _ = decoder.raw_decode(page_text, match.end())
        found[match.group(1)] = [_plain(t) for t in traces]
    return found


def _plain(trace: dict[str, Any]) -> dict[str, Any]:
    """Decode plotly's typed arrays (``{"dtype": "f8", "bdata": base64}``) into lists."""
    import base64

    import numpy as np

    out = {}
    for key, value in trace.items():
        if isinstance(value, dict) and "bdata" in value and "dtype" in value:
            out[key] = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
        else:
            out[key] = value
    return out


def recorded(page_text: str) -> dict[str, Any]:
    """The result embedded in a report page (:meth:`ABResult.to_dict`, without the per-fill bars)."""
    match = re.search(r'<script id="ab-result" type="application/json">(.*?)</script>', page_text, re.S)
    if match is None:
        raise ValueError("not an A/B report page: no ab-result record in it")
    document: dict[str, Any] = json.loads(match.group(1).replace("<\\/", "</"))
    return document


# -- the PNG --------------------------------------------------------------------------------------------
def write_png(result: ABResult, path: str | Path, *, dpi: int = 130) -> Path:
    """The same charts as one image (matplotlib): equity curves, their difference, time, memory, requests."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    import pandas as pd

    phases = _phases(result)
    figure, axes = plt.subplots(3, 2, figsize=(15, 12), gridspec_kw={"height_ratios": [3, 1.4, 1.4]})
    figure.suptitle(_literal(f"A/B {result.scenario.name}, {result.scenario.start} .. {result.scenario.end}\n"
                             f"{result.verdict_line()}"), fontsize=11, color=VERDICT_COLOURS[result.verdict])
    curves, deltas = axes[0][0], axes[1][0]
    styles = {"cold": "-", "warm": "--", "shifted": ":"}
    for phase in phases:
        for variant, label, width in (("legacy", "legacy", 2.6), ("duckdb", "DuckDB", 1.2),
                                      (REFERENCE, "legacy, defects fixed", 1.0)):
            run = _first(result, variant, phase)
            if run is None or not run.equity:
                continue
            xs, ys = thin(*curve(run))
            curves.plot(pd.to_datetime(xs), ys, styles.get(phase, "-"), color=COLOURS[variant], lw=width,
                        label=f"{label}, {phase}", alpha=0.85)
        legacy, ours = _first(result, "legacy", phase), _first(result, "duckdb", phase)
        if legacy is not None and ours is not None:
            xs, ys = difference(legacy, ours)
            worst = max((abs(y) for y in ys), default=0.0)
            xs, ys = thin(xs, ys)
            deltas.plot(pd.to_datetime(xs), ys, styles.get(phase, "-"), lw=1.2, label=f"{phase} (max |Δ| {worst:,.4g})")
    curves.set_title("portfolio value")
    curves.legend(fontsize=8, ncol=2)
    deltas.set_title("DuckDB − legacy")
    deltas.axhline(0, color="#888", lw=0.6)
    deltas.legend(fontsize=8)
    for axis in (curves, deltas):
        axis.xaxis.set_major_formatter(mdates.ConciseDateFormatter(axis.xaxis.get_major_locator()))
        axis.grid(alpha=0.3)
    rows = summary_rows(result)
    variants = _variants(result)
    width = 0.8 / max(1, len(variants))
    for axis, key, title in ((axes[0][1], "wall", "wall time (s), median, min–max"),
                             (axes[1][1], "peak_rss", "peak RSS (MB)"),
                             (axes[2][1], "requests", "provider requests")):
        for number, variant in enumerate(variants):
            mine = {r["phase"]: r for r in rows if r["variant"] == variant}
            positions = [i + (number - (len(variants) - 1) / 2) * width for i in range(len(phases))]
            if key == "requests":
                values = [sum(mine[p]["requests"].values()) if p in mine else 0 for p in phases]
                axis.bar(positions, values, width, color=COLOURS[variant], label=variant)
            else:
                values = [mine[p][key]["median"] if p in mine else 0 for p in phases]
                low = [values[i] - mine[p][key]["min"] if p in mine else 0 for i, p in enumerate(phases)]
                high = [mine[p][key]["max"] - values[i] if p in mine else 0 for i, p in enumerate(phases)]
                axis.bar(positions, values, width, yerr=[low, high], capsize=3, color=COLOURS[variant], label=variant)
            for x, value in zip(positions, values):
                axis.annotate(f"{value:.3g}", (x, value), ha="center", va="bottom", fontsize=7)
        axis.set_xticks(range(len(phases)), phases)
        axis.set_title(title)
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3, axis="y")
    axes[2][0].axis("off")
    axes[2][0].text(0, 1, _literal(_png_text(result)), va="top", ha="left", family="monospace", fontsize=7.5,
                    wrap=True)
    figure.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=dpi)
    plt.close(figure)
    return target


def _literal(text: str) -> str:
    """``text`` as matplotlib shows it literally: a ``$`` (tagged parameters) would start math mode."""
    return text.replace("$", r"\$")


def _png_text(result: ABResult) -> str:
    s = result.scenario
    where = "offline (emulated provider)" if s.offline else "the real provider"
    given = " + ".join(([f"from {Path(s.parameters_file).name}"] if s.parameters_file else [])
                       + ([json.dumps(s.parameters)] if s.parameters else [])) or "(the strategy's own)"
    lines = [f"{s.source}, {where}; parameters {given}; "
             f"{result.scenario_repeat} repetition(s); load average {result.machine.get('load_average')} on "
             f"{result.machine.get('cpus')} CPUs", ""]
    lines += [f"{p.phase}: {_phase_words(p)}" for p in result.phases]
    d = result.first_difference
    if d is not None:
        lines += ["", f"first differing fill ({d.phase}) #{d.index + 1}:", f"  legacy {d.legacy}",
                  f"  DuckDB {d.duckdb}",
                  "  " + ("explained by: " + "; ".join(d.explained_by) if d.explained_by
                          else "no declared legacy defect explains it")]
    import textwrap

    return "\n".join(textwrap.fill(line, 95, subsequent_indent="    ") for line in lines)
