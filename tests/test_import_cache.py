"""Lumibot's own caches into the store: the history a user already downloaded is not downloaded again.

Invariants:
* the legacy caches are real ones, filled by Lumibot's own legacy runs offline; they are only read;
* imported bars sit under exactly the series keys our data sources read and equal, bit for bit, what
  the DuckDB path fetches from the provider itself (CCXT: once Lumibot's 3-decimal rounding is fixed);
* after the import the same backtest on the DuckDB path asks its provider nothing and has the same
  fills and final value as Lumibot's warm run (or as its declared-defect reference, where one applies);
* coverage is only what the legacy cache proves: placeholder rows are "asked, no bars", sessions hidden
  by the UTC-date defect, forward-filled rows and days still trading when written are not covered;
* idempotent, a dry run writes nothing, rounded CCXT bars need an explicit option and are flagged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pickle
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import pytz
from click.testing import CliRunner
from lumibot.entities import Asset

from lumibot_duckdb.ab.harness import REFERENCE, RunResult, Scenario, run_here
from lumibot_duckdb.cli import main
from lumibot_duckdb.ingest import legacy
from lumibot_duckdb.ingest.cache import import_cache
from lumibot_duckdb.registry import SOURCES
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey
from lumibot_duckdb.store.maintenance import status
from lumibot_duckdb.testing.kits import kit

pytestmark = pytest.mark.backtest

NY = pytz.timezone("America/New_York")
CREDENTIALS = ["offline-key"]  # the API key the Alpaca kit's legacy runs use (the shared bar cache hashes it)


def scenario(name: str, kind: str = "daily") -> Scenario:
    crypto = "stock" not in kit(name).asset_types
    extra: dict[str, Any] = {"asset_type": "crypto", "quote": kit(name).default_quote or "USD"} if crypto else {}
    if kind == "minute":
        return Scenario("minute SMA", "minute_sma", {"symbol": "BTC" if crypto else "AAA", "fast": 5, "slow": 20,
                                                     "quantity": 1, **extra},
                        "2024-01-08", "2024-01-12", source=name, timestep="minute")
    symbols = ["BTC", "ETH"] if crypto else ["AAA", "BBB"]
    return Scenario("momentum x2", "momentum", {"symbols": symbols, "lookback": 5, "top": 1, "period": 3, **extra},
                    "2024-01-08", "2024-02-23", source=name)


CASES = [pytest.param(name, "daily", id=f"{name}-daily") for name in SOURCES] + [
    pytest.param(name, "minute", id=f"{name}-minute") for name in SOURCES if name != "yahoo"]


def run(case: Scenario, variant: str, phase: str, workdir: Path) -> RunResult:
    return run_here(case, variant, phase, workdir, fast=True)


@pytest.fixture(scope="module")
def legacy_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], tuple[Path, RunResult]]:
    """Per source and scenario: the folder of a cold then a warm legacy run, and the warm run's result."""
    runs = {}
    for name, kind in [(p.values[0], p.values[1]) for p in CASES]:
        folder = tmp_path_factory.mktemp(f"legacy-{name}-{kind}")
        case = scenario(name, kind)
        run(case, "legacy", "cold", folder)
        runs[(name, kind)] = folder, run(case, "legacy", "warm", folder)
    return runs


def snapshot(folder: Path) -> dict[str, tuple[int, float, str]]:
    out = {}
    for root, _, names in os.walk(folder):
        for file_name in names:
            path = Path(root) / file_name
            out[str(path)] = (path.stat().st_size, path.stat().st_mtime, hashlib.sha1(path.read_bytes()).hexdigest())
    return out


def same_or_declared(ours: RunResult, legacy_warm: RunResult, case: Scenario, workdir: Path) -> None:
    if (ours.fills, ours.final_value) == (legacy_warm.fills, legacy_warm.final_value):
        return
    assert kit(case.source).legacy_defects(), "differs from legacy warm and no legacy defect is declared"
    reference = run(case, REFERENCE, "cold", workdir / "reference")
    assert (ours.fills, ours.final_value) == (reference.fills, reference.final_value), (
        "DuckDB after the import differs from legacy warm and from legacy with its declared defects fixed")


