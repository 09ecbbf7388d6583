"""Ingest: every format and layout lands as the same bars; validation rejects or repairs; ingest is idempotent
and never leaves a file half-stored."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from factories import make_bars

from lumibot_duckdb.cli import main
from lumibot_duckdb.errors import BarsValidationError, ConfigError, StoreError
from lumibot_duckdb.ingest import load as ingest_module
from lumibot_duckdb.ingest.load import ingest
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey
from lumibot_duckdb.store.local import LocalFolder

NY = "America/New_York"
ALL = ("1900-01-01", "2200-01-01")


def key(symbol: str = "AAA", timeframe: str = "minute", **fields: str) -> SeriesKey:
    return SeriesKey(fields.pop("source", "ingest"), symbol, timeframe, quote=fields.pop("quote", "USD"), **fields)


def stored(store_dir: Path, series: SeriesKey) -> pd.DataFrame:
    with DuckDBDataStorage(store_dir) as store:
        return store.read(series, *ALL)


def write(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` (no index) as CSV, zstd CSV or Parquet, chosen by the file name."""
    name = path.name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    elif name.endswith(".csv.zst"):
        with pa.output_stream(str(path), compression="zstd") as out:
            out.write(frame.to_csv(index=False).encode())
    else:
        path.write_text(frame.to_csv(index=False))
    return path


def minute_bars(periods: int = 50, start: str = "2024-03-05 14:30") -> pd.DataFrame:
    bars = make_bars(start, periods)
    bars["volume"] = bars["volume"].round()
    return bars


def generic_frame(bars: pd.DataFrame, tz: str = NY) -> pd.DataFrame:
    """The plain layout: naive local times and lower-case columns."""
    local = bars.index.tz_convert(tz).tz_localize(None)
    values = {c: bars[c].to_numpy() for c in ("open", "high", "low", "close", "volume")}
    return pd.DataFrame({"timestamp": local.strftime("%Y-%m-%d %H:%M:%S"), **values})


