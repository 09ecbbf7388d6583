"""Verify mode: each answer of the store is compared bit for bit with what Lumibot's legacy path hands over.

Invariants under test: a frame equal to the legacy frame in every bit passes, and any difference of
index, time zone, columns, dtypes or values is reported as the first one found; verify mode serves
exactly what the DuckDB path serves (same fills), checks every answer at each source's seam with 0
unexplained mismatches on the emulated providers, runs its legacy calls on a throw-away cache (never
the run's Lumibot cache), warns on the first mismatch and writes the report with series and range.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
import zoneinfo
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lumibot_duckdb.config import ENV_USE_DUCKDB, ENV_VERIFY_REPORT, Settings
from lumibot_duckdb.errors import ConfigError
from lumibot_duckdb.sources.verify import DuckDBVerifyWarning, Verifier, first_difference


def bars(n: int = 4, *, tz: object = "UTC", unit: str = "ns") -> pd.DataFrame:
    index = pd.DatetimeIndex(pd.date_range("2024-01-02", periods=n, freq="min", tz=tz), name="datetime").as_unit(unit)
    return pd.DataFrame({"open": np.linspace(1.0, 2.0, n), "volume": np.arange(n, dtype="int64"),
                         "otc": [None] * n}, index=index)


# -- first_difference ---------------------------------------------------------------------------------
def test_identical_frames_have_no_difference() -> None:
    assert first_difference(bars(), bars()) is None
    assert first_difference(None, None) is None
    assert first_difference(bars(0), bars(0)) is None


@pytest.mark.parametrize(("change", "words"), [
    (lambda f: f.set_axis(f.index.as_unit("us")), "index dtype"),
    (lambda f: f.set_axis(f.index.tz_convert("America/New_York")), "index dtype"),
    (lambda f: f.set_axis(f.index.tz_convert(zoneinfo.ZoneInfo("UTC"))), "index time zone"),
    (lambda f: f.rename_axis("timestamp"), "index name"),
    (lambda f: f.iloc[1:], "4 rows from DuckDB, 3 from legacy; first only in DuckDB: 2024-01-02 00:00:00+00:00"),
    (lambda f: f[["volume", "open", "otc"]], "column order"),
    (lambda f: f.drop(columns="otc"), "only DuckDB has ['otc']"),
    (lambda f: f.astype({"volume": "float64"}), "column 'volume' dtype: DuckDB int64, legacy float64"),
    (lambda f: f.assign(open=np.nextafter(f["open"].to_numpy(), 9)), "column 'open' at 2024-01-02 00:00:00+00:00"),
    (lambda f: f.assign(otc=pd.Series([None, np.nan, None, None], index=f.index, dtype=object)),
     "column 'otc' at 2024-01-02 00:01:00+00:00"),
])
def test_every_kind_of_difference_is_named(change: object, words: str) -> None:
    ours = bars()
    found = first_difference(ours, change(bars()))  # type: ignore[operator]
    assert found is not None and words in found, found


def test_floats_are_compared_by_their_bits() -> None:
    zero, negative = bars().assign(open=0.0), bars().assign(open=-0.0)
    assert "column 'open'" in (first_difference(zero, negative) or "")
    nan = bars().assign(open=np.nan)
    assert first_difference(nan, bars().assign(open=np.nan)) is None


def test_nullable_and_none_answers() -> None:
    a = bars().assign(trades=pd.array([1, None, 3, 4], dtype="Int64"))
    b = bars().assign(trades=pd.array([1, 2, 3, 4], dtype="Int64"))
    assert "column 'trades' at 2024-01-02 00:01:00+00:00" in (first_difference(a, b) or "")
    assert first_difference(bars(), None) == "DuckDB answered 4 rows, legacy None"


# -- the switch ---------------------------------------------------------------------------------------
def test_verify_is_a_value_of_the_use_duckdb_switch(tmp_path: Path) -> None:
    assert Settings.resolve(use_duckdb="verify").verify is True
    settings = Settings.resolve(environ={ENV_USE_DUCKDB: "VERIFY", ENV_VERIFY_REPORT: str(tmp_path / "r.json")})
    assert (settings.use_duckdb, settings.verify, settings.verify_report) == (True, True, tmp_path / "r.json")
    assert Settings.resolve(use_duckdb=True).verify is False
    with pytest.raises(ConfigError, match="neither a boolean nor 'verify'"):
        Settings.resolve(environ={ENV_USE_DUCKDB: "check"})


# -- the verifier -------------------------------------------------------------------------------------
class Isolation:
    """A stand-in for a vendor's legacy-cache redirection that records the folders it was given."""

    def __init__(self) -> None:
        self.folders: list[Path] = []
        self.inside = False

    def __call__(self, folder: Path) -> object:
        import contextlib

        @contextlib.contextmanager
        def block():  # type: ignore[no-untyped-def]
            self.folders.append(folder)
            assert folder.is_dir() and not any(folder.iterdir()), "a fresh, empty folder per legacy call"
            self.inside = True
            try:
                yield
            finally:
                self.inside = False

        return block()