# -- the proof: import, then the DuckDB path asks nothing and trades the same ------------------------
@pytest.mark.parametrize("name, kind", CASES)
def test_after_the_import_the_duckdb_path_asks_nothing_and_trades_the_same(legacy_runs, tmp_path: Path, name: str,
                                                                           kind: str) -> None:
    folder, legacy_warm = legacy_runs[(name, kind)]
    case = scenario(name, kind)
    before = snapshot(folder / "lumibot-cache")
    report = import_cache(tmp_path / "duckdb", folder / "lumibot-cache", sources=[name], credentials=CREDENTIALS,
                          include_rounded=name == "ccxt")
    assert snapshot(folder / "lumibot-cache") == before, "the legacy cache was changed"
    assert report.bars > 0 and not report.failed
    assert {i.status for i in report.items} <= {"imported", "unchanged", "skipped"}
    ours = run(case, "duckdb", "warm", tmp_path)
    assert ours.provider_requests == 0, f"{name} asked its provider after the import: {ours.requests}"
    same_or_declared(ours, legacy_warm, case, tmp_path)


@pytest.mark.parametrize("name, kind", CASES)
def test_imported_bars_are_what_the_duckdb_path_fetches_itself(legacy_runs, tmp_path: Path, name: str,
                                                               kind: str) -> None:
    case = scenario(name, kind)
    if name == "ccxt":  # Lumibot's CCXT cache rounds to 3 decimals: compare its cache with that defect fixed
        folder = tmp_path / "fixed"
        run(case, REFERENCE, "cold", folder)
    else:
        folder = legacy_runs[(name, kind)][0]
    import_cache(tmp_path / "imported", folder / "lumibot-cache", sources=[name], credentials=CREDENTIALS)
    run(case, "duckdb", "cold", tmp_path / "fetched")
    compared = 0
    with DuckDBDataStorage(tmp_path / "imported") as imported, \
            DuckDBDataStorage(tmp_path / "fetched" / "duckdb") as fetched:
        assert set(fetched.series()) <= set(imported.series()), "a series the data source reads was not imported"
        for key in fetched.series():
            assert not imported.flags(key)
            for mine in imported.coverage(key):
                for theirs in fetched.coverage(key):
                    both = mine.intersection(theirs)
                    if both is None:
                        continue
                    a, b = imported.read(key, both.start, both.end), fetched.read(key, both.start, both.end)
                    pd.testing.assert_frame_equal(a, b, check_exact=True)
                    compared += len(a)
    assert compared > 0


# -- idempotent, dry run, untouched, progress -----------------------------------------------------------
def test_a_second_import_adds_nothing_and_a_dry_run_writes_nothing(legacy_runs, tmp_path: Path) -> None:
    folder = legacy_runs[("polygon", "daily")][0] / "lumibot-cache"
    dry = import_cache(tmp_path / "store", folder, dry_run=True)
    assert not (tmp_path / "store").exists(), "a dry run created the store"
    assert {i.status for i in dry.items} == {"would import"}
    first = import_cache(tmp_path / "store", folder)
    assert [(i.series, i.bars, i.covered) for i in first.items] == [(i.series, i.bars, i.covered) for i in dry.items]
    with DuckDBDataStorage(tmp_path / "store") as store:
        files = sorted(str(f.path) for k in store.series() for f in store.files(k))
    again = import_cache(tmp_path / "store", folder)
    assert {i.status for i in again.items} == {"unchanged"} and again.bars == 0
    assert again.present == first.bars
    with DuckDBDataStorage(tmp_path / "store") as store:
        assert sorted(str(f.path) for k in store.series() for f in store.files(k)) == files
    assert import_cache(tmp_path / "store", folder, dry_run=True).bars == 0


def test_an_import_waits_for_a_series_a_backtest_is_filling(legacy_runs, tmp_path: Path) -> None:
    folder = legacy_runs[("polygon", "daily")][0] / "lumibot-cache"
    key = legacy.polygon_key("stock_AAA_USD_day")
    store = DuckDBDataStorage(tmp_path / "store")
    held, released = threading.Event(), []

    def backtest_filling() -> None:
        with store.writer(key):
            held.set()
            time.sleep(0.5)
            released.append(time.monotonic())

    thread = threading.Thread(target=backtest_filling, daemon=True)
    thread.start()
    held.wait(5)
    report = import_cache(DuckDBDataStorage(tmp_path / "store"), folder, sources=["polygon"])
    finished = time.monotonic()
    thread.join()
    assert released and finished >= released[0], "the import wrote while the series was held"
    assert not report.failed and report.bars > 0


