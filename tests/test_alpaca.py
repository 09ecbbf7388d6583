"""The Alpaca drop-in at its seam: legacy frames, incremental fetches, bad answers, declared legacy defects.

Invariant under test: with the same provider bars, ``use_duckdb=True`` hands Lumibot's
``AlpacaBacktesting`` exactly the in-memory frame its own path builds on a cold cache, while the
store is keyed by series (never by backtest window) and asks Alpaca only for what it lacks.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lumibot.backtesting.alpaca_backtesting import AlpacaBacktesting as LegacyAlpaca
from lumibot.entities import Asset

from lumibot_duckdb import ProviderDataError
from lumibot_duckdb.ab.harness import REFERENCE, RunResult, Scenario, compare, run_here
from lumibot_duckdb.sources.alpaca import AlpacaBacktesting, alpaca_series_key
from lumibot_duckdb.store import SeriesKey
from lumibot_duckdb.testing.alpaca import AlpacaKit, FakeAlpaca, csv_precision_report, serve_alpaca

CONFIG = {"API_KEY": "test-key", "API_SECRET": "test-secret", "PAPER": True}
START, END = dt.datetime(2024, 1, 2), dt.datetime(2024, 2, 1)
AAA, BTC = Asset("AAA"), Asset("BTC", "crypto")


@pytest.fixture
def alpaca(market):
    with serve_alpaca(market, fast=True) as fake:
        yield fake


@pytest.fixture
def lumibot_cache(tmp_path: Path) -> Any:
    """Lumibot's Alpaca CSVs and its shared bar cache, fresh for this test."""
    folder = tmp_path / "lumibot-cache"
    with AlpacaKit().legacy_cache_folder(folder):
        yield folder


def make_source(kind: str, store_dir: Path, start: dt.datetime = START, end: dt.datetime = END,
                timestep: str = "day", **options: Any) -> Any:
    common = dict(datetime_start=start, datetime_end=end, config=dict(CONFIG), timestep=timestep,
                  show_progress_bar=False)
    if kind == "legacy":
        return LegacyAlpaca(**common, **options)
    return AlpacaBacktesting(**common, use_duckdb=options.pop("use_duckdb", True), cache_dir=store_dir, **options)


def window(source: Any, asset: Asset = AAA, timestep: str | None = None) -> pd.DataFrame:
    """The frame Lumibot keeps for ``asset`` over the backtest window (its ``_data_store`` entry)."""
    return source.get_historical_prices_between_dates(base_asset=asset, quote_asset=None,
                                                      timestep=timestep or source._timestep)


def key_of(source: Any, asset: Asset = AAA, timestep: str = "day") -> SeriesKey:
    _, request = source._history_request(base_asset=asset, quote_asset=source.LUMIBOT_DEFAULT_QUOTE_ASSET,
                                         timestep=timestep, data_datetime_start=source._data_datetime_start,
                                         data_datetime_end=source._data_datetime_end, auto_adjust=source._auto_adjust)
    return alpaca_series_key(asset, source.LUMIBOT_DEFAULT_QUOTE_ASSET, timestep, request)


# -- the frame ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("asset, timestep", [(AAA, "day"), (AAA, "minute"), (AAA, "hour"), (BTC, "day"),
                                             (BTC, "minute")])
def test_frames_are_those_of_legacy(alpaca, lumibot_cache, store_dir, asset, timestep) -> None:
    legacy = window(make_source("legacy", store_dir), asset, timestep)
    cold = window(make_source("duckdb", store_dir), asset, timestep)
    warm = window(make_source("duckdb", store_dir), asset, timestep)
    pd.testing.assert_frame_equal(cold, legacy, check_exact=True)
    pd.testing.assert_frame_equal(warm, legacy, check_exact=True)
    assert str(cold.index.dtype) == "datetime64[ns, America/New_York]" and cold.index.name == "timestamp"
    assert list(cold.columns) == ["open", "high", "low", "close", "volume"] and len(cold) > 20


