"""The Polygon drop-in at its seam: legacy frames, incremental fetches, bad answers, fallback."""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import pytz
from lumibot.backtesting import PolygonDataBacktesting as LegacyPolygon
from lumibot.entities import Asset
from lumibot.tools import polygon_helper

from lumibot_duckdb import ConfigError, PolygonDataBacktesting, ProviderDataError, StoreError
from lumibot_duckdb.errors import ProviderRequestError
from lumibot_duckdb.sources.base import DuckDBFallbackWarning
from lumibot_duckdb.sources.polygon import polygon_series_key
from lumibot_duckdb.testing.polygon import FakeResponse, serve_polygon

NY = pytz.timezone("America/New_York")
USD = Asset("USD", "forex")
LEGACY_HELPER = polygon_helper.get_price_data_from_polygon.__wrapped__


def ny(*args: int) -> dt.datetime:
    return NY.localize(dt.datetime(*args))


@pytest.fixture
def polygon(market):
    with serve_polygon(market) as http:
        yield http


def make_source(kind: str, store_dir: Path, start: dt.datetime = dt.datetime(2024, 1, 2),
                end: dt.datetime = dt.datetime(2024, 3, 1), **options: Any) -> Any:
    if kind == "legacy":
        return LegacyPolygon(start, end, api_key="test-key", show_progress_bar=False)
    return PolygonDataBacktesting(start, end, api_key="test-key", show_progress_bar=False,
                                  use_duckdb=options.pop("use_duckdb", True), cache_dir=store_dir, **options)


def fetch(source: Any, asset: Asset, start: dt.datetime, end: dt.datetime, timespan: str) -> pd.DataFrame | None:
    """One call of the Polygon seam, the way ``_update_pandas_data`` makes it."""
    if isinstance(source, PolygonDataBacktesting):
        return source._polygon_prices(LEGACY_HELPER, "test-key", asset, start, end, timespan=timespan, quote_asset=USD)
    return LEGACY_HELPER("test-key", asset, start, end, timespan=timespan, quote_asset=USD)


@pytest.mark.parametrize("timespan, start, end", [
    ("day", ny(2023, 12, 20), ny(2024, 2, 29, 23, 59)),
    ("minute", ny(2024, 1, 2, 9, 30), ny(2024, 1, 12, 23, 59)),
    ("minute", ny(2024, 1, 3, 13, 17), ny(2024, 1, 5)),   # midnight end: legacy widens it to the whole day
    ("hour", ny(2024, 1, 2), ny(2024, 1, 20, 23, 59)),
])
def test_frames_are_those_of_legacy(polygon, lumibot_cache, store_dir, timespan, start, end) -> None:
    legacy = fetch(make_source("legacy", store_dir), Asset("AAA"), start, end, timespan)
    ours = make_source("duckdb", store_dir)
    cold = fetch(ours, Asset("AAA"), start, end, timespan)
    warm = fetch(make_source("duckdb", store_dir), Asset("AAA"), start, end, timespan)
    pd.testing.assert_frame_equal(cold, legacy)
    pd.testing.assert_frame_equal(warm, legacy)
    assert len(legacy) > 0


def test_real_daily_bars_round_trip_exactly(shared_data, lumibot_cache, store_dir) -> None:
    from markets import real_market

    with serve_polygon(real_market(shared_data)):
        legacy = fetch(make_source("legacy", store_dir), Asset("TLT"), ny(2019, 1, 1), ny(2019, 12, 31, 23, 59), "day")
        ours = fetch(make_source("duckdb", store_dir), Asset("TLT"), ny(2019, 1, 1), ny(2019, 12, 31, 23, 59), "day")
    pd.testing.assert_frame_equal(ours, legacy)
    csv = pd.read_csv(shared_data / "TLT_1d_2019.csv")
    assert ours["close"].tolist() == csv["Close"].tolist()


