"""The Yahoo drop-in at its seam: legacy frames, info kept, tails only, re-written history, bad answers."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import pytz
from lumibot.backtesting import YahooDataBacktesting as LegacyYahoo
from lumibot.entities import Asset
from lumibot.tools.yahoo_helper import YahooHelper
from yfinance.exceptions import YFRateLimitError

from lumibot_duckdb import ProviderDataError
from lumibot_duckdb.ab.harness import Scenario, compare, run_here
from lumibot_duckdb.errors import ProviderRequestError
from lumibot_duckdb.sources import yahoo as yahoo_source
from lumibot_duckdb.sources.yahoo import YahooDataBacktesting, yahoo_series_key
from lumibot_duckdb.testing.yahoo import YahooKit, serve_yahoo

NY = pytz.timezone("America/New_York")
LEGACY_HELPER = YahooHelper.__dict__["get_symbol_data"].__func__.__wrapped__
SATURDAY = pd.Timestamp("2024-04-06 12:00", tz=NY)  # Yahoo's "now" in most tests: no bar is forming


@pytest.fixture
def clock(monkeypatch):
    """Yahoo's clock and ours, set together (``clock.set(ts)``)."""
    state = {"now": SATURDAY}

    class Clock:
        def set(self, value: Any) -> None:
            state["now"] = pd.Timestamp(value).tz_convert("UTC") if pd.Timestamp(value).tzinfo else \
                pd.Timestamp(value).tz_localize(NY).tz_convert("UTC")

        def __call__(self) -> pd.Timestamp:
            return pd.Timestamp(state["now"]).tz_convert("UTC")

    clock = Clock()
    monkeypatch.setattr(yahoo_source, "_now", clock)
    return clock


@pytest.fixture
def yahoo_cache(tmp_path):
    """A fresh legacy Yahoo pickle folder for this test."""
    folder = tmp_path / "lumibot-cache"
    with YahooKit().legacy_cache_folder(folder):
        yield folder / "yahoo"


@pytest.fixture
def yahoo(market, clock, yahoo_cache):
    with serve_yahoo(market, fast=True, now=clock) as fake:
        yield fake


def make_source(kind: str, store_dir: Path, start: dt.datetime = dt.datetime(2024, 1, 2),
                end: dt.datetime = dt.datetime(2024, 3, 1), **options: Any) -> Any:
    if kind == "legacy":
        return LegacyYahoo(start, end, show_progress_bar=False)
    return YahooDataBacktesting(start, end, show_progress_bar=False, use_duckdb=options.pop("use_duckdb", True),
                                cache_dir=store_dir, **options)


def fetch(source: Any, symbol: str, *, interval: str = "1d", auto_adjust: bool = False) -> pd.DataFrame | None:
    """One call of the Yahoo seam, the way ``YahooData._get_source_symbol_data`` makes it."""
    if isinstance(source, YahooDataBacktesting):
        return source._yahoo_symbol_data(LEGACY_HELPER, Asset(symbol), symbol, interval=interval,
                                         auto_adjust=auto_adjust, last_needed_datetime=source.datetime_end)
    return LEGACY_HELPER(symbol, interval=interval, auto_adjust=auto_adjust, last_needed_datetime=source.datetime_end)


def key(symbol: str = "AAA") -> Any:
    return yahoo_series_key(symbol, Asset(symbol))


# -- frames ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("auto_adjust", [False, True])
def test_frames_are_those_of_legacy(yahoo, store_dir, auto_adjust) -> None:
    legacy = fetch(make_source("legacy", store_dir), "AAA", auto_adjust=auto_adjust)
    cold = fetch(make_source("duckdb", store_dir), "AAA", auto_adjust=auto_adjust)
    warm = fetch(make_source("duckdb", store_dir), "AAA", auto_adjust=auto_adjust)
    pd.testing.assert_frame_equal(cold, legacy)
    pd.testing.assert_frame_equal(warm, legacy)
    assert str(legacy.index.tz) == "America/New_York" and legacy.index.name == "Date"
    assert (legacy.index.hour == 16).all(), "US daily bars re-stamped to the close, as Lumibot does"
    assert legacy["Dividends"].gt(0).sum() >= 16 and legacy.index[0].date() == dt.date(2020, 1, 2)