def test_unknown_folders_and_sources_are_clear_errors(tmp_path: Path) -> None:
    from lumibot_duckdb.errors import ConfigError

    with pytest.raises(ConfigError, match="No Lumibot cache at"):
        import_cache(tmp_path / "store", tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="Unknown source"):
        import_cache(tmp_path / "store", tmp_path, sources=["thetadata"])
    (tmp_path / "not-a-cache" / "notes").mkdir(parents=True)
    with pytest.raises(ConfigError, match="Found no cache file of polygon, yahoo, alpaca, ccxt in"):
        import_cache(tmp_path / "store", tmp_path / "not-a-cache")
    wrong = CliRunner().invoke(main, ["import-cache", str(tmp_path / "not-a-cache"), "--store", str(tmp_path / "s")])
    assert wrong.exit_code == 1 and "Nothing was imported" in wrong.output


# -- Polygon: placeholders, the UTC-date defect, days still trading, the splits sidecar ----------------
@pytest.fixture
def polygon(market):
    from lumibot_duckdb.testing.polygon import serve_polygon

    with serve_polygon(market) as http:
        yield http


def _legacy_polygon(asset: Asset, start: dt.datetime, end: dt.datetime, timespan: str) -> Any:
    from lumibot.tools import polygon_helper

    legacy_helper = polygon_helper.get_price_data_from_polygon.__wrapped__
    return legacy_helper("test-key", asset, start, end, timespan=timespan, quote_asset=Asset("USD", "forex"))


def test_sessions_hidden_by_the_utc_date_defect_are_not_covered(polygon, lumibot_cache, tmp_path: Path) -> None:
    """Lumibot caches through Thursday 29 Feb; its after-hours bars of that evening carry the UTC date of
    1 March, so a later request through 1 March never downloads that session. It must not be covered."""
    from lumibot_duckdb.sources.polygon import PolygonDataBacktesting, polygon_series_key

    aaa = Asset("AAA")
    _legacy_polygon(aaa, NY.localize(dt.datetime(2024, 2, 26)), NY.localize(dt.datetime(2024, 2, 29, 23, 59)),
                    "minute")
    frame = _legacy_polygon(aaa, NY.localize(dt.datetime(2024, 2, 26)), NY.localize(dt.datetime(2024, 3, 1, 23, 59)),
                            "minute")
    assert not (frame.index.tz_convert(NY).date == dt.date(2024, 3, 1)).any(), "Lumibot's defect did not show"
    report = import_cache(tmp_path / "store", lumibot_cache, sources=["polygon"])
    (item,) = report.items
    assert any("2024-03-01" in n and "after-hours" in n for n in item.notes), item.notes
    key = polygon_series_key(aaa, Asset("USD", "forex"), "minute")
    with DuckDBDataStorage(tmp_path / "store") as store:
        coverage = store.coverage(key)
    assert coverage[-1].end == pd.Timestamp("2024-03-01", tz=NY).tz_convert("UTC")
    polygon.reset()
    ours = PolygonDataBacktesting(dt.datetime(2024, 2, 1), dt.datetime(2024, 3, 5), api_key="test-key",
                                  show_progress_bar=False, cache_dir=tmp_path / "store")
    from lumibot.tools import polygon_helper

    got = ours._polygon_prices(polygon_helper.get_price_data_from_polygon.__wrapped__, "test-key", aaa,
                               NY.localize(dt.datetime(2024, 2, 26)), NY.localize(dt.datetime(2024, 3, 1, 23, 59)),
                               timespan="minute", quote_asset=Asset("USD", "forex"))
    asked = [r for r in polygon.requests if r.kind == "aggs"]
    assert len(asked) == 1 and asked[0].start == "2024-03-01", asked
    assert (got.index.tz_convert(NY).date == dt.date(2024, 3, 1)).sum() > 390