@pytest.mark.parametrize("timestep, length", [("day", 30), ("minute", 200)])
def test_lumibot_data_objects_are_identical(polygon, lumibot_cache, store_dir, timestep, length) -> None:
    when = ny(2024, 2, 1, 10, 30)
    frames = []
    for kind in ("legacy", "duckdb"):
        source = make_source(kind, store_dir)
        source._datetime = when
        source._update_pandas_data(Asset("AAA"), USD, length, timestep, when)
        data = source.pandas_data[(Asset("AAA"), USD)]
        if getattr(data, "iter_index_dict", None) is None:
            data.repair_times_and_fill(data.df.index)  # what Lumibot does on first use (ours did it already)
        frames.append(data.df)
    legacy, ours = frames
    # the DuckDB path holds a window around the clock (bounded memory): every bar of it is legacy's bar,
    # and it holds the whole lookback of the request
    assert ours.index[0] <= legacy.index[legacy.index.searchsorted(when) - length]
    assert ours.index[-1] >= when
    # (the first bar's return needs the bar before it, which only legacy holds)
    pd.testing.assert_frame_equal(ours.iloc[1:], legacy.loc[ours.index[0]:ours.index[-1]].iloc[1:])


def test_shifted_window_asks_only_for_the_new_dates(polygon, lumibot_cache, store_dir) -> None:
    counts = {}
    for kind in ("legacy", "duckdb"):
        source = make_source(kind, store_dir)
        fetch(source, Asset("AAA"), ny(2024, 1, 2), ny(2024, 2, 29, 23, 59), "minute")
        polygon.reset()
        frame = fetch(source, Asset("AAA"), ny(2024, 2, 1), ny(2024, 3, 29, 23, 59), "minute")
        counts[kind] = (polygon.count("aggs"), polygon.requested_days())
        days = frame.index.tz_convert(NY).date
        assert days[0] == dt.date(2024, 2, 1) and days[-1] == dt.date(2024, 3, 28)  # Mar 29 was Good Friday
        regular = frame.index.tz_convert(NY).indexer_between_time("09:30", "15:59")
        march_first = sum(1 for d in days[regular] if d == dt.date(2024, 3, 1))
        assert march_first == (0 if kind == "legacy" else 390), kind
    # Ours asks for March 1-28 only. Declared legacy defect: Lumibot decides which dates it holds by
    # the UTC date of its minute bars, so Feb 29's after-hours bars (00:00-01:00 UTC on Mar 1) make
    # Mar 1 look cached; legacy asks for Mar 4-28 and never gets Mar 1's session.
    assert counts["duckdb"] == (1, 28)
    assert counts["legacy"] == (1, 25)


def test_widened_window_does_not_download_the_middle_again(polygon, lumibot_cache, store_dir) -> None:
    days = {}
    for kind in ("legacy", "duckdb"):
        source = make_source(kind, store_dir)
        fetch(source, Asset("AAA"), ny(2024, 2, 1), ny(2024, 2, 29, 23, 59), "minute")
        polygon.reset()
        fetch(source, Asset("AAA"), ny(2024, 1, 2), ny(2024, 3, 29, 23, 59), "minute")
        days[kind] = polygon.requested_days()
    assert days["duckdb"] == 30 + 28   # Jan 2-31 and Mar 1-28
    assert days["legacy"] > days["duckdb"]  # legacy asks from the first to the last missing date


def _bad_once(ticker: str, answer: FakeResponse):
    state = {"left": 1}

    def intercept(request):
        if request.kind == "aggs" and request.ticker == ticker and state["left"]:
            state["left"] -= 1
            return answer
        return None
    return intercept


@pytest.mark.parametrize("answer", [
    FakeResponse.json({"status": "OK", "results": [{"t": 1704205800000, "o": 1.0, "h": 1.2, "l": 0.9}]}),
    FakeResponse.json({"status": "OK", "results": [{"t": "soon", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1}]}),
    FakeResponse.json({"status": "OK", "results": "nope"}),
    FakeResponse(200, b"<html>maintenance</html>"),
])
def test_each_kind_of_malformed_aggs_answer_is_caught(polygon, store_dir, answer) -> None:
    """Polygon's ways of sending garbage (the conformance suite checks what follows: asked again, healed)."""
    polygon.intercept(_bad_once("AAA", answer))
    source = make_source("duckdb", store_dir)
    with pytest.raises(ProviderDataError, match="nothing was stored"):
        fetch(source, Asset("AAA"), ny(2024, 1, 2), ny(2024, 1, 20), "day")
    assert source.store.coverage(polygon_series_key(Asset("AAA"), USD, "day")) == []