def test_stored_bars_are_raw_yahoo_bars(yahoo, store_dir) -> None:
    source = make_source("duckdb", store_dir)
    fetch(source, "AAA")
    raw = yahoo.history("AAA", interval="1d", period="max", auto_adjust=False)
    stored = source.store.read(key(), "1900-01-01", "2100-01-01")
    assert (stored.index == raw.index.tz_convert("UTC")).all(), "00:00 New York, as Yahoo sent them"
    for ours, theirs in [("open", "Open"), ("close", "Close"), ("adj_close", "Adj Close"), ("volume", "Volume"),
                         ("dividend", "Dividends"), ("split_ratio", "Stock Splits")]:
        assert stored[ours].tolist() == raw[theirs].astype("float64").tolist(), ours
    info = source.store.read_note("yahoo", "info", "AAA.json")
    assert info["info"]["market"] == "us_market"


def test_real_dividends_round_trip_exactly(shared_data, clock, yahoo_cache, store_dir) -> None:
    from markets import real_market

    csv = pd.read_csv(shared_data / "TLT_1d_2019.csv")
    dividends = {d: {"dividend": v} for d, v in zip(csv["Date"].str[:10], csv["Dividends"]) if v}
    clock.set("2020-01-04 12:00")
    with serve_yahoo(real_market(shared_data), fast=True, now=clock, quarterly_dividends=False,
                     actions={"TLT": dividends}):
        legacy = fetch(make_source("legacy", store_dir, end=dt.datetime(2019, 12, 31)), "TLT")
        ours = fetch(make_source("duckdb", store_dir, end=dt.datetime(2019, 12, 31)), "TLT")
    pd.testing.assert_frame_equal(ours, legacy)
    assert ours["Close"].tolist() == csv["Close"].tolist()
    assert ours["Dividends"].tolist() == csv["Dividends"].tolist() and len(dividends) >= 11


def test_lumibot_sees_the_same_bars_and_prices(yahoo, store_dir) -> None:
    """Yahoo's semantics above the seam stay Lumibot's: last price = open of the last session before today."""
    when = NY.localize(dt.datetime(2024, 2, 7, 8, 45))
    seen = {}
    for kind in ("legacy", "duckdb"):
        source = make_source(kind, store_dir)
        source._datetime = when
        bars = source.get_historical_prices(Asset("AAA"), 15, timestep="day")
        shifted = source.get_historical_prices(Asset("AAA"), 5, timestep="day", timeshift=3)
        seen[kind] = (bars.df, shifted.df, source.get_last_price(Asset("AAA"), timestep="day"))
    pd.testing.assert_frame_equal(seen["duckdb"][0], seen["legacy"][0])
    pd.testing.assert_frame_equal(seen["duckdb"][1], seen["legacy"][1])
    assert seen["duckdb"][2] == seen["legacy"][2] == seen["legacy"][0]["open"].iloc[-1]
    assert seen["legacy"][0].index[-1].date() == dt.date(2024, 2, 6)
    assert seen["legacy"][1].index[-1].date() == dt.date(2024, 2, 2), "an int timeshift is days"


def test_todays_forming_bar_is_never_recorded(yahoo, clock, store_dir) -> None:
    """Mid-session, Yahoo's answer ends with today's unfinished bar: legacy keeps it, ours leaves it out."""
    clock.set("2024-04-10 12:00")
    legacy = fetch(make_source("legacy", store_dir, end=dt.datetime(2024, 4, 10)), "AAA")
    source = make_source("duckdb", store_dir, end=dt.datetime(2024, 4, 10))
    ours = fetch(source, "AAA")
    assert legacy.index[-1].date() == dt.date(2024, 4, 10) and ours.index[-1].date() == dt.date(2024, 4, 9)
    pd.testing.assert_frame_equal(ours, legacy.iloc[:-1])
    assert source.store.coverage(key())[-1].end == pd.Timestamp("2024-04-10", tz=NY)
    clock.set("2024-04-11 12:00")  # the next day, Apr 10 is final and asked for
    yahoo.reset()
    later = fetch(make_source("duckdb", store_dir, end=dt.datetime(2024, 4, 11)), "AAA")
    assert yahoo.count("history") == 1 and later.index[-1].date() == dt.date(2024, 4, 10)


def test_info_failure_keeps_yahoo_stamps_and_is_asked_again(yahoo, store_dir) -> None:
    yahoo.fail_info(symbol="AAA")
    legacy = fetch(make_source("legacy", store_dir), "AAA")
    ours = fetch(make_source("duckdb", store_dir), "AAA")
    pd.testing.assert_frame_equal(ours, legacy)
    assert (ours.index.hour == 0).all(), "without info Lumibot does not re-stamp"
    yahoo.heal()
    yahoo.reset()
    again = fetch(make_source("duckdb", store_dir), "AAA")
    assert (yahoo.count("history"), yahoo.count("info")) == (0, 1) and (again.index.hour == 16).all()


