"""One conformance suite for every data source lumibot-duckdb provides.

Each test runs against every source's kit (:mod:`lumibot_duckdb.testing.kits`): the same strategy on
the same offline provider data, Lumibot's legacy class beside ours, as whole backtests or as one data
source built directly and asked what a strategy asks (Lumibot's ``get_historical_prices``). A source
that cannot do something (Yahoo has no historical minute bars, CCXT no stocks) carries the
``not_applicable`` marker with the reason on that test (:func:`sources`), so every (source, test)
combination shows in the report; a known legacy defect is a declared expectation (the kit's
``legacy_defects``), never a skip. Vendor test files keep what only that vendor does.

Invariants:
* store round-trip: what the provider sent is what the store holds, float64, exactly;
* coverage is by series, not by window: any window inside what was fetched asks nothing;
* warm reruns ask the provider nothing; a shifted window asks for no more than legacy does;
* ``use_duckdb=False`` is Lumibot untouched: same frames, requests and cache files, no store;
* empty answers are what Lumibot makes of them, and remembered; malformed answers are a clear error,
  store nothing and are asked again; a damaged store file is fetched again transparently;
* a store failure falls back to Lumibot's path with one warning (strict mode raises instead);
* empty answers are remembered, and asked again once a day later (then trusted); malformed answers and
  impossible values store nothing, are asked again, and reach the user as a ProviderDataError;
* a damaged file is set aside with its reason and its range fetched again, never a fallback;
* parity: identical fills and final value, cold and warm, or DuckDB equals legacy with its
  declared defects fixed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lumibot_duckdb.ab.harness import REFERENCE, RunResult, Scenario, compare, run_here
from lumibot_duckdb.registry import SOURCES as REGISTRY
from lumibot_duckdb.store import DuckDBDataStorage
from lumibot_duckdb.testing.kits import VALUE_FAULTS, FakeProvider, SourceKit, kit
from lumibot_duckdb.testing.market import SyntheticMarket

pytestmark = pytest.mark.backtest

SOURCES = tuple(REGISTRY)


def sources(**not_applicable: str) -> list[Any]:
    """Every registered source as a test parameter; ``source="reason"`` declares that combination not
    applicable: it carries the ``not_applicable`` marker and is reported as skipped with the reason."""
    unknown = set(not_applicable) - set(SOURCES)
    assert not unknown, f"not a registered source: {unknown}"
    return [pytest.param(s, id=s, marks=[pytest.mark.not_applicable(reason=not_applicable[s])]
                         if s in not_applicable else []) for s in SOURCES]


def crypto(source: SourceKit) -> bool:
    return "stock" not in source.asset_types


def symbols(source: SourceKit, count: int = 1) -> list[str]:
    return ["BTC", "ETH", "SOL"][:count] if crypto(source) else ["AAA", "BBB", "CCC"][:count]


def params(source: SourceKit, **values: Any) -> dict[str, Any]:
    if crypto(source):
        values.update(asset_type="crypto", quote=source.default_quote or "USD")
    return values


def buy_and_hold(source: SourceKit, start: str = "2024-01-02", end: str = "2024-02-01", **kw: Any) -> Scenario:
    return Scenario("buy-and-hold", "buy_and_hold", params(source, symbol=symbols(source)[0]), start, end,
                    source=source.name, **kw)


def momentum(source: SourceKit) -> Scenario:
    return Scenario("momentum x3", "momentum", params(source, symbols=symbols(source, 3), lookback=5, top=1,
                                                      period=3),
                    "2024-01-08", "2024-02-23", source=source.name, shift_days=14)


def minute_sma(source: SourceKit) -> Scenario:
    return Scenario("minute SMA", "minute_sma", params(source, symbol=symbols(source)[0], fast=5, slow=20,
                                                       quantity=1),
                    "2024-01-08", "2024-01-12", source=source.name, shift_days=1, timestep="minute")


def run(scenario: Scenario, variant: str, phase: str, workdir: Path, **kw: Any) -> RunResult:
    return run_here(scenario, variant, phase, workdir / variant, fast=True, **kw)


def series_of(source: SourceKit, workdir: Path) -> list[Any]:
    with DuckDBDataStorage(workdir / "duckdb" / "duckdb") as store:
        return [k for k in store.series() if k.source == source.name]


def assert_parity(results: list[RunResult], source: SourceKit, scenario: Scenario, workdir: Path) -> None:
    report = compare(results)
    assert report, "nothing was compared"
    for parity in report:
        if parity.identical:
            continue
        assert parity.phase in source.legacy_differs_in, (
            f"{source.name} {parity.scenario}/{parity.phase} differs and no declared legacy defect shows in that "
            f"phase: {parity.detail}")
        reference = run(scenario, REFERENCE, parity.phase, workdir)
        ours = next(r for r in results if r.variant == "duckdb" and r.phase == parity.phase)
        assert (reference.fills, reference.final_value) == (ours.fills, ours.final_value), (
            f"{source.name} {parity.scenario}/{parity.phase}: DuckDB differs from legacy ({parity.detail}) and also "
            f"from legacy with its declared defects fixed ({', '.join(source.legacy_defects())})")
    ours = {r.phase: r for r in results if r.variant == "duckdb"}
    legacy = next(r for r in results if r.variant == "legacy" and r.phase == "cold")
    cold = ours["cold"].requests
    assert 0 < sum(cold.values()) and all(n <= legacy.requests[k] for k, n in cold.items()), (
        f"cold: DuckDB asked {cold}, legacy {legacy.requests} (never more, kind by kind)")
    assert ours["warm"].provider_requests == 0, f"the warm run asked {ours['warm'].requests}"


# -- parity ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sources())
def test_parity_daily_buy_and_hold_cold_and_warm(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = buy_and_hold(source)
    results = [run(scenario, v, p, tmp_path) for v in ("legacy", "duckdb") for p in ("cold", "warm")]
    assert len(results[0].fills) == 1, "buy-and-hold should buy once"
    assert_parity(results, source, scenario, tmp_path)


@pytest.mark.parametrize("name", sources())
def test_parity_daily_momentum_several_symbols(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = momentum(source)
    results = [run(scenario, v, p, tmp_path) for v in ("legacy", "duckdb") for p in ("cold", "warm", "shifted")]
    assert len(results[0].fills) >= 4, "the rotation should trade several times"
    assert_parity(results, source, scenario, tmp_path)
    ours = {r.phase: r for r in results if r.variant == "duckdb"}
    legacy = {r.phase: r for r in results if r.variant == "legacy"}
    fresh = run(scenario, "duckdb", "shifted", tmp_path / "fresh")
    assert ours["shifted"].requested_days < fresh.requested_days, "the shifted window re-asked what was stored"
    if compare([legacy["shifted"], ours["shifted"]])[0].identical:  # (a declared legacy defect may skip days)
        assert ours["shifted"].requested_days <= legacy["shifted"].requested_days, (
            f"shifted window: DuckDB asked for {ours['shifted'].requested_days} days, legacy "
            f"{legacy['shifted'].requested_days}")


@pytest.mark.parametrize("name", sources(
    yahoo="Yahoo serves minute bars for the last 7 wall-clock days only: no historical minute backtest"))
def test_parity_minute_strategy(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = minute_sma(source)
    results = [run(scenario, v, p, tmp_path) for v in ("legacy", "duckdb") for p in ("cold", "warm")]
    fills = results[0].fills
    assert len(fills) >= 10
    assert len({f[0] for f in fills}) > len({f[0][:10] for f in fills}), "minute fills, several a day"
    assert len({f[4] for f in fills}) > 10, "minute fills, not the day's open"
    assert_parity(results, source, scenario, tmp_path)


@pytest.mark.parametrize("name", sources(yahoo="Lumibot's Yahoo source backtests stocks and ETFs",
                                         ccxt="CCXT is crypto only: every other test here runs it on crypto"))
@pytest.mark.parametrize("title, strategy, parameters, end, fills", [
    ("crypto buy-and-hold", "buy_and_hold", {"symbol": "BTC"}, "2024-01-20", range(1, 2)),
    ("crypto momentum", "momentum", {"symbols": ["BTC", "ETH"], "lookback": 5, "top": 1, "period": 3}, "2024-02-01",
     range(4, 1000)),
], ids=["buy-and-hold", "momentum"])
def test_parity_crypto_on_a_stock_source(name: str, title: str, strategy: str, parameters: dict[str, Any], end: str,
                                         fills: range, tmp_path: Path) -> None:
    source = kit(name)
    scenario = Scenario(title, strategy, {**parameters, "asset_type": "crypto", "quote": "USD"}, "2024-01-02", end,
                        source=name)
    results = [run(scenario, v, p, tmp_path) for v in ("legacy", "duckdb") for p in ("cold", "warm")]
    assert len(results[0].fills) in fills, f"{len(results[0].fills)} fills, expected {fills}"
    assert_parity(results, source, scenario, tmp_path)


# -- the store -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sources())
def test_store_holds_exactly_what_the_provider_sent(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = buy_and_hold(source)
    run(scenario, "duckdb", "cold", tmp_path)
    keys = series_of(source, tmp_path)
    assert keys, f"nothing stored under source {name!r}"
    market = SyntheticMarket(scenario.market_seed)
    compared = 0
    with DuckDBDataStorage(tmp_path / "duckdb" / "duckdb") as store:
        for key in keys:
            bars = store.read(key, "2023-01-01", "2024-03-01")
            if bars.empty:
                continue
            assert bars.index.is_monotonic_increasing and bars.index.is_unique
            for column in ("open", "high", "low", "close", "volume"):
                assert bars[column].dtype == "float64", f"{key}: {column} is {bars[column].dtype}"
            asset_type = "crypto" if key.asset_type == "crypto" else "stock"
            sent = market.bars(key.symbol, key.timeframe, bars.index[0], bars.index[-1] + pd.Timedelta(seconds=1),
                               asset_type=asset_type)
            common = bars.index.intersection(sent.index)
            assert len(common) >= 0.9 * len(bars), f"{key}: stored bars are not at the provider's timestamps"
            assert (bars.loc[common, "close"].to_numpy() == sent.loc[common, "close"].to_numpy()).all(), (
                f"{key}: stored closes differ from what the provider sent")
            compared += len(common)
    assert compared > 0


@pytest.mark.parametrize("name", sources())
def test_coverage_is_by_series_not_by_window(name: str, tmp_path: Path) -> None:
    """A wider window fetches only what is new; any window inside what is stored asks nothing."""
    source = kit(name)
    wide = buy_and_hold(source, "2024-01-02", "2024-02-15")
    run(wide, "duckdb", "cold", tmp_path)
    for start, end in (("2024-01-10", "2024-02-01"), ("2024-01-02", "2024-01-20")):
        inner = run(buy_and_hold(source, start, end), "duckdb", "cold", tmp_path)
        assert inner.provider_requests == 0, f"{start}..{end} is inside what is stored but asked {inner.requests}"
    wider = run(buy_and_hold(source, "2024-01-02", "2024-03-15"), "duckdb", "cold", tmp_path)
    legacy_wider = run(buy_and_hold(source, "2024-01-02", "2024-03-15"), "legacy", "cold", tmp_path)
    assert wider.requested_days <= legacy_wider.requested_days
    again = run(buy_and_hold(source, "2024-01-02", "2024-03-15"), "duckdb", "cold", tmp_path)
    assert again.provider_requests == 0


@pytest.mark.parametrize("name", sources())
def test_empty_answers_are_remembered(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = buy_and_hold(source, "2024-01-02", "2024-01-20")
    first = run(scenario, "duckdb", "cold", tmp_path, on_serve=lambda provider: provider.fail("empty"))
    assert first.fills == [], "no bars, no trade"
    assert first.provider_requests > 0
    again = run(scenario, "duckdb", "warm", tmp_path)
    assert again.provider_requests == 0, f"an empty answer was asked again: {again.requests}"
    assert again.fills == []


@pytest.mark.parametrize("name", sources())
def test_malformed_answers_store_nothing_and_are_asked_again(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = buy_and_hold(source, "2024-01-02", "2024-01-20")
    try:
        broken = run(scenario, "duckdb", "cold", tmp_path, on_serve=lambda provider: provider.fail("malformed"))
    except Exception as exc:  # noqa: BLE001 - a clear error is an acceptable outcome; storing garbage is not
        assert _mentions_provider_error(exc), f"unclear error for a malformed answer: {exc!r}"
    else:
        assert broken.fills == [], "a malformed answer must not be traded on"
    with DuckDBDataStorage(tmp_path / "duckdb" / "duckdb") as store:
        stored = {k: store.read(k, "2000-01-01", "2100-01-01") for k in store.series() if k.source == name}
        assert all(frame.empty for frame in stored.values()), "malformed bars were stored"
    # healed equal to clean also proves the malformed range was not recorded as covered
    healed = run(scenario, "duckdb", "cold", tmp_path)
    clean = run(scenario, "duckdb", "cold", tmp_path / "clean")
    assert healed.provider_requests > 0
    assert (healed.fills, healed.final_value) == (clean.fills, clean.final_value)


def _mentions_provider_error(exc: BaseException) -> bool:
    from lumibot_duckdb.errors import ProviderDataError

    return any(isinstance(e, ProviderDataError) or "ProviderDataError" in str(e) for e in _chain(exc))


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and the errors it was raised from (or while handling), the first ten."""
    chain: list[BaseException] = []
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


