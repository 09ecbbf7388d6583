"""Maintenance: compact, clean-tmp, prune and verify keep every bar that should stay, and coverage honest."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from factories import key, make_bars

from lumibot_duckdb.cli import main
from lumibot_duckdb.errors import ConfigError
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey
from lumibot_duckdb.store.local import file_name, new_token
from lumibot_duckdb.store.maintenance import clean_tmp, compact, parse_age, prune, status, verify

SPY, QQQ = key("SPY"), key("QQQ")
DAILY = SeriesKey("yahoo", "TLT", "day")


@pytest.fixture
def store(store_dir: Path):
    with DuckDBDataStorage(store_dir) as s:
        yield s


def run(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


def all_bars(store: DuckDBDataStorage, series: SeriesKey) -> pd.DataFrame:
    return store.read(series, "2000-01-01", "2100-01-01")


def fragmented(store: DuckDBDataStorage) -> pd.DataFrame:
    """SPY minute bars over two calendar years (two partitions), written as 12 small overlapping pieces."""
    bars = make_bars(start="2023-12-31 22:00", periods=6 * 60, seed=1)
    for i in range(12):
        piece = bars.iloc[i * 30: i * 30 + 40]  # each overlaps the next by 10 bars (same values)
        store.write(SPY, piece)
    return bars


# -- compact -----------------------------------------------------------------------------------------
def test_compact_keeps_every_bar_and_leaves_one_sorted_file_per_run(store: DuckDBDataStorage) -> None:
    bars = fragmented(store)
    store.write(QQQ, make_bars(periods=50, seed=2))
    before, coverage = all_bars(store, SPY), store.coverage(SPY)
    assert len(store.files(SPY)) > 2
    dry = compact(store, dry_run=True)
    assert dry.rewritten == [str(SPY)] and len(store.files(SPY)) == dry.files_before - 1
    report = compact(store)
    assert report.rewritten == [str(SPY)]
    assert len(store.files(SPY)) == 2  # one per partition (2023, 2024)
    pd.testing.assert_frame_equal(all_bars(store, SPY), before)
    assert len(before) == len(bars) and store.coverage(SPY) == coverage
    for bar_file in store.files(SPY):
        ts = pd.read_parquet(bar_file.path, columns=["ts"])["ts"]
        assert ts.is_monotonic_increasing and ts.is_unique
    assert compact(store).rewritten == []  # nothing left to do
    assert verify(store).ok


def test_compact_resolves_a_conflicting_overlap_in_favour_of_the_newer_file(store: DuckDBDataStorage) -> None:
    old = make_bars(periods=100, seed=1)
    store.write(SPY, old)
    newer = old.iloc[50:].copy()
    newer["close"] += 1.0
    store.write(SPY, newer)
    as_read = all_bars(store, SPY)
    report = verify(store)
    assert [p.kind for p in report.errors] == ["conflicting-overlap"]
    compact(store)
    pd.testing.assert_frame_equal(all_bars(store, SPY), as_read)
    assert verify(store).ok


# -- clean-tmp ---------------------------------------------------------------------------------------
def test_clean_tmp_removes_only_old_leftovers(store: DuckDBDataStorage) -> None:
    old = store.backend.tmp / f"{new_token()}.parquet.part"
    fresh = store.backend.tmp / f"{new_token()}.parquet.part"
    old.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 10)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    assert clean_tmp(store, dry_run=True).removed == [str(old)] and old.exists()
    report = clean_tmp(store)
    assert report.removed == [str(old)] and report.bytes == 100 and report.kept_fresh == 1
    assert not old.exists() and fresh.exists()
    code, out = run("maintain", "clean-tmp", "--older-than", "0s", "--store", store.root)
    assert code == 0 and "removed 1" in out and not fresh.exists()
    code, out = run("maintain", "clean-tmp", "--older-than", "soon", "--store", store.root)
    assert code == 1 and "not a duration" in out


def test_parse_age() -> None:
    assert parse_age("30m").total_seconds() == 1800
    assert parse_age("2h").total_seconds() == 7200
    assert parse_age("1d").total_seconds() == 86400
    with pytest.raises(ConfigError):
        parse_age("-1h")


# -- prune -------------------------------------------------------------------------------------------
def test_prune_before_a_date_keeps_later_bars_and_coverage_matches(store: DuckDBDataStorage) -> None:
    bars = fragmented(store)
    store.write(QQQ, make_bars(start="2023-12-31 22:00", periods=300, seed=3))
    store.write(DAILY, make_bars(start="2023-12-01", periods=60, freq="1D", seed=4))
    cut = pd.Timestamp("2024-01-01 01:15", tz="UTC")  # inside a file, and inside the 2024 partition
    spy_kept = all_bars(store, SPY).loc[cut:]
    qqq_before, daily_before = all_bars(store, QQQ), all_bars(store, DAILY)
    end = store.coverage(SPY)[-1].end

    plan = prune(store, before=cut, source="test", symbol="SPY", dry_run=True)
    assert plan.bars_removed == int((bars.index < cut).sum()) and len(all_bars(store, SPY)) == len(bars)
    report = prune(store, before=cut, source="test", symbol="SPY")
    assert report.bars_removed == plan.bars_removed and report.files_rewritten >= 1

    pd.testing.assert_frame_equal(all_bars(store, SPY), spy_kept)
    assert store.coverage(SPY) == [Interval(cut, end)]  # what is removed is no longer covered
    pd.testing.assert_frame_equal(all_bars(store, QQQ), qqq_before)  # other series untouched
    pd.testing.assert_frame_equal(all_bars(store, DAILY), daily_before)
    with store.writer(SPY) as writer:
        assert writer.missing(Interval("2023-12-31", end)) == [Interval("2023-12-31", cut)]
    assert verify(store).ok


def test_prune_by_source_removes_whole_series_and_a_daily_cut(store: DuckDBDataStorage) -> None:
    store.write(SPY, make_bars(periods=100, seed=1))
    store.write(DAILY, make_bars(start="2023-12-01", periods=60, freq="1D", seed=4))
    daily = all_bars(store, DAILY)
    report = prune(store, source="test")
    assert report.bars_removed == 100 and store.series() == [DAILY]
    prune(store, before="2024-01-01Z", timeframe="day")
    pd.testing.assert_frame_equal(all_bars(store, DAILY), daily.loc["2024-01-01":])
    assert store.coverage(DAILY)[0].start == pd.Timestamp("2024-01-01", tz="UTC")
    with pytest.raises(ConfigError, match="refusing to empty"):
        prune(store)


def test_prune_keeps_the_newer_of_two_conflicting_files(store: DuckDBDataStorage) -> None:
    old = make_bars(periods=100, seed=1)
    store.write(SPY, old)
    newer = old.iloc[20:60].copy()
    newer["close"] += 5.0
    store.write(SPY, newer)  # newer file, fully after the cut below
    cut = old.index[10]
    expected = all_bars(store, SPY).loc[cut:]
    prune(store, before=cut, symbol="SPY")
    pd.testing.assert_frame_equal(all_bars(store, SPY), expected)


def test_symbol_filters_match_exactly_with_case_kept_and_patterns_on_request(store: DuckDBDataStorage) -> None:
    """``spy`` and ``SPY`` are two series (a case-insensitive match once pruned both)."""
    lower, upper, other = key("spy"), key("SPY"), key("SPYG")
    for series in (lower, upper, other):
        store.write(series, make_bars(periods=10, seed=1))
    code, out = run("maintain", "prune", "--symbol", "spy", "--yes", "--store", store.root)
    assert code == 0 and "1 series" in out
    assert set(store.series()) == {upper, other}
    assert prune(store, symbol="Spy", dry_run=True).series == 0
    code, out = run("maintain", "prune", "--symbol-glob", "SPY*", "--dry-run", "--store", store.root)
    assert code == 0 and "2 series selected" in out
    prune(store, symbol_glob="SP?G")
    assert store.series() == [upper]
    code, out = run("db-status", "--symbol", "spy", "--json", "--store", store.root)
    assert code != 0 and "No series" in out and "--symbol spy" in out and "SPY" in out, out  # no silent empty list


def test_prune_cli_dry_run_confirmation_and_yes(store: DuckDBDataStorage) -> None:
    store.write(SPY, make_bars(periods=100, seed=1))
    code, out = run("maintain", "prune", "--before", "2024-01-02 10:00", "--dry-run", "--store", store.root)
    assert code == 0 and "would remove 0 file(s), rewrite 1, 30 bar(s)" in out
    assert len(all_bars(store, SPY)) == 100
    result = CliRunner().invoke(main, ["maintain", "prune", "--before", "2024-01-02 10:00", "--store",
                                       str(store.root)], input="n\n")
    assert result.exit_code == 1 and len(all_bars(store, SPY)) == 100
    code, out = run("maintain", "prune", "--before", "2024-01-02 10:00", "--yes", "--store", store.root)
    assert code == 0 and "30 bar(s) gone" in out and len(all_bars(store, SPY)) == 70
    code, out = run("maintain", "prune", "--before", "yesterday-ish", "--yes", "--store", store.root)
    assert code == 1 and out.startswith("Error:")


# -- verify ------------------------------------------------------------------------------------------
def test_verify_finds_truncated_stray_and_conflicting_files(store: DuckDBDataStorage) -> None:
    store.write(SPY, make_bars(periods=100, seed=1))
    store.write(QQQ, make_bars(periods=100, seed=2))
    assert verify(store).ok and verify(store).problems == []
    code, out = run("maintain", "verify", "--store", store.root)
    assert code == 0 and "0 error(s)" in out

    victim = store.files(QQQ)[0].path
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated
    stray = store.files(SPY)[0].path.parent / "notes.txt"
    stray.write_text("hello")
    odd = store.files(SPY)[0].path.parent / "SPY-backup.parquet"
    odd.write_bytes(b"PAR1")
    conflicting = make_bars(periods=100, seed=1).iloc[40:60].copy()
    conflicting["high"] *= 1.01
    store.write(SPY, conflicting)
    (store.root / ".quarantine").mkdir(exist_ok=True)
    (store.root / ".quarantine" / "t__x.parquet").write_bytes(b"x")

    report = verify(store)
    kinds = sorted((p.severity, p.kind) for p in report.problems)
    assert kinds == [("error", "checksum"), ("error", "conflicting-overlap"), ("error", "stray-file"),
                     ("error", "stray-file"), ("error", "unreadable"), ("warning", "quarantined")]
    assert next(p for p in report.problems if p.kind == "checksum").path == str(victim)  # (truncated)
    assert victim.exists()  # verify changes nothing
    code, out = run("maintain", "verify", "--store", store.root)
    assert code == 1 and "5 error(s), 1 warning(s)" in out
    code, out = run("maintain", "verify", "--json", "--store", store.root)
    assert code == 1 and json.loads(out)["ok"] is False


def test_verify_finds_bars_outside_the_named_range_and_a_misplaced_file(store: DuckDBDataStorage) -> None:
    store.write(SPY, make_bars(periods=100, seed=1))
    source = store.files(SPY)[0]
    lying = Interval(source.interval.start, source.interval.start + pd.Timedelta(minutes=10))
    os.replace(source.path, source.path.with_name(file_name(lying, source.token)))
    store.write(DAILY, make_bars(start="2024-01-02", periods=5, freq="1D", seed=3))
    daily_file = store.files(DAILY)[0]
    wrong = daily_file.path.parent.parent / "2024"
    wrong.mkdir()
    os.replace(daily_file.path, wrong / daily_file.path.name)
    kinds = sorted(p.kind for p in verify(store).errors)
    assert kinds == ["coverage-mismatch", "outside-coverage", "wrong-partition"]


def test_status_counts_match_the_files(store: DuckDBDataStorage) -> None:
    fragmented(store)
    report = status(store)
    (row,) = report.series
    assert row.rows == sum(pd.read_parquet(f.path).shape[0] for f in store.files(SPY))
    assert row.files == len(store.files(SPY)) and report.to_dict()["totals"]["files"] == row.files


# -- safe while a backtest reads ---------------------------------------------------------------------
def test_a_concurrent_reader_sees_consistent_bars_during_compact_and_prune(store_dir: Path) -> None:
    """Invariant: bars a reader asks for that maintenance keeps are returned whole, before, during and after."""
    with DuckDBDataStorage(store_dir) as writer_store:
        bars = make_bars(start="2024-01-02", periods=3000, seed=7)
        for i in range(0, 3000, 100):
            writer_store.write(SPY, bars.iloc[i: i + 120])
        cut = bars.index[1000]
        wanted = writer_store.read(SPY, cut, bars.index[-1] + pd.Timedelta(minutes=1))
        stop, failures, reads = threading.Event(), [], [0]

        def reader() -> None:
            with DuckDBDataStorage(store_dir) as reader_store:
                while not stop.is_set():
                    try:
                        got = reader_store.read(SPY, cut, bars.index[-1] + pd.Timedelta(minutes=1))
                        pd.testing.assert_frame_equal(got, wanted)
                        reads[0] += 1
                    except Exception as exc:  # noqa: BLE001 - reported below
                        failures.append(repr(exc))
                        return

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            time.sleep(0.2)
            compact(writer_store)
            prune(writer_store, before=cut)
            time.sleep(0.2)
        finally:
            stop.set()
            thread.join(30)
        assert not failures, failures[0]
        assert reads[0] > 3
        assert verify(writer_store).ok