def test_verifier_counts_warns_once_and_reports(tmp_path: Path) -> None:
    isolation = Isolation()
    verifier = Verifier("polygon", report=tmp_path / "report.json", isolate=isolation)
    calls = []

    def legacy(frame: pd.DataFrame):  # type: ignore[no-untyped-def]
        def call() -> pd.DataFrame:
            calls.append(isolation.inside)
            return frame
        return call

    verifier.check(bars(), legacy(bars()), series="AAA minute", request="r1")
    changed = bars().assign(open=bars()["open"] + 1e-9)
    with pytest.warns(DuckDBVerifyWarning, match="AAA minute .*differs from what Lumibot's legacy path hands over"):
        verifier.check(bars(), legacy(changed), series="AAA minute", request="r2")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only the first mismatch warns
        verifier.check(bars(), legacy(changed), series="BBB minute", request="r3")
    assert calls == [True, True, True]  # every legacy call inside the isolation
    assert all(not folder.exists() for folder in isolation.folders)  # and its folder removed after
    assert (verifier.state.checks, verifier.mismatches, verifier.unexplained) == (3, 2, 2)
    report = json.loads(verifier.write().read_text())
    assert report["checks"] == 3 and report["mismatches"] == 2 and report["legacy_calls"] == 3
    first = report["mismatch_details"][0]
    assert first["series"] == "AAA minute" and first["request"] == "r2"
    assert (first["first"], first["last"]) == ("2024-01-02 00:00:00+00:00", "2024-01-02 00:03:00+00:00")
    assert "column 'open' at 2024-01-02 00:00:00+00:00" in first["difference"]


def test_declared_differences_are_counted_apart_and_do_not_warn(tmp_path: Path) -> None:
    verifier = Verifier("ccxt", report=tmp_path / "r.json", isolate=Isolation(),
                        explain=lambda ours, legacy: "a declared defect")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verifier.check(bars(), lambda: bars().assign(open=1.5), series="BTC/USDT 1m", request="r")
    assert (verifier.mismatches, verifier.unexplained, verifier.state.declared) == (1, 0, 1)


def test_a_failing_legacy_call_is_counted_not_raised(tmp_path: Path) -> None:
    verifier = Verifier("yahoo", report=tmp_path / "r.json", isolate=Isolation())

    def broken() -> pd.DataFrame:
        raise ConnectionError("no network")

    verifier.check(bars(), broken, series="SPY day", request="r")
    assert verifier.state.legacy_errors == 1 and verifier.mismatches == 0
    assert "ConnectionError: no network" in json.loads(verifier.write().read_text())["legacy_error_details"][0]