def test_forward_filled_gaps_are_filled_the_legacy_way(store_dir, lumibot_cache) -> None:
    """A stock with missing minutes: Lumibot reindexes to trading minutes and forward-fills, on both paths."""
    from lumibot_duckdb.testing.market import SyntheticMarket

    class Holes(SyntheticMarket):
        def bars(self, symbol, timeframe, start, end, *, asset_type="stock"):
            frame = super().bars(symbol, timeframe, start, end, asset_type=asset_type)
            return frame[frame.index.minute % 7 != 3]  # every 7th-ish minute never traded

    with serve_alpaca(Holes(5), fast=True):
        legacy = window(make_source("legacy", store_dir, end=dt.datetime(2024, 1, 10)), AAA, "minute")
        ours = window(make_source("duckdb", store_dir, end=dt.datetime(2024, 1, 10)), AAA, "minute")
    pd.testing.assert_frame_equal(ours, legacy, check_exact=True)
    stored = make_source("duckdb", store_dir).store.read(key_of(make_source("legacy", store_dir), AAA, "minute"),
                                                        pd.Timestamp("2024-01-02", tz="UTC"),
                                                        pd.Timestamp("2024-01-11", tz="UTC"))
    assert not (stored.index.minute % 7 == 3).any(), "the store keeps the provider's bars, not the filled ones"
    assert stored["vwap"].notna().all() and stored["trade_count"].notna().all()


def test_lumibot_reads_the_same_bars_through_its_own_api(alpaca, lumibot_cache, store_dir) -> None:
    moments = [pd.Timestamp("2024-01-10 10:30", tz="America/New_York"),
               pd.Timestamp("2024-01-25 15:00", tz="America/New_York")]
    sources = {kind: make_source(kind, store_dir) for kind in ("legacy", "duckdb")}  # (legacy: no CSV re-read)
    for when in moments:
        answers = []
        for source in sources.values():
            source._datetime = when.to_pydatetime()
            bars = source.get_historical_prices(AAA, 5, "day")
            answers.append((bars.df, source.get_last_price(AAA)))
        pd.testing.assert_frame_equal(answers[1][0], answers[0][0], check_exact=True)
        assert answers[1][1] == answers[0][1]


class _Gaps:
    """Bars with holes: every 7th-ish minute missing, LATE listed on Jan 10 (none before), HALT silent Jan 11–16."""

    def __init__(self, seed: int = 5) -> None:
        from lumibot_duckdb.testing.market import SyntheticMarket

        self.market = SyntheticMarket(seed)

    def bars(self, symbol: str, timeframe: str, start: Any, end: Any, *, asset_type: str = "stock") -> pd.DataFrame:
        frame = self.market.bars(symbol, timeframe, start, end, asset_type=asset_type)
        frame = frame[frame.index.minute % 7 != 3]
        if symbol == "LATE":
            frame = frame[frame.index >= pd.Timestamp("2024-01-10 15:00", tz="UTC")]
        if symbol == "HALT":
            frame = frame[(frame.index < pd.Timestamp("2024-01-11", tz="UTC"))
                          | (frame.index >= pd.Timestamp("2024-01-17", tz="UTC"))]
        return frame


@pytest.mark.parametrize("symbol", ["AAA", "LATE", "HALT"])
def test_minute_windows_answer_what_lumibots_whole_frame_does(store_dir, lumibot_cache, monkeypatch,
                                                              symbol) -> None:
    """Minute bars held as windows of rows (rebuilt every session here): every request at every moment gets
    the rows of Lumibot's whole frame, its forward fill across the window's edge (and its backward fill before
    a late listing) included, and the "not enough historical data" rule counts the whole frame."""
    from lumibot_duckdb.sources.window import WindowPolicy

    monkeypatch.setattr(AlpacaBacktesting, "WINDOW_POLICY", WindowPolicy(margin=pd.Timedelta(0), guard=pd.Timedelta(0),
                                                                         ahead={"minute": pd.Timedelta(hours=20)}))
    end = dt.datetime(2024, 1, 25)
    asset = Asset(symbol)
    with serve_alpaca(_Gaps(), fast=True):
        sources = {kind: make_source(kind, store_dir, end=end, timestep="minute") for kind in ("legacy", "duckdb")}
        moments = pd.date_range("2024-01-02 09:31", "2024-01-19 15:59", freq="317min", tz="America/New_York")
        for when in moments:
            for length, incomplete in ((1, False), (30, True), (390, True), (1200, False)):
                answers = []
                for source in sources.values():
                    source._datetime = when.to_pydatetime()
                    try:
                        bars = source.get_historical_prices(asset, length, "minute",
                                                            remove_incomplete_current_bar=incomplete)
                        answers.append(None if bars is None else bars.df)
                    except ValueError as exc:
                        answers.append(str(exc))
                    answers.append(source.get_last_price(asset))
                if isinstance(answers[0], pd.DataFrame):
                    pd.testing.assert_frame_equal(answers[2], answers[0], check_exact=True)
                    assert answers[3] == answers[1], (when, length)
                else:
                    assert answers[2:] == answers[:2], (when, length)
        with pytest.raises(ValueError, match="Not enough historical data") as ours:
            sources["duckdb"].get_historical_prices(asset, 10**6, "minute")
        with pytest.raises(ValueError) as theirs:
            sources["legacy"].get_historical_prices(asset, 10**6, "minute")
        assert str(ours.value) == str(theirs.value)
    ours_source = sources["duckdb"]
    held = sum(len(w.frame) for w in ours_source._minute_frames.values())
    assert 0 < held < len(ours_source._minutes()) / 2, "a few sessions of rows are held, not the backtest"
    assert ours_source.duckdb_windows.loads > 5, "the window was rebuilt as the clock moved"


