"""The A/B harness: one strategy, one provider data set, Lumibot's legacy path beside the DuckDB path.

Each run happens in a fresh Python process (so peak memory is its own and no cache survives in
memory). Offline (the default, ``Scenario.offline``) the provider is emulated at its network seam
by :mod:`lumibot_duckdb.testing`; otherwise the run talks to the real provider with the user's
credentials (:mod:`lumibot_duckdb.ab.online`). A *session* is a sequence of runs on the same cache
folders: ``cold`` (empty caches), ``warm`` (same window again) and ``shifted`` (the window moved
later), for each variant. :func:`compare` then checks that fills and final portfolio value are
identical. The strategy is a sample of :mod:`lumibot_duckdb.testing.strategies` or the user's own
(a file or a module, :mod:`lumibot_duckdb.ab.strategy`); :mod:`lumibot_duckdb.ab.session` builds a
whole comparison of it (``lumibot-duckdb ab``).

>>> session = run_session(Scenario.momentum(), workdir)            # doctest: +SKIP
>>> print(render(session))                                          # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lumibot_duckdb.ab.record import fills_of
from lumibot_duckdb.config import format_bytes
from lumibot_duckdb.errors import ABRunError

__all__ = ["PHASES", "REFERENCE", "VARIANTS", "VERIFY", "Parity", "RunResult", "Scenario", "compare",
           "demo", "fills_of", "render", "run_here", "run_session", "run_subprocess"]

VARIANTS = ("legacy", "duckdb")
PHASES = ("cold", "warm", "shifted")
REFERENCE = "legacy-fixed"
"""Lumibot's legacy path with its known cache defects patched (each kit's
:meth:`~lumibot_duckdb.testing.kits.SourceKit.legacy_defects`): the reference that proves a difference
between legacy and DuckDB comes from those defects and nothing else. ``legacy-fixed#N`` patches only
the N-th defect (1-based, in the kit's order): the reference that names which one explains it."""
VERIFY = "verify"
"""The DuckDB path in verify mode (every answer also checked against the legacy path; its cost)."""
NO_INPUT_EVIDENCE = "LUMIBOT_DUCKDB_AB_NO_INPUT_EVIDENCE"
"""A measurement diagnostic (benchmarks only): with this variable set to 1 in a run's environment, Lumibot 4.6's
record of the bars its history calls return (``lumibot.backtesting.market_input_evidence``: kept on either path,
up to 50,000 rows, never read by a decision) is not made, so a run's memory is its data layer's own."""
FIAT = frozenset({"USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "NZD", "HKD", "SGD"})


@dataclasses.dataclass(frozen=True)
class Scenario:
    """What to backtest: a strategy, its parameters, a window, and the emulated market."""

    name: str
    strategy: str
    parameters: dict[str, Any]
    start: str
    end: str
    source: str = "polygon"
    market_seed: int = 1
    budget: float = 100_000.0
    shift_days: int = 30
    market: str = ""  # "module:callable" returning a market; empty = SyntheticMarket(market_seed)
    timestep: str = ""  # the bars the strategy trades on, for sources that must be told ("minute"; Alpaca)
    quote: str = ""  # the quote asset (run_backtest's quote_asset), e.g. "USDT"; empty = the source's default
    benchmark: str = ""  # the benchmark asset ("SPY", "ETH/USDT"); empty = none
    parameters_file: str = ""  # a .py (its `parameters`) or .json file, under `parameters`
    offline: bool = True  # the emulated provider; False = the real one, with the user's credentials
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # more run_backtest keywords (JSON)

    @classmethod
    def buy_and_hold(cls, symbol: str = "AAA", start: str = "2024-01-02", end: str = "2024-04-01") -> Scenario:
        return cls("buy-and-hold daily", "buy_and_hold", {"symbol": symbol}, start, end)

    @classmethod
    def momentum(cls, symbols: Sequence[str] = ("AAA", "BBB", "CCC", "DDD"), start: str = "2024-01-02",
                 end: str = "2024-04-01") -> Scenario:
        return cls(f"momentum daily x{len(symbols)}", "momentum",
                   {"symbols": list(symbols), "lookback": 10, "top": 2, "period": 5}, start, end)

    @classmethod
    def minute_sma(cls, symbol: str = "AAA", start: str = "2024-01-02", end: str = "2024-01-09") -> Scenario:
        return cls("minute SMA", "minute_sma", {"symbol": symbol, "fast": 10, "slow": 30, "quantity": 10},
                   start, end, shift_days=7, timestep="minute")

    def window(self, phase: str) -> tuple[dt.date, dt.date]:
        start, end = dt.date.fromisoformat(self.start), dt.date.fromisoformat(self.end)
        if phase == "shifted":
            step = dt.timedelta(days=self.shift_days)
            return start + step, end + step
        return start, end


@dataclasses.dataclass
class RunResult:
    """What one backtest run measured."""

    scenario: str
    variant: str
    phase: str
    wall_seconds: float
    data_layer_seconds: float
    seam_calls: int
    requests: dict[str, int]
    requested_days: int
    peak_rss_mb: float
    rss_after_import_mb: float
    bytes_on_disk: int
    bars_on_disk: int
    fills: list[list[Any]]
    final_value: float
    detail: str = ""
    repetition: int = 0
    equity: list[list[Any]] = dataclasses.field(default_factory=list)
    """Portfolio value after each iteration, ``[time, value]`` (:func:`~lumibot_duckdb.ab.record.equity_of`)."""
    around_fills: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    """Per fill, the bars the data source held around it (:func:`~lumibot_duckdb.ab.record.recording_fills`)."""
    verify: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Verify mode's counts and times (variant ``verify``)."""
    store_reads: int = 0
    """Reads of the store the data source made (DuckDB path; 0 on the legacy path)."""
    startup_seconds: float = 0.0
    """From starting the process to starting the backtest: Python, Lumibot and the data source imported
    (0 for a run inside an existing process)."""

    @property
    def total_seconds(self) -> float:
        """What a user waits for: the process's startup and the backtest."""
        return self.startup_seconds + self.wall_seconds

    @property
    def bytes_per_bar(self) -> float:
        return self.bytes_on_disk / self.bars_on_disk if self.bars_on_disk else float("nan")

    @property
    def provider_requests(self) -> int:
        return sum(self.requests.values())


@dataclasses.dataclass
class Parity:
    """Legacy beside DuckDB for one scenario and phase.

    ``identical``: same fills (time, symbol, side, quantity, price) and same final value.
    ``declared``: not identical, but DuckDB equals Lumibot's legacy path run on an empty cache
    for the same window, so the difference comes from legacy's cache; ``detail`` says how.
    """

    scenario: str
    phase: str
    identical: bool
    fills: int
    legacy_value: float
    duckdb_value: float
    detail: str = ""
    declared: bool = False
    reference_value: float | None = None


# -- running ---------------------------------------------------------------------------------------
def child_environment(workdir: Path, scenario: Scenario | None = None) -> dict[str, str]:
    """Environment of a run: every Lumibot cache and artefact inside ``workdir``, nothing at home.

    Offline, none of the user's settings; on the real provider, the user's environment and ``.env``
    with every cache redirected (:func:`lumibot_duckdb.ab.online.child_environment`).
    """
    if scenario is not None and not scenario.offline:
        from lumibot_duckdb.ab import online
        from lumibot_duckdb.ab.strategy import is_file_spec, split_spec

        script = Path(split_spec(scenario.strategy)[0]) if is_file_spec(scenario.strategy) else None
        return online.child_environment(workdir, script)
    from lumibot_duckdb.testing.offline import isolated_environment

    return {**isolated_environment(workdir), "PYTHONWARNINGS": "ignore"}


def run_subprocess(scenario: Scenario, variant: str, phase: str, workdir: Path, *, timeout: float = 3600,
                   fast: bool = False, env: dict[str, str] | None = None) -> RunResult:
    """Run one backtest in a fresh interpreter and return what it measured (``fast``: see :func:`run_here`)."""
    return finish(spawn(scenario, variant, phase, workdir, fast=fast, env=env), timeout=timeout)


def spawn(scenario: Scenario, variant: str, phase: str, workdir: Path, *, fast: bool = False,
          env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start one backtest in a fresh interpreter (see :func:`finish`); several may run at once.

    ``env`` adds variables to the run's isolated environment (e.g. a memory budget).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec = json.dumps({"scenario": dataclasses.asdict(scenario), "variant": variant, "phase": phase,
                       "workdir": str(workdir), "fast": fast, "spawned": time.time()})
    environment = {**child_environment(workdir, scenario), **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "lumibot_duckdb.ab.harness", spec], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=environment, cwd=workdir)
    process.lumibot_duckdb_run = (scenario.name, variant, phase)  # type: ignore[attr-defined]
    return process


def finish(process: subprocess.Popen[str], *, timeout: float = 3600) -> RunResult:
    """Wait for a run started by :func:`spawn` and return what it measured."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise ABRunError(f"{_which(process)} did not finish within {timeout:.0f} s and was stopped.") from None
    lines = [ln for ln in stdout.splitlines() if ln.startswith('{"scenario"')]
    if process.returncode != 0 or not lines:
        raise ABRunError(f"{_which(process)} failed (exit {process.returncode}): {_last_error(stderr)}. "
                         f"{_whose(process)} Its last output:\n{stderr[-3000:]}")
    return RunResult(**json.loads(lines[-1]))


def _which(process: subprocess.Popen[str]) -> str:
    name, variant, phase = getattr(process, "lumibot_duckdb_run", ("?", "?", "?"))
    path = "Lumibot's legacy path" if variant == "legacy" else "the DuckDB path" if variant in ("duckdb", VERIFY) \
        else f"the {variant} reference"
    return f"The {phase} run of {name} on {path}"


def _whose(process: subprocess.Popen[str]) -> str:
    _, variant, _ = getattr(process, "lumibot_duckdb_run", ("?", "?", "?"))
    if variant == "legacy":
        return ("It fails on Lumibot's own path, without lumibot-duckdb: look at the strategy, its parameters or "
                "its window.")
    if variant in ("duckdb", VERIFY):
        return "If the same backtest runs on Lumibot's own path, please report this with the output below."
    return ""


def _last_error(stderr: str) -> str:
    """The exception line at the end of a traceback (what went wrong, in one line)."""
    for line in reversed(stderr.strip().splitlines()):
        text = line.strip()
        if text and not text.startswith(("File ", "^", "~")) and (":" in text or "Error" in text):
            return text[:500]
    return "no error message"


def run_session(scenario: Scenario, workdir: Path, *, variants: Iterable[str] = VARIANTS,
                phases: Iterable[str] = PHASES,
                progress: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """For each variant, the phases in order on that variant's own cache folders.

    The variants alternate (legacy cold, DuckDB cold, legacy warm, ...), so that a machine busy with
    something else slows both alike; results come back variant by variant. Where legacy and DuckDB
    differ, :func:`compare` needs legacy on an empty cache for that window: that reference run is made
    on demand, in its own folder.
    """
    phases, variants = list(phases), list(variants)
    runs: dict[tuple[str, str], RunResult] = {}
    for phase in phases:
        for variant in variants:
            runs[(variant, phase)] = run_subprocess(scenario, variant, phase, workdir / variant)
            if progress:
                progress(runs[(variant, phase)])
    results = [runs[(variant, phase)] for variant in variants for phase in phases]
    if any(not p.identical for p in compare(results)):
        from lumibot_duckdb.testing.kits import kit

        for phase in phases:
            reference = run_subprocess(scenario, REFERENCE, phase, workdir / REFERENCE)
            reference.detail = kit(scenario.source).describe_defects(workdir / "legacy", scenario.window(phase))
            results.append(reference)
            if progress:
                progress(reference)
    return results


def run_here(scenario: Scenario, variant: str, phase: str, workdir: Path, *, fast: bool = False,
             on_serve: Callable[[Any], None] | None = None, spawned: float | None = None) -> RunResult:
    """Run one backtest in this process (Lumibot's environment must already point into ``workdir``).

    ``fast=True`` removes the legacy path's deliberate provider sleeps (tests only: the harness
    measures what users wait for). ``on_serve(provider)`` is called with the offline provider
    before the backtest starts (tests inject faults with it). ``spawned``: ``time.time()`` when the
    process was started, for :attr:`RunResult.startup_seconds`.
    """
    import contextlib

    from lumibot_duckdb.ab.record import equity_of, recording_fills
    from lumibot_duckdb.ab.strategy import load_strategy, parameters_of
    from lumibot_duckdb.testing.kits import kit
    from lumibot_duckdb.testing.strategies import STRATEGIES

    source = kit(scenario.source)
    if scenario.offline:
        options: dict[str, Any] = dict(source.backtest_kwargs(variant, scenario))
    else:
        from lumibot_duckdb.ab import online

        online.check_credentials(scenario.source, os.environ)
        options = online.backtest_kwargs(scenario.source, os.environ, scenario)
    if scenario.quote:
        from lumibot.entities import Asset

        quote = scenario.quote.upper()
        options["quote_asset"] = Asset(quote, "forex" if quote in FIAT else "crypto")
    from lumibot_duckdb.ab.strategy import decode

    options.update(decode(dict(scenario.options)))
    fixes = _fixes(source, variant)
    if variant == "legacy" or fixes is not None:
        data_source = source.legacy_class
    elif variant in ("duckdb", VERIFY):
        data_source = source.duckdb_class
        options.update(use_duckdb="verify" if variant == VERIFY else True, cache_dir=str(workdir / "duckdb"))
        if variant == VERIFY:
            options["verify_report"] = str(workdir / "verify-report.json")
    else:
        raise ValueError(f"variant must be one of {(*VARIANTS, VERIFY, REFERENCE)} (or {REFERENCE}#N), "
                         f"not {variant!r}")
    rss_after_import = _rss_mb()
    seam: dict[str, float] = {"seconds": 0.0, "calls": 0, "depth": 0}
    strategy_class: Any = load_strategy(scenario.strategy, STRATEGIES)
    parameters = parameters_of(scenario.parameters, scenario.parameters_file)
    start, end = scenario.window(phase)
    guard = None
    with contextlib.ExitStack() as stack:
        for fix in fixes or ():
            stack.callback(fix())
        if os.environ.get(NO_INPUT_EVIDENCE) == "1":
            stack.enter_context(_without_input_evidence())
        for owner, attribute in source.data_layer():
            stack.enter_context(_timed(owner, attribute, seam))
        stack.enter_context(source.legacy_cache_folder(workdir / "lumibot-cache"))
        if scenario.offline:
            from lumibot_duckdb.testing.offline import offline

            guard = stack.enter_context(offline())
            provider: Any = stack.enter_context(source.serve(_market(scenario), fast=fast))
            kinds: Sequence[str] = source.request_kinds
        else:
            from lumibot_duckdb.ab.online import counting_requests

            provider = stack.enter_context(counting_requests())
        if on_serve is not None:
            on_serve(provider)
        around = stack.enter_context(recording_fills())
        startup = time.time() - spawned if spawned is not None else 0.0
        started = time.perf_counter()
        _, strategy = strategy_class.run_backtest(
            data_source, dt.datetime.combine(start, dt.time()), dt.datetime.combine(end, dt.time()),
            benchmark_asset=scenario.benchmark or None, risk_free_rate=0.0, show_plot=False, show_tearsheet=False,
            save_tearsheet=False, show_indicators=False, show_progress_bar=False, quiet_logs=True,
            save_stats_file=False, analyze_backtest=False, budget=scenario.budget,
            parameters=parameters, **options,
        )
        wall = time.perf_counter() - started
        if not scenario.offline:
            kinds = provider.kinds()
        requests = {kind: provider.count(kind) for kind in kinds}
        requested_days = provider.requested_days()
    if guard is not None and guard.attempts:
        raise RuntimeError(f"the backtest tried the network: {guard.attempts[:3]}")
    if strategy is None:
        raise RuntimeError("Lumibot's run_backtest returned no strategy (see its log above)")
    size, bars = _disk(source, variant, workdir)
    peak = _peak_rss_mb()
    verifier = getattr(strategy.broker.data_source, "duckdb_verifier", None)
    checks = verifier.summary() if verifier is not None else {}
    if verifier is not None:
        verifier.write()
    fills = fills_of(strategy)
    # the DuckDB path's data layer also works outside the seam timed on both paths (rolling its windows)
    stats = getattr(strategy.broker.data_source, "duckdb_stats", None)
    outside = stats.window_seconds if stats is not None else 0.0
    return RunResult(scenario.name, variant, phase, wall, seam["seconds"] + outside, int(seam["calls"]), requests,
                     requested_days, peak, rss_after_import, size, bars, fills, float(strategy.portfolio_value),
                     equity=equity_of(strategy), around_fills=around if len(around) <= len(fills) else [],
                     verify=checks, store_reads=stats.store_reads if stats is not None else 0,
                     startup_seconds=startup)


def _fixes(source: Any, variant: str) -> list[Any] | None:
    """The legacy-defect patches a reference variant applies (None: not a reference variant)."""
    name, _, which = variant.partition("#")
    if name != REFERENCE:
        return None
    fixes = list(source.legacy_defects().values())
    if not which:
        return fixes
    if not which.isdigit() or not 1 <= int(which) <= len(fixes):
        raise ValueError(f"{variant!r}: {source.name} has {len(fixes)} declared legacy defect(s)")
    return [fixes[int(which) - 1]]


def _without_input_evidence() -> Any:
    """Lumibot's market-input recorder made a no-op (see :data:`NO_INPUT_EVIDENCE`); its callers import it per call."""
    from lumibot.backtesting import market_input_evidence

    from lumibot_duckdb.testing.kits import patched

    return patched(market_input_evidence, "record_market_input", lambda **_: None)


def _timed(owner: Any, attribute: str, seam: dict[str, float]) -> Any:
    """Time calls of ``owner.attribute`` into ``seam`` (outermost calls only, so nested seams count once)."""
    import functools
    import threading

    from lumibot_duckdb.testing.kits import patched

    inner = getattr(owner, attribute)
    local = threading.local()
    lock = threading.Lock()

    @functools.wraps(inner)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if getattr(local, "depth", 0):
            return inner(*args, **kwargs)
        local.depth = 1
        started = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            local.depth = 0
            with lock:
                seam["seconds"] += time.perf_counter() - started
                seam["calls"] += 1

    if isinstance(owner, type) and isinstance(owner.__dict__.get(attribute), staticmethod):
        return patched(owner, attribute, staticmethod(timed))
    return patched(owner, attribute, timed)


def _resolve(name: str, known: dict[str, Any]) -> Any:
    if name in known:
        return known[name]
    module, _, attr = name.partition(":")
    import importlib

    return getattr(importlib.import_module(module), attr)


def _market(scenario: Scenario) -> Any:
    from lumibot_duckdb.testing.market import SyntheticMarket

    return _resolve(scenario.market, {})() if scenario.market else SyntheticMarket(scenario.market_seed)


def _disk(source: Any, variant: str, workdir: Path) -> tuple[int, int]:
    """Bytes of bar files on disk and bars in them (legacy: the source's own cache; duckdb: the store)."""
    if variant in ("duckdb", VERIFY):
        from lumibot_duckdb.store import DuckDBDataStorage

        if not (workdir / "duckdb").is_dir():  # never created (or not creatable: the run fell back to legacy)
            return 0, 0
        with DuckDBDataStorage(workdir / "duckdb") as store:
            report = store.status()
        return sum(s.bytes for s in report), sum(s.rows for s in report)
    return source.legacy_cache(workdir / "lumibot-cache")


def _peak_rss_mb() -> float:
    """This process's peak RSS: ``VmHWM`` where Linux has it, since ``ru_maxrss`` survives ``exec`` and would
    report the parent's peak for a small run started from a large process; else ``ru_maxrss``."""
    import resource

    peak = _status_mb("VmHWM")
    if peak == peak:
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    """``field`` of ``/proc/self/status`` in MiB (NaN where there is none)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# -- comparing and reporting ----------------------------------------------------------------------
def compare(results: Sequence[RunResult]) -> list[Parity]:
    """Legacy beside DuckDB for each (scenario, phase) and repetition: identical fills and final value?

    Where they differ, the ``legacy-fixed`` run of that phase (any repetition) is the reference.
    """
    by_key = {(r.scenario, r.phase, r.repetition, r.variant): r for r in results}
    references = {(r.scenario, r.phase): r for r in results if r.variant == REFERENCE}
    report = []
    for (scenario, phase, repetition, variant), legacy in sorted(by_key.items()):
        if variant != "legacy" or (scenario, phase, repetition, "duckdb") not in by_key:
            continue
        ours = by_key[(scenario, phase, repetition, "duckdb")]
        parity = Parity(scenario, phase, _same(legacy, ours), len(legacy.fills), legacy.final_value,
                        ours.final_value)
        if not parity.identical:
            parity.detail = _difference(legacy, ours)
            reference = references.get((scenario, phase))
            if reference is not None and _same(reference, ours):
                parity.declared = True
                parity.reference_value = reference.final_value
                parity.detail = (f"DuckDB equals Lumibot's legacy path with its known defects fixed; "
                                 f"seen here: {reference.detail}")
        report.append(parity)
    return report


def _same(a: RunResult, b: RunResult) -> bool:
    return a.fills == b.fills and a.final_value == b.final_value


def _difference(a: RunResult, b: RunResult) -> str:
    if a.fills != b.fills:
        first = next((i for i, (x, y) in enumerate(zip(a.fills, b.fills)) if x != y), min(len(a.fills), len(b.fills)))
        return (f"fills differ from #{first}: {a.variant} {a.fills[first:first + 1]} vs {b.variant} "
                f"{b.fills[first:first + 1]} ({len(a.fills)} vs {len(b.fills)} fills)")
    return f"final value {a.final_value!r} vs {b.final_value!r}"


def render(results: Sequence[RunResult], *, title: str = "A/B: Lumibot legacy vs lumibot-duckdb") -> str:
    """The result table and the parity verdicts, as text."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for column in ("scenario", "phase", "variant", "wall s", "data layer s", "provider requests", "days asked",
                   "peak RSS MiB", "on disk", "bytes/bar", "fills", "final value"):
        table.add_column(column, justify="left" if column in ("scenario", "phase", "variant") else "right",
                         no_wrap=True)
    for r in results:
        requests = ", ".join(f"{k} {v}" for k, v in r.requests.items() if v) or "0"
        table.add_row(r.scenario, r.phase, r.variant, f"{r.wall_seconds:.2f}", f"{r.data_layer_seconds:.2f}",
                      requests, str(r.requested_days), f"{r.peak_rss_mb:.0f}", format_bytes(r.bytes_on_disk),
                      f"{r.bytes_per_bar:.1f}",
                      str(len(r.fills)), f"{r.final_value:,.2f}")
    console = Console(width=160, record=True, file=open(os.devnull, "w"))
    console.print(table)
    for parity in compare(results):
        if parity.identical:
            verdict = f"identical ({parity.fills} fills, final value {parity.duckdb_value:,.2f})"
        elif parity.declared:
            verdict = (f"declared difference: legacy {parity.legacy_value:,.2f}, DuckDB {parity.duckdb_value:,.2f} "
                       f"= legacy with its declared defects fixed {parity.reference_value:,.2f}. {parity.detail}")
        else:
            verdict = f"DIFFERENT: {parity.detail}"
        console.print(f"parity {parity.scenario} / {parity.phase}: {verdict}")
    return console.export_text()