# -- store failures --------------------------------------------------------------------------------
def _block_store(workdir: Path) -> None:
    """Make the store folder of ``run(..., "duckdb", ...)`` impossible to create (a file is in the way)."""
    (workdir / "duckdb").mkdir(parents=True, exist_ok=True)
    (workdir / "duckdb" / "duckdb").write_text("not a folder")


@pytest.mark.parametrize("name", sources())
def test_store_failure_falls_back_to_legacy_with_one_warning(name: str, tmp_path: Path) -> None:
    from lumibot_duckdb.sources.base import DuckDBFallbackWarning

    source = kit(name)
    scenario = buy_and_hold(source, "2024-01-02", "2024-01-20")
    _block_store(tmp_path)
    with pytest.warns(DuckDBFallbackWarning, match="legacy data path") as caught:
        ours = run(scenario, "duckdb", "cold", tmp_path)
    assert len([w for w in caught if issubclass(w.category, DuckDBFallbackWarning)]) == 1
    legacy = run(scenario, "legacy", "cold", tmp_path)
    assert (ours.fills, ours.final_value) == (legacy.fills, legacy.final_value)
    assert len(ours.fills) == 1


@pytest.mark.parametrize("name", sources())
def test_strict_mode_raises_the_store_failure(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Strict: no fallback, the backtest stops with the store's error (a history request is not swallowed
    by Lumibot; ``Strategy.get_last_price`` swallows every error into ``None``, on both paths)."""
    from lumibot_duckdb.errors import StoreError
    from lumibot_duckdb.sources.base import DuckDBFallbackWarning

    source = kit(name)
    _block_store(tmp_path)
    monkeypatch.setenv("LUMIBOT_DUCKDB_STRICT", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuckDBFallbackWarning)
        with pytest.raises(Exception) as raised:
            run(momentum(source), "duckdb", "cold", tmp_path)
    assert any(isinstance(e, StoreError) for e in _chain(raised.value)), (
        f"strict mode should surface the store failure, got {raised.value!r}")


def test_one_store_folder_serves_all_four_sources_at_once(tmp_path: Path) -> None:
    """The source is part of every series key: four sources fill one folder side by side, and rerun warm."""
    for name in SOURCES:
        run(buy_and_hold(kit(name), "2024-01-02", "2024-01-20"), "duckdb", "cold", tmp_path)
    with DuckDBDataStorage(tmp_path / "duckdb" / "duckdb") as store:
        assert {k.source for k in store.series()} == set(SOURCES)
        sources = store.sql("SELECT source, bars FROM data_sources WHERE bars > 0")
    assert set(sources["source"]) == set(SOURCES)
    for name in SOURCES:
        again = run(buy_and_hold(kit(name), "2024-01-02", "2024-01-20"), "duckdb", "warm", tmp_path)
        assert again.provider_requests == 0, f"{name} asked again in a shared store: {again.requests}"


# -- one data source, built directly: what a strategy gets from Lumibot's API -----------------------
START, END = dt.datetime(2024, 1, 2), dt.datetime(2024, 3, 1)
WHEN = pd.Timestamp("2024-02-01 10:30", tz="America/New_York").to_pydatetime()


@contextlib.contextmanager
def offline_provider(source: SourceKit, lumibot_cache: Path) -> Iterator[FakeProvider]:
    """The source's provider emulated on the suite's market, Lumibot's cache folders in ``lumibot_cache``."""
    with source.serve(SyntheticMarket(1), fast=True) as provider, source.legacy_cache_folder(lumibot_cache):
        yield provider