def test_a_minute_window_reads_its_days_not_the_range(store_dir, lumibot_cache) -> None:
    """The first minute request makes the backtest's whole range present in the store but decodes only the
    window's days (the range read whole to learn it is not empty was ~4 MB a series that the process kept)."""
    asset = Asset("AAA")
    with serve_alpaca(_Gaps(), fast=True):
        source = make_source("duckdb", store_dir, end=dt.datetime(2024, 3, 1), timestep="minute")
        source._datetime = dt.datetime(2024, 1, 3, 10, 0, tzinfo=source.tzinfo)
        bars = source.get_historical_prices(asset, 30, "minute")
        [series] = source._minute_series.values()
        stored = len(source.store.read(series.key, series.wanted.start, series.wanted.end, columns=["close"]))
    assert bars is not None and len(bars.df) == 30
    served = source.duckdb_stats.bars_served
    assert 0 < served < stored / 4, f"{served} bars decoded for a window, of the {stored} the range holds"


def test_end_of_window_rule_and_keys_are_lumibots(alpaca, store_dir) -> None:
    ours, legacy = make_source("duckdb", store_dir), make_source("legacy", store_dir)
    assert ours.datetime_end == legacy.datetime_end == pd.Timestamp("2024-01-30 09:30", tz="America/New_York")
    window(ours)
    assert list(ours._data_store) == [legacy._get_asset_key(base_asset=AAA, quote_asset=None, timestep="day")]


# -- incremental -------------------------------------------------------------------------------------
def test_shifted_window_asks_only_for_the_new_month(alpaca, lumibot_cache, store_dir) -> None:
    """Legacy keys its CSV by window; Lumibot's shared bar cache then saves most of the bars (measured)."""
    asked = {}
    for kind in ("legacy", "duckdb"):
        window(make_source(kind, store_dir))
        alpaca.reset()
        shifted = window(make_source(kind, store_dir, start=dt.datetime(2024, 2, 1), end=dt.datetime(2024, 3, 1)))
        asked[kind] = (alpaca.count(), [(r.start, r.end) for r in alpaca.requests])
        alpaca.reset()
        assert shifted.index[0].date() == dt.date(2024, 2, 1) and shifted.index[-1].date() == dt.date(2024, 3, 1)
    count, spans = asked["duckdb"]
    assert count == 1
    assert spans[0][0] >= pd.Timestamp("2024-02-03 04:59:59", tz="UTC")  # after the first request's end (Feb 2)
    assert spans[0][1] < pd.Timestamp("2024-03-03 05:00", tz="UTC")
    legacy_count, legacy_spans = asked["legacy"]
    assert legacy_count == 1 and legacy_spans[0][0] < spans[0][0], "the shared cache re-reads a few bars"
    assert len(list((lumibot_cache / "alpaca").glob("AAA-STOCK*_DAY_*.csv"))) == 2, "legacy: one CSV per window"


def test_widened_window_fetches_both_ends_only(alpaca, store_dir) -> None:
    window(make_source("duckdb", store_dir, start=dt.datetime(2024, 2, 1), end=dt.datetime(2024, 2, 15)))
    alpaca.reset()
    wide = window(make_source("duckdb", store_dir, start=dt.datetime(2024, 1, 2), end=dt.datetime(2024, 3, 1)))
    assert alpaca.count() == 2
    assert all(r.end < pd.Timestamp("2024-02-01 05:00", tz="UTC") or r.start > pd.Timestamp("2024-02-16", tz="UTC")
               for r in alpaca.requests)
    assert len(wide) == 42  # Jan 2 - Mar 1 sessions