# -- formats x layouts -----------------------------------------------------------------------------
def _layout(name: str, bars: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """A vendor-shaped frame of ``bars`` and the value columns that layout carries."""
    epoch_ms = bars.index.as_unit("ms").asi8
    ohlcv = ["open", "high", "low", "close", "volume"]
    if name == "polygon":
        frame = pd.DataFrame({"v": bars["volume"], "vw": bars["vwap"], "o": bars["open"], "c": bars["close"],
                              "h": bars["high"], "l": bars["low"], "t": epoch_ms, "n": bars["trade_count"]})
        return frame, [*ohlcv, "vwap", "trade_count"]
    if name == "polygon_long":
        frame = pd.DataFrame({"timestamp": epoch_ms, **{c: bars[c] for c in ohlcv}, "vwap": bars["vwap"],
                              "transactions": bars["trade_count"]})
        return frame, [*ohlcv, "vwap", "trade_count"]
    if name == "alpaca":
        frame = pd.DataFrame({"timestamp": bars.index.strftime("%Y-%m-%dT%H:%M:%SZ"), **{c: bars[c] for c in ohlcv},
                              "trade_count": bars["trade_count"], "vwap": bars["vwap"]})
        return frame, [*ohlcv, "vwap", "trade_count"]
    frame = generic_frame(bars)
    frame.columns = ["Datetime", "Open", "High", "Low", "Close", "Volume"]  # any case
    return frame, ohlcv


@pytest.mark.parametrize("fmt", ["csv", "csv.zst", "parquet"])
@pytest.mark.parametrize("layout", ["polygon", "polygon_long", "alpaca", "generic"])
def test_every_format_and_intraday_layout_stores_the_same_bars(tmp_path, store_dir, fmt, layout):
    bars = minute_bars()
    frame, columns = _layout(layout, bars)
    path = write(frame.reset_index(drop=True), tmp_path / f"AAA_1m.{fmt}")
    report = ingest(store_dir, path)
    expected_layout = "polygon" if layout.startswith("polygon") else layout
    assert report.files[0].layout == expected_layout
    assert report.rows_added == len(bars)
    got = stored(store_dir, key())
    pd.testing.assert_index_equal(got.index, bars.index.as_unit("us"), check_names=False)
    for column in columns:
        np.testing.assert_allclose(got[column].astype(float), bars[column].astype(float), rtol=1e-12)


@pytest.mark.parametrize("fmt", ["csv", "csv.zst", "parquet"])
def test_yahoo_daily_layout_keeps_adjusted_close_dividends_splits_at_new_york_midnight(tmp_path, store_dir, fmt):
    days = pd.bdate_range("2024-03-04", periods=20)  # spans the DST change of 2024-03-10
    rng = np.random.default_rng(3)
    close = 100 + rng.normal(0, 1, len(days)).cumsum()
    frame = pd.DataFrame({"Date": days.strftime("%Y-%m-%d"), "Open": close - 0.5, "High": close + 1,
                          "Low": close - 1, "Close": close, "Adj Close": close * 0.98, "Volume": 1_000_000.0,
                          "Dividends": 0.0, "Stock Splits": 0.0})
    frame.loc[5, "Dividends"] = 0.25
    frame.loc[7, "Stock Splits"] = 2.0
    report = ingest(store_dir, write(frame, tmp_path / f"QQQ_daily.{fmt}"))
    assert report.files[0].layout == "yahoo"
    got = stored(store_dir, key("QQQ", "day"))
    expected = pd.DatetimeIndex(days).tz_localize(NY).tz_convert("UTC")
    assert list(got.index) == list(expected)
    assert got.index[0].hour == 5 and got.index[-1].hour == 4  # EST before 2024-03-10, EDT after
    np.testing.assert_allclose(got["adj_close"], close * 0.98)
    assert got["dividend"].iloc[5] == 0.25 and got["split_ratio"].iloc[7] == 2.0


def test_shared_data_files_ingest_by_their_names(store_dir, shared_data):
    report = ingest(store_dir, shared_data, progress=False)
    by_name = {Path(f.path).name: f for f in report.files}
    assert by_name["SPY_1d_2019.csv"].series == ["ingest:stock:SPY/USD:day:raw"]
    assert by_name["XYZ_1m_2020.csv"].series == ["ingest:stock:XYZ/USD:minute:raw"]
    assert report.rows_added == report.rows_read == 252 * 3 + 1794 + 30397
    spy = stored(store_dir, key("SPY", "day"))
    raw = pd.read_csv(shared_data / "SPY_1d_2019.csv", float_precision="round_trip")  # pandas' default is 1 ulp off
    np.testing.assert_array_equal(spy["close"].to_numpy(), raw["Close"].to_numpy())
    assert spy.index[0] == pd.Timestamp("2019-01-02 05:00", tz="UTC")
    xyz = stored(store_dir, key("XYZ", "minute"))
    assert xyz.index[0] == pd.Timestamp("2020-01-02 14:31", tz="UTC")  # 09:31 New York
    minute = stored(store_dir, key("SPY", "minute"))
    assert minute.index[0] == pd.Timestamp("2020-01-06 12:08", tz="UTC")  # 07:08-05:00


# -- time zones and epochs ---------------------------------------------------------------------------
def test_naive_times_are_read_in_the_stated_time_zone(tmp_path, store_dir):
    bars = minute_bars()
    path = write(generic_frame(bars, "Europe/London"), tmp_path / "AAA_1m.csv")
    ingest(store_dir, path, timezone="Europe/London")
    assert list(stored(store_dir, key()).index) == list(bars.index)


def test_offset_times_keep_their_offset_whatever_the_time_zone(tmp_path, store_dir):
    bars = minute_bars()
    frame = generic_frame(bars)
    frame["timestamp"] = bars.index.tz_convert("Asia/Tokyo").strftime("%Y-%m-%d %H:%M:%S%z")
    ingest(store_dir, write(frame, tmp_path / "AAA_1m.csv"), timezone="Europe/London")
    assert list(stored(store_dir, key()).index) == list(bars.index)


@pytest.mark.parametrize("start", ["2024-03-09 12:00", "2024-11-02 12:00"])  # spring forward, fall back
def test_naive_minutes_across_a_dst_change(tmp_path, store_dir, start):
    bars = minute_bars(periods=3000, start=start)  # every minute, through Sunday 02:00 New York time
    ingest(store_dir, write(generic_frame(bars), tmp_path / "AAA_1m.csv"))
    assert list(stored(store_dir, key()).index) == list(bars.index)


def test_a_local_time_that_does_not_exist_is_an_invalid_row(tmp_path, store_dir):
    frame = generic_frame(minute_bars(periods=10, start="2024-03-10 06:00"))  # 01:00 EST onwards
    frame.loc[5, "timestamp"] = "2024-03-10 02:30:00"  # skipped by the clocks in New York
    expected = r"unparseable time or number: 1 row\(s\) \(line 7: timestamp='2024-03-10 02:30:00'\)"
    with pytest.raises(BarsValidationError, match=expected):
        ingest(store_dir, write(frame, tmp_path / "AAA_1m.csv"))


@pytest.mark.parametrize("zone", [None, "UTC", "Asia/Tokyo"])
def test_parquet_timestamp_columns_naive_or_aware(tmp_path, store_dir, zone):
    bars = minute_bars()
    frame = generic_frame(bars)
    local = bars.index.tz_convert(NY).tz_localize(None)  # naive: read in the stated time zone
    frame["timestamp"] = local if zone is None else bars.index.tz_convert(zone)
    ingest(store_dir, write(frame, tmp_path / "AAA_1m.parquet"))
    assert list(stored(store_dir, key()).index) == list(bars.index)


@pytest.mark.parametrize("unit,scale", [("s", 10**9), ("ms", 10**6), ("us", 10**3), ("ns", 1)])
def test_epoch_units_are_told_apart(tmp_path, store_dir, unit, scale):
    bars = minute_bars()
    frame = generic_frame(bars)
    frame["timestamp"] = bars.index.as_unit("ns").asi8 // scale
    report = ingest(store_dir, write(frame, tmp_path / "AAA_1m.csv"))
    assert f"epoch timestamps in {unit}" in report.files[0].notes
    assert list(stored(store_dir, key()).index) == list(bars.index)


def test_crypto_defaults_to_utc_and_daily_bars_at_utc_midnight_stay_there(tmp_path, store_dir):
    days = pd.date_range("2024-01-01", periods=10, freq="D")
    frame = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
                          "volume": 3.0})
    ingest(store_dir, write(frame, tmp_path / "BTC_1d.csv"), asset_type="crypto", quote="USDT")
    got = stored(store_dir, key("BTC", "day", asset_type="crypto", quote="USDT"))
    assert list(got.index) == list(days.tz_localize("UTC"))