# -- requests ----------------------------------------------------------------------------------------
def test_info_is_asked_once_and_kept_in_the_store(yahoo, store_dir) -> None:
    fetch(make_source("duckdb", store_dir), "AAA")
    assert (yahoo.count("history"), yahoo.count("info")) == (1, 1)
    yahoo.reset()
    (store_dir / "bars").rename(store_dir / "bars-gone")  # only the bars are lost
    fetch(make_source("duckdb", store_dir), "AAA")
    assert (yahoo.count("history"), yahoo.count("info")) == (1, 0)


def test_one_request_serves_every_window_up_to_the_day_it_was_made(yahoo, store_dir) -> None:
    """Yahoo sends the whole history at once: windows long before the first one, or after it, ask nothing."""
    fetch(make_source("duckdb", store_dir), "AAA")
    yahoo.reset()
    for start, end in [(dt.datetime(2021, 1, 4), dt.datetime(2021, 6, 1)),
                       (dt.datetime(2024, 3, 1), dt.datetime(2024, 4, 5))]:
        assert fetch(make_source("duckdb", store_dir, start, end), "AAA") is not None
    assert yahoo.count() == 0


def test_a_later_day_asks_only_for_the_tail(yahoo, clock, store_dir) -> None:
    source = make_source("duckdb", store_dir)
    fetch(source, "AAA")
    clock.set("2024-05-04 12:00")  # no dividend between Apr 6 and May 4
    yahoo.reset()
    later = (dt.datetime(2024, 4, 1), dt.datetime(2024, 5, 3))
    ours = fetch(make_source("duckdb", store_dir, *later), "AAA")
    [tail] = yahoo.history_requests()
    assert tail.period is None and yahoo.requested_days() <= 40, tail
    assert yahoo.count("info") == 0
    yahoo.reset()
    legacy = fetch(make_source("legacy", store_dir, *later), "AAA")
    assert yahoo.history_requests()[0].period == "max", "legacy downloads the whole history again"
    pd.testing.assert_frame_equal(ours, legacy)


@pytest.mark.parametrize("event", ["dividend", "split"])
def test_history_rewritten_by_yahoo_is_fetched_whole_again(market, clock, yahoo_cache, store_dir, event) -> None:
    actions = {"AAA": {"2024-04-22": {"dividend": 1.5} if event == "dividend" else {"split": 4.0}}}
    with serve_yahoo(market, fast=True, now=clock, actions=actions, quarterly_dividends=False) as yahoo:
        fetch(make_source("duckdb", store_dir), "AAA")
        clock.set("2024-05-04 12:00")
        yahoo.reset()
        later = (dt.datetime(2024, 4, 1), dt.datetime(2024, 5, 3))
        ours = fetch(make_source("duckdb", store_dir, *later), "AAA")
        assert [r.period for r in yahoo.history_requests()] == [None, "max"], "the tail, then everything"
        legacy = fetch(make_source("legacy", store_dir, *later), "AAA")
    pd.testing.assert_frame_equal(ours, legacy)
    stored = make_source("duckdb", store_dir).store.read(key(), "2024-01-01", "2024-05-04")
    assert stored.loc[stored.index < pd.Timestamp("2024-04-22", tz=NY), "adj_close" if event == "dividend"
                      else "close"].iloc[-1] == legacy.loc[:"2024-04-19", "Adj Close" if event == "dividend"
                                                           else "Close"].iloc[-1]


def test_an_empty_answer_is_asked_once_where_lumibot_asks_three_times(yahoo, store_dir) -> None:
    yahoo.fail("empty", symbol="NONE")
    assert fetch(make_source("legacy", store_dir), "NONE") is None
    assert yahoo.count("history") == 3, "legacy asks three times, then gives up, and will ask again"
    yahoo.reset()
    assert fetch(make_source("duckdb", store_dir), "NONE") is None
    assert (yahoo.count("history"), yahoo.count("info")) == (1, 0)


def test_through_lumibot_a_malformed_answer_leaves_the_symbol_without_data(yahoo, store_dir) -> None:
    """Lumibot logs the helper's error and the symbol has no data, as on the legacy path."""
    source = make_source("duckdb", store_dir)
    yahoo.fail("malformed", symbol="AAA")
    with pytest.raises(ProviderDataError, match="nothing was stored"):
        fetch(source, "AAA")
    assert source.store.coverage(key()) == []
    # Through Lumibot (which turns the error into "no data" on the legacy path) the user gets our error.
    with pytest.raises(ProviderDataError, match="Yahoo answered"):
        source.get_historical_prices(Asset("AAA"), 5, timestep="day")
    yahoo.heal()
    yahoo.reset()
    frame = fetch(source, "AAA")
    assert len(frame) > 1000 and yahoo.count("history") == 1