def test_weekend_gaps_are_recorded_without_asking(alpaca, store_dir) -> None:
    window(make_source("duckdb", store_dir, start=dt.datetime(2024, 1, 2), end=dt.datetime(2024, 1, 4)))
    alpaca.reset()
    # Lumibot asks through "end + 1 day": Friday Jan 5 was fetched, Sat/Sun need no request.
    window(make_source("duckdb", store_dir, start=dt.datetime(2024, 1, 3), end=dt.datetime(2024, 1, 6)))
    assert alpaca.count() == 0


# -- bad answers ---------------------------------------------------------------------------------------
def test_a_malformed_answer_is_rejected_by_lumibot_too_and_ours_names_the_prices(alpaca, lumibot_cache,
                                                                                 store_dir) -> None:
    alpaca.fail("malformed", symbol="AAA")
    with pytest.raises(Exception, match="invalid OHLCV"):  # Lumibot's own path rejects them too
        window(make_source("legacy", store_dir))
    with pytest.raises(ProviderDataError, match="nothing was stored") as info:
        window(make_source("duckdb", store_dir))
    assert "price" in str(info.value)


def test_through_lumibot_a_malformed_answer_is_a_clear_error(alpaca, store_dir) -> None:
    alpaca.fail("malformed")
    source = make_source("duckdb", store_dir)
    source._datetime = source.datetime_start + dt.timedelta(days=8)
    with pytest.raises(RuntimeError, match="Unable to fetch historical prices") as info:
        source.get_historical_prices(AAA, 3, "day")
    assert isinstance(info.value.__context__, ProviderDataError)


def test_api_errors_propagate_and_nothing_is_stored(alpaca, lumibot_cache, store_dir) -> None:
    alpaca.fail("error", symbol="AAA")
    for kind in ("legacy", "duckdb"):
        with pytest.raises(RuntimeError, match=r"Failed to fetch data for AAA-STOCK.*internal server error"):
            window(make_source(kind, store_dir))
    ours = make_source("duckdb", store_dir)
    assert ours.store.coverage(key_of(ours)) == []
    alpaca.heal()
    alpaca.reset()
    assert len(window(ours)) == 22 and alpaca.count() == 1


def test_options_keep_lumibots_trade_prints_and_their_own_series(alpaca, lumibot_cache, store_dir) -> None:
    option = Asset("SPY", "option", expiration=dt.date(2024, 1, 19), strike=470, right="CALL")
    legacy = window(make_source("legacy", store_dir), option, "minute")
    ours = make_source("duckdb", store_dir)
    pd.testing.assert_frame_equal(window(ours, option, "minute"), legacy, check_exact=True)
    assert alpaca.requests[-1].kind == "option_bars" and alpaca.requests[-1].symbols == ("SPY240119C00470000",)
    assert ours.store.series()[0].symbol == "SPY240119C00470000"
    alpaca.fail("empty", symbol="SPY240119P00400000")
    put = Asset("SPY", "option", expiration=dt.date(2024, 1, 19), strike=400, right="PUT")
    with pytest.raises(Exception, match="no option bars"):
        window(ours, put, "minute")


def test_crypto_faults_by_base_symbol(alpaca, store_dir) -> None:
    alpaca.fail("error", symbol="BTC")
    with pytest.raises(RuntimeError, match="internal server error"):
        window(make_source("duckdb", store_dir), BTC)
    assert alpaca.requests[-1].symbols == ("BTC/USD",)


def test_barset_shapes_the_client_may_return() -> None:
    from alpaca.data.models import BarSet

    from lumibot_duckdb.sources.alpaca import barset_to_bars

    raw = {"SPY": [{"t": "2024-01-02T05:00:00Z", "o": 1.5, "h": 2.0, "l": 1.0, "c": 1.75, "v": 10, "n": 3,
                    "vw": 1.6}]}
    from_models = barset_to_bars(BarSet(raw), "SPY", what="test")
    from_raw = barset_to_bars(raw, "SPY", what="test")
    pd.testing.assert_frame_equal(from_models, from_raw)
    assert from_models.index[0] == pd.Timestamp("2024-01-02 05:00", tz="UTC")
    assert from_models["trade_count"].dtype == "Int64" and from_models["vwap"].iloc[0] == 1.6
    assert barset_to_bars(BarSet({}), "SPY", what="test").empty
    with pytest.raises(ProviderDataError, match="not a BarSet"):
        barset_to_bars(["nope"], "SPY", what="test")
    with pytest.raises(ProviderDataError, match="repeated timestamp"):
        barset_to_bars({"SPY": raw["SPY"] * 2}, "SPY", what="test")