def test_placeholder_rows_are_asked_and_empty(polygon, lumibot_cache, tmp_path: Path) -> None:
    from lumibot_duckdb.sources.polygon import polygon_series_key

    polygon.fail("empty", symbol="AAA")
    _legacy_polygon(Asset("AAA"), NY.localize(dt.datetime(2024, 1, 2)), NY.localize(dt.datetime(2024, 1, 31)), "day")
    cached = pd.read_parquet(lumibot_cache / "polygon" / "stock_AAA_USD_day.parquet")
    assert cached["missing"].all() and len(cached) == 21, "Lumibot wrote a placeholder per trading day"
    report = import_cache(tmp_path / "store", lumibot_cache, sources=["polygon"])
    (item,) = report.items
    assert item.status == "imported" and item.bars == 0
    assert any("21 placeholder day(s)" in n for n in item.notes), item.notes
    key = polygon_series_key(Asset("AAA"), Asset("USD", "forex"), "day")
    with DuckDBDataStorage(tmp_path / "store") as store:
        assert store.missing_ranges(key, pd.Timestamp("2024-01-02", tz=NY), pd.Timestamp("2024-02-01", tz=NY)) == []
        assert store.read(key, "2024-01-01", "2024-02-02").empty


def test_days_not_over_when_the_file_was_written_are_left_out(polygon, lumibot_cache, tmp_path: Path) -> None:
    _legacy_polygon(Asset("AAA"), NY.localize(dt.datetime(2024, 1, 2)), NY.localize(dt.datetime(2024, 1, 10, 23, 59)),
                    "minute")
    path = lumibot_cache / "polygon" / "stock_AAA_USD_minute.parquet"
    written = pd.Timestamp("2024-01-10 15:00", tz=NY)  # as if the backtest ran during the 10 January session
    os.utime(path, (written.timestamp(), written.timestamp()))
    (item,) = import_cache(tmp_path / "store", lumibot_cache, sources=["polygon"]).items
    assert item.last == pd.Timestamp("2024-01-10", tz=NY).tz_convert("UTC").isoformat()
    (reason, left_out), = item.skipped.items()
    assert "not over when Lumibot last wrote the file" in reason and left_out > 390


def test_imported_stock_bars_are_as_of_the_splits_sidecar_day(polygon, lumibot_cache, tmp_path: Path) -> None:
    """A split after the day Lumibot last saw the split list makes the imported bars stale: the next fill
    that extends the series asks for all of it again (as Lumibot would delete its file)."""
    from lumibot.tools import polygon_helper

    from lumibot_duckdb.sources.polygon import PolygonDataBacktesting, polygon_series_key

    aaa, usd = Asset("AAA"), Asset("USD", "forex")
    for _ in range(2):  # the second call finds a cache file and writes the splits sidecar
        _legacy_polygon(aaa, NY.localize(dt.datetime(2024, 1, 2)), NY.localize(dt.datetime(2024, 2, 1)), "day")
    sidecar = lumibot_cache / "polygon" / "stock_AAA_USD_day_splits.parquet"
    assert sidecar.exists()
    seen = pd.Timestamp("2024-03-01 12:00", tz=NY).timestamp()
    os.utime(sidecar, (seen, seen))
    import_cache(tmp_path / "store", lumibot_cache, sources=["polygon"])
    key = polygon_series_key(aaa, usd, "day")
    with DuckDBDataStorage(tmp_path / "store") as store, store.writer(key) as writer:
        assert writer.as_of(tz="America/New_York") == dt.date(2024, 3, 1)
    polygon.splits["AAA"] = [{"ticker": "AAA", "execution_date": "2024-06-03", "split_from": 1, "split_to": 4}]
    polygon.reset()
    ours = PolygonDataBacktesting(dt.datetime(2024, 1, 2), dt.datetime(2024, 3, 1), api_key="test-key",
                                  show_progress_bar=False, cache_dir=tmp_path / "store")
    ours._polygon_prices(polygon_helper.get_price_data_from_polygon.__wrapped__, "test-key", aaa,
                         NY.localize(dt.datetime(2024, 1, 2)), NY.localize(dt.datetime(2024, 2, 29)), timespan="day",
                         quote_asset=usd)
    asked = [r for r in polygon.requests if r.kind == "aggs"]
    assert asked and asked[0].start == "2024-01-02", "the stale imported bars were kept"