def test_through_lumibot_a_malformed_answer_is_a_clear_error(polygon, store_dir) -> None:
    """Lumibot wraps every error of its Polygon helper in "Error getting data from Polygon": ours reaches the user."""
    polygon.intercept(_bad_once("AAA", FakeResponse(200, b"{truncated")))
    source = make_source("duckdb", store_dir)
    with pytest.raises(ProviderDataError, match=r"Polygon answered .* not JSON.*series polygon:stock:AAA"):
        source._update_pandas_data(Asset("AAA"), USD, 5, "day", ny(2024, 2, 1, 10))
    with pytest.raises(ProviderDataError):  # again at the next clock step (Lumibot's get_last_price swallows it)
        source._update_datetime(ny(2024, 2, 2, 10))
    source._update_datetime(ny(2024, 2, 3, 10))  # and no more


def test_legacy_caches_a_garbage_answer_as_no_data_ours_fetches_again(polygon, lumibot_cache, store_dir) -> None:
    """Declared difference: the polygon client turns non-JSON into [] and Lumibot records those dates as empty."""
    for kind in ("legacy", "duckdb"):
        polygon.intercept(_bad_once("AAA", FakeResponse(200, b"<html>maintenance</html>")))
        source = make_source(kind, store_dir)
        try:
            fetch(source, Asset("AAA"), ny(2024, 1, 2), ny(2024, 1, 20), "day")
        except ProviderDataError:
            pass
        again = fetch(make_source(kind, store_dir), Asset("AAA"), ny(2024, 1, 2), ny(2024, 1, 20), "day")
        rows = again.dropna(subset=["close"]) if again is not None and "close" in again else []
        assert len(rows) == (0 if kind == "legacy" else 13), kind


def test_a_failed_chunk_keeps_the_others_and_is_asked_again(polygon, store_dir) -> None:
    first_chunk = {"left": 10**6}

    def upstream_down(request):  # the first 31-day chunk fails on every attempt
        if request.kind == "aggs" and request.start == "2024-01-02" and first_chunk["left"]:
            return FakeResponse(500, b'{"status":"ERROR","error":"upstream"}')
        return None

    polygon.intercept(upstream_down)
    source = make_source("duckdb", store_dir)
    with pytest.raises(ProviderRequestError, match=r"Polygon did not answer AAA day bars 2024-01-02\.\.2024-02-01: "
                                                   r"HTTP 500, 5 times .*upstream.*Nothing was stored") as raised:
        fetch(source, Asset("AAA"), ny(2024, 1, 2), ny(2024, 4, 30), "day")
    key = polygon_series_key(Asset("AAA"), USD, "day")
    assert raised.value.series == key and raised.value.attempts == 5
    assert source.store.coverage(key), "the chunks that succeeded are kept"
    first_chunk["left"] = 0
    polygon.reset()
    frame = fetch(source, Asset("AAA"), ny(2024, 1, 2), ny(2024, 4, 30), "day")
    assert polygon.count("aggs") == 1 and len(frame) == 83


