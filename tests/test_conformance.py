"""One conformance suite for every data source lumibot-duckdb provides.

Each test runs against every source's kit (:mod:`lumibot_duckdb.testing.kits`): the same strategy on
the same offline provider data, Lumibot's legacy class beside ours. A source that cannot do
something (Yahoo has no historical minute bars, CCXT no stocks) is left out of that test's
parameters with the reason in :data:`NOT_APPLICABLE`; a known legacy defect is a declared
expectation (the kit's ``legacy_defects``), never a skip.

Invariants:
* store round-trip: what the provider sent is what the store holds, float64, exactly;
* coverage is by series, not by window: any window inside what was fetched asks nothing;
* warm reruns ask the provider nothing; a shifted window asks for no more than legacy does;
* empty answers are remembered, and asked again once a day later (then trusted); malformed answers and
  impossible values store nothing, are asked again, and reach the user as a ProviderDataError;
* a damaged file is set aside with its reason and its range fetched again, never a fallback;
* parity: identical fills and final value, cold and warm, or DuckDB equals legacy with its
  declared defects fixed.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lumibot_duckdb.ab.harness import REFERENCE, RunResult, Scenario, compare, run_here
from lumibot_duckdb.registry import SOURCES as REGISTRY
from lumibot_duckdb.store import DuckDBDataStorage
from lumibot_duckdb.testing.kits import VALUE_FAULTS, SourceKit, kit
from lumibot_duckdb.testing.market import SyntheticMarket

pytestmark = pytest.mark.backtest

SOURCES = tuple(REGISTRY)
NOT_APPLICABLE = {
    ("yahoo", "minute"): "Yahoo serves minute bars for the last 7 wall-clock days only: no historical minute backtest",
    ("yahoo", "crypto"): "Lumibot's Yahoo source backtests stocks and ETFs",
    ("ccxt", "crypto"): "CCXT is crypto only: every other test here already runs it on crypto",
}


def applicable(what: str) -> list[Any]:
    return [pytest.param(s, id=s) for s in SOURCES if (s, what) not in NOT_APPLICABLE]


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
        assert source.legacy_defects(), (f"{source.name} {parity.scenario}/{parity.phase} differs and no legacy "
                                         f"defect is declared: {parity.detail}")
        reference = run(scenario, REFERENCE, parity.phase, workdir)
        ours = next(r for r in results if r.variant == "duckdb" and r.phase == parity.phase)
        assert (reference.fills, reference.final_value) == (ours.fills, ours.final_value), (
            f"{source.name} {parity.scenario}/{parity.phase}: DuckDB differs from legacy ({parity.detail}) and also "
            f"from legacy with its declared defects fixed ({', '.join(source.legacy_defects())})")


# -- parity ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOURCES)
def test_parity_daily_buy_and_hold_cold_and_warm(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = buy_and_hold(source)
    results = [run(scenario, v, p, tmp_path) for v in ("legacy", "duckdb") for p in ("cold", "warm")]
    assert len(results[0].fills) == 1, "buy-and-hold should buy once"
    assert_parity(results, source, scenario, tmp_path)


@pytest.mark.parametrize("name", SOURCES)
def test_parity_daily_momentum_several_symbols(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = momentum(source)
    results = [run(scenario, v, p, tmp_path) for v in ("legacy", "duckdb") for p in ("cold", "warm", "shifted")]
    assert len(results[0].fills) >= 4, "the rotation should trade several times"
    assert_parity(results, source, scenario, tmp_path)
    ours = {r.phase: r for r in results if r.variant == "duckdb"}
    legacy = {r.phase: r for r in results if r.variant == "legacy"}
    assert ours["warm"].provider_requests == 0
    fresh = run(scenario, "duckdb", "shifted", tmp_path / "fresh")
    assert ours["shifted"].requested_days < fresh.requested_days, "the shifted window re-asked what was stored"
    if compare([legacy["shifted"], ours["shifted"]])[0].identical:  # (a declared legacy defect may skip days)
        assert ours["shifted"].requested_days <= legacy["shifted"].requested_days, (
            f"shifted window: DuckDB asked for {ours['shifted'].requested_days} days, legacy "
            f"{legacy['shifted'].requested_days}")


@pytest.mark.parametrize("name", applicable("minute"))
def test_parity_minute_strategy(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = minute_sma(source)
    results = [run(scenario, v, p, tmp_path) for v in ("legacy", "duckdb") for p in ("cold", "warm")]
    assert len(results[0].fills) >= 10
    assert_parity(results, source, scenario, tmp_path)


@pytest.mark.parametrize("name", applicable("crypto"))
def test_parity_crypto_on_a_stock_source(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = Scenario("crypto buy-and-hold", "buy_and_hold",
                        {"symbol": "BTC", "asset_type": "crypto", "quote": "USD"}, "2024-01-02", "2024-01-20",
                        source=name)
    results = [run(scenario, v, p, tmp_path) for v in ("legacy", "duckdb") for p in ("cold", "warm")]
    assert len(results[0].fills) == 1
    assert_parity(results, source, scenario, tmp_path)


# -- the store -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", SOURCES)
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


@pytest.mark.parametrize("name", SOURCES)
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


@pytest.mark.parametrize("name", SOURCES)
def test_empty_answers_are_remembered(name: str, tmp_path: Path) -> None:
    source = kit(name)
    scenario = buy_and_hold(source, "2024-01-02", "2024-01-20")
    first = run(scenario, "duckdb", "cold", tmp_path, on_serve=lambda provider: provider.fail("empty"))
    assert first.fills == [], "no bars, no trade"
    assert first.provider_requests > 0
    again = run(scenario, "duckdb", "warm", tmp_path)
    assert again.provider_requests == 0, f"an empty answer was asked again: {again.requests}"
    assert again.fills == []


@pytest.mark.parametrize("name", SOURCES)
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

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ProviderDataError) or "ProviderDataError" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


# -- store failures --------------------------------------------------------------------------------
def _block_store(workdir: Path) -> None:
    """Make the store folder of ``run(..., "duckdb", ...)`` impossible to create (a file is in the way)."""
    (workdir / "duckdb").mkdir(parents=True, exist_ok=True)
    (workdir / "duckdb" / "duckdb").write_text("not a folder")


@pytest.mark.parametrize("name", SOURCES)
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


@pytest.mark.parametrize("name", SOURCES)
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
    chain: list[BaseException] = []
    seen: BaseException | None = raised.value
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    assert any(isinstance(e, StoreError) for e in chain), (
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