# -- Yahoo: Lumibot's re-stamping undone, intraday left alone, pickles read safely --------------------
def test_yahoo_pickles_other_than_daily_bars_are_skipped_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "cache" / "yahoo"
    folder.mkdir(parents=True)
    frame = pd.DataFrame({"Open": [1.0], "High": [1.0], "Low": [1.0], "Close": [1.0], "Volume": [1]},
                         index=pd.DatetimeIndex([pd.Timestamp("2024-01-02 09:30", tz=NY)], name="Datetime"))
    from lumibot.tools.yahoo_helper import _YahooData

    (folder / "AAA_1m.pickle").write_bytes(pickle.dumps(_YahooData("AAA", "1m", frame)))

    class Payload:
        def __reduce__(self) -> Any:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    (folder / "EVIL_1d.pickle").write_bytes(pickle.dumps(Payload()))
    report = import_cache(tmp_path / "store", tmp_path / "cache", sources=["yahoo"])
    reasons = {Path(i.legacy).name: i.reason for i in report.items}
    assert "last days of real time only" in reasons["AAA_1m.pickle"]
    assert "refusing to build" in reasons["EVIL_1d.pickle"] and not (tmp_path / "pwned").exists()
    assert {i.status for i in report.items} == {"skipped"}


def test_yahoo_stamps_are_undone_exactly() -> None:
    days = pd.DatetimeIndex(["2024-01-02", "2024-01-03"]).tz_localize(NY)
    us, zone = legacy._yahoo_stamps(days + pd.Timedelta(hours=16), {"market": "us_market",
                                                                  "exchangeTimezoneName": "America/New_York"})
    assert zone == "America/New_York" and list(us) == list(days.tz_convert("UTC"))
    crypto_days = pd.DatetimeIndex(["2024-01-02", "2024-01-03"]).tz_localize("UTC")
    crypto, zone = legacy._yahoo_stamps((crypto_days + pd.Timedelta(hours=23, minutes=59)).tz_convert(NY),
                                        {"market": "ccc_market", "exchangeTimezoneName": "UTC"})
    assert zone == "UTC" and list(crypto) == list(crypto_days)
    plain, zone = legacy._yahoo_stamps(days, None)  # info failed: Lumibot kept Yahoo's own midnight stamps
    assert list(plain) == list(days.tz_convert("UTC"))
    assert legacy._yahoo_stamps(days + pd.Timedelta(hours=11, minutes=7), None)[0] is None


# -- Alpaca: only real bars, series recognised only with the key they were fetched with --------------
def test_alpaca_rows_lumibot_forward_filled_are_not_imported(tmp_path: Path) -> None:
    """A window CSV written by Lumibot's own reindex-and-fill over bars missing a session: that session is
    covered with no bar (Alpaca had none), the filled row is not imported."""
    from lumibot.backtesting.alpaca_backtesting import AlpacaBacktesting as LegacyAlpaca

    days = pd.DatetimeIndex(pd.bdate_range("2024-01-08", "2024-01-12")).tz_localize(NY)
    real = days[days.day != 10]
    frame = pd.DataFrame({"timestamp": real, "open": 10.0 + np.arange(4), "high": 11.0 + np.arange(4),
                          "low": 9.0 + np.arange(4), "close": 10.5 + np.arange(4), "volume": 1000.0})
    filled = LegacyAlpaca.__new__(LegacyAlpaca)._reindex_and_fill(df=frame, trading_times=days, timestep="day")
    assert len(filled) == 5 and (filled["volume"] == 0).sum() == 1
    folder = tmp_path / "cache" / "alpaca"
    folder.mkdir(parents=True)
    filled.to_csv(folder / "AAA-STOCK_USD-FOREX_NASDAQ_DAY_AMERICA-NEW-YORK_2024-01-08_2024-01-12.csv", index=False)
    (item,) = import_cache(tmp_path / "store", tmp_path / "cache", sources=["alpaca"]).items
    assert item.series == "alpaca AAA day (split)" and item.bars == 4
    assert item.skipped == {"rows Lumibot forward-filled (no trade: volume 0)": 1}
    key = SeriesKey("alpaca", "AAA", "day", "stock", "USD", "", "split")
    with DuckDBDataStorage(tmp_path / "store") as store:
        stored = store.read(key, "2024-01-01", "2024-02-01")
        assert list(stored.index) == list(real.tz_convert("UTC"))
        assert store.coverage(key) == [Interval(days[0], pd.Timestamp("2024-01-13", tz=NY))]