def test_strict_mode_raises_instead(polygon, tmp_path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    source = make_source("duckdb", blocked / "store", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DuckDBFallbackWarning)
        with pytest.raises(StoreError, match="LUMIBOT_DUCKDB_CACHE_DIR"):
            fetch(source, Asset("AAA"), ny(2024, 1, 2), ny(2024, 1, 20), "day")


def test_environment_flag_switches_the_path(polygon, lumibot_cache, store_dir, monkeypatch) -> None:
    monkeypatch.setenv("LUMIBOT_USE_DUCKDB", "off")
    assert not PolygonDataBacktesting(dt.datetime(2024, 1, 2), dt.datetime(2024, 2, 1), api_key="k").use_duckdb
    monkeypatch.setenv("LUMIBOT_USE_DUCKDB", "definitely")
    with pytest.raises(ConfigError, match="LUMIBOT_USE_DUCKDB"):
        PolygonDataBacktesting(dt.datetime(2024, 1, 2), dt.datetime(2024, 2, 1), api_key="k")
    assert PolygonDataBacktesting(dt.datetime(2024, 1, 2), dt.datetime(2024, 2, 1), api_key="k",
                                  use_duckdb=True, cache_dir=store_dir).use_duckdb


def test_a_split_after_the_bars_were_stored_refreshes_the_series(polygon, store_dir) -> None:
    source = make_source("duckdb", store_dir)
    fetch(source, Asset("AAA"), ny(2024, 1, 2), ny(2024, 1, 31), "day")
    key = polygon_series_key(Asset("AAA"), USD, "day")
    for bar_file in source.store.files(key):  # pretend these were fetched in 2023
        old_name = bar_file.path.name.replace(bar_file.token, "17a0000000000000aaaaaa")
        bar_file.path.rename(bar_file.path.with_name(old_name))
    polygon.splits["AAA"] = [{"execution_date": "2024-01-15", "split_from": 1, "split_to": 2, "ticker": "AAA"}]
    polygon.reset()
    fetch(source, Asset("AAA"), ny(2024, 1, 2), ny(2024, 2, 29), "day")
    assert polygon.count("splits") == 1
    assert polygon.requested_days() >= 59, "the whole range is asked for again, not only February"
    assert all(not f.token.startswith("17a") for f in source.store.files(key))
    polygon.reset()
    fetch(source, Asset("AAA"), ny(2024, 1, 2), ny(2024, 3, 29), "day")
    assert polygon.count("splits") == 0, "checked once a day"


def test_options_are_stored_under_their_contract(polygon, store_dir) -> None:
    option = Asset("SPY", "option", expiration=dt.date(2024, 1, 19), strike=470, right="CALL")
    frame = fetch(make_source("duckdb", store_dir), option, ny(2024, 1, 2), ny(2024, 1, 31), "day")
    assert frame.index[-1].date() == dt.date(2024, 1, 19)  # nothing after expiry is asked for
    assert polygon.count("contracts") == 1
    assert polygon_series_key(option, USD, "day").symbol == "SPY240119C00470000"


def test_crypto_days_are_utc_days(polygon, lumibot_cache, store_dir) -> None:
    btc = Asset("BTC", "crypto")
    legacy = fetch(make_source("legacy", store_dir), btc, ny(2024, 1, 2), ny(2024, 1, 9), "minute")
    ours = fetch(make_source("duckdb", store_dir), btc, ny(2024, 1, 2), ny(2024, 1, 9), "minute")
    pd.testing.assert_frame_equal(ours, legacy)
    coverage = make_source("duckdb", store_dir).store.coverage(polygon_series_key(btc, USD, "minute"))
    assert coverage[0].start == pd.Timestamp("2024-01-02", tz="UTC")


def test_parallel_requests_from_lumibot_threads(polygon, store_dir) -> None:
    source = make_source("duckdb", store_dir)
    source._datetime = ny(2024, 2, 1, 10)
    bars = source.get_bars(["AAA", "BBB", "CCC", "DDD"], 10, timestep="day", quote=USD)
    assert {a.symbol for a in bars} == {"AAA", "BBB", "CCC", "DDD"}
    assert all(len(b.df) >= 5 for b in bars.values())
    assert len(source.store.series()) == 4


def test_unsettled_bars_are_never_recorded_as_covered(polygon, store_dir) -> None:
    """A window reaching today: bars of the last 15 minutes (or today's daily bar) stay un-covered."""
    btc = Asset("BTC", "crypto")  # trades every day, so today always has bars
    now = pd.Timestamp.now(tz="UTC")
    start = (now - pd.Timedelta(days=3)).tz_convert(NY).to_pydatetime()
    # Crypto days are UTC days and the range asked runs to the end of ``end``'s date: ``end`` = now in New York
    # would, between 00:00 and 05:00 UTC (New York's evening), end the range at today's UTC midnight, all settled.
    # The last minute of today's UTC day, in New York, reaches the still-forming bars at any hour.
    end = (now.normalize() + pd.Timedelta(hours=23, minutes=59)).tz_convert(NY).to_pydatetime()
    source = make_source("duckdb", store_dir)
    for timespan in ("minute", "day"):
        fetch(source, btc, start, end, timespan)
        coverage = source.store.coverage(polygon_series_key(btc, USD, timespan))
        limit = now - pd.Timedelta(minutes=15) if timespan == "minute" else now.normalize()
        assert coverage and coverage[-1].end <= limit + pd.Timedelta(seconds=5), timespan
    polygon.reset()
    fetch(source, btc, start, end, "minute")
    assert polygon.count("aggs") == 1, "the still-forming part is asked for again"


def test_disk_full_mid_backtest_falls_back_and_keeps_what_was_stored(polygon, lumibot_cache, store_dir,
                                                                      monkeypatch) -> None:
    import errno

    from lumibot_duckdb.store.local import LocalFolder

    source = make_source("duckdb", store_dir)
    source._update_pandas_data(Asset("AAA"), USD, 5, "day", ny(2024, 2, 1, 10))
    stored = source.store.coverage(polygon_series_key(Asset("AAA"), USD, "day"))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalFolder, "publish", disk_full)
    with pytest.warns(DuckDBFallbackWarning, match="No space left"):
        source._update_pandas_data(Asset("BBB"), USD, 5, "day", ny(2024, 2, 1, 10))
    assert (Asset("BBB"), USD) in source.pandas_data, "served by the legacy path"
    assert source.store.coverage(polygon_series_key(Asset("AAA"), USD, "day")) == stored


