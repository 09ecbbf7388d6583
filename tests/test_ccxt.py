"""The CCXT drop-in at its seam: legacy frames at full precision, incremental pages, bad answers, legacy defects.

Invariant under test: ``CcxtCacheDB.download_ohlcv`` on our path returns exactly the frame Lumibot's
cache returns once its two known defects are fixed (DECIMAL(18,3) columns; candles dropped for
repeating an earlier candle's values), asking the exchange only for what the store lacks.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path
from typing import Any

import ccxt
import pandas as pd
import pytest
import pytz
from lumibot.backtesting import CcxtBacktesting as LegacyCcxt
from lumibot.entities import Asset
from lumibot.tools import ccxt_data_store

from lumibot_duckdb import ProviderDataError
from lumibot_duckdb.ab.harness import REFERENCE, Scenario, compare, run_here
from lumibot_duckdb.errors import ProviderRequestError
from lumibot_duckdb.sources.base import DuckDBFallbackWarning
from lumibot_duckdb.sources.ccxt import CcxtBacktesting, ccxt_series_key
from lumibot_duckdb.testing.ccxt import CcxtKit, fix_decimal_cache, fix_duplicate_candles, serve_ccxt

NY = pytz.timezone("America/New_York")
USDT = Asset("USDT", "crypto")
START, END = dt.datetime(2024, 1, 2), dt.datetime(2024, 2, 1)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args)  # CcxtCacheDB takes naive datetimes as UTC


@pytest.fixture
def legacy_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "lumibot-cache"
    monkeypatch.setattr(ccxt_data_store, "LUMIBOT_CACHE_FOLDER", str(folder))
    return folder


@pytest.fixture
def exchange(market, legacy_cache):
    with serve_ccxt(market, fast=True, scale={"PEPE": 1e-7, "SHIB": 1e-4}) as fake:
        yield fake


@pytest.fixture
def fixed_legacy():
    """Lumibot's cache with its two declared defects fixed (the harness's legacy-fixed reference)."""
    undo = [fix_decimal_cache(), fix_duplicate_candles()]
    yield
    for step in reversed(undo):
        step()


def make_source(kind: str, store_dir: Path, start: dt.datetime = START, end: dt.datetime = END,
                **options: Any) -> Any:
    if kind == "legacy":
        return LegacyCcxt(start, end, exchange_id="binance", show_progress_bar=False)
    return CcxtBacktesting(start, end, exchange_id="binance", show_progress_bar=False,
                           use_duckdb=options.pop("use_duckdb", True), cache_dir=store_dir, **options)


def download(source: Any, symbol: str, timeframe: str, start: dt.datetime, end: dt.datetime) -> pd.DataFrame:
    return source.cache_db.download_ohlcv(symbol, timeframe, start, end)


# -- frames -------------------------------------------------------------------------------------
@pytest.mark.parametrize("symbol, timeframe, start, end", [
    ("BTC/USDT", "1d", utc(2023, 3, 8), utc(2024, 1, 31, 4, 59)),        # Lumibot's daily prebuffer of 300 days
    ("ETH/USDT", "1h", utc(2024, 1, 1, 17), utc(2024, 1, 9, 3, 30)),
    ("SOL/USDT", "1m", utc(2024, 1, 2, 0, 0), utc(2024, 1, 3, 4, 59)),
    ("PEPE/USDT", "1m", utc(2024, 1, 2, 13, 17), utc(2024, 1, 2, 18)),    # a sub-cent coin
])
def test_frames_are_those_of_fixed_legacy(exchange, fixed_legacy, store_dir, symbol, timeframe, start, end) -> None:
    legacy = download(make_source("legacy", store_dir), symbol, timeframe, start, end)
    cold = download(make_source("duckdb", store_dir), symbol, timeframe, start, end)
    warm = download(make_source("duckdb", store_dir), symbol, timeframe, start, end)
    pd.testing.assert_frame_equal(cold, legacy)
    pd.testing.assert_frame_equal(warm, legacy)
    assert len(legacy) > 0 and legacy.index.name == "datetime" and legacy.index.tz is None
    assert list(legacy.columns) == ["open", "high", "low", "close", "volume", "missing"]


def test_lumibot_history_and_last_price_are_those_of_fixed_legacy(exchange, fixed_legacy, store_dir) -> None:
    when = NY.localize(dt.datetime(2024, 1, 20, 10, 30))
    results = []
    for kind in ("legacy", "duckdb"):
        source = make_source(kind, store_dir)
        source._datetime = when
        bars = {ts: source.get_historical_prices(Asset("BTC", "crypto"), 50, ts, quote=USDT).df
                for ts in ("day", "minute")}
        last = source.get_last_price(Asset("BTC", "crypto"), quote=USDT, timestep="minute")
        results.append((bars, last))
    for timestep in ("day", "minute"):
        pd.testing.assert_frame_equal(results[1][0][timestep], results[0][0][timestep])
    assert results[1][1] == results[0][1]


def test_full_precision_where_legacy_rounds_to_three_decimals(exchange, store_dir) -> None:
    """Declared difference: Lumibot's DECIMAL(18,3) columns round prices and volumes; a sub-cent coin becomes 0."""
    sent = exchange.fetch_ohlcv(None, "BTC/USDT", "1m", since=int(pd.Timestamp("2024-01-02", tz="UTC").value // 10**6),
                                limit=60)
    exchange.reset()
    window = (utc(2024, 1, 2), utc(2024, 1, 2, 0, 59))
    legacy = download(make_source("legacy", store_dir), "BTC/USDT", "1m", *window)
    ours = download(make_source("duckdb", store_dir), "BTC/USDT", "1m", *window)
    assert ours["close"].tolist() == [row[4] for row in sent]            # exactly as the exchange sent them
    assert ours["volume"].tolist() == [row[5] for row in sent]
    assert (legacy["close"] != ours["close"]).any()
    assert (legacy["close"] - ours["close"].round(3)).abs().max() < 1e-9  # legacy = rounded to 0.001
    pepe_legacy = download(make_source("legacy", store_dir), "PEPE/USDT", "1m", *window)
    pepe_ours = download(make_source("duckdb", store_dir), "PEPE/USDT", "1m", *window)
    assert (pepe_legacy["close"] == 0).all()
    assert (pepe_ours["close"] > 0).all() and pepe_ours["close"].max() < 1e-3


def test_candles_repeating_earlier_values_are_kept(exchange, store_dir) -> None:
    """Declared difference: Lumibot drops a candle equal in every value to an earlier one (flat quiet minutes)."""
    t0 = int(pd.Timestamp("2024-01-02 10:00", tz="UTC").value // 10**6)
    flat = [[t0 + i * 60_000, p, p, p, p, 0.0] for i, p in enumerate([1.0, 2.0, 1.0, 1.0])]
    exchange.intercept(lambda call: [r for r in flat if r[0] >= call.since] if call.symbol == "XRP/USDT" else None)
    window = (utc(2024, 1, 2, 10), utc(2024, 1, 2, 10, 5))
    legacy = download(make_source("legacy", store_dir), "XRP/USDT", "1m", *window)
    ours = download(make_source("duckdb", store_dir), "XRP/USDT", "1m", *window)
    assert len(legacy) == 2 and len(ours) == 4
    undo = fix_duplicate_candles()
    try:
        (Path(ccxt_data_store.LUMIBOT_CACHE_FOLDER) / "binance" / "XRP_USDT_1m.duckdb").unlink()
        fixed = download(make_source("legacy", store_dir), "XRP/USDT", "1m", *window)
    finally:
        undo()
    pd.testing.assert_frame_equal(ours, fixed)


# -- what is asked of the exchange --------------------------------------------------------------
def test_constructor_asks_nothing_the_markets_load_on_the_first_download(exchange, store_dir) -> None:
    make_source("legacy", store_dir)
    assert exchange.count("load_markets") == 1, "Lumibot loads the markets in its constructor"
    exchange.reset()
    source = make_source("duckdb", store_dir)
    assert exchange.count() == 0
    download(source, "BTC/USDT", "1m", utc(2024, 1, 2), utc(2024, 1, 4))
    assert exchange.count("load_markets") == 1 and exchange.count("fetch_ohlcv") > 0


def test_a_wider_window_asks_only_for_the_new_days_without_loading_markets(exchange, store_dir) -> None:
    download(make_source("duckdb", store_dir), "ETH/USDT", "1m", utc(2024, 1, 10), utc(2024, 1, 12, 12))
    exchange.reset()
    frame = download(make_source("duckdb", store_dir), "ETH/USDT", "1m", utc(2024, 1, 8), utc(2024, 1, 14, 23, 59))
    asked = exchange.ohlcv_calls()
    days = {pd.Timestamp(c.since, unit="ms").date() for c in asked}
    assert days.isdisjoint({dt.date(2024, 1, d) for d in (10, 11, 12)})
    assert exchange.requested_days() == 4  # Jan 8-9 and 13-14
    assert exchange.count("load_markets") == 0, "the market entry was kept in the store"
    assert len(frame) == 7 * 1440


def test_pages_follow_the_exchange_limit_with_no_sleeps(market, legacy_cache, store_dir, monkeypatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(ccxt_data_store.time, "sleep", lambda seconds: slept.append(seconds))
    window = (utc(2024, 3, 1), utc(2024, 3, 3, 23, 59))
    with serve_ccxt(market) as fake:  # not fast: Lumibot's sleeps are left in
        download(make_source("legacy", store_dir), "BTC/USDT", "1m", *window)
        legacy_pages, legacy_sleeps = fake.count("fetch_ohlcv"), len(slept)
        fake.reset()
        slept.clear()
        download(make_source("duckdb", store_dir), "BTC/USDT", "1m", *window)
        limits = {c.limit for c in fake.ohlcv_calls()}
    assert legacy_pages == 15 and legacy_sleeps == 1  # 300 candles a page, 1 s after every 10th
    assert fake.count("fetch_ohlcv") == 5 and max(limits) == 1000  # binance's own page size
    assert slept == []


def test_an_empty_answer_is_lumibots_empty_frame(exchange, store_dir) -> None:
    exchange.fail("empty", symbol="DOGE/USDT")
    legacy = download(make_source("legacy", store_dir), "DOGE/USDT", "1d", utc(2024, 1, 1), utc(2024, 1, 31))
    ours = download(make_source("duckdb", store_dir), "DOGE/USDT", "1d", utc(2024, 1, 1), utc(2024, 1, 31))
    pd.testing.assert_frame_equal(ours, legacy)
    assert ours.empty


@pytest.mark.parametrize("rows", [
    [[1704067200000, "n/a", None, 1.0]],
    [["soon", 1.0, 1.0, 1.0, 1.0, 1.0]],
    [[1704067200000, 1.0, None, 1.0, 1.0, 1.0]],
    [None],
    {"error": "maintenance"},
])
def test_each_kind_of_malformed_candles_is_caught(exchange, store_dir, rows) -> None:
    """The exchange's ways of sending garbage (the conformance suite checks what follows: asked again, healed)."""
    state = {"left": 1}

    def once(call):
        if state["left"]:
            state["left"] -= 1
            return rows
        return None

    exchange.intercept(once)
    source = make_source("duckdb", store_dir)
    with pytest.raises(ProviderDataError, match="nothing was stored"):
        download(source, "BTC/USDT", "1d", utc(2024, 1, 1), utc(2024, 1, 20))
    assert source.store.coverage(ccxt_series_key("BTC/USDT", "1d", "binance")) == []


def test_the_fake_fault_mode_malformed_is_a_clear_error(exchange, store_dir) -> None:
    exchange.fail("malformed")
    with pytest.raises(ProviderDataError, match="candle #0"):
        download(make_source("duckdb", store_dir), "BTC/USDT", "1d", utc(2024, 1, 1), utc(2024, 1, 20))


@pytest.mark.parametrize("mode, error, cause, calls", [
    ("error", ccxt.ExchangeError, None, 1),                       # a refusal: raised at once, as is
    ("network", ProviderRequestError, ccxt.NetworkError, 5),      # worth retrying: retried, then a clear error
])
def test_exchange_errors_reach_the_caller_and_nothing_is_stored(exchange, store_dir, mode, error, cause,
                                                               calls) -> None:
    exchange.fail(mode)
    source = make_source("duckdb", store_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuckDBFallbackWarning)  # not a store failure: no fallback
        with pytest.raises(error) as raised:
            download(source, "BTC/USDT", "1d", utc(2024, 1, 1), utc(2024, 1, 20))
    assert cause is None or isinstance(raised.value.__cause__, cause)
    assert exchange.count("fetch_ohlcv") == calls
    assert source.use_duckdb
    assert source.store.coverage(ccxt_series_key("BTC/USDT", "1d", "binance")) == []
    exchange.heal()
    assert len(download(source, "BTC/USDT", "1d", utc(2024, 1, 1), utc(2024, 1, 20))) == 20


def test_an_unknown_market_is_lumibots_error(exchange, store_dir) -> None:
    for kind in ("legacy", "duckdb"):
        with pytest.raises(ValueError, match="CCXT market not found for 'NOPE/USDT' on binance"):
            download(make_source(kind, store_dir), "NOPE/USDT", "1d", utc(2024, 1, 1), utc(2024, 1, 20))


def test_forming_candles_are_served_but_never_recorded_as_covered(exchange, store_dir) -> None:
    now = pd.Timestamp.now(tz="UTC")
    start = (now - pd.Timedelta(days=1)).tz_localize(None).to_pydatetime()
    source = make_source("duckdb", store_dir)
    frame = download(source, "BTC/USDT", "1m", start, now.tz_localize(None).to_pydatetime())
    assert frame.index[-1] >= (now - pd.Timedelta(minutes=2)).tz_localize(None)
    coverage = source.store.coverage(ccxt_series_key("BTC/USDT", "1m", "binance"))
    assert coverage[-1].end <= now - pd.Timedelta(minutes=15) + pd.Timedelta(seconds=5)
    exchange.reset()
    download(source, "BTC/USDT", "1m", start, now.tz_localize(None).to_pydatetime())
    assert exchange.count("fetch_ohlcv") == 1, "only the still-forming part is asked for again"


def test_kit_reports_the_legacy_cache_and_its_defects(exchange, legacy_cache, store_dir) -> None:
    download(make_source("legacy", store_dir), "BTC/USDT", "1d", utc(2024, 1, 1), utc(2024, 1, 20))
    kit = CcxtKit()
    size, bars = kit.legacy_cache(legacy_cache)
    assert size > 0 and bars == 20
    assert "DECIMAL(18,3)" in kit.describe_defects(legacy_cache.parent, (START.date(), END.date()))


# -- whole backtests ----------------------------------------------------------------------------
CRYPTO = {"asset_type": "crypto", "quote": "USDT"}


def declared_session(scenario: Scenario, workdir: Path, phases: tuple[str, ...]) -> list[Any]:
    results = [run_here(scenario, variant, phase, workdir / variant, fast=True)
               for variant in ("legacy", "duckdb", REFERENCE) for phase in phases]
    for parity in compare(results):
        assert not parity.identical, "legacy's 3-decimal prices show in the fills"
        assert parity.declared, f"{parity.scenario}/{parity.phase}: {parity.detail}"
        assert abs(parity.legacy_value - parity.duckdb_value) < 1.0
    return results


def by(results: list[Any], variant: str, phase: str) -> Any:
    return next(r for r in results if r.variant == variant and r.phase == phase)


@pytest.mark.backtest
def test_backtests_differ_from_legacy_by_its_rounded_prices_and_ask_only_for_new_days(tmp_path: Path) -> None:
    """Legacy's rounded prices show in every phase: declared (DuckDB equals legacy with the defect fixed),
    within a dollar. A warm run asks the exchange nothing (Lumibot loads the markets again); a shifted
    window, one page a symbol."""
    scenario = Scenario("crypto momentum", "momentum", {"symbols": ["BTC", "ETH", "SOL"], "lookback": 10, "top": 1,
                                                          "period": 5, **CRYPTO},
                        "2024-01-02", "2024-02-10", source="ccxt", shift_days=30)
    results = declared_session(scenario, tmp_path, ("cold", "warm", "shifted"))
    assert len(by(results, "duckdb", "cold").fills) > 4
    assert by(results, "duckdb", "warm").requests == {"load_markets": 0, "fetch_ohlcv": 0}
    assert by(results, "legacy", "warm").requests["load_markets"] == 1
    shifted = by(results, "duckdb", "shifted")
    assert shifted.requests == {"load_markets": 0, "fetch_ohlcv": 3}  # one page of new days per symbol
    assert shifted.requested_days <= 3 * 31
