"""A/B a user's strategy: legacy beside DuckDB, phase by phase, and what explains any difference.

>>> from lumibot_duckdb.ab import compare_strategy, assert_parity
>>> result = compare_strategy(MyStrategy, source="polygon", start="2024-01-02", end="2024-04-01",
...                           parameters={"symbol": "SPY"}, offline=True)      # doctest: +SKIP
>>> print(result.text())                                                        # doctest: +SKIP
>>> assert_parity(result)     # in a test: fails with the first differing fill  # doctest: +SKIP

Each phase (``cold`` on empty throw-away caches, ``warm`` on the caches the cold run filled,
``shifted`` on the window moved later) runs Lumibot's legacy path and the DuckDB path in fresh
processes, ``repeat`` times (each repetition on its own empty caches, the order of the two paths
alternating). Where fills or final value differ, Lumibot's legacy path is run again with its
declared defects patched (the kit's ``legacy_defects``): if DuckDB equals that reference, the
difference is *declared* and the defect that explains it is named (one patch at a time when a source
declares several); otherwise it is *different*, and no declared defect explains it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lumibot_duckdb.ab.harness import PHASES, REFERENCE, VARIANTS, VERIFY, RunResult, Scenario, run_subprocess
from lumibot_duckdb.ab.table import DECLARED, DIFFERENT, IDENTICAL, bar_at, cell, fill_words, render_result

__all__ = ["DECLARED", "DIFFERENT", "IDENTICAL", "ABResult", "FillDifference", "PhaseVerdict", "assert_parity",
           "build_scenario", "compare_strategy", "run_scenario", "strategy_spec"]
from lumibot_duckdb.errors import ConfigError, ParityError

VACUOUS = ("But neither path stored a bar or placed an order, so this proves nothing about the data: check the "
           "strategy's parameters (--param, --params-file; Lumibot's examples keep theirs in a *_config.py file) "
           "and the dates.")
"""Said after an identical verdict where no run stored or traded anything."""


@dataclasses.dataclass
class FillDifference:
    """The first fill where the two paths part, with the bars each held around it."""

    phase: str
    repetition: int
    index: int
    """Position of the first differing fill (0-based)."""
    legacy: list[Any] | None
    duckdb: list[Any] | None
    """The fills at ``index`` (time, symbol, side, quantity, price); None where that path has no such fill."""
    legacy_bars: list[dict[str, Any]]
    duckdb_bars: list[dict[str, Any]]
    """What each path's data source held around its fill (:func:`~lumibot_duckdb.ab.record.held_bars`)."""
    explained_by: list[str]
    """The declared legacy defects that explain it; empty when none does."""
    reference: list[Any] | None = None
    """The fill at ``index`` of Lumibot's legacy path with its defects patched (when that reference ran)."""
    defects_seen: str = ""
    """What the kit found of its defects in the legacy run's cache."""
    equity_parts: str = ""
    """Where the equity curves first part (time, both values)."""

    def text(self) -> str:
        lines = [f"first differing fill ({self.phase}, repetition {self.repetition + 1}): #{self.index + 1}",
                 f"  legacy: {fill_words(self.legacy)}", f"  DuckDB: {fill_words(self.duckdb)}"]
        if self.reference is not None:
            lines.append(f"  legacy with its declared defects fixed: {fill_words(self.reference)}")
        if self.equity_parts:
            lines.append(f"  equity curves part at {self.equity_parts}")
        for label, records in (("legacy", self.legacy_bars), ("DuckDB", self.duckdb_bars)):
            if not records:
                lines.append(f"  bars {label} held: not recorded")
            fill = self.legacy if label == "legacy" else self.duckdb
            for record in records:
                lines.append(f"  bars {label} held in {record['held']} (> the bar at the fill):")
                head, *names = record["columns"]
                lines.append(f"      {head:<25}" + "".join(f"{c:>20}" for c in names))
                at = bar_at(record["rows"], fill[0] if fill else None)
                for number, row in enumerate(record["rows"]):
                    mark = ">" if number == at else " "
                    lines.append(f"    {mark} {row[0]!s:<25}" + "".join(f"{cell(v):>20}" for v in row[1:]))
        if self.explained_by:
            lines.append(f"  explained by the declared legacy defect(s): {'; '.join(self.explained_by)}")
        else:
            lines.append("  no declared legacy defect explains it")
        if self.defects_seen:
            lines.append(f"  seen in the legacy cache: {self.defects_seen}")
        return "\n".join(lines)