def timesteps(source: SourceKit) -> list[str]:
    return [t for t in ("day", "minute") if t in source.timeframes]


def history(source: SourceKit, data: Any, symbol: str, timestep: str = "day", length: int = 20) -> Any:
    """What a strategy gets from Lumibot's ``get_historical_prices`` at :data:`WHEN`: a frame, or None."""
    from lumibot.entities import Asset

    data._datetime = WHEN
    quote = Asset(source.default_quote, "crypto") if source.default_quote else None
    bars = data.get_historical_prices(Asset(symbol, "crypto" if crypto(source) else "stock"), length, timestep,
                                      quote=quote)
    return None if bars is None else bars.df


def outcome(call: Any) -> tuple[Any, ...]:
    """What ``call()`` gave, comparable across paths: ("bars", frame), ("none",) or ("error", type, message)."""
    try:
        frame = call()
    except Exception as exc:  # noqa: BLE001 - the error is the outcome compared
        return ("error", type(exc).__name__, str(exc))
    return ("none",) if frame is None else ("bars", frame)


def asked(source: SourceKit, provider: FakeProvider, kinds: tuple[str, ...] | None = None) -> dict[str, int]:
    return {kind: provider.count(kind) for kind in (source.request_kinds if kinds is None else kinds)}


def files_in(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def keys_of(data: Any, symbol: str, timestep: str = "day") -> list[Any]:
    from lumibot_duckdb.store.coverage import canonical_timeframe

    return [k for k in data.store.series() if k.symbol == symbol and k.timeframe == canonical_timeframe(timestep)]


@dataclasses.dataclass
class Served:
    """What one new data source answered to a list of requests, and what that cost."""

    data: Any
    answers: list[tuple[Any, ...]]
    """:func:`outcome` of each request."""
    requests: dict[str, int]
    lumibot_files: list[Path]
    """Files in Lumibot's own cache folders afterwards."""
    fallbacks: list[str]
    """Messages of the DuckDBFallbackWarnings raised."""


def legacy_and_ours(source: SourceKit, workdir: Path, requests: list[tuple[str, str]], *, fault: str | None = None,
                    **ours: Any) -> tuple[Served, Served]:
    """The same ``(symbol, timestep)`` requests of a new Lumibot data source and of a new one of ours (built
    with ``ours``, on ``workdir / "store"`` unless they say otherwise), each on its own emulated provider
    (told to answer with ``fault``, if given) and its own Lumibot cache folders."""
    from lumibot_duckdb.sources.base import DuckDBFallbackWarning

    served = []
    for variant in ("legacy", "duckdb"):
        cache = workdir / variant / "lumibot-cache"
        with offline_provider(source, cache) as provider, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DuckDBFallbackWarning)
            if fault is not None:
                provider.fail(fault)
            options = {"cache_dir": workdir / "store", **ours} if variant == "duckdb" else {}
            data = source.data_source(variant, START, END, **options)
            answers = [outcome(functools.partial(history, source, data, s, t)) for s, t in requests]
            fallbacks = [str(w.message) for w in caught if issubclass(w.category, DuckDBFallbackWarning)]
            served.append(Served(data, answers, asked(source, provider), files_in(cache), fallbacks))
    return served[0], served[1]