def test_alpaca_stock_minute_csvs_and_unknown_shared_series_are_skipped_with_the_reason(legacy_runs,
                                                                                        tmp_path: Path) -> None:
    folder = legacy_runs[("alpaca", "minute")][0] / "lumibot-cache"
    report = import_cache(tmp_path / "store", folder, sources=["alpaca"], credentials=[])
    reasons = [i.reason for i in report.items]
    assert any("regular-session minutes" in r for r in reasons), reasons
    assert any("not recognised" in r and "ALPACA_API_KEY" in r for r in reasons), reasons
    assert all(i.key["timeframe"] == "day" for i in report.items if i.bars), "minute bars were imported"


# -- CCXT: rounded prices only on request, and then flagged --------------------------------------------
def test_rounded_ccxt_caches_are_skipped_unless_asked_and_then_flagged(legacy_runs, tmp_path: Path) -> None:
    folder = legacy_runs[("ccxt", "daily")][0] / "lumibot-cache"
    skipped = import_cache(tmp_path / "store", folder, sources=["ccxt"])
    for item in skipped.items:
        assert item.status == "skipped" and "DECIMAL(18,3)" in item.reason and "--include-rounded" in item.reason
        assert item.skipped["rounded to 3 decimals by Lumibot's DECIMAL(18,3) columns"] > 300
    taken = import_cache(tmp_path / "store", folder, sources=["ccxt"], include_rounded=True)
    assert {i.status for i in taken.items} == {"imported"}
    with DuckDBDataStorage(tmp_path / "store") as store:
        rows = status(store).series
        assert rows and all(r.flags["rounded"]["decimals"] == 3 for r in rows)
        closes = store.read(rows[0].key, "2023-01-01", "2025-01-01")["close"]
        assert (closes.round(3) == closes).all()
    shown = CliRunner().invoke(main, ["db-status", "--store", str(tmp_path / "store")])
    assert shown.exit_code == 0 and "rounded to 3 decimals" in shown.output
    pruned = CliRunner().invoke(main, ["maintain", "prune", "--source", "ccxt", "--store", str(tmp_path / "store"),
                                       "--yes"])
    assert pruned.exit_code == 0, pruned.output
    with DuckDBDataStorage(tmp_path / "store") as store:
        assert all(not store.flags(r.key) for r in rows), "a pruned series kept its flags"


# -- the keys are the data sources' keys -------------------------------------------------------------
def test_legacy_names_map_to_the_keys_the_data_sources_read() -> None:
    from lumibot_duckdb.sources import alpaca, ccxt, polygon, yahoo

    usd = Asset("USD", "forex")
    cases = [("stock_SPY_USD_minute", Asset("SPY"), usd, "minute"), ("stock_SPY_minute", Asset("SPY"), None, "minute"),
             ("crypto_BTC_USD_day", Asset("BTC", "crypto"), usd, "day"), ("index_SPX_USD_day", Asset("SPX", "index"),
                                                                         usd, "day"),
             ("option_SPY_240119_470.0_CALL_minute",
              Asset("SPY", "option", expiration=dt.date(2024, 1, 19), strike=470.0, right="CALL"), usd, "minute")]
    for stem, asset, quote, timespan in cases:
        assert legacy.polygon_key(stem) == polygon.polygon_series_key(asset, quote, timespan), stem
    assert legacy.POLYGON_ADJUSTMENT == polygon.ADJUSTMENT and legacy.YAHOO_HISTORY_START == yahoo.HISTORY_START
    assert legacy.ccxt_key("binance", "BTC_USDT_1m") == ccxt.ccxt_series_key("BTC/USDT", "1m", "binance")
    assert legacy.ccxt_key("kraken", "1000SHIB_USDT_1d") == ccxt.ccxt_series_key("1000SHIB/USDT", "1d", "kraken")
    for symbol, asset in (("SPY", Asset("SPY")), ("^SPX", Asset("SPX", "index")), ("ES=F", Asset("ES", "future"))):
        ours = SeriesKey("yahoo", symbol, "day", legacy.yahoo_asset_type(symbol, None), "", "", "raw")
        assert ours == yahoo.yahoo_series_key(symbol, asset), symbol
    from alpaca.data.requests import CryptoBarsRequest, StockBarsRequest
    from alpaca.data.timeframe import TimeFrame

    window = legacy.alpaca_window("AAA-STOCK_USD-FOREX_NASDAQ_DAY_AMERICA-NEW-YORK_AA_2024-01-08_2024-02-23")
    request = StockBarsRequest(symbol_or_symbols="AAA", timeframe=TimeFrame.Day, start=dt.datetime(2024, 1, 8),
                               adjustment="all")
    assert window is not None and window.tz == "America/New_York"
    assert window.key() == alpaca.alpaca_series_key(Asset("AAA"), usd, "day", request)
    crypto = legacy.alpaca_window("BTC-CRYPTO_USD-FOREX_24-7_MINUTE_UTC_2024-01-08_2024-02-23")
    assert crypto is not None and crypto.request_symbol == "BTC/USD"
    assert crypto.key() == alpaca.alpaca_series_key(Asset("BTC", "crypto"), usd, "minute", CryptoBarsRequest(
        symbol_or_symbols="BTC/USD", timeframe=TimeFrame.Minute, start=dt.datetime(2024, 1, 8)))
    option = legacy.alpaca_window("SPY-OPTION_USD-FOREX_470_CALL_2024-01-19_TRADES_NASDAQ_MINUTE_AMERICA-NEW-YORK_"
                                  "2024-01-02_2024-01-19")
    assert option is not None and option.key().symbol == "SPY240119C00470000"