@dataclasses.dataclass
class PhaseVerdict:
    """Legacy beside DuckDB in one phase, over every repetition."""

    phase: str
    verdict: str
    """:data:`IDENTICAL`, :data:`DECLARED` or :data:`DIFFERENT`."""
    fills: int
    legacy_value: float
    duckdb_value: float
    reference_value: float | None = None
    explained_by: list[str] = dataclasses.field(default_factory=list)
    detail: str = ""


@dataclasses.dataclass
class ABResult:
    """What :func:`compare_strategy` ran and found (print :meth:`text`, or write :mod:`~lumibot_duckdb.ab.report`)."""

    scenario: Scenario
    runs: list[RunResult]
    phases: list[PhaseVerdict]
    differences: list[FillDifference]
    machine: dict[str, Any]
    workdir: str = ""

    @property
    def verdict(self) -> str:
        """:data:`DIFFERENT` if any phase differs unexplained, else :data:`DECLARED` if any differs, else identical."""
        verdicts = {p.verdict for p in self.phases}
        return DIFFERENT if DIFFERENT in verdicts else DECLARED if DECLARED in verdicts else IDENTICAL

    @property
    def ok(self) -> bool:
        """Identical, or different only by declared legacy defects."""
        return self.verdict != DIFFERENT

    @property
    def first_difference(self) -> FillDifference | None:
        return self.differences[0] if self.differences else None

    def runs_of(self, variant: str, phase: str | None = None) -> list[RunResult]:
        return [r for r in self.runs if r.variant == variant and (phase is None or r.phase == phase)]

    def verdict_line(self) -> str:
        if self.verdict == IDENTICAL:
            fills = {p.fills for p in self.phases}
            line = (f"IDENTICAL: the same fills ({', '.join(map(str, sorted(fills)))}) and final value on both paths, "
                    f"in every phase{' and repetition' if self.scenario_repeat > 1 else ''}.")
            return line + (f" {VACUOUS}" if self.vacuous else "")
        if self.verdict == DECLARED:
            causes = sorted({c for p in self.phases for c in p.explained_by})
            return ("DECLARED DIFFERENCE: DuckDB equals Lumibot's legacy path with its declared defects fixed; "
                    f"explained by: {'; '.join(causes)}.")
        return "DIFFERENT: legacy and DuckDB disagree and no declared legacy defect explains it."

    @property
    def vacuous(self) -> bool:
        """Neither path stored a bar or placed an order: identical, and proving nothing (a provider's market list,
        say, may still have been asked for)."""
        return bool(self.runs) and all(not r.fills and not r.bytes_on_disk for r in self.runs)

    @property
    def scenario_repeat(self) -> int:
        return 1 + max((r.repetition for r in self.runs), default=0)

    def text(self, *, width: int = 160) -> str:
        """The table, the verdicts and the first differing fill, as text."""
        return render_result(self, width=width)

    def to_dict(self) -> dict[str, Any]:
        return {"scenario": dataclasses.asdict(self.scenario), "verdict": self.verdict, "ok": self.ok,
                "phases": [dataclasses.asdict(p) for p in self.phases],
                "differences": [dataclasses.asdict(d) for d in self.differences],
                "machine": self.machine, "runs": [dataclasses.asdict(r) for r in self.runs]}