def assert_same_bars(ours: Served, legacy: Served) -> None:
    for mine, theirs in zip(ours.answers, legacy.answers, strict=True):
        assert theirs[0] == "bars" and len(theirs[1]) > 0, theirs
        assert mine[0] == "bars", mine
        pd.testing.assert_frame_equal(mine[1], theirs[1], check_exact=True)


@pytest.mark.parametrize("name", sources())
def test_use_duckdb_false_is_lumibot_untouched(name: str, tmp_path: Path) -> None:
    """Our class with ``use_duckdb=False`` is Lumibot's: the same frames, the same provider requests, the
    same files in Lumibot's cache, the same class name and ``SOURCE``; no store is opened."""
    source = kit(name)
    symbol = symbols(source)[0]
    legacy, ours = legacy_and_ours(source, tmp_path, [(symbol, t) for t in timesteps(source)], use_duckdb=False)
    assert_same_bars(ours, legacy)
    assert ours.requests == legacy.requests
    assert not (tmp_path / "store").exists(), "the store is never opened"
    assert ours.lumibot_files == legacy.lumibot_files and legacy.lumibot_files, "Lumibot's own cache, file for file"
    assert isinstance(ours.data, source.legacy_class) and not ours.data.use_duckdb and not ours.fallbacks
    assert (type(ours.data).__name__, ours.data.SOURCE) == (type(legacy.data).__name__, legacy.data.SOURCE)