def test_stock_daily_bars_stamped_at_utc_midnight_move_to_new_york_midnight_of_that_date(tmp_path, store_dir):
    days = pd.bdate_range("2024-01-02", periods=5)
    frame = pd.DataFrame({"t": days.tz_localize("UTC").as_unit("ms").asi8, "o": 1.0, "h": 2.0, "l": 0.5, "c": 1.5,
                          "v": 3.0})
    report = ingest(store_dir, write(frame, tmp_path / "AAA_1d.csv"))
    got = stored(store_dir, key("AAA", "day"))
    assert list(got.index) == list(days.tz_localize(NY).tz_convert("UTC"))
    assert any("00:00 UTC" in note for note in report.files[0].notes)


# -- symbol and timeframe ------------------------------------------------------------------------------
def test_symbol_column_makes_one_series_per_symbol(tmp_path, store_dir):
    a, b = minute_bars(), minute_bars() * 2
    frame = pd.concat([generic_frame(a).assign(Symbol="AAA"), generic_frame(b).assign(Symbol="BBB")])
    report = ingest(store_dir, write(frame, tmp_path / "dump.csv"), timeframe="1m")
    assert sorted(report.files[0].series) == ["ingest:stock:AAA/USD:minute:raw", "ingest:stock:BBB/USD:minute:raw"]
    np.testing.assert_allclose(stored(store_dir, key("BBB"))["close"], b["close"])


def test_timeframe_is_inferred_from_spacing_when_the_name_has_none(tmp_path, store_dir):
    report = ingest(store_dir, write(generic_frame(minute_bars()), tmp_path / "AAA.csv"))
    assert report.files[0].series == ["ingest:stock:AAA/USD:minute:raw"]
    assert any("inferred" in note for note in report.files[0].notes)


def test_unknown_symbol_or_timeframe_is_a_clear_error_and_stores_nothing(tmp_path, store_dir):
    with pytest.raises(ConfigError, match=r"Cannot tell the symbol of .*data.csv.*symbol="):
        ingest(store_dir, write(generic_frame(minute_bars()), tmp_path / "data.csv"))
    irregular = generic_frame(minute_bars()).iloc[[0, 3, 7, 12, 20]]
    with pytest.raises(ConfigError, match=r"Cannot tell the timeframe .*timeframe="):
        ingest(store_dir, write(irregular, tmp_path / "AAA.csv"))
    assert DuckDBDataStorage(store_dir).series() == []


def test_options_override_the_file_name(tmp_path, store_dir):
    path = write(generic_frame(minute_bars()), tmp_path / "SPY_1m.csv")
    report = ingest(store_dir, path, symbol="ES", asset_type="future", source="vendor_x")
    assert report.files[0].series == ["vendor_x:future:ES/USD:minute:raw"]