# -- running ------------------------------------------------------------------------------------------
def strategy_spec(strategy: Any) -> str:
    """A strategy class, file or name as the spec a fresh process loads (``file.py:Class`` for classes)."""
    if isinstance(strategy, str | os.PathLike):
        from lumibot_duckdb.ab.strategy import resolve_spec

        return resolve_spec(os.fspath(strategy))
    if not isinstance(strategy, type):
        raise ConfigError(f"strategy must be a Strategy subclass, a path/to/file.py[:Class] or module:Class, "
                          f"not {strategy!r}")
    if "<locals>" in strategy.__qualname__:
        raise ConfigError(f"{strategy.__qualname__} is defined inside a function; each run loads the strategy in a "
                          "fresh process, so define it at module level.")
    try:
        source = inspect.getsourcefile(strategy)
    except TypeError:
        source = None
    if source and source.endswith(".py"):
        return f"{Path(source).resolve()}:{strategy.__name__}"
    return f"{strategy.__module__}:{strategy.__qualname__}"


def build_scenario(strategy: Any, *, source: str = "polygon", start: str | dt.date | None = None,
                   end: str | dt.date | None = None,
                   parameters: Mapping[str, Any] | None = None, parameters_file: str | os.PathLike[str] = "",
                   budget: float = 100_000.0, quote: str = "", benchmark: str = "", offline: bool = True,
                   timestep: str = "", options: Mapping[str, Any] | None = None, shift_days: int = 30,
                   market_seed: int = 1, name: str = "") -> Scenario:
    """The :class:`~lumibot_duckdb.ab.harness.Scenario` of a user's strategy (values checked here, not in a run)."""
    from lumibot_duckdb import registry
    from lumibot_duckdb.ab.strategy import encode, is_file_spec, split_spec

    spec = strategy_spec(strategy)
    if start is None or end is None:
        start, end = _default_window(spec, start, end)
    first, last = _date(start, "start"), _date(end, "end")
    if last <= first:
        raise ConfigError(f"end ({last}) must be after start ({first}).")
    if budget <= 0:
        raise ConfigError(f"budget must be positive, not {budget}.")
    source_name = registry.source(source).name
    label = name or spec
    if not name and is_file_spec(spec):
        path, class_name = split_spec(spec)
        label = Path(path).name + (f":{class_name}" if class_name else "")
    file = str(Path(parameters_file).expanduser().resolve()) if parameters_file else ""
    if file and not Path(file).is_file():
        raise ConfigError(f"Parameters file {parameters_file!r} not found.")
    return Scenario(name=f"{label} ({source_name})", strategy=spec, parameters=encode(dict(parameters or {})),
                    start=first.isoformat(), end=last.isoformat(), source=source_name, market_seed=market_seed,
                    budget=float(budget), shift_days=shift_days, timestep=timestep, quote=quote,
                    benchmark=benchmark, parameters_file=file, offline=offline,
                    options=encode(dict(options or {})))


def _default_window(spec: str, start: Any, end: Any) -> tuple[Any, Any]:
    """``BACKTESTING_START`` / ``BACKTESTING_END`` of the user's environment (and ``.env``), as Lumibot reads them."""
    from lumibot_duckdb.ab import online
    from lumibot_duckdb.ab.strategy import is_file_spec, split_spec

    env, _ = online.user_environment(Path(split_spec(spec)[0]) if is_file_spec(spec) else None)
    start = start if start is not None else env.get("BACKTESTING_START") or None
    end = end if end is not None else env.get("BACKTESTING_END") or None
    if start is None or end is None:
        raise ConfigError("No backtest window: pass --start and --end (start=/end= in Python), or set "
                          "BACKTESTING_START and BACKTESTING_END (YYYY-MM-DD) in the environment or .env.")
    return start, end