# -- the store ---------------------------------------------------------------------------------------
def test_store_holds_raw_bars_per_series(alpaca, store_dir) -> None:
    source = make_source("duckdb", store_dir)
    window(source)
    window(source, BTC)
    stock, crypto = key_of(source), key_of(source, BTC)
    assert (stock.source, stock.adjustment, stock.quote) == ("alpaca", "all", "USD")
    assert (crypto.symbol, crypto.quote, crypto.adjustment) == ("BTC", "USD", "raw")
    split_only = make_source("duckdb", store_dir, auto_adjust=False)
    window(split_only)
    assert key_of(split_only).adjustment == "split"
    assert len(source.store.series()) == 3
    bars = source.store.read(stock, pd.Timestamp("2024-01-01", tz="UTC"), pd.Timestamp("2024-03-01", tz="UTC"))
    assert bars["close"].dtype == "float64" and bars["vwap"].notna().all()


def test_no_sleep_when_the_store_answers(alpaca, store_dir, monkeypatch) -> None:
    window(make_source("duckdb", store_dir), AAA, "minute")
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", lambda seconds: slept.append(seconds))
    monkeypatch.setattr(LegacyAlpaca, "_sleep_seconds", lambda self, seconds: slept.append(seconds))
    source = make_source("duckdb", store_dir)
    source.ALPACA_MAX_REQUESTS_PER_MINUTE = 1  # any provider request past the first would wait
    for symbol in ("AAA", "AAA", "AAA"):
        window(source, Asset(symbol), "minute")
    window(make_source("duckdb", store_dir), AAA, "minute")
    assert slept == [] and alpaca.count() == 1


def test_history_before_start_is_served_from_the_store(alpaca, lumibot_cache, store_dir) -> None:
    answers = []
    for kind in ("legacy", "duckdb", "duckdb"):
        source = make_source(kind, store_dir, history_before_start=True)
        source._datetime = source.datetime_start + dt.timedelta(hours=10)
        answers.append(source.get_historical_prices(AAA, 15, "day").df)
    pd.testing.assert_frame_equal(answers[1], answers[0], check_exact=True)
    pd.testing.assert_frame_equal(answers[2], answers[0], check_exact=True)
    assert len(answers[0]) == 15 and answers[0].index[0] < pd.Timestamp("2024-01-02", tz="America/New_York")
    assert len(list((lumibot_cache / "alpaca").glob("*_HISTORY.csv"))) == 1, "legacy's CSV only"


def test_a_readjusted_history_refreshes_the_series(alpaca, store_dir) -> None:
    from lumibot_duckdb.testing.market import SyntheticMarket

    source = make_source("duckdb", store_dir)
    window(source)
    key = key_of(source)
    for bar_file in source.store.files(key):  # pretend these were fetched in 2023
        old_name = bar_file.path.name.replace(bar_file.token, "17a0000000000000aaaaaa")
        bar_file.path.rename(bar_file.path.with_name(old_name))
    alpaca.market = SyntheticMarket(99)  # Alpaca now answers other (re-adjusted) prices for the same days
    alpaca.reset()
    fresh = window(make_source("duckdb", store_dir, end=dt.datetime(2024, 3, 1)))
    assert alpaca.count() == 2, "one overlap check, then the whole range again"
    assert alpaca.requests[1].start == pd.Timestamp("2024-01-02 05:00", tz="UTC")
    with serve_alpaca(SyntheticMarket(99), fast=True):
        expected = window(make_source("legacy", store_dir.parent / "other", end=dt.datetime(2024, 3, 1)))
    pd.testing.assert_frame_equal(fresh, expected, check_exact=True)