def test_per_call_answers_follow_the_clock_and_lumibots_check_is_skipped_only_when_it_would_pass(
        polygon, lumibot_cache, store_dir, monkeypatch) -> None:
    """Every request of a run, answered by the DuckDB path exactly as by legacy, across window rolls.

    Lumibot's ``_update_pandas_data`` checks, per request, that the held ``Data`` starts early enough;
    the DuckDB path skips that check for a request kind once it passed on the same ``Data`` (it only
    gets easier as the clock advances) and runs it again after every roll.
    """
    checks: list[Any] = []
    original = LegacyPolygon._update_pandas_data
    monkeypatch.setattr(LegacyPolygon, "_update_pandas_data",
                        lambda self, *a, **k: (checks.append(a[:4]), original(self, *a, **k))[1])
    days = pd.bdate_range("2024-01-03", "2024-04-26")
    answers, counted = {}, {}
    for kind in ("legacy", "duckdb"):
        checks.clear()
        source = make_source(kind, store_dir, end=dt.datetime(2024, 5, 1))
        got = answers[kind] = []
        for day in days:
            for minute in (0, 0, 121):  # the same clock twice, then later that day
                source._datetime = ny(day.year, day.month, day.day, 10, 0) + dt.timedelta(minutes=minute)
                for asset in (Asset("AAA"), Asset("BBB")):
                    got.append(source.get_last_price(asset))
                    bars = source.get_historical_prices(asset, 30, "minute").df
                    got.append(bars[["open", "close", "volume"]].reset_index().to_numpy().tolist())
                    got.append(source.get_historical_prices(asset, 3, "day").df["close"].tolist())
        counted[kind] = len(checks)
        if kind == "duckdb":
            assert source.duckdb_windows.loads > 4, source.duckdb_windows.stats()  # the windows rolled
    assert answers["duckdb"] == answers["legacy"]
    requests = len(days) * 3 * 2 * 3
    assert counted["legacy"] >= requests  # Lumibot checks every request
    assert counted["duckdb"] < requests / 3, counted