@pytest.mark.parametrize("name", sources())
def test_warm_rerun_asks_the_provider_nothing(name: str, tmp_path: Path) -> None:
    """Whatever lies inside what is stored is served without a request of any kind (bars, markets, info,
    splits), by a new data source over the same window or a narrower one; nothing goes to Lumibot's cache."""
    source = kit(name)
    symbol, store, cache = symbols(source)[0], tmp_path / "store", tmp_path / "lumibot-cache"
    with offline_provider(source, cache) as provider:
        cold = source.data_source("duckdb", START, END, cache_dir=store)
        first = [history(source, cold, symbol, t) for t in timesteps(source)]
        assert all(f is not None and len(f) > 0 for f in first) and provider.count() > 0
        provider.reset()
        for start, end in ((START, END), (dt.datetime(2024, 1, 10), dt.datetime(2024, 2, 10))):
            warm = source.data_source("duckdb", start, end, cache_dir=store)
            again = [history(source, warm, symbol, t) for t in timesteps(source)]
            assert all(a is not None and len(a) > 0 for a in again)
            if (start, end) == (START, END):
                for a, f in zip(again, first, strict=True):
                    pd.testing.assert_frame_equal(a, f, check_exact=True)
        assert provider.count() == 0, f"a warm rerun asked {asked(source, provider)}"
    assert files_in(cache) == [], "the DuckDB path writes nothing to Lumibot's cache"