def test_shared_bar_folders_are_named_as_lumibot_names_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from lumibot.tools import shared_bar_cache

    monkeypatch.delenv("LUMIBOT_SHARED_BARS_SCOPE", raising=False)
    for symbol, timeframe, request_type, adjustment in (("SPY", "1Day", "StockBarsRequest", "split"),
                                                        ("BTC/USD", "1Min", "CryptoBarsRequest", None),
                                                        ("SPY240119C00470000", "1Hour", "OptionBarsRequest", None)):
        scope = shared_bar_cache.credential_scope("alpaca", "a-key")
        timestep = {"1Day": "1day", "1Min": "1minute", "1Hour": "1hour"}[timeframe]
        theirs = shared_bar_cache.BarSeries.make("alpaca", symbol, timestep, scope=scope,
                                                 adjusted=adjustment not in (None, "raw"), requestType=request_type,
                                                 timeframe=timeframe, feed=None, adjustment=adjustment, asof=None,
                                                 currency=None)
        assert legacy.credential_scope("a-key") == scope
        assert legacy.shared_bars_digest(symbol, timeframe, request_type, adjustment, scope) == theirs.digest


# -- the command line ----------------------------------------------------------------------------------
def test_the_command_prints_a_summary_per_series_and_json(legacy_runs, tmp_path: Path) -> None:
    folder = legacy_runs[("yahoo", "daily")][0] / "lumibot-cache"
    runner = CliRunner()
    dry = runner.invoke(main, ["import-cache", str(folder), "--store", str(tmp_path / "store"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "yahoo AAA day" in dry.output and "would import" in dry.output and "(dry run)" in dry.output
    done = runner.invoke(main, ["import-cache", str(folder), "--store", str(tmp_path / "store"), "--json"])
    assert done.exit_code == 0, done.output
    document = json.loads(done.output)
    assert document["sources"]["yahoo"]["imported"] == 2 and document["bars"] > 2000
    assert {i["status"] for i in document["items"]} == {"imported"}
    again = runner.invoke(main, ["import-cache", str(folder), "--store", str(tmp_path / "store")])
    assert "unchanged" in again.output and "0 bars imported" in again.output


def test_a_copy_of_a_legacy_cache_imports_the_same(legacy_runs, tmp_path: Path) -> None:
    """(Coverage never relies on when a file was copied: a copy's newer mtime proves no more days.)"""
    source = legacy_runs[("polygon", "daily")][0] / "lumibot-cache"
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)  # new mtimes
    original = import_cache(tmp_path / "a", source, sources=["polygon"])
    copied = import_cache(tmp_path / "b", copy, sources=["polygon"])
    assert [(i.series, i.bars, i.covered) for i in original.items] == \
        [(i.series, i.bars, i.covered) for i in copied.items]
