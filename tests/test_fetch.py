"""``lumibot-duckdb fetch``: fill the store for a universe without a backtest, through the sources' own providers.

Invariants:
* a fetch asks what a backtest of that source would (same series, same provider, same fill), only what
  the store lacks; a backtest over the fetched range afterwards asks nothing and trades as a cold run;
* empty answers are recorded; a failing symbol is reported (exit 1) and the others are fetched;
* an interrupted fetch keeps what completed and, run again, asks only for the rest;
* fetch and db-status name the same series.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from lumibot_duckdb.ab.harness import Scenario, run_here
from lumibot_duckdb.cli import main
from lumibot_duckdb.errors import ConfigError
from lumibot_duckdb.fetch import fetch, read_symbols
from lumibot_duckdb.registry import SOURCES
from lumibot_duckdb.store import DuckDBDataStorage
from lumibot_duckdb.testing.kits import kit
from lumibot_duckdb.testing.polygon import serve_polygon

ALPACA = {"API_KEY": "offline-key", "API_SECRET": "offline-secret", "PAPER": True}


@pytest.fixture
def polygon(market):
    with serve_polygon(market) as http:
        yield http


def aggs(polygon: Any, ticker: str | None = None) -> list[Any]:
    return [r for r in polygon.requests if r.kind == "aggs" and ticker in (None, r.ticker)]


def test_a_fetch_asks_only_what_the_store_lacks(polygon, tmp_path: Path) -> None:
    report = fetch(tmp_path / "store", source="polygon", symbols=["AAA", "BBB"], timeframe="minute",
                   start="2024-01-02", end="2024-02-29")
    assert report.ok and [s.status for s in report.series] == ["fetched", "fetched"]
    assert [s.series for s in report.series] == ["polygon AAA minute (split)", "polygon BBB minute (split)"]
    assert [s.requests for s in report.series] == [2, 2] == [s.chunks for s in report.series]  # 31-day chunks
    assert len(aggs(polygon)) == 4 and report.bars > 2 * 39 * 390
    assert all(s.gaps == 0 and s.covered_from == "2024-01-02T05:00:00+00:00"
               and s.covered_to == "2024-03-01T05:00:00+00:00" for s in report.series)
    polygon.reset()
    again = fetch(tmp_path / "store", source="polygon", symbols=["AAA", "BBB"], timeframe="minute",
                  start="2024-01-02", end="2024-02-29")
    assert again.ok and [s.status for s in again.series] == ["present", "present"] and polygon.count() == 0
    wider = fetch(tmp_path / "store", source="polygon", symbols=["AAA"], timeframe="minute", start="2024-01-02",
                  end="2024-03-08")
    assert [(r.start, r.end) for r in aggs(polygon)] == [("2024-03-01", "2024-03-08")]
    assert wider.series[0].requests == 1


def _scenario(name: str) -> Scenario:
    crypto = "stock" not in kit(name).asset_types
    params: dict[str, Any] = {"symbol": "BTC" if crypto else "AAA"}
    if crypto:
        params.update(asset_type="crypto", quote=kit(name).default_quote or "USD")
    return Scenario("buy-and-hold", "buy_and_hold", params, "2024-01-02", "2024-01-20", source=name)


FETCHES = {  # what a buy-and-hold backtest over 2024-01-02..2024-01-20 reads, started early enough for its lookback
    "polygon": [dict(symbols=["AAA"], timeframe="minute", start="2023-12-15", end="2024-01-20"),
                dict(symbols=["AAA"], timeframe="day", start="2023-12-15", end="2024-01-20")],
    "yahoo": [dict(symbols=["AAA"], timeframe="day", start="2024-01-02", end="2024-01-20")],
    "alpaca": [dict(symbols=["AAA"], timeframe="day", start="2024-01-02", end="2024-01-20", credentials=ALPACA)],
    "ccxt": [dict(symbols=["BTC/USDT"], timeframe="day", start="2023-03-01", end="2024-01-20")],
}


@pytest.mark.backtest
@pytest.mark.parametrize("name", list(SOURCES))
def test_a_backtest_over_the_fetched_range_asks_nothing(name: str, tmp_path: Path) -> None:
    from lumibot_duckdb.testing.market import SyntheticMarket

    source = kit(name)
    with source.serve(SyntheticMarket(1), fast=True) as fake:
        for options in FETCHES[name]:
            report = fetch(tmp_path / "duckdb", source=name, **options)
            assert report.ok, [s.error for s in report.series]
        fetched = fake.count()
    assert fetched > 0
    warm = run_here(_scenario(name), "duckdb", "warm", tmp_path, fast=True)
    assert warm.provider_requests == 0, f"{name}: the backtest asked {warm.requests} after the fetch"
    cold = run_here(_scenario(name), "duckdb", "cold", tmp_path / "cold", fast=True)
    assert (warm.fills, warm.final_value) == (cold.fills, cold.final_value) and len(warm.fills) == 1


def test_an_interrupted_fetch_keeps_what_completed_and_resumes_with_the_rest(polygon, tmp_path: Path) -> None:
    state = {"asked": 0}

    def interrupt(request: Any) -> Any:
        if request.kind == "aggs":
            state["asked"] += 1
            if state["asked"] == 4:  # the first chunk of the second symbol
                raise KeyboardInterrupt
        return None

    polygon.intercept(interrupt)
    options = dict(source="polygon", symbols=["AAA", "BBB", "CCC"], timeframe="minute", start="2024-01-02",
                   end="2024-03-29")
    first = fetch(tmp_path / "store", **options)
    assert first.interrupted and not first.ok
    assert [s.status for s in first.series] == ["fetched", "interrupted"], "the fetch stopped at the interrupt"
    with DuckDBDataStorage(tmp_path / "store") as store:
        keys = {s.symbol: s.key for s in first.series}
        assert not store.missing_ranges(_key(keys["AAA"]), "2024-01-02", "2024-03-30")
        left = store.missing_ranges(_key(keys["BBB"]), "2024-01-02", "2024-03-30")
    polygon.interceptors.clear()
    polygon.reset()
    resumed = fetch(tmp_path / "store", **options)
    assert resumed.ok and [s.status for s in resumed.series] == ["present", "fetched", "fetched"]
    bbb = aggs(polygon, "BBB")
    assert len(bbb) == resumed.series[1].requests <= 3 and not aggs(polygon, "AAA")
    asked = [(pd.Timestamp(r.start).tz_localize("America/New_York"), pd.Timestamp(r.end)) for r in bbb]
    assert all(any(gap.start <= start < gap.end for gap in left) for start, _ in asked), "asked for a stored chunk"
    polygon.reset()
    clean = fetch(tmp_path / "clean", **options)
    with DuckDBDataStorage(tmp_path / "store") as store, DuckDBDataStorage(tmp_path / "clean") as other:
        for item in clean.series:
            key = _key(item.key)
            assert store.coverage(key) == other.coverage(key)
            pd.testing.assert_frame_equal(store.read(key, "2024-01-01", "2024-04-01"),
                                          other.read(key, "2024-01-01", "2024-04-01"))


def _key(fields: dict[str, str]) -> Any:
    from lumibot_duckdb.store import SeriesKey

    return SeriesKey(**fields)


def test_empty_answers_are_recorded_and_failures_reported_while_the_others_go_on(polygon, tmp_path: Path) -> None:
    polygon.fail("empty", symbol="AAA")
    polygon.fail("error", symbol="BBB")  # HTTP 500, on every attempt
    report = fetch(tmp_path / "store", source="polygon", symbols=["AAA", "BBB", "CCC"], timeframe="day",
                   start="2024-01-02", end="2024-01-31")
    aaa, bbb, ccc = report.series
    assert not report.ok
    assert (aaa.status, aaa.bars, aaa.empty, aaa.gaps) == ("fetched", 0, 1, 0)
    assert bbb.status == "failed" and "Polygon did not answer BBB day bars 2024-01-02..2024-01-31: HTTP 500" in \
        bbb.error and "series polygon:stock:BBB/USD:day:split" in bbb.error and bbb.gaps == 1
    assert ccc.status == "fetched" and ccc.bars == 21
    assert len(aggs(polygon, "BBB")) == 5, "five attempts"
    polygon.heal()
    polygon.reset()
    again = fetch(tmp_path / "store", source="polygon", symbols=["AAA", "BBB", "CCC"], timeframe="day",
                  start="2024-01-02", end="2024-01-31")
    assert again.ok and [s.status for s in again.series] == ["present", "fetched", "present"]
    assert len(aggs(polygon)) == 1, "only the failed symbol is asked again; the empty answer is remembered"


def test_options_by_contract_and_crypto_pairs(polygon, tmp_path: Path) -> None:
    report = fetch(tmp_path / "store", source="polygon", symbols=["SPY240119C00470000", "BTC/USD"],
                   timeframe="day", start="2024-01-02", end="2024-01-19")
    option, crypto = report.series
    assert report.ok, [s.error for s in report.series]
    assert option.key["asset_type"] == "option" and option.key["symbol"] == "SPY240119C00470000"
    assert [r.ticker for r in aggs(polygon)][:1] == ["O:SPY240119C00470000"]
    assert (crypto.key["symbol"], crypto.key["asset_type"], crypto.key["quote"]) == ("BTC", "crypto", "USD")
    assert crypto.bars == 18, "crypto days are UTC days, every day"


def test_fetch_and_db_status_name_the_same_series(polygon, tmp_path: Path) -> None:
    runner = CliRunner()
    done = runner.invoke(main, ["fetch", "--source", "polygon", "AAA", "BBB", "--timeframe", "day", "--start",
                                "2024-01-02", "--end", "2024-01-31", "--store", str(tmp_path / "store"), "--json"])
    assert done.exit_code == 0, done.output
    fetched = {tuple(sorted(s["key"].items())) for s in json.loads(done.output)["series"]}
    shown = runner.invoke(main, ["db-status", "--store", str(tmp_path / "store"), "--json"])
    listed = {tuple(sorted((k, v) for k, v in s.items() if k in dict(next(iter(fetched))))) for s in
              json.loads(shown.output)["series"]}
    assert fetched == listed
    table = runner.invoke(main, ["fetch", "--source", "polygon", "AAA", "BBB", "--timeframe", "day", "--start",
                                 "2024-01-02", "--end", "2024-01-31", "--store", str(tmp_path / "store")])
    assert table.exit_code == 0 and "present" in table.output and "2 of 2 series complete, 0 provider requests" in \
        table.output
    # the table as db-status draws it: whole numbers on one line, dates in New York, the zone said
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in table.output.splitlines() if line.startswith("│")]
    assert [r[:5] for r in rows] == [["polygon", s, "stock", "day", "split"] for s in ("AAA", "BBB")]
    assert all(r[-4:-2] == ["2024-01-02", "2024-02-01"] for r in rows), rows
    assert "…" not in table.output and "Times in America/New_York" in table.output


def test_the_command_exits_1_on_a_failure_and_130_on_an_interrupt(polygon, tmp_path: Path) -> None:
    symbols = tmp_path / "universe.txt"
    symbols.write_text("# my universe\nAAA\nBBB  # the flaky one\n")
    polygon.fail("error", symbol="BBB")
    runner = CliRunner()
    failed = runner.invoke(main, ["fetch", "--source", "polygon", "--symbols-file", str(symbols), "--days", "10",
                                  "--end", "2024-01-31", "--store", str(tmp_path / "store")])
    assert failed.exit_code == 1, failed.output
    assert "BBB: Polygon did not answer" in failed.output and "1 of 2 series complete" in failed.output
    polygon.heal()

    def interrupt(request: Any) -> Any:
        if request.kind == "aggs":
            raise KeyboardInterrupt
        return None

    polygon.intercept(interrupt)
    stopped = runner.invoke(main, ["fetch", "--source", "polygon", "CCC", "--days", "10", "--end", "2024-01-31",
                                   "--store", str(tmp_path / "store")])
    assert stopped.exit_code == 130 and "Interrupted" in stopped.output and "run the same command again" in \
        stopped.output


def test_progress_per_series_and_chunk(polygon, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fetch(tmp_path / "store", source="polygon", symbols=["AAA"], timeframe="minute", start="2024-01-02",
          end="2024-03-29", progress=True)
    shown = capsys.readouterr().err
    assert "Fetching polygon AAA minute (split)" in shown and "3/3" in shown and "chunk" in shown
    fetch(tmp_path / "store", source="polygon", symbols=["AAA"], timeframe="minute", start="2024-01-02",
          end="2024-03-29", progress=True)
    assert "Fetching" not in capsys.readouterr().err, "nothing to fetch: no bar"


@pytest.mark.parametrize("options, message", [
    (dict(source="thetadata", symbols=["AAA"], days=5), "Unknown source"),
    (dict(source="yahoo", symbols=["AAA"], timeframe="minute", days=5), "yahoo has no minute bars"),
    (dict(source="polygon", symbols=["AAA"]), "Give the range"),
    (dict(source="polygon", symbols=["AAA"], start="2024-02-01", end="2024-01-01"), "is after"),
    (dict(source="polygon", symbols=["AAA"], start="2024-01-01", days=3), "not both"),
    (dict(source="polygon", symbols=[], days=3), "No symbol"),
    (dict(source="polygon", symbols=["SPY"], asset_type="option", days=3), "OCC symbol"),
])
def test_options_that_cannot_be_used_are_clear_errors(options: dict[str, Any], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        fetch(tmp_path / "store", **options)


def test_credentials_are_lumibots(polygon, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lumibot.credentials

    monkeypatch.setattr(lumibot.credentials, "POLYGON_API_KEY", None)
    with pytest.raises(ConfigError, match="POLYGON_API_KEY"):
        fetch(tmp_path / "store", source="polygon", symbols=["AAA"], days=3)
    monkeypatch.setattr(lumibot.credentials, "ALPACA_CONFIG", {"API_KEY": None, "API_SECRET": None,
                                                               "OAUTH_TOKEN": None, "PAPER": True})
    with pytest.raises(ConfigError, match="ALPACA_API_KEY and ALPACA_API_SECRET"):
        fetch(tmp_path / "store", source="alpaca", symbols=["AAA"], days=3)


def test_symbols_files_are_read_one_per_line() -> None:
    assert read_symbols("# universe\nSPY\nQQQ, IWM\n\nspy  # again\nSPY\n") == ["SPY", "QQQ", "IWM", "spy"]


def test_the_range_of_days(tmp_path: Path, polygon) -> None:
    report = fetch(tmp_path / "store", source="polygon", symbols=["AAA"], days=7, end=dt.date(2024, 1, 31))
    assert (report.start, report.end) == ("2024-01-25", "2024-01-31")