@pytest.mark.parametrize("name", sources())
def test_damaged_store_file_is_fetched_again_transparently(name: str, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A truncated bar file is set aside, its range (and only that) is fetched again, and the strategy
    gets the same bars; no error reaches it."""
    caplog.set_level(logging.WARNING, logger="lumibot.lumibot_duckdb")  # our records obey Lumibot's levels
    source = kit(name)
    symbol, timestep, store = symbols(source)[0], timesteps(source)[-1], tmp_path / "store"
    with offline_provider(source, tmp_path / "lumibot-cache") as provider:
        first = history(source, source.data_source("duckdb", START, END, cache_dir=store), symbol, timestep)
        cold = asked(source, provider, source.bar_request_kinds)
        data = source.data_source("duckdb", START, END, cache_dir=store)  # nothing of the first one in memory
        [key] = keys_of(data, symbol, timestep)
        damaged = data.store.files(key)[0]
        damaged.path.write_bytes(damaged.path.read_bytes()[:100])
        provider.reset()
        again = history(source, data, symbol, timestep)
        refetch, days = asked(source, provider, source.bar_request_kinds), provider.requested_days()
    assert first is not None and len(first) > 0
    pd.testing.assert_frame_equal(again, first, check_exact=True)
    assert 0 < sum(refetch.values()) <= sum(cold.values()), f"cold {cold}, after the damage {refetch}"
    span = (damaged.interval.end - damaged.interval.start) / pd.Timedelta(days=1)
    assert days <= max(1, span + 1), f"asked for {days} days to replace a file of {span:.1f} days"
    assert "damaged" in caplog.text
    assert list((store / ".quarantine").glob("*.parquet"))


@pytest.mark.parametrize("name", sources())
def test_an_empty_answer_is_what_lumibot_makes_of_it_and_is_remembered(name: str, tmp_path: Path) -> None:
    """No bars for a symbol: the strategy gets what Lumibot gives it (no data, or Lumibot's error), the
    provider is asked no more than by Lumibot, and never again: the empty range is recorded as covered."""
    source = kit(name)
    symbol = symbols(source)[0]
    legacy, ours = legacy_and_ours(source, tmp_path, [(symbol, "day")], fault="empty")
    assert ours.answers[0][0] != "bars" and ours.answers == legacy.answers, (ours.answers, legacy.answers)
    assert 0 < sum(ours.requests.values()) and all(n <= legacy.requests[k] for k, n in ours.requests.items()), (
        f"DuckDB asked {ours.requests}, Lumibot {legacy.requests}")
    with offline_provider(source, tmp_path / "again" / "lumibot-cache") as provider:
        data = source.data_source("duckdb", START, END, cache_dir=tmp_path / "store")
        assert outcome(lambda: history(source, data, symbol)) == ours.answers[0]
        assert provider.count() == 0, f"an empty answer was asked again: {asked(source, provider)}"
        assert [data.store.coverage(k) != [] for k in keys_of(data, symbol)] == [True], "the empty range is covered"


@pytest.mark.parametrize("name", sources())
def test_a_malformed_answer_is_a_clear_error_stores_nothing_and_is_asked_again(
        name: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Garbage in the provider's format: a ProviderDataError naming the series and saying nothing was
    stored (raised, or where Lumibot turns errors into "no data", reported by Lumibot); nothing is
    covered; once the provider answers well, the same data source asks again and serves clean bars."""
    from lumibot_duckdb.errors import ProviderDataError

    source = kit(name)
    symbol = symbols(source)[0]
    with offline_provider(source, tmp_path / "lumibot-cache") as provider:
        provider.fail("malformed")
        data = source.data_source("duckdb", START, END, cache_dir=tmp_path / "store")
        try:
            broken = history(source, data, symbol)
        except Exception as exc:  # noqa: BLE001 - which error is checked below
            errors = [e for e in _chain(exc) if isinstance(e, ProviderDataError)]
            assert errors, f"unclear error for a malformed answer: {exc!r}"
            message = str(errors[0])
        else:
            assert broken is None, "garbage was served"
            message = capfd.readouterr().err
            assert "ProviderDataError" in message, "Lumibot did not report the error"
        assert "nothing was stored" in message and f"(series {name}:" in message, message
        assert all(data.store.coverage(k) == [] for k in data.store.series()), "malformed bars were recorded"
        provider.heal()
        provider.reset()
        healed = history(source, data, symbol)
        assert sum(asked(source, provider, source.bar_request_kinds).values()) > 0
    with offline_provider(source, tmp_path / "clean" / "lumibot-cache"):
        clean = history(source, source.data_source("duckdb", START, END, cache_dir=tmp_path / "clean"), symbol)
    assert clean is not None and len(clean) > 0
    pd.testing.assert_frame_equal(healed, clean, check_exact=True)


@pytest.mark.parametrize("name", sources())
def test_after_a_store_failure_the_data_source_is_lumibots_with_one_warning(name: str, tmp_path: Path) -> None:
    """The store cannot be opened: one DuckDBFallbackWarning, then Lumibot's own path for good, serving
    what Lumibot serves, asking what Lumibot asks and writing Lumibot's cache files."""
    source = kit(name)
    _block_store(tmp_path)
    legacy, ours = legacy_and_ours(source, tmp_path, [(symbol, "day") for symbol in symbols(source, 2)],
                                   cache_dir=tmp_path / "duckdb" / "duckdb")
    assert len(ours.fallbacks) == 1 and "legacy data path" in ours.fallbacks[0], ours.fallbacks
    assert not ours.data.use_duckdb and ours.data.duckdb_stats.fallbacks == 1
    assert_same_bars(ours, legacy)
    assert ours.requests == legacy.requests
    assert ours.lumibot_files == legacy.lumibot_files and legacy.lumibot_files, "served by Lumibot's own path"


# -- the truth protected: damaged files, impossible answers, empty answers that heal -------------------
def _errors(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    return chain


@pytest.mark.parametrize("fault", VALUE_FAULTS)
@pytest.mark.parametrize("name", SOURCES)
def test_impossible_values_stop_the_backtest_naming_source_series_and_range(name: str, fault: str,
                                                                          tmp_path: Path) -> None:
    """A negative price, a high below the low, an infinite close: refused before anything is stored, and the
    user gets our error (not Lumibot's generic one, not a silent "no data")."""
    from lumibot_duckdb.errors import ProviderDataError

    source = kit(name)
    scenario = buy_and_hold(source, "2024-01-02", "2024-01-20")
    with pytest.raises(Exception) as raised:
        run(scenario, "duckdb", "cold", tmp_path, on_serve=lambda provider: provider.fail(fault))
    refused = [e for e in _errors(raised.value) if isinstance(e, ProviderDataError)]
    assert refused, f"{name}/{fault}: the backtest stopped with {raised.value!r}, not a ProviderDataError"
    error = refused[0]
    assert error.source and error.series is not None and error.interval is not None, str(error)
    assert "nothing was stored" in str(error) and str(error.series) in str(error)
    with DuckDBDataStorage(tmp_path / "duckdb" / "duckdb") as store:
        assert all(store.read(k, "2000-01-01", "2100-01-01").empty for k in store.series() if k.source == name)
    healed = run(scenario, "duckdb", "cold", tmp_path)
    clean = run(scenario, "duckdb", "cold", tmp_path / "clean")
    assert (healed.fills, healed.final_value) == (clean.fills, clean.final_value)


@pytest.mark.parametrize("name", SOURCES)
def test_an_outage_that_answered_empty_heals_a_day_later(name: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty answers are asked again once, a day later: the healed run trades as a clean one, and the
    warm-rerun-asks-nothing guarantee holds again from then on."""
    from lumibot_duckdb.store import answers

    source = kit(name)
    scenario = buy_and_hold(source, "2024-01-02", "2024-01-20")
    clean = run(scenario, "duckdb", "cold", tmp_path / "clean")
    outage = run(scenario, "duckdb", "cold", tmp_path, on_serve=lambda provider: provider.fail("empty"))
    assert outage.fills == [] and outage.provider_requests > 0
    assert run(scenario, "duckdb", "warm", tmp_path).provider_requests == 0, "asked again the same day"
    later = answers.now() + answers.RECHECK_AFTER + pd.Timedelta(minutes=1)
    monkeypatch.setattr(answers, "now", lambda: later)
    healed = run(scenario, "duckdb", "warm", tmp_path)
    assert healed.provider_requests > 0
    assert (healed.fills, healed.final_value) == (clean.fills, clean.final_value)
    again = run(scenario, "duckdb", "warm", tmp_path)
    assert again.provider_requests == 0 and again.fills == clean.fills


@pytest.mark.parametrize("name", SOURCES)
def test_an_empty_answer_given_twice_is_trusted(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lumibot_duckdb.store import answers

    scenario = buy_and_hold(kit(name), "2024-01-02", "2024-01-20")
    run(scenario, "duckdb", "cold", tmp_path, on_serve=lambda provider: provider.fail("empty"))
    start = answers.now()
    monkeypatch.setattr(answers, "now", lambda: start + pd.Timedelta(days=1, minutes=1))
    second = run(scenario, "duckdb", "warm", tmp_path, on_serve=lambda provider: provider.fail("empty"))
    assert second.provider_requests > 0 and second.fills == []
    monkeypatch.setattr(answers, "now", lambda: start + pd.Timedelta(days=30))
    third = run(scenario, "duckdb", "warm", tmp_path)
    assert third.provider_requests == 0 and third.fills == [], "a range answered empty twice is trusted"


@pytest.mark.parametrize("kind, sealed", [("bit-flip", True), ("duplicate-rows", False), ("shifted-range", True)])
@pytest.mark.parametrize("name", SOURCES)
def test_a_damaged_file_is_set_aside_fetched_again_and_never_a_fallback(name: str, kind: str, sealed: bool,
                                                                       tmp_path: Path) -> None:
    from lumibot_duckdb.sources.base import DuckDBFallbackWarning
    from lumibot_duckdb.store import integrity
    from lumibot_duckdb.store.damage import damage, reasons

    source = kit(name)
    scenario = buy_and_hold(source, "2024-01-02", "2024-01-20")
    cold = run(scenario, "duckdb", "cold", tmp_path)
    with DuckDBDataStorage(tmp_path / "duckdb" / "duckdb") as store:
        (series,) = series_of(source, tmp_path)
        hit = damage(store, series, kind, sealed=sealed, seed=7)
        integrity._CHECKED.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("error", DuckDBFallbackWarning)
            warm = run(scenario, "duckdb", "warm", tmp_path)
        assert warm.provider_requests > 0, f"{name}: the damaged range was not fetched again"
        assert (warm.fills, warm.final_value) == (cold.fills, cold.final_value)
        assert [r for r in reasons(store) if r.startswith(hit.expected or "checksum")], reasons(store)
        from lumibot_duckdb.store.maintenance import verify

        assert verify(store).ok
    again = run(scenario, "duckdb", "warm", tmp_path)
    assert again.provider_requests == 0 and again.fills == cold.fills