# -- validation: each case, rejected and repaired --------------------------------------------------------
def _corrupt(case: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """``frame`` with one problem of ``case`` at data row 10 (file line 12); returns the rows that should survive."""
    frame = frame.astype({"open": object, "close": object, "timestamp": object, "volume": object})
    n = len(frame)
    if case == "ohlc":
        frame.loc[10, "high"] = float(frame.loc[10, "low"]) - 1
        return frame, n - 1
    if case == "missing":
        frame.loc[10, "close"] = ""
        return frame, n - 1
    if case == "negative":
        frame.loc[10, "volume"] = -5
        return frame, n - 1
    if case == "unparseable":
        frame.loc[10, "open"] = "12,5x"
        return frame, n - 1
    if case == "future":
        frame.loc[10, "timestamp"] = "2099-01-01 10:00:00"
        return frame, n - 1
    if case == "duplicate":
        return pd.concat([frame.iloc[:11], frame.iloc[10:11], frame.iloc[11:]], ignore_index=True), n
    if case == "conflicting_duplicate":
        changed = frame.iloc[10:11].copy()
        changed["close"] = float(changed["close"].iloc[0]) * 0.999
        changed["low"] = min(float(changed["low"].iloc[0]), float(changed["close"].iloc[0]))
        return pd.concat([frame.iloc[:11], changed, frame.iloc[11:]], ignore_index=True), n
    if case == "unsorted":
        order = list(range(n))
        order[10], order[11] = 11, 10
        return frame.iloc[order].reset_index(drop=True), n
    raise AssertionError(case)


CASES = ["ohlc", "missing", "negative", "unparseable", "future", "duplicate", "conflicting_duplicate", "unsorted"]


@pytest.mark.parametrize("case", CASES)
def test_invalid_rows_reject_the_file_naming_file_line_and_remedy(tmp_path, store_dir, case):
    frame, _ = _corrupt(case, generic_frame(minute_bars()))
    path = write(frame, tmp_path / "AAA_1m.csv")
    with pytest.raises(BarsValidationError) as caught:
        ingest(store_dir, path)
    message = str(caught.value)
    assert str(path) in message and "line 1" in message and "on_invalid='repair'" in message and "\n" not in message
    assert ingest_module.PROBLEMS[case] in message
    assert DuckDBDataStorage(store_dir).series() == []


@pytest.mark.parametrize("case", CASES)
def test_repair_drops_sorts_dedupes_and_counts_each_repair(tmp_path, store_dir, case):
    bars = minute_bars()
    frame, survivors = _corrupt(case, generic_frame(bars))
    report = ingest(store_dir, write(frame, tmp_path / "AAA_1m.csv"), on_invalid="repair")
    assert report.files[0].issues == {case: 1}
    assert sum(report.files[0].repairs.values()) == 1 and next(iter(report.files[0].repairs)).startswith(case)
    got = stored(store_dir, key())
    assert len(got) == survivors == report.rows_added
    assert got.index.is_monotonic_increasing and got.index.is_unique
    if case == "conflicting_duplicate":  # the last row of a duplicated time wins, as in the store
        assert got["close"].iloc[10] == pytest.approx(bars["close"].iloc[10] * 0.999)
    else:
        expected = bars.drop(bars.index[10]) if survivors < len(bars) else bars
        np.testing.assert_allclose(got["close"], expected["close"])


@pytest.mark.parametrize("on_invalid", ["reject", "repair"])
@pytest.mark.parametrize("case", [*CASES, "none-literal", "padded", "hash-na", "epoch", "offset"])
def test_typed_reading_reports_and_stores_what_reading_as_text_does(tmp_path, case, on_invalid, monkeypatch):
    """Arrow parses times and numbers while reading a CSV; whatever a file holds, the outcome is that of
    reading every cell as text (a cell Arrow cannot read as its type makes the file be read as text)."""
    frame = generic_frame(minute_bars(3000))
    if case in CASES:
        frame, _ = _corrupt(case, frame)
    else:
        frame = frame.astype({"close": object, "timestamp": object})
        if case == "none-literal":
            frame.loc[20, "close"] = "none"
        elif case == "padded":
            frame.loc[20, "close"] = f" {frame.loc[20, 'close']} "
        elif case == "hash-na":
            frame.loc[20, "close"] = "#N/A"
        elif case == "epoch":
            frame["timestamp"] = pd.to_datetime(frame["timestamp"]).astype("int64") // 10**6
        elif case == "offset":
            frame["timestamp"] = [f"{t}-05:00" for t in frame["timestamp"]]
    path = write(frame, tmp_path / "AAA_1m.csv")

    def outcome(store_dir: Path) -> tuple[object, object]:
        try:
            report = ingest(store_dir, path, on_invalid=on_invalid, chunk_bytes=32_768).to_dict()
        except BarsValidationError as exc:
            return str(exc).replace(str(store_dir), "<store>"), None
        for file in report["files"]:
            file.pop("seconds")
        report.pop("seconds"), report.pop("store")
        return report, stored(store_dir, key())

    typed = outcome(tmp_path / "typed")
    original = ingest_module._FileIngest._ingest
    monkeypatch.setattr(ingest_module._FileIngest, "_ingest", lambda self, typed: original(self, typed=False))
    text = outcome(tmp_path / "text")
    assert typed[0] == text[0]
    if typed[1] is not None:
        pd.testing.assert_frame_equal(typed[1], text[1])


def test_future_bars_are_judged_by_the_clock(tmp_path, store_dir, monkeypatch):
    bars = minute_bars()
    monkeypatch.setattr(ingest_module, "_now", lambda: bars.index[20])
    report = ingest(store_dir, write(generic_frame(bars), tmp_path / "AAA_1m.csv"), on_invalid="repair")
    assert report.files[0].issues == {"future": len(bars) - 21}


# -- idempotency and overlap ---------------------------------------------------------------------------
def test_second_ingest_adds_nothing_and_counts_the_bars_present(tmp_path, store_dir):
    path = write(generic_frame(minute_bars(500)), tmp_path / "AAA_1m.csv")
    first = ingest(store_dir, path)
    files = DuckDBDataStorage(store_dir).files(key())
    second = ingest(store_dir, path)
    assert (first.rows_added, second.rows_added, second.rows_present, second.conflicts) == (500, 0, 500, 0)
    assert second.files[0].status == "unchanged"
    assert DuckDBDataStorage(store_dir).files(key()) == files  # not one file more


def test_overlapping_file_adds_only_its_new_part_and_stored_bars_win(tmp_path, store_dir):
    bars = minute_bars(300)
    ingest(store_dir, write(generic_frame(bars.iloc[:200]), tmp_path / "AAA_1m_a.csv"))
    later = bars.iloc[100:].copy()
    later.iloc[:10, later.columns.get_loc("close")] *= 1.0001  # a vendor's different prices for 10 stored bars
    later["high"] = later[["high", "close"]].max(axis=1)
    report = ingest(store_dir, write(generic_frame(later), tmp_path / "AAA_1m_b.csv"))
    assert (report.rows_added, report.rows_present, report.conflicts) == (100, 90, 10)
    got = stored(store_dir, key())
    np.testing.assert_allclose(got["close"], bars["close"])  # the stored prices were kept
    with DuckDBDataStorage(store_dir) as store:
        assert [(c.start, c.end) for c in store.coverage(key())] == [(bars.index[0],
                                                                     bars.index[-1] + pd.Timedelta(minutes=1))]


def test_a_file_covers_first_to_last_bar_holes_included(tmp_path, store_dir):
    bars = minute_bars(100).drop(minute_bars(100).index[40:60])
    ingest(store_dir, write(generic_frame(bars), tmp_path / "AAA_1m.csv"))
    with DuckDBDataStorage(store_dir) as store:
        assert store.status()[0].gaps == []
        assert len(store.coverage(key())) == 1


# -- chunks, memory and atomicity ----------------------------------------------------------------------
@pytest.mark.parametrize(("chunk_bytes", "stream_block"), [(16_384, 4096), (20_000, 4096), (12_289, 4096),
                                                          (16_384, 1 << 20)])
def test_typed_streaming_read_cuts_the_blocks_where_the_text_read_does(tmp_path, monkeypatch, chunk_bytes,
                                                                       stream_block):
    """Arrow's streaming reader reads small blocks joined into blocks of ``chunk_bytes``: the same rows per block
    as the text read (which a rejection's "in the N rows read" and the files written depend on)."""
    from lumibot_duckdb.ingest import formats

    monkeypatch.setattr(formats, "STREAM_BLOCK", stream_block)
    frame = generic_frame(minute_bars(2000))
    seen: dict[bool, list[int]] = {True: [], False: []}
    block, read = ingest_module._FileIngest._block, ingest_module._FileIngest._ingest

    def watched(self, batch, mapping, offset):
        seen[self.typed].append(batch.num_rows)
        return block(self, batch, mapping, offset)

    monkeypatch.setattr(ingest_module._FileIngest, "_block", watched)
    for name in ("AAA_1m.csv", "AAA_1m.csv.zst"):
        path = write(frame, tmp_path / name)
        seen[True].clear(), seen[False].clear()
        for typed in (True, False):
            with monkeypatch.context() as patch:
                patch.setattr(ingest_module._FileIngest, "_ingest",
                              lambda self, typed, _as=typed: read(self, typed=_as and typed))
                assert ingest(tmp_path / f"store-{name}-{typed}", path, chunk_bytes=chunk_bytes).rows_added == 2000
        assert len(seen[True]) > 3 and seen[True] == seen[False], name


def test_stream_blocks_divide_the_block_size():
    from lumibot_duckdb.ingest.formats import STREAM_BLOCK, _stream_blocks

    for chunk_bytes in (1024, 16_384, 1 << 20, (1 << 20) + 1, 8 << 20, 10_000_000, 3 * 7919 * 1031):
        block, parts = _stream_blocks(chunk_bytes)
        assert block * parts == chunk_bytes
        assert block <= STREAM_BLOCK or parts == 1


def test_small_blocks_give_the_same_bars_and_one_contiguous_coverage(tmp_path, store_dir):
    bars = minute_bars(3000)
    path = write(generic_frame(bars), tmp_path / "AAA_1m.csv")
    ingest(store_dir, path, chunk_bytes=16_384)
    got = stored(store_dir, key())
    np.testing.assert_allclose(got["close"], bars["close"])
    with DuckDBDataStorage(store_dir) as store:
        assert len(store.coverage(key())) == 1
        assert len(store.files(key())) <= 8 + 1  # fragmented partitions are compacted on the way out
    assert ingest(store_dir, path, chunk_bytes=16_384).rows_added == 0


def test_rows_out_of_order_across_blocks_are_sorted_in_repair_mode(tmp_path, store_dir):
    bars = minute_bars(3000)
    frame = generic_frame(bars)
    order = list(range(len(frame)))
    order[100], order[2900] = order[2900], order[100]  # far apart: different blocks
    path = write(frame.iloc[order], tmp_path / "AAA_1m.csv")
    with pytest.raises(BarsValidationError, match=r"unsorted|earlier than"):
        ingest(store_dir, path, chunk_bytes=16_384)
    assert DuckDBDataStorage(store_dir).files(key()) == []  # blocks published before the error were removed
    report = ingest(store_dir, path, chunk_bytes=16_384, on_invalid="repair")
    assert report.rows_added == len(bars)
    np.testing.assert_allclose(stored(store_dir, key())["close"], bars["close"])


def test_a_failure_mid_ingest_keeps_earlier_files_whole_and_the_failed_file_absent(tmp_path, store_dir, monkeypatch):
    first = write(generic_frame(minute_bars(200)), tmp_path / "AAA_1m.csv")
    second = write(generic_frame(minute_bars(3000)), tmp_path / "BBB_1m.csv")
    publish = LocalFolder.publish
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the third block of the second file
            raise OSError(28, "No space left on device")
        return publish(self, *args, **kwargs)

    monkeypatch.setattr(LocalFolder, "publish", failing)
    with pytest.raises(StoreError, match=r"BBB_1m.csv.*No space left.*nothing of this file.*1 earlier file"):
        ingest(store_dir, [first, second], chunk_bytes=16_384)
    assert calls["n"] == 4
    assert len(stored(store_dir, key("AAA"))) == 200
    with DuckDBDataStorage(store_dir) as store:
        assert store.files(key("BBB")) == []
    assert list((store_dir / ".tmp").iterdir()) == []
    monkeypatch.setattr(LocalFolder, "publish", publish)
    again = ingest(store_dir, [first, second], chunk_bytes=16_384)
    assert (again.files[0].rows_added, again.files[1].rows_added) == (0, 3000)


def test_progress_bar_on_request(tmp_path, store_dir, capsys):
    ingest(store_dir, write(generic_frame(minute_bars()), tmp_path / "AAA_1m.csv"), progress=True)
    assert "ingest" in capsys.readouterr().err
    ingest(store_dir, write(generic_frame(minute_bars()), tmp_path / "BBB_1m.csv"), progress=False)
    assert capsys.readouterr().err == ""


# -- hostile inputs ---------------------------------------------------------------------------------------
def test_hostile_files_fail_with_a_reason_and_store_nothing(tmp_path, store_dir):
    cases = {
        "AAA_1m.csv": (b"", "is empty"),
        "BBB_1m.csv": (bytes(range(256)) * 40, "binary data"),
        "CCC_1m.csv.zst": (b"timestamp,open\n1,2\n", "zstd"),
        "DDD_1m.parquet": (b"PAR1 not really", "not a readable Parquet"),
        "EEE_1m.csv": (b"timestamp,open,high,volume\n2024-01-02 10:00,1,2,3\n", "no low, close"),
        "FFF_1m.csv": (b"a b c\n1 2 3\n", "has no time column"),
        "GGG_1m.csv": (b"timestamp,open,high,low,close\n2024-01-02 10:00,1,2,0.5,1,7,8\n", "not CSV that can be read"),
        "HHH_1m.csv": (b"timestamp,open,high,low,close,close\n2024-01-02 10:00,1,2,0.5,1,1\n", "more than once"),
        "III_1m.csv": ("timestamp,open,high,low,close,note\n2024-01-02 10:00,1,2,0.5,1,M\xfcnchen\n".encode("latin-1"),
                       "UTF-8"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises((BarsValidationError, ConfigError), match=reason):
            ingest(store_dir, path)
    assert DuckDBDataStorage(store_dir).series() == []


def test_bom_crlf_and_padded_header_names_are_tolerated(tmp_path, store_dir):
    text = generic_frame(minute_bars()).to_csv(index=False).replace(",", " , ").replace("\n", "\r\n")
    path = tmp_path / "AAA_1m.csv"
    path.write_bytes(("\ufeff" + text).encode())
    assert ingest(store_dir, path).rows_added == 50


def test_header_only_file_is_empty_not_an_error(tmp_path, store_dir):
    path = tmp_path / "AAA_1m.csv"
    path.write_text("timestamp,open,high,low,close,volume\n")
    report = ingest(store_dir, path)
    assert report.files[0].status == "empty" and report.rows_added == 0


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_other_delimiters_are_read_from_the_header(tmp_path, store_dir, delimiter):
    bars = minute_bars()
    path = tmp_path / "AAA_1m.csv"
    path.write_text(generic_frame(bars).to_csv(index=False, sep=delimiter))
    assert ingest(store_dir, path).rows_added == len(bars)


def test_huge_numbers_are_unparseable_and_finite_ones_kept(tmp_path, store_dir):
    frame = generic_frame(minute_bars()).astype({"volume": object})
    frame.loc[3, "volume"] = "1e400"
    frame.loc[4, "volume"] = 1e300
    path = write(frame, tmp_path / "AAA_1m.csv")
    with pytest.raises(BarsValidationError, match="line 5"):
        ingest(store_dir, path)
    report = ingest(store_dir, path, on_invalid="repair")
    assert report.files[0].issues == {"unparseable": 1}
    assert stored(store_dir, key())["volume"].max() == 1e300


def test_mixed_offsets_and_naive_times_each_read_by_their_own_rule(tmp_path, store_dir):
    bars = minute_bars()
    frame = generic_frame(bars)
    frame.loc[::2, "timestamp"] = bars.index[::2].tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S+00:00")
    report = ingest(store_dir, write(frame, tmp_path / "AAA_1m.csv"))
    assert list(stored(store_dir, key()).index) == list(bars.index)
    assert any("mixes" in note for note in report.files[0].notes)


def test_zone_abbreviations_are_not_guessed(tmp_path, store_dir):
    frame = generic_frame(minute_bars())
    frame["timestamp"] = frame["timestamp"] + " CST"  # Central US, or China?
    report = ingest(store_dir, write(frame, tmp_path / "AAA_1m.csv"), on_invalid="repair")
    assert report.files[0].issues == {"unparseable": 50}
    assert any("abbreviation" in note for note in report.files[0].notes)
    frame["timestamp"] = frame["timestamp"].str.replace(" CST", " UTC")
    report = ingest(store_dir, write(frame, tmp_path / "BBB_1m.csv"))
    assert report.rows_added == 50


def test_garbage_times_are_unparseable_rows(tmp_path, store_dir):
    frame = generic_frame(minute_bars())
    frame.loc[7, "timestamp"] = "yesterday-ish"
    expected = r"unparseable time or number: 1 row\(s\) \(line 9: timestamp='yesterday-ish'\)"
    with pytest.raises(BarsValidationError, match=expected):
        ingest(store_dir, write(frame, tmp_path / "AAA_1m.csv"))


def test_bad_options_are_config_errors(tmp_path, store_dir):
    path = write(generic_frame(minute_bars()), tmp_path / "AAA_1m.csv")
    for options, match in (({"timezone": "Mars/Olympus"}, "time zone"), ({"on_invalid": "ignore"}, "repair"),
                           ({"layout": "bloomberg"}, "layout"), ({"timeframe": "fortnight"}, "timeframe")):
        with pytest.raises(ConfigError, match=match):
            ingest(store_dir, path, **options)
    with pytest.raises(ConfigError, match="does not exist"):
        ingest(store_dir, tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match="holds no"):
        (tmp_path / "empty").mkdir()
        ingest(store_dir, tmp_path / "empty")  # a folder without bar files


def test_a_forced_layout_reads_only_its_own_columns(tmp_path, store_dir):
    path = write(generic_frame(minute_bars()), tmp_path / "AAA_1m.csv")
    with pytest.raises(BarsValidationError, match=r"has no time column.*layout yahoo"):
        ingest(store_dir, path, layout="yahoo")
    assert ingest(store_dir, path, layout="alpaca").files[0].layout == "alpaca"


def test_folders_are_searched_recursively_for_bar_files(tmp_path, store_dir):
    folder = tmp_path / "dumps" / "2024"
    folder.mkdir(parents=True)
    write(generic_frame(minute_bars()), folder / "AAA_1m.csv.zst")
    write(generic_frame(minute_bars()), folder / "BBB_1m.parquet")
    (folder / "notes.txt").write_text("not bars")
    report = ingest(store_dir, tmp_path / "dumps")
    assert [Path(f.path).name for f in report.files] == ["AAA_1m.csv.zst", "BBB_1m.parquet"]


# -- CLI --------------------------------------------------------------------------------------------------
def test_cli_ingest_prints_a_table_and_json(tmp_path, store_dir):
    path = write(generic_frame(minute_bars()), tmp_path / "AAA_1m.csv")
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(path), "--store", str(store_dir)])
    assert result.exit_code == 0, result.output
    assert "AAA_1m.csv" in result.output and "ingested" in result.output
    result = runner.invoke(main, ["ingest", str(path), "--store", str(store_dir), "--json"])
    assert result.exit_code == 0
    document = json.loads(result.output)
    assert document["rows_added"] == 0 and document["rows_present"] == 50
    assert document["files"][0]["status"] == "unchanged"


def test_cli_ingest_help_has_an_example_and_bad_input_exits_with_one_line(tmp_path, store_dir):
    runner = CliRunner()
    assert "Example: lumibot-duckdb ingest" in runner.invoke(main, ["ingest", "--help"]).output
    frame, _ = _corrupt("ohlc", generic_frame(minute_bars()))
    path = write(frame, tmp_path / "AAA_1m.csv")
    result = runner.invoke(main, ["ingest", str(path), "--store", str(store_dir)])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error:") and "--repair" in lines[0]
    result = runner.invoke(main, ["ingest", str(path), "--store", str(store_dir), "--repair", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["files"][0]["issues"] == {"ohlc": 1}


# -- pandas' own output, named columns, weekly and monthly bars ----------------------------------------------
def _pandas_bars(periods: int = 30) -> pd.DataFrame:
    """Daily bars as a pandas user holds them: an unnamed DatetimeIndex, capitalised columns."""
    bars = make_bars("2024-01-02", periods, freq="1D")
    frame = bars[["open", "high", "low", "close", "volume"]].rename(columns=str.capitalize)
    frame.index = pd.date_range("2024-01-02", periods=periods, freq="B")  # naive dates, no name
    return frame


@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_pandas_default_output_is_ingested_as_it_is(tmp_path, store_dir, suffix):
    """Issue 15: a df.to_csv() file (header ",Open,High,Low,Close,Volume") was refused with no way out."""
    frame = _pandas_bars()
    path = tmp_path / f"SPY_1d.{suffix}"
    frame.to_csv(path) if suffix == "csv" else frame.to_parquet(path)
    if suffix == "csv":
        assert path.read_text().splitlines()[0] == ",Open,High,Low,Close,Volume"
    report = ingest(store_dir, path)
    assert report.rows_added == 30 and any("pandas' index" in n for n in report.files[0].notes)
    got = stored(store_dir, key("SPY", "day"))
    assert list(got.index) == list(frame.index.tz_localize(NY).tz_convert("UTC"))
    assert got["close"].tolist() == frame["Close"].tolist()


def test_the_time_column_and_other_columns_can_be_named(tmp_path, store_dir):
    frame = _pandas_bars()
    odd = pd.DataFrame({"when": frame.index.strftime("%Y-%m-%d"), "first": frame["Open"], "top": frame["High"],
                        "bottom": frame["Low"], "last": frame["Close"], "Adj Close": frame["Close"] * 0.9,
                        "qty": frame["Volume"]})
    path = tmp_path / "SPY_1d.csv"
    odd.to_csv(path, index=False)
    with pytest.raises(BarsValidationError, match=r"time_column='<column>'"):
        ingest(store_dir, path)
    columns = {"open": "first", "high": "top", "low": "bottom", "close": "last", "volume": "qty"}
    report = ingest(store_dir, path, time_column="when", columns=columns)
    assert report.rows_added == 30
    assert stored(store_dir, key("SPY", "day"))["volume"].tolist() == frame["Volume"].tolist()
    result = CliRunner().invoke(main, ["ingest", str(path), "--store", str(tmp_path / "cli"), "--time-column", "when",
                                       *[f"--column={k}={v}" for k, v in columns.items()], "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["rows_added"] == 30
    with pytest.raises(ConfigError, match="not a bar field"):
        ingest(store_dir, path, columns={"closing": "last"})


@pytest.mark.parametrize(("name", "freq", "kind"), [
    ("SPY_1wk.csv", "W-FRI", "Weekly"), ("SPY_weekly.csv", "D", "Weekly"), ("SPY.csv", "W-FRI", "Weekly"),
    ("SPY_1mo.csv", "MS", "Monthly"), ("SPY.csv", "MS", "Monthly")])
def test_weekly_and_monthly_bars_are_refused_saying_what_to_do(tmp_path, store_dir, name, freq, kind):
    days = pd.date_range("2023-01-06", periods=12, freq=freq)
    frame = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
                          "volume": 10.0})
    with pytest.raises(ConfigError, match=rf"{kind} bars are not stored.*day bars.*resample"):
        ingest(store_dir, write(frame, tmp_path / name))
    assert DuckDBDataStorage(store_dir).series() == []


def test_an_explicit_timeframe_over_weekly_bars_is_stored_with_a_note(tmp_path, store_dir):
    days = pd.date_range("2023-01-06", periods=12, freq="W-FRI")
    frame = pd.DataFrame({"date": days.strftime("%Y-%m-%d"), "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5})
    report = ingest(store_dir, write(frame, tmp_path / "SPY.csv"), timeframe="day")
    assert report.rows_added == 12 and any("the bars are weekly" in n for n in report.files[0].notes)


def test_1M_is_refused_as_ambiguous(tmp_path, store_dir):
    with pytest.raises(ConfigError, match=r"ambiguous.*one month"):
        ingest(store_dir, write(generic_frame(minute_bars()), tmp_path / "AAA.csv"), timeframe="1M")


def test_a_lone_ambiguous_local_time_is_reported_as_unparseable(tmp_path, store_dir):
    """New York's 01:30 on 2019-11-03 happens twice; a file with it once cannot say which one: that row is
    reported (it used to escape as pytz's AmbiguousTimeError), the rest stores in repair mode."""
    times = [*pd.date_range("2019-11-02 23:00", "2019-11-03 00:59", freq="min"), pd.Timestamp("2019-11-03 01:30"),
             *pd.date_range("2019-11-03 02:00", "2019-11-03 02:59", freq="min")]
    n = len(times)
    frame = pd.DataFrame({"timestamp": [t.strftime("%Y-%m-%d %H:%M:%S") for t in times], "open": np.full(n, 10.0),
                          "high": np.full(n, 11.0), "low": np.full(n, 9.0), "close": np.full(n, 10.5),
                          "volume": np.full(n, 100.0)})
    path = write(frame, tmp_path / "AAA_1m.csv")
    lone = r"unparseable time.*1 row\(s\) \(line 122: timestamp='2019-11-03 01:30"
    with pytest.raises(BarsValidationError, match=lone):
        ingest(store_dir, path)
    report = ingest(store_dir, path, on_invalid="repair")
    assert (report.rows_added, report.files[0].issues) == (n - 1, {"unparseable": 1})