def test_later_reads_are_checked_against_the_kept_legacy_answer(tmp_path: Path) -> None:
    isolation = Isolation()
    verifier = Verifier("polygon", report=tmp_path / "r.json", isolate=isolation)
    whole = bars(10)
    verifier.check(whole.iloc[:4], lambda: whole, series="AAA minute", request="r", reuse="r", hold="AAA",
                   select=lambda frame: frame.iloc[:4])
    verifier.check_held(whole.iloc[4:8], hold="AAA", select=lambda frame: frame.iloc[4:8], series="AAA minute",
                        request="roll")
    verifier.check(whole.iloc[:4], lambda: pytest.fail("asked again"), series="AAA minute", request="r",
                   reuse="r", hold="AAA", select=lambda frame: frame.iloc[:4])
    with pytest.warns(DuckDBVerifyWarning, match="AAA minute"):
        verifier.check_held(whole.iloc[5:9], hold="AAA", select=lambda frame: frame.iloc[4:8], series="AAA minute",
                            request="roll")
    verifier.check_held(whole, hold="BBB", select=lambda frame: frame, series="BBB minute", request="roll")
    assert len(isolation.folders) == 1
    assert (verifier.state.checks, verifier.mismatches, verifier.state.unverified) == (4, 1, 1)


# -- the vendors' declared differences -----------------------------------------------------------------
def test_ccxt_declares_its_cache_rounding_and_dropped_duplicates_and_nothing_else() -> None:
    from lumibot_duckdb.sources.ccxt import DECIMAL_DEFECT, DUPLICATE_DEFECT, declared_difference

    index = pd.DatetimeIndex(pd.date_range("2024-01-01", periods=4, freq="min"), name="datetime")
    ours = pd.DataFrame({"open": [0.12345, 0.2, 0.2, 0.30004], "high": [0.2, 0.3, 0.3, 0.4],
                         "low": [0.1, 0.1, 0.1, 0.2], "close": [0.2, 0.25, 0.25, 0.3],
                         "volume": [1.23456, 0.0, 0.0, 2.0], "missing": np.zeros(4, dtype="int64")}, index=index)
    rounded = ours.copy()
    rounded[["open", "high", "low", "close", "volume"]] = ours[["open", "high", "low", "close", "volume"]].round(3)
    assert declared_difference(ours, rounded) == DECIMAL_DEFECT
    without_repeat = rounded.drop(index[2])
    assert declared_difference(ours, without_repeat) == f"{DUPLICATE_DEFECT} (1); {DECIMAL_DEFECT}"
    assert declared_difference(ours, rounded.assign(close=rounded["close"] + 0.01)) is None  # not a rounding
    assert declared_difference(ours, rounded.drop(index[1])) is None  # a dropped candle that was no repeat
    assert declared_difference(ours, rounded.astype({"missing": "float64"})) is None


def test_yahoo_declares_only_todays_forming_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    from lumibot_duckdb.sources import yahoo

    monkeypatch.setattr(yahoo, "_now", lambda: pd.Timestamp("2024-03-05 15:00", tz="America/New_York"))
    index = pd.DatetimeIndex(["2024-03-01 16:00", "2024-03-04 16:00", "2024-03-05 16:00"],
                             tz="America/New_York", name="Date")
    legacy = pd.DataFrame({"close": [1.0, 2.0, 3.0]}, index=index)
    assert yahoo.declared_difference(legacy.iloc[:2], legacy).startswith(yahoo.FORMING_BAR)
    assert yahoo.declared_difference(legacy.iloc[:1], legacy) is None  # a settled day missing
    assert yahoo.declared_difference(legacy.iloc[:2].assign(close=[1.0, 2.5]), legacy) is None


