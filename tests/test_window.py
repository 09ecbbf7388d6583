"""Bounded memory: windows around the clock, the memory budget, and results identical to the legacy path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lumibot_duckdb.ab.harness import REFERENCE, Scenario, compare, run_here
from lumibot_duckdb.config import ENV_MAX_MEMORY, Settings, parse_bytes
from lumibot_duckdb.errors import ConfigError
from lumibot_duckdb.sources.window import AHEAD, GUARD, MARGIN, Window, WindowBook

T0 = pd.Timestamp("2024-03-01 09:30", tz="America/New_York")


# -- the budget setting ----------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("512MB", 512_000_000), ("2GiB", 2 * 2**30), ("1.5 GB", 1_500_000_000), ("3000", 3000), (4096, 4096),
    ("", None), ("0", None), ("none", None), (None, None),
])
def test_memory_sizes_are_read_as_users_write_them(text: Any, expected: int | None) -> None:
    assert parse_bytes(text, name="max_memory") == expected


@pytest.mark.parametrize("text", ["lots", "-5", "5XB", "1e"])
def test_an_unreadable_budget_names_the_setting_and_the_accepted_forms(text: str) -> None:
    with pytest.raises(ConfigError, match=r"max_memory=.*(512MB|positive)"):
        parse_bytes(text, name="max_memory")


def test_the_keyword_wins_over_the_environment() -> None:
    assert Settings.resolve(environ={ENV_MAX_MEMORY: "1GB"}).max_memory == 10**9
    assert Settings.resolve(max_memory="2MB", environ={ENV_MAX_MEMORY: "1GB"}).max_memory == 2 * 10**6
    with pytest.raises(ConfigError, match=ENV_MAX_MEMORY):
        Settings.resolve(environ={ENV_MAX_MEMORY: "much"})


# -- the bookkeeping -------------------------------------------------------------------------------
def window(span: pd.Timedelta | None = None, **kw: Any) -> Window:
    values = {"first": T0 - pd.Timedelta(days=60), "last": T0 + pd.Timedelta(days=300), "timestep": "minute"}
    made = Window(**(values | kw))
    if span is not None:
        made.ask(span, 0)
    return made


def test_a_window_reaches_back_past_the_longest_lookback_and_a_chunk_ahead() -> None:
    w = window(span=pd.Timedelta(days=10))
    start, end = w.bounds(T0)
    assert start == T0 - pd.Timedelta(days=10) - MARGIN
    assert end == T0 + AHEAD["minute"]


def test_a_lookback_asked_once_stops_widening_the_window_two_reads_later() -> None:
    """Lumibot's corporate-action check asks a year of daily bars on the first day, and never again."""
    book = WindowBook()
    book.window("a").first = T0 - pd.Timedelta(days=900)
    book.need("a", pd.Timedelta(days=600), 373)
    book.need("a", pd.Timedelta(days=30), 20)
    sized_for = []
    for _ in range(3):  # each read is sized for the window's span at the time; then the strategy asks again
        sized_for.append((book.windows["a"].span, book.windows["a"].rows))
        book.loaded("a", T0, T0, 1)
        book.need("a", pd.Timedelta(days=30), 20)  # the strategy's own lookback, every day
    year, month = (pd.Timedelta(days=600), 373), (pd.Timedelta(days=30), 20)
    assert sized_for == [year, year, month]
    book.need("a", pd.Timedelta(days=90), 60)  # a longer request later sizes the next read at once
    assert book.windows["a"].span == pd.Timedelta(days=90)


def test_lookbacks_read_in_daily_bars_do_not_size_a_window_of_minute_bars() -> None:
    w = window(timestep="day")
    w.ask(pd.Timedelta(days=600), 373)
    w.sized()
    w.retime("day")  # same bars: still sized for the year
    assert w.span == pd.Timedelta(days=600)
    w.ask(pd.Timedelta(minutes=2), 1)
    w.retime("minute")
    assert (w.span, w.rows, w.timestep) == (pd.Timedelta(minutes=2), 1, "minute")


def test_a_window_never_reaches_outside_the_series_range() -> None:
    w = window(span=pd.Timedelta(days=365), last=T0 + pd.Timedelta(days=2))
    assert w.bounds(T0) == (w.first, w.last)


def test_a_window_rolls_before_the_clock_gets_near_its_end_and_not_once_complete() -> None:
    w = window(start=T0 - pd.Timedelta(days=5), end=T0 + pd.Timedelta(days=20))
    assert not w.due(T0)
    assert w.due(T0 + pd.Timedelta(days=20) - GUARD)
    assert w.due(T0 - pd.Timedelta(days=6))  # before the window: read again
    done = window(start=T0, end=T0 + pd.Timedelta(days=300))
    assert not done.due(T0 + pd.Timedelta(days=299))