def test_parallel_requests_from_lumibot_threads(alpaca, store_dir) -> None:
    source = make_source("duckdb", store_dir)
    source._datetime = source.datetime_start + dt.timedelta(days=10)
    bars = source.get_bars(["AAA", "BBB", "CCC", "DDD"], 5, timestep="day")
    assert {a.symbol for a in bars} == {"AAA", "BBB", "CCC", "DDD"}
    assert all(len(b.df) == 5 for b in bars.values())
    assert len(source.store.series()) == 4 and alpaca.count() == 4


def test_unsettled_bars_are_never_recorded_as_covered(alpaca, store_dir) -> None:
    now = pd.Timestamp.now(tz="America/New_York")
    source = make_source("duckdb", store_dir, start=(now - pd.Timedelta(days=4)).tz_localize(None).to_pydatetime(),
                         end=now.tz_localize(None).to_pydatetime(), timestep="minute", full_window=True)
    window(source, BTC, "minute")
    coverage = source.store.coverage(key_of(source, BTC, "minute"))
    assert coverage and coverage[-1].end <= pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=15)


# -- whole backtests (their parity with legacy is the conformance suite's) ---------------------------
def session(scenario: Scenario, workdir: Path, phases: tuple[str, ...] = ("cold", "warm")) -> list[RunResult]:
    return [run_here(scenario, variant, phase, workdir / variant, fast=True)
            for variant in ("legacy", "duckdb") for phase in phases]


def alpaca_scenario(name: str, strategy: str, parameters: dict[str, Any], start: str, end: str,
                    **options: Any) -> Scenario:
    return Scenario(name, strategy, parameters, start, end, source="alpaca", **options)


def test_legacy_reruns_differ_by_its_csv_re_read_and_a_shifted_window_asks_only_new_days(tmp_path: Path) -> None:
    """Legacy re-reads its per-window CSV on a rerun (prices a few ulps off: declared); a shifted window
    asks Alpaca once per symbol, for fewer days than legacy."""
    scenario = alpaca_scenario("momentum daily x3", "momentum",
                               {"symbols": ["AAA", "BBB", "CCC"], "lookback": 5, "top": 2, "period": 3},
                               "2024-01-02", "2024-02-15")
    results = session(scenario, tmp_path, ("cold", "warm", "shifted"))
    assert len(results[0].fills) > 10
    report = {p.phase: p for p in compare(results)}
    assert report["cold"].identical and report["shifted"].identical, report
    assert not report["warm"].identical, "legacy's rerun re-reads its CSV"
    reference = run_here(scenario, REFERENCE, "warm", tmp_path / REFERENCE, fast=True)
    reference.detail = AlpacaKit().describe_defects(tmp_path / "legacy", scenario.window("warm"))
    declared = {p.phase: p for p in compare([*results, reference])}["warm"]
    assert declared.declared and "re-read" in declared.detail, declared.detail
    shifted = {r.variant: r for r in results if r.phase == "shifted"}
    assert shifted["duckdb"].requests["stock_bars"] == 3
    assert shifted["duckdb"].requested_days < shifted["legacy"].requested_days


def test_a_crypto_backtest_asks_the_crypto_endpoint_once_per_symbol(tmp_path: Path) -> None:
    scenario = alpaca_scenario("crypto momentum daily", "momentum",
                               {"symbols": ["BTC", "ETH"], "lookback": 5, "top": 1, "period": 3,
                                "asset_type": "crypto"}, "2024-01-02", "2024-02-01")
    for result in session(scenario, tmp_path, ("cold",)):
        assert result.requests == {"stock_bars": 0, "crypto_bars": 2, "option_bars": 0}, result.variant
        assert len(result.fills) > 3


def test_csv_precision_report_names_the_defect(alpaca, lumibot_cache, store_dir) -> None:
    window(make_source("legacy", store_dir), AAA, "minute")
    report = csv_precision_report(lumibot_cache, (dt.date(2024, 1, 2), dt.date(2024, 2, 1)))
    assert "AAA-STOCK" in report and "re-read" in report
    warm = window(make_source("legacy", store_dir), AAA, "minute")
    ours = window(make_source("duckdb", store_dir), AAA, "minute")
    assert not warm.equals(ours), "legacy's warm frame is not its cold frame"
    pd.testing.assert_frame_equal(warm, ours, check_exact=False, rtol=1e-15)


def test_fake_records_requests_and_counts_days(market) -> None:
    fake = FakeAlpaca(market)
    with pytest.raises(ValueError, match="unknown fault"):
        fake.fail("slow")
    assert fake.count() == 0 and fake.requested_days() == 0