def test_the_legacy_function_is_found_below_any_wrapper_of_the_router() -> None:
    import functools

    from lumibot.tools.ccxt_data_store import CcxtCacheDB

    from lumibot_duckdb.sources import ccxt  # noqa: F401 - installs the router
    from lumibot_duckdb.sources.base import legacy_function
    from lumibot_duckdb.testing.kits import patched

    router = CcxtCacheDB.download_ohlcv
    original = legacy_function(CcxtCacheDB, "download_ohlcv")
    assert getattr(router, "_lumibot_duckdb_router", False) and original is not router
    spy = functools.wraps(router)(lambda *a, **k: router(*a, **k))
    with patched(CcxtCacheDB, "download_ohlcv", spy):
        assert legacy_function(CcxtCacheDB, "download_ohlcv") is original


# -- whole backtests, every source ---------------------------------------------------------------------
@pytest.mark.backtest
@pytest.mark.parametrize("source", ["polygon", "yahoo", "alpaca", "ccxt"])
def test_verify_mode_checks_every_answer_and_serves_the_duckdb_paths_fills(source: str, tmp_path: Path) -> None:
    import dataclasses

    from lumibot_duckdb.ab.harness import VERIFY, Scenario, run_here

    scenario = dataclasses.replace(Scenario.momentum(symbols=("AAA", "BBB"), end="2024-02-10"), source=source)
    if source == "ccxt":
        scenario = dataclasses.replace(scenario, parameters={**scenario.parameters, "symbols": ["BTC", "ETH"],
                                                             "asset_type": "crypto", "quote": "USDT"})
    plain = run_here(scenario, "duckdb", "cold", tmp_path / "duckdb", fast=True)
    checked = run_here(scenario, VERIFY, "cold", tmp_path / VERIFY, fast=True)
    assert (checked.fills, checked.final_value) == (plain.fills, plain.final_value) and plain.fills
    found = checked.verify
    assert found["checks"] >= 2 and found["unexplained"] == 0 and found["legacy_errors"] == 0, found
    assert found["legacy_calls"] >= 2 and found["legacy_seconds"] > 0
    if source == "ccxt":  # the emulated exchange's prices have more than 3 decimals
        assert found["declared"] == found["mismatches"] > 0
    # the legacy calls ran on throw-away caches: the run's own Lumibot cache holds no legacy bars
    cache = tmp_path / VERIFY / "lumibot-cache"
    assert not [p for p in cache.rglob("*") if p.is_file() and p.suffix in (".parquet", ".pickle", ".csv", ".duckdb")]
    report = json.loads((tmp_path / VERIFY / "verify-report.json").read_text())
    assert report["checks"] == found["checks"] and report["source"] == source


@pytest.mark.backtest
def test_a_served_difference_is_caught_warned_and_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the store's Polygon frame wrong by one ulp in one close: verify names series, range and value."""
    from lumibot_duckdb.ab.harness import VERIFY, Scenario, run_here
    from lumibot_duckdb.sources import polygon

    original = polygon.legacy_frame

    def off_by_one_ulp(stored: pd.DataFrame) -> pd.DataFrame:
        frame = original(stored)
        if len(frame):  # a bar in the middle (the first and last can fall outside the request's filter)
            row = len(frame) // 2
            frame.iloc[row, frame.columns.get_loc("close")] = np.nextafter(frame["close"].iloc[row], np.inf)
        return frame

    monkeypatch.setattr(polygon, "legacy_frame", off_by_one_ulp)
    scenario = Scenario.buy_and_hold(start="2024-01-02", end="2024-01-12")
    with pytest.warns(DuckDBVerifyWarning, match="AAA"):
        result = run_here(scenario, VERIFY, "cold", tmp_path, fast=True)
    assert result.verify["unexplained"] >= 1
    detail = json.loads((tmp_path / "verify-report.json").read_text())["mismatch_details"][0]
    assert detail["series"].startswith("AAA") and "column 'close'" in detail["difference"]
    assert dt.date.fromisoformat(detail["first"][:10]) <= dt.date(2024, 1, 2) <= dt.date.fromisoformat(
        detail["last"][:10])