def test_the_budget_drops_the_least_recently_used_windows_first() -> None:
    book = WindowBook(budget=250)
    for key in ("a", "b", "c"):
        book.window(key).first = T0
    book.loaded("a", T0, T0, 100)
    book.loaded("b", T0, T0, 100)
    book.need("a", pd.Timedelta(0), 0)  # a is asked for again: b is now the least recent
    assert book.loaded("c", T0, T0, 100) == ["b"]
    assert book.held_bytes() == 200
    assert not book.windows["b"].held and book.windows["b"].span == pd.Timedelta(0)
    assert book.stats()["evictions"] == 1


def test_the_window_just_read_is_kept_even_alone_over_the_budget() -> None:
    book = WindowBook(budget=10)
    book.window("a").first = T0
    assert book.loaded("a", T0, T0, 100) == []
    assert book.windows["a"].held


# -- whole backtests: windows roll, the budget evicts, results stay identical ----------------------
def scan(source: str, symbols: list[str], end: str, **extra: Any) -> Scenario:
    return Scenario("minute scan", "minute_scan", {"symbols": symbols, "bars": 120, "top": 1, "period": 3, **extra},
                    "2024-01-02", end, source=source)


def run_both(scenario: Scenario, workdir: Path, monkeypatch: pytest.MonkeyPatch, budget: str | None,
             reference: bool = False) -> tuple[list[Any], list[Any]]:
    data_sources: list[Any] = []
    from lumibot_duckdb.testing.kits import kit

    cls = kit(scenario.source).duckdb_class
    original = cls.__init__

    def capture(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        data_sources.append(self)

    monkeypatch.setattr(cls, "__init__", capture)
    if budget is not None:
        monkeypatch.setenv(ENV_MAX_MEMORY, budget)
    results = [run_here(scenario, "duckdb", "cold", workdir / "duckdb", fast=True)]
    monkeypatch.delenv(ENV_MAX_MEMORY, raising=False)
    results.append(run_here(scenario, "legacy", "cold", workdir / "legacy", fast=True))
    if reference:
        results.append(run_here(scenario, REFERENCE, "cold", workdir / REFERENCE, fast=True))
    return results, data_sources


@pytest.mark.backtest
@pytest.mark.parametrize("budget", [None, "1MB"], ids=["windows", "windows+budget"])
def test_polygon_windows_roll_and_evict_with_identical_fills(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             budget: str | None) -> None:
    scenario = scan("polygon", ["AAA", "BBB", "CCC"], "2024-03-29")
    results, sources = run_both(scenario, tmp_path, monkeypatch, budget)
    (parity,) = compare(results)
    assert parity.identical, parity.detail
    assert parity.fills > 10
    stats = sources[0].duckdb_windows.stats()
    assert stats["loads"] > 3 * 2, stats  # every series was read more than once: the windows rolled
    if budget:
        assert stats["evictions"] > 0, stats
        assert stats["held_bytes"] <= max(w.nbytes for w in sources[0].duckdb_windows.windows.values()) + 10**6


@pytest.mark.backtest
def test_polygon_daily_strategy_holds_weeks_of_minute_bars_not_the_whole_range(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A daily strategy prices assets from minute bars (Lumibot's Polygon ``get_last_price``): held as windows."""
    scenario = Scenario("momentum", "momentum", {"symbols": ["AAA", "BBB"], "lookback": 5, "top": 1, "period": 3},
                        "2024-01-02", "2024-04-30")
    results, sources = run_both(scenario, tmp_path, monkeypatch, None)
    (parity,) = compare(results)
    assert parity.identical, parity.detail
    book = sources[0].duckdb_windows
    minute = [w for w in book.windows.values() if w.timestep == "minute" and w.held]
    assert minute
    for held in minute:  # the strategy's lookback (5 days) + a margin + a chunk ahead, not Lumibot's
        # corporate-action check (a year of daily bars on the first day, served from minute bars)
        assert held.end - held.start <= pd.Timedelta(days=5 * 7 / 5 + 5) + MARGIN + AHEAD["minute"], held
        assert held.end - held.start < held.last - held.first, held
    for cache in (sources[0]._dividend_cache, sources[0]._stock_split_cache):  # checked, and "none" as on legacy
        assert {asset.symbol: found for asset, found in cache.items()} == {"AAA": {}, "BBB": {}}


@pytest.mark.backtest
@pytest.mark.parametrize("budget", [None, "300KB"], ids=["windows", "windows+budget"])  # (~740 KB held without)
def test_ccxt_windows_roll_and_evict_and_equal_legacy_without_its_rounding(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch,
                                                                           budget: str | None) -> None:
    scenario = scan("ccxt", ["BTC", "ETH"], "2024-02-20", asset_type="crypto", quote="USDT")
    results, sources = run_both(scenario, tmp_path, monkeypatch, budget, reference=True)
    (parity,) = compare(results)
    assert parity.identical or parity.declared, parity.detail
    assert parity.fills > 5
    stats = sources[0].duckdb_windows.stats()
    assert stats["loads"] > 2 * 2, stats
    if budget:
        assert stats["evictions"] > 0, stats


@pytest.mark.backtest
def test_polygon_max_memory_works_on_the_duckdb_path_and_stays_lumibots_on_the_legacy_path(tmp_path: Path) -> None:
    from lumibot_duckdb import PolygonDataBacktesting

    start, end = pd.Timestamp("2024-01-02").to_pydatetime(), pd.Timestamp("2024-02-01").to_pydatetime()
    ours = PolygonDataBacktesting(start, end, api_key="k", use_duckdb=True, cache_dir=tmp_path, max_memory="300000000")
    assert ours.duckdb_windows.budget == 300_000_000
    legacy = PolygonDataBacktesting(start, end, api_key="k", use_duckdb=False, max_memory=123)
    assert legacy.MAX_STORAGE_BYTES == 123  # handed to Lumibot's class unchanged (which then misbehaves, its own bug)
    with pytest.raises(ConfigError, match="max_memory"):
        PolygonDataBacktesting(start, end, api_key="k", use_duckdb=True, cache_dir=tmp_path, max_memory="plenty")


def test_assets_given_with_dividends_keep_lumibots_corporate_action_check() -> None:
    """Only bars that cannot carry the column skip Lumibot's year-long request (its answer would be "none")."""
    from types import SimpleNamespace

    from lumibot.entities import Asset

    from lumibot_duckdb.sources.polygon import PolygonDataBacktesting

    given, stored = Asset("GIVEN"), Asset("STORED")
    usd = Asset("USD", "forex")
    frame = pd.DataFrame({"close": [1.0], "dividend": [0.5]}, index=pd.DatetimeIndex([T0]))
    source = SimpleNamespace(use_duckdb=True, _datetime=T0, pandas_data={(given, usd): SimpleNamespace(df=frame)})
    cache: dict[Any, Any] = {}
    PolygonDataBacktesting._no_corporate_actions(source, [given, stored], None, "dividend", cache)
    assert cache == {stored: {}}
    source.use_duckdb = False
    cache.clear()
    PolygonDataBacktesting._no_corporate_actions(source, [given, stored], None, "dividend", cache)
    assert cache == {}


def test_a_window_datetime_line_reads_like_lumibots_object_array() -> None:
    from lumibot_duckdb.sources.lumibot_data import IndexLine

    index = pd.date_range("2024-01-02 09:30", periods=50, freq="min", tz="America/New_York")
    line, objects = IndexLine(index), index.to_numpy(dtype=object)
    for position in (0, 7, 7, -1, 49, 7, 0):
        assert line[position] == objects[position]
    assert list(line[3:6]) == list(objects[3:6]) and len(line) == len(objects)


@settings(max_examples=60, deadline=None)
@given(gaps=st.lists(st.integers(1, 900), min_size=1, max_size=60),
       clocks=st.lists(st.tuples(st.integers(-1, 61), st.sampled_from([-60, -1, 0, 0, 1, 59]), st.booleans()),
                       max_size=40))
def test_a_window_finds_the_bar_at_the_clock_as_lumibots_data_does(gaps: list[int],
                                                                    clocks: list[tuple[int, int, bool]]) -> None:
    """Binary search (windows) against Lumibot's timestamp dict and its cursor walk, for clocks in any order
    (at a bar, a second or a minute around it, before the first, after the last)."""
    from lumibot.entities import Asset, Data
    from lumibot.entities import data as data_module

    from lumibot_duckdb.sources.lumibot_data import WindowData, prepare

    first = pd.Timestamp("2024-01-02 09:30", tz="America/New_York")
    index = first + pd.to_timedelta(pd.Series(gaps).cumsum() - gaps[0], unit="min")
    frame = pd.DataFrame({"open": 1.0, "high": 1.0, "low": 1.0, "close": 1.0, "volume": 1},
                         index=pd.DatetimeIndex(index))
    by_dict = Data(Asset("AAA"), frame.copy(), timestep="minute")
    by_cursor = Data(Asset("AAA"), frame.copy(), timestep="minute")
    with pytest.MonkeyPatch.context() as monkey:  # Lumibot's way for frames over 50,000 rows
        monkey.setattr(data_module, "_ITER_INDEX_DICT_MAX_ROWS", -1)
        by_cursor.repair_times_and_fill(by_cursor.df.index)
    by_dict.repair_times_and_fill(by_dict.df.index)  # (what Lumibot does on first use)
    assert by_dict.iter_index_dict and not by_cursor.iter_index_dict  # the two ways Lumibot finds a bar
    window = Data(Asset("AAA"), frame.copy(), timestep="minute")
    prepare(window)
    assert isinstance(window, WindowData) and not window.iter_index_dict
    for position, seconds, as_timestamp in clocks:
        clock = frame.index[min(max(position, 0), len(frame) - 1)] + pd.Timedelta(seconds=seconds)
        when = clock if as_timestamp else clock.to_pydatetime()
        expected = by_dict.get_iter_count(when)
        assert by_cursor.get_iter_count(when) == expected
        assert window.get_iter_count(when) == expected, (clock, list(frame.index))
        assert window.get_iter_count(when) == expected  # asked again at the same clock


# -- store reads: only when a window is read, never per simulated step -------------------------------
def store_reads_per_step(scenario: Scenario, workdir: Path, monkeypatch: pytest.MonkeyPatch,
                         phase: str = "cold") -> tuple[list[int], Any]:
    """Run ``scenario`` on the DuckDB path; the store reads made in each clock step, and the run."""
    from lumibot_duckdb.testing.kits import kit

    cls = kit(scenario.source).duckdb_class
    original = cls._update_datetime
    totals: list[int] = []

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        totals.append(self.duckdb_stats.store_reads)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "_update_datetime", step)
    result = run_here(scenario, "duckdb", phase, workdir, fast=True)
    return [now - before for before, now in zip([0, *totals], totals)], result


SIMPLE_START_WITHOUT_MINUTE_BARS = Scenario(
    "Lumibot's simple_start_single_file, SPY with daily bars only", "simple_start", {"symbol": "SPY"},
    "2019-02-01", "2019-02-15", market="lumibot_duckdb.testing.market:daily_bars_only")


@pytest.mark.backtest
@pytest.mark.parametrize("scenario", [
    SIMPLE_START_WITHOUT_MINUTE_BARS,
    Scenario("minute SMA", "minute_sma", {"symbol": "AAA", "fast": 10, "slow": 30, "quantity": 1},
             "2024-01-08", "2024-01-13", timestep="minute"),
    Scenario("minute SMA without candles", "minute_sma",
             {"symbol": "BTC", "fast": 10, "slow": 30, "quantity": 1, "asset_type": "crypto", "quote": "USDT"},
             "2024-01-08", "2024-01-10", source="ccxt", timestep="minute",
             market="lumibot_duckdb.testing.market:daily_bars_only"),
    Scenario("minute SMA", "minute_sma", {"symbol": "AAA", "fast": 10, "slow": 30, "quantity": 1},
             "2024-01-08", "2024-01-20", source="alpaca", timestep="minute"),
], ids=["polygon-no-minute-bars", "polygon-minute", "ccxt-no-minute-candles", "alpaca-minute"])
def test_the_store_is_read_when_a_window_is_read_not_at_every_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  scenario: Scenario) -> None:
    """Every quote and history request of a step is served from memory, a series without bars included:
    an empty window is held like any other (Lumibot's example asking SPY quotes every step once read the
    store at 3,598 of 3,600 steps)."""
    for phase in ("cold", "warm"):
        reads, result = store_reads_per_step(scenario, tmp_path / "duckdb", monkeypatch, phase)
        assert len(reads) >= 40, f"{phase}: too few steps ({len(reads)}) to tell"
        assert sum(reads) == result.store_reads
        reading = [n for n in reads if n]
        assert len(reading) <= 3 and max(reads) <= 4, f"{phase}: store reads per step {reads}"


@pytest.mark.backtest
def test_a_series_without_bars_gives_the_legacy_results(tmp_path: Path) -> None:
    scenario = SIMPLE_START_WITHOUT_MINUTE_BARS
    results = [run_here(scenario, variant, "cold", tmp_path / variant, fast=True) for variant in ("legacy", "duckdb")]
    (parity,) = compare(results)
    assert parity.identical, parity.detail