@pytest.mark.parametrize(("first", "last"), [
    ("2024-02-01", "2024-03-05"),  # Presidents' Day inside
    ("2024-02-03", "2024-02-04"),  # a weekend
    ("2001-09-10", "2001-09-18"),  # the four days closed after 9/11
    ("2012-10-26", "2012-11-01"),  # Hurricane Sandy
    ("2018-12-05", "2018-12-05"),  # a national day of mourning
    ("2025-01-08", "2025-01-10"),
    ("1952-09-20", "1952-10-04"),  # the end of Saturday trading (the calendar's own schedule)
    ("2015-01-01", "2026-12-31"),
])
def test_session_dates_are_the_calendars(first: str, last: str) -> None:
    """Whether a gap can hold bars (no request for a weekend or a holiday) is decided on NYSE's sessions, worked
    out from the holiday rules of the range only, and they are the dates of pandas_market_calendars' schedule."""
    from lumibot_duckdb.sources.alpaca import _nyse, _sessions

    start, end = pd.Timestamp(first).date(), pd.Timestamp(last).date()
    expected = pd.DatetimeIndex(_nyse().schedule(start_date=start, end_date=end).index)
    assert list(_sessions(start, end)) == list(expected)


def test_a_gap_over_a_weekend_or_a_holiday_is_not_asked_for() -> None:
    from lumibot_duckdb.sources.alpaca import _has_session

    def gap(a: str, b: str) -> Any:
        from lumibot_duckdb.store import Interval

        return Interval(pd.Timestamp(a, tz="America/New_York").tz_convert("UTC"),
                        pd.Timestamp(b, tz="America/New_York").tz_convert("UTC"))

    assert not _has_session(gap("2024-02-17 00:00", "2024-02-20 00:00"))  # Sat, Sun, Presidents' Day
    assert _has_session(gap("2024-02-17 00:00", "2024-02-20 00:01"))  # ... and the first minute of Tuesday
    assert not _has_session(gap("2025-01-09 00:00", "2025-01-10 00:00"))  # President Carter's day of mourning
    assert not _has_session(gap("2024-02-16 20:00", "2024-02-17 00:00"))  # Friday after the last extended minute


def test_no_closure_is_longer_than_the_one_the_quick_session_rule_allows() -> None:
    """A gap with more whole weekdays than LONGEST_CLOSURE is taken to hold a session without the holiday rules
    (~65 ms a call in pandas); the NYSE's own schedule since Saturday trading ended, and through 2030, has no longer
    run of closed weekdays; and on gaps of every length around it, the quick rule and the calendar agree."""
    from lumibot_duckdb.sources.alpaca import LONGEST_CLOSURE, SATURDAYS_UNTIL, _has_session, _nyse
    from lumibot_duckdb.store import Interval

    sessions = pd.DatetimeIndex(_nyse().schedule(start_date=SATURDAYS_UNTIL, end_date="2030-12-31").index)
    weekdays = pd.bdate_range(SATURDAYS_UNTIL, "2030-12-31")
    closed = ~weekdays.isin(sessions)
    run, longest = 0, 0
    for shut in closed:
        run = run + 1 if shut else 0
        longest = max(longest, run)
    assert longest == LONGEST_CLOSURE  # (11-14 September 2001)
    rng = np.random.default_rng(3)
    starts = pd.DatetimeIndex(["2001-09-07", "2001-09-10", "2012-10-26", "2024-12-23", "2025-01-08"]).append(
        pd.DatetimeIndex(rng.choice(pd.date_range("1953-01-01", "2030-01-01", freq="h"), 300)))
    for start in starts:
        for days in (1, 3, 5, 6, 7, 8, 9, 12):
            first = pd.Timestamp(start).tz_localize("America/New_York")
            gap = Interval(first.tz_convert("UTC"), (first + pd.Timedelta(days=days)).tz_convert("UTC"))
            day_start = sessions[(sessions >= first.normalize().tz_localize(None) - pd.Timedelta(days=1)) &
                                 (sessions <= (first + pd.Timedelta(days=days)).tz_localize(None))]
            day_start = day_start.tz_localize("America/New_York")
            exact = bool(((day_start < gap.end) & (day_start + pd.Timedelta(hours=20) > gap.start)).any())
            assert _has_session(gap) == exact, (start, days)