def test_provider_error_is_raised_and_nothing_is_stored(yahoo, store_dir) -> None:
    source = make_source("duckdb", store_dir)
    yahoo.fail("error")  # yfinance's rate-limit error, on every attempt
    with pytest.raises(ProviderRequestError, match=r"Yahoo did not answer AAA daily history.*rate limited, 20 times"
                                                   r".*Nothing was stored") as raised:
        fetch(source, "AAA")
    assert isinstance(raised.value.__cause__, YFRateLimitError)
    assert yahoo.count("history") == 20, "a rate limit is waited out longer: 4 x the 5 attempts"
    assert source.store.coverage(key()) == []
    yahoo.heal()
    assert fetch(source, "AAA") is not None


def test_no_sleeps_on_our_path(market, clock, yahoo_cache, store_dir, monkeypatch) -> None:
    slept: list[str] = []
    monkeypatch.setattr(YahooHelper, "sleep_and_get_proxy", staticmethod(lambda: slept.append("yahoo")))
    with serve_yahoo(market, now=clock) as yahoo:
        for symbol in ("AAA", "BBB"):
            assert fetch(make_source("duckdb", store_dir), symbol) is not None
        assert yahoo.count() == 4 and slept == []
        fetch(make_source("legacy", store_dir), "CCC")
    assert slept == ["yahoo", "yahoo"], "legacy sleeps 2-5 s before the history and before the info"


# -- switches and failures ---------------------------------------------------------------------------
def test_intraday_goes_to_lumibots_helper(market, yahoo_cache, store_dir) -> None:
    """Yahoo serves 1m bars for the last days of real time only: nothing stored could serve a backtest."""
    with serve_yahoo(market, fast=True) as yahoo:  # Yahoo's clock is the real one here
        source = make_source("duckdb", store_dir)
        ours = fetch(source, "AAA", interval="1m")
        legacy = fetch(make_source("legacy", store_dir), "AAA", interval="1m")
        assert yahoo.count("history") == 2, "never fresh on either path"
    pd.testing.assert_frame_equal(ours, legacy)
    assert len(ours) > 1000 and not store_dir.exists()


# -- whole backtests -----------------------------------------------------------------------------------
def _session(scenario: Scenario, workdir: Path, phases: tuple[str, ...]) -> list[Any]:
    scenario = dataclasses.replace(scenario, source="yahoo")
    return [run_here(scenario, variant, phase, workdir / variant, fast=True)
            for variant in ("legacy", "duckdb") for phase in phases]


@pytest.mark.backtest
def test_backtest_buy_and_hold_over_a_dividend(tmp_path: Path) -> None:
    results = _session(Scenario.buy_and_hold(start="2024-03-01", end="2024-03-29"), tmp_path, ("cold", "warm"))
    for parity in compare(results):
        assert parity.identical, f"{parity.phase}: {parity.detail}"
    by = {(r.variant, r.phase): r for r in results}
    assert len(by["legacy", "cold"].fills) == 1
    assert by["duckdb", "cold"].requests == {"history": 1, "info": 1}
    assert by["duckdb", "warm"].provider_requests == 0 == by["legacy", "warm"].provider_requests


@pytest.mark.backtest
def test_backtest_asks_once_per_symbol_and_a_shifted_window_asks_nothing(tmp_path: Path) -> None:
    """What a backtest asks of Yahoo (its parity with legacy is the conformance suite's)."""
    scenario = Scenario.momentum(symbols=("AAA", "BBB", "CCC"), start="2024-02-01", end="2024-03-29")
    scenario = dataclasses.replace(scenario, source="yahoo", shift_days=14)
    by = {(v, p): run_here(scenario, v, p, tmp_path / v, fast=True)
          for v, p in (("legacy", "cold"), ("duckdb", "cold"), ("duckdb", "shifted"))}
    assert len(by["duckdb", "cold"].fills) > 8
    assert by["duckdb", "cold"].requests == by["legacy", "cold"].requests == {"history": 3, "info": 3}
    assert by["duckdb", "shifted"].provider_requests == 0
    assert by["duckdb", "cold"].bytes_per_bar < by["legacy", "cold"].bytes_per_bar


def test_kit_describes_the_source() -> None:
    kit = YahooKit()
    assert kit.legacy_class is LegacyYahoo and kit.duckdb_class is YahooDataBacktesting
    assert kit.request_kinds == ("history", "info") and kit.timeframes == ("day",)
    assert kit.data_layer() == [(YahooHelper, "get_symbol_data")]