def main(argv: Sequence[str] | None = None) -> int:
    """Child entry: ``python -m lumibot_duckdb.ab.harness '<json spec>'`` prints one RunResult as JSON."""
    spec = json.loads((argv or sys.argv[1:])[0])
    scenario = Scenario(**spec["scenario"])
    result = run_here(scenario, spec["variant"], spec["phase"], Path(spec["workdir"]), fast=spec.get("fast", False),
                      spawned=spec.get("spawned"))
    print(json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


def demo_scenario(source: str = "polygon") -> Scenario:
    """The demo's backtest: daily momentum over four symbols of the synthetic market (crypto pairs on CCXT)."""
    scenario = Scenario.momentum()
    if source != "polygon":
        scenario = dataclasses.replace(scenario, source=source, name=f"{scenario.name} ({source})")
    if source == "ccxt":
        scenario = dataclasses.replace(scenario, parameters={
            **scenario.parameters, "symbols": ["BTC", "ETH", "SOL", "ADA"], "asset_type": "crypto", "quote": "USDT"})
    return scenario


def demo(workdir: Path | None = None, *, scenario: Scenario | None = None,
         progress: Callable[[RunResult], None] | None = None) -> tuple[list[RunResult], str]:
    """The README's first command: an offline A/B on the sample market, legacy beside DuckDB."""
    scenario = scenario or Scenario.momentum()
    with tempfile.TemporaryDirectory(prefix="lumibot-duckdb-demo-") as scratch:
        folder = Path(workdir) if workdir else Path(scratch)
        results = run_session(scenario, folder, progress=progress)
        return results, render(results)


if __name__ == "__main__":
    raise SystemExit(main())