def _date(value: str | dt.date, what: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise ConfigError(f"{what} {value!r} is not a date; write YYYY-MM-DD.") from None


def compare_strategy(strategy: Any, *, source: str = "polygon", start: str | dt.date | None = None,
                     end: str | dt.date | None = None,
                     parameters: Mapping[str, Any] | None = None, phases: Sequence[str] = PHASES, repeat: int = 1,
                     offline: bool = True, verify: bool = False, workdir: str | os.PathLike[str] | None = None,
                     progress: Callable[[RunResult], None] | None = None, timeout: float = 4 * 3600,
                     **scenario: Any) -> ABResult:
    """Run ``strategy`` on Lumibot's legacy path and on the DuckDB path and compare them (see the module docstring).

    ``strategy``: a ``Strategy`` subclass (defined at module level), ``path/to/file.py[:Class]`` or
    ``module:Class``. ``start``/``end``: the backtest window (default: ``BACKTESTING_START`` and
    ``BACKTESTING_END`` of the environment or ``.env``). ``parameters``: its parameters (Python
    values; Assets, Decimals, enums included). ``offline=False`` runs against the real provider
    with your credentials (environment and ``.env``). More keywords: ``parameters_file``,
    ``budget``, ``quote``, ``benchmark``, ``timestep``, ``options`` (more ``run_backtest``
    keywords), ``shift_days``, ``market_seed``.
    ``verify=True`` also runs the DuckDB path in verify mode, to measure its cost on this strategy.
    ``workdir``: keep the runs' caches there (default: a temporary folder, removed afterwards).
    """
    built = build_scenario(strategy, source=source, start=start, end=end, parameters=parameters, offline=offline,
                           **scenario)
    return run_scenario(built, phases=phases, repeat=repeat, verify=verify, workdir=workdir, progress=progress,
                        timeout=timeout)


def run_scenario(scenario: Scenario, *, phases: Sequence[str] = PHASES, repeat: int = 1, verify: bool = False,
                 workdir: str | os.PathLike[str] | None = None, progress: Callable[[RunResult], None] | None = None,
                 timeout: float = 4 * 3600) -> ABResult:
    """:func:`compare_strategy` for a ready :class:`~lumibot_duckdb.ab.harness.Scenario`."""
    chosen = _phases(phases)
    if repeat < 1:
        raise ConfigError(f"repeat must be at least 1, not {repeat}.")
    if not scenario.offline:
        from lumibot_duckdb.ab import online
        from lumibot_duckdb.ab.strategy import is_file_spec, split_spec

        script = Path(split_spec(scenario.strategy)[0]) if is_file_spec(scenario.strategy) else None
        online.check_credentials(scenario.source, online.user_environment(script)[0])
    if workdir is not None and Path(workdir).is_dir() and any(Path(workdir).iterdir()):
        raise ConfigError(f"The work folder {workdir} is not empty: cold runs need empty caches. Remove it, or "
                          "pass another (or none: a temporary folder, removed afterwards).")
    scratch = None if workdir is not None else tempfile.mkdtemp(prefix="lumibot-duckdb-ab-")
    root = Path(workdir) if workdir is not None else Path(scratch or "")
    machine = _machine()
    try:
        runs: list[RunResult] = []

        def run(variant: str, phase: str, folder: Path, repetition: int) -> RunResult:
            result = run_subprocess(scenario, variant, phase, folder, timeout=timeout)
            result.repetition = repetition
            runs.append(result)
            if progress:
                progress(result)
            return result

        for repetition in range(repeat):
            folder = root / f"repetition-{repetition + 1}" if repeat > 1 else root
            order = VARIANTS if repetition % 2 == 0 else tuple(reversed(VARIANTS))
            for phase in chosen:
                for variant in order:
                    run(variant, phase, folder / variant, repetition)
                if verify:
                    run(VERIFY, phase, folder / VERIFY, repetition)
        first = root / "repetition-1" if repeat > 1 else root
        verdicts, differences = _judge(scenario, runs, chosen, root, first, run)
        return ABResult(scenario, runs, verdicts, differences, machine, workdir=str(workdir or ""))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _phases(phases: Sequence[str] | str) -> list[str]:
    chosen = [p.strip().lower() for p in (phases.split(",") if isinstance(phases, str) else phases) if p.strip()]
    unknown = [p for p in chosen if p not in PHASES]
    if unknown or not chosen:
        raise ConfigError(f"phases must be some of {', '.join(PHASES)} (comma-separated), not {unknown or phases!r}.")
    if chosen[0] != "cold":
        raise ConfigError("phases must start with cold: warm and shifted reuse the caches the cold run filled.")
    return sorted(set(chosen), key=PHASES.index)


def _judge(scenario: Scenario, runs: list[RunResult], phases: list[str], root: Path, first: Path,
           run: Callable[[str, str, Path, int], RunResult]) -> tuple[list[PhaseVerdict], list[FillDifference]]:
    """Phase verdicts, and for each differing phase its first differing fill, with the reference runs needed."""
    from lumibot_duckdb.testing.kits import kit

    source = kit(scenario.source)
    defects = list(source.legacy_defects())
    pairs = {phase: [(a, b) for a, b in zip(_of(runs, "legacy", phase), _of(runs, "duckdb", phase))]
             for phase in phases}
    differing = {phase for phase, both in pairs.items() if any(not _same(a, b) for a, b in both)}
    references: dict[str, dict[str, RunResult]] = {}
    if differing and defects:
        folder = root / REFERENCE
        references["all"] = {p: run(REFERENCE, p, folder / "all", 0) for p in phases}
        explained = [p for p in differing if _same(references["all"][p], _of(runs, "duckdb", p)[0])]
        if explained and len(defects) > 1:
            for number, _ in enumerate(defects, 1):
                variant = f"{REFERENCE}#{number}"
                references[variant] = {p: run(variant, p, folder / f"defect-{number}", 0) for p in phases}
    verdicts, differences = [], []
    for phase in phases:
        legacy, ours = pairs[phase][0]
        verdict = PhaseVerdict(phase, IDENTICAL, len(legacy.fills), legacy.final_value, ours.final_value)
        if phase in differing:
            first_bad = next((a, b) for a, b in pairs[phase] if not _same(a, b))
            legacy, ours = first_bad
            verdict.legacy_value, verdict.duckdb_value = legacy.final_value, ours.final_value
            reference = references.get("all", {}).get(phase)
            explained_by: list[str] = []
            if reference is not None and all(_same(reference, b) for _, b in pairs[phase]):
                verdict.verdict, verdict.reference_value = DECLARED, reference.final_value
                singles = [defects[n - 1] for n in range(1, len(defects) + 1)
                           if _same(references.get(f"{REFERENCE}#{n}", {}).get(phase), ours)]
                explained_by = singles or ([defects[0]] if len(defects) == 1 else
                                           [f"the declared defects together ({', '.join(defects)})"])
                verdict.explained_by = explained_by
            else:
                verdict.verdict = DIFFERENT
                if reference is not None:
                    verdict.reference_value = reference.final_value
            verdict.detail = _difference_words(legacy, ours)
            seen = source.describe_defects(first / "legacy", scenario.window(phase)) if defects else ""
            differences.append(_first_fill(legacy, ours, reference, explained_by, seen))
        verdicts.append(verdict)
    return verdicts, differences


def _of(runs: Sequence[RunResult], variant: str, phase: str) -> list[RunResult]:
    return sorted((r for r in runs if r.variant == variant and r.phase == phase), key=lambda r: r.repetition)


def _same(a: RunResult | None, b: RunResult | None) -> bool:
    return a is not None and b is not None and a.fills == b.fills and a.final_value == b.final_value


def _difference_words(a: RunResult, b: RunResult) -> str:
    if a.fills != b.fills:
        index = _first_index(a.fills, b.fills)
        return f"fills differ from #{index + 1} ({len(a.fills)} legacy, {len(b.fills)} DuckDB)"
    return f"same {len(a.fills)} fills, final value {a.final_value!r} vs {b.final_value!r}"


def _first_index(a: list[Any], b: list[Any]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _first_fill(legacy: RunResult, ours: RunResult, reference: RunResult | None, explained_by: list[str],
                seen: str) -> FillDifference:
    index = _first_index(legacy.fills, ours.fills)
    if legacy.fills == ours.fills:  # same fills, another final value: show the last fill's bars
        index = max(0, len(legacy.fills) - 1)
    fill_a = legacy.fills[index] if index < len(legacy.fills) else None
    fill_b = ours.fills[index] if index < len(ours.fills) else None
    anchor = fill_a or fill_b
    return FillDifference(
        phase=legacy.phase, repetition=legacy.repetition, index=index, legacy=fill_a, duckdb=fill_b,
        legacy_bars=_bars_at(legacy, index, anchor), duckdb_bars=_bars_at(ours, index, anchor),
        explained_by=explained_by,
        reference=(reference.fills[index] if reference is not None and index < len(reference.fills) else None),
        defects_seen=seen, equity_parts=_equity_parts(legacy, ours))


def _bars_at(run: RunResult, index: int, anchor: list[Any] | None) -> list[dict[str, Any]]:
    """The bars ``run`` held at its fill ``index``; if it has none there, at its fill of that symbol nearest in time."""
    records = run.around_fills
    if index < len(records) and index < len(run.fills):
        return list(records[index].get("bars", []))
    if anchor is None or not records:
        return []
    same = [r for r in records if r.get("symbol") == anchor[1] and r.get("time")]
    if not same:
        return []
    import pandas as pd

    when = pd.Timestamp(anchor[0])
    nearest = min(same, key=lambda r: abs(pd.Timestamp(r["time"]) - when))
    return [{**b, "held": f"{b['held']} (at its fill of {anchor[1]} at {nearest['time']})"}
            for b in nearest.get("bars", [])]


def _equity_parts(a: RunResult, b: RunResult) -> str:
    other = dict((t, v) for t, v in b.equity)
    for when, value in a.equity:
        theirs = other.get(when)
        if theirs is not None and theirs != value:
            return f"{when}: legacy {value!r}, DuckDB {theirs!r} (DuckDB - legacy {theirs - value:+.3g})"
    return ""


def _machine() -> dict[str, Any]:
    from importlib.metadata import version

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "load_average": [round(x, 2) for x in load], "lumibot": version("lumibot"),
            "lumibot_duckdb": version("lumibot-duckdb") if _installed("lumibot-duckdb") else "checkout",
            "duckdb": version("duckdb"), "started": dt.datetime.now().isoformat(timespec="seconds")}


def _installed(name: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(name)
        return True
    except PackageNotFoundError:
        return False


# -- the assertion helper -------------------------------------------------------------------------------
def assert_parity(result: ABResult | Any = None, /, *, allow_declared: bool = True, **compare: Any) -> ABResult:
    """Fail (``ParityError``, an ``AssertionError``) unless legacy and DuckDB agree; returns the result.

    Pass an :class:`ABResult`, or :func:`compare_strategy`'s arguments (the strategy first) to run it
    here. ``allow_declared=False`` also fails on differences explained by declared legacy defects.
    The message names the first differing fill and the bars each path held around it.
    """
    if not isinstance(result, ABResult):
        result = compare_strategy(result, **compare)
    if result.verdict == IDENTICAL or (allow_declared and result.verdict == DECLARED):
        return result
    lines = [f"{result.scenario.name}: {result.verdict_line()}"]
    lines += [f"  {p.phase}: {p.verdict} ({p.detail})" for p in result.phases if p.verdict != IDENTICAL]
    if result.first_difference is not None:
        lines.append(result.first_difference.text())
    raise ParityError("\n".join(lines))
