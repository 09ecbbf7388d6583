"""Provider answers before they are stored: refused when impossible, and empty ones asked again by the rule.

Invariants:
* an answer that breaks the store's rules (lumibot_duckdb.store.validate) stores nothing and raises a
  ProviderDataError naming the source, the series and the range; the range is asked again next time;
* an empty answer to a request is recorded with when it was given and asked again once, on the first
  request a day later; a second empty answer is trusted; ranges without a session are never asked;
* a warm rerun asks nothing the same day, and nothing after the second answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from factories import make_bars

from lumibot_duckdb.cli import main
from lumibot_duckdb.errors import BarsValidationError, ProviderDataError
from lumibot_duckdb.ingest.load import ingest
from lumibot_duckdb.sources.base import EnhancedDataSourceBacktesting, FetchTask
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey, answers
from lumibot_duckdb.store.maintenance import compact, forget_empty, prune, status
from lumibot_duckdb.store.validate import PRICE_RULES, bar_problems, price_rule, row_problems

pytestmark = pytest.mark.usefixtures("naive_times_in_utc")  # (the times written naive here are UTC)


KEY = SeriesKey("stub", "AAA", "minute", quote="USD")
WEEK = Interval(pd.Timestamp("2024-01-08", tz="UTC"), pd.Timestamp("2024-01-13", tz="UTC"))  # (made at import: aware)
DAY = pd.Timedelta(days=1)


class Stub:
    """A provider whose answer to each request is ``answer(covers)``; requests are counted."""

    max_workers = 1
    name = "Stubby"
    advice = "check the stub."

    def __init__(self, answer: Callable[[Interval], pd.DataFrame], *, closed: set[str] = frozenset()) -> None:
        self.answer = answer
        self.closed = closed  # ISO dates without a session: no request
        self.asked: list[Interval] = []

    def plan(self, key: SeriesKey, missing: list[Interval]) -> list[FetchTask]:
        tasks = []
        for gap in missing:
            for day in pd.date_range(gap.start.normalize(), gap.end - pd.Timedelta(1, "us"), freq="D"):
                piece = gap.intersection(Interval(day, day + DAY))
                if piece is not None:
                    tasks.append(FetchTask(piece, None if day.date().isoformat() in self.closed else piece))
        return tasks

    def fetch(self, task: FetchTask) -> pd.DataFrame:
        self.asked.append(task.covers)
        return self.answer(task.covers)

    def revalidate(self, key: SeriesKey, writer: Any) -> None:
        pass

    def settled_until(self) -> pd.Timestamp:
        return pd.Timestamp("2030-01-01", tz="UTC")


def bars_in(covers: Interval) -> pd.DataFrame:
    return make_bars(covers.start, periods=30, seed=covers.start.day)


def nothing(covers: Interval) -> pd.DataFrame:
    return make_bars(periods=0)


class Source(EnhancedDataSourceBacktesting):
    """The shared path alone (no Lumibot class under it)."""


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[pd.Timestamp]:
    """The clock the empty-answer rule reads; tests move it by setting ``clock[0]``."""
    now = [pd.Timestamp("2024-06-03 12:00", tz="UTC")]
    monkeypatch.setattr(answers, "now", lambda: now[0])
    return now


def source(store_dir: Path) -> Source:
    return Source(use_duckdb=True, cache_dir=store_dir)


# -- the empty-answer rule ---------------------------------------------------------------------------
def test_an_empty_answer_is_asked_again_once_a_day_later_and_heals(store_dir: Path, clock) -> None:
    outage = Stub(nothing)
    first = source(store_dir).serve(KEY, WEEK, outage)
    assert first.empty and len(outage.asked) == 5
    waiting = source(store_dir).store.files(KEY)
    assert {a.answers for a in answers.empty_answers(waiting)} == {1}

    healthy = Stub(bars_in)
    clock[0] += pd.Timedelta(hours=23)
    assert source(store_dir).serve(KEY, WEEK, healthy).empty and healthy.asked == [], "asked again within a day"
    clock[0] += pd.Timedelta(hours=1)
    ours = source(store_dir)
    healed = ours.serve(KEY, WEEK, healthy)
    assert len(healthy.asked) == 5 and len(healed) == 5 * 30
    assert ours.duckdb_stats.empty_rechecks == 5 and ours.duckdb_stats.provider_requests == 5
    assert answers.empty_answers(ours.store.files(KEY)) == [], "the empty answers were replaced"
    assert ours.store.coverage(KEY) == [WEEK]
    clock[0] += 30 * DAY
    assert len(source(store_dir).serve(KEY, WEEK, healthy)) == 150 and len(healthy.asked) == 5


def test_a_second_empty_answer_is_trusted_for_good(store_dir: Path, clock) -> None:
    outage = Stub(nothing)
    source(store_dir).serve(KEY, WEEK, outage)
    clock[0] += DAY
    source(store_dir).serve(KEY, WEEK, outage)
    assert len(outage.asked) == 10
    recorded = answers.empty_answers(source(store_dir).store.files(KEY))
    assert {a.answers for a in recorded} == {2} and all(a.trusted for a in recorded)
    clock[0] += 365 * DAY
    source(store_dir).serve(KEY, WEEK, outage)
    assert len(outage.asked) == 10


def test_ranges_without_a_session_are_never_asked_nor_asked_again(store_dir: Path, clock) -> None:
    provider = Stub(bars_in, closed={"2024-01-13", "2024-01-14"})
    weekend = Interval("2024-01-13", "2024-01-15")
    source(store_dir).serve(KEY, weekend, provider)
    clock[0] += 10 * DAY
    source(store_dir).serve(KEY, weekend, provider)
    assert provider.asked == [] and answers.empty_answers(source(store_dir).store.files(KEY)) == []


def test_an_answer_with_some_bars_is_not_an_empty_answer(store_dir: Path, clock) -> None:
    provider = Stub(lambda c: bars_in(c).iloc[:3])
    source(store_dir).serve(KEY, WEEK, provider)
    clock[0] += 5 * DAY
    source(store_dir).serve(KEY, WEEK, provider)
    assert len(provider.asked) == 5


def test_waiting_empty_answers_survive_compaction_and_prune(store_dir: Path, clock) -> None:
    ours = source(store_dir)
    ours.serve(KEY, Interval("2024-01-01", "2024-01-11"), Stub(bars_in))
    ours.serve(KEY, Interval("2024-01-11", "2024-01-12"), Stub(nothing))
    store = ours.store
    assert len(store.files(KEY)) == 2, "ten days of answers were compacted into one file, the empty one kept apart"
    compact(store)
    (waiting,) = answers.empty_answers(store.files(KEY))
    assert waiting.file.interval == Interval("2024-01-11", "2024-01-12") and not waiting.trusted
    prune(store, before="2024-01-11 12:00", source="stub")
    (kept,) = answers.empty_answers(store.files(KEY))
    assert kept.file.interval == Interval("2024-01-11 12:00", "2024-01-12") and kept.asked == waiting.asked


def test_forget_empty_makes_the_next_request_ask_again_and_keeps_the_rest(store_dir: Path, clock) -> None:
    source(store_dir).serve(KEY, WEEK, Stub(nothing))
    clock[0] += DAY
    source(store_dir).serve(KEY, WEEK, Stub(nothing))  # trusted now
    code, out = _cli("maintain", "forget-empty", "--source", "stub", "--symbol", "AAA", "--start",
                     "2024-01-09 12:00", "--end", "2024-01-10", "--store", store_dir)
    assert code == 0 and "forgot 1 empty answer(s)" in out
    store = DuckDBDataStorage(store_dir)
    assert store.missing_ranges(KEY, WEEK.start, WEEK.end) == [Interval("2024-01-09 12:00", "2024-01-10")]
    rest = [a for a in answers.empty_answers(store.files(KEY)) if a.file.interval.start == pd.Timestamp(
        "2024-01-09", tz="UTC")]
    assert rest and rest[0].trusted, "the part kept keeps its record"
    provider = Stub(bars_in)
    assert len(source(store_dir).serve(KEY, WEEK, provider)) == 30 and len(provider.asked) == 1
    code, out = _cli("maintain", "forget-empty", "--symbol", "aaa", "--store", store_dir)
    assert code == 0 and "0 series" in out, "symbols match exactly, case kept"
    code, out = _cli("maintain", "forget-empty", "--store", store_dir)
    assert code == 1 and "forget-empty needs" in out


def test_db_status_shows_the_empty_answers_waiting(store_dir: Path, clock) -> None:
    source(store_dir).serve(KEY, Interval("2024-01-08", "2024-01-10"), Stub(nothing))
    report = status(DuckDBDataStorage(store_dir))
    assert report.to_dict()["totals"]["empty_answers_waiting"] == 2
    (row,) = report.to_dict()["series"]
    assert [a["answers"] for a in row["empty_answers"]] == [1, 1]
    assert row["empty_answers"][0]["asked_again_after"] == (clock[0] + DAY).isoformat()
    code, out = _cli("db-status", "--store", store_dir)
    assert code == 0 and "2 empty answer(s)" in out and "asked again after" in out
    forget_empty(DuckDBDataStorage(store_dir), source="stub")
    code, out = _cli("db-status", "--store", store_dir)
    assert "empty answer" not in out


# -- validation of answers ---------------------------------------------------------------------------
def spoiled(change: Callable[[pd.DataFrame], None]) -> Callable[[Interval], pd.DataFrame]:
    def answer(covers: Interval) -> pd.DataFrame:
        frame = bars_in(covers)
        change(frame)
        return frame
    return answer


@pytest.mark.parametrize("change, words", [
    (lambda f: f.__setitem__("low", -f["low"]), "negative price"),
    (lambda f: f.__setitem__("high", f["low"] - 1), "high/low that does not bracket"),
    (lambda f: f.__setitem__("close", np.inf), "infinite"),
    (lambda f: f.__setitem__("close", 0.0), "price of zero"),
    (lambda f: f.__setitem__("volume", -1.0), "negative volume"),
    (lambda f: f.__setitem__("open", np.nan), "missing price or volume"),
])
def test_an_impossible_answer_stores_nothing_and_names_source_series_and_range(store_dir: Path, change,
                                                                               words: str) -> None:
    ours = source(store_dir)
    with pytest.raises(ProviderDataError) as raised:
        ours.serve(KEY, Interval("2024-01-08", "2024-01-09"), Stub(spoiled(change)))
    error = raised.value
    assert words in str(error) and "Stubby answered" in str(error) and "nothing was stored" in str(error)
    assert error.source == "Stubby" and error.series == KEY and error.interval == Interval("2024-01-08", "2024-01-09")
    assert "check the stub." in str(error) and "e.g. {" in str(error)
    assert ours.store.coverage(KEY) == [], "nothing of a refused answer is stored"


def test_futures_and_spreads_may_trade_below_zero(store_dir: Path) -> None:
    key = SeriesKey("stub", "CL", "minute", asset_type="future", quote="USD")
    negative = spoiled(lambda f: [f.__setitem__(c, f[c] - 200.0) for c in ("open", "high", "low", "close")])
    bars = source(store_dir).serve(key, Interval("2024-01-08", "2024-01-09"), Stub(negative))
    assert len(bars) == 30 and (bars["close"] < 0).all()


def test_the_rules_per_asset_type_are_declared() -> None:
    for asset_type in ("stock", "option", "crypto", "forex", "index"):
        assert price_rule(asset_type).positive and PRICE_RULES[asset_type].reason
    for asset_type in ("future", "cont_future", "crypto_future", "multileg", "spread"):
        assert not price_rule(asset_type).positive
    assert price_rule("prediction_contract").positive, "an undeclared type is held to positive prices"
    frame = make_bars(periods=3)
    frame["low"] = -1.0
    frame["close"] = frame["open"] = -0.5
    assert "negative price (impossible for a stock" in bar_problems(frame)
    assert bar_problems(frame, asset_type="future") == ""
    masks = row_problems(*(frame[c] for c in ("open", "high", "low", "close", "volume")), asset_type="stock")
    assert masks["negative"].all() and not masks["ohlc"].any()


def test_ingest_and_providers_share_the_rules(tmp_path: Path, store_dir: Path) -> None:
    frame = make_bars(periods=20).rename_axis("timestamp").reset_index()
    frame.loc[5, ["open", "high", "low", "close"]] = [0.0, 0.0, 0.0, 0.0]
    path = tmp_path / "AAA_1m.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(BarsValidationError, match="price of zero"):
        ingest(store_dir, path)
    report = ingest(store_dir, path, on_invalid="repair")
    assert report.files[0].issues == {"zero_price": 1} and report.rows_added == 19
    futures = make_bars(periods=20).rename_axis("timestamp").reset_index()
    futures[["open", "high", "low", "close"]] -= 500.0
    futures_path = tmp_path / "CL_1m.csv"
    futures.to_csv(futures_path, index=False)
    assert ingest(store_dir, futures_path, asset_type="future").rows_added == 20
    with pytest.raises(BarsValidationError, match="negative price"):
        ingest(store_dir / "other", futures_path)


def _cli(*args: object) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output



def test_row_problems_judge_trade_counts_alike_in_every_dtype():
    """Counts as float NumPy (ingest: NaN for no count), as nullable Int64 (a provider's frame) or as objects give
    the same masks (the first two without pandas' coercion)."""
    rng = np.random.default_rng(5)
    n = 400
    close = 100 + rng.random(n)
    prices = [close + rng.choice([0, 0, 0, 1, -1, np.nan, np.inf, -200], n) for _ in range(4)]
    volume = rng.choice([1.0, 0.0, -1.0, np.nan, np.inf], n)
    counts = rng.choice([3.0, 0.0, -2.0, np.nan, np.inf, 2.0**63], n)
    as_float = row_problems(*prices, volume, counts)
    finite = np.abs(np.nan_to_num(counts, nan=0.0)) < 2.0**62  # (what an Int64 column can hold)
    nullable = pd.array([None if np.isnan(c) else int(c) for c in counts[finite]], dtype="Int64")
    sub = [p[finite] for p in prices]
    as_int = row_problems(*sub, volume[finite], nullable)
    as_obj = row_problems(*sub, volume[finite], np.array(list(nullable), dtype=object))
    for name, mask in as_float.items():
        assert mask[finite].tolist() == as_int[name].tolist() == as_obj[name].tolist(), name
    assert any(mask.any() for mask in as_float.values())
    assert row_problems(*prices, volume, counts.astype("float32"))["negative"].tolist() == as_float["negative"].tolist()


@pytest.mark.parametrize("asset_type", ["stock", "future"])
def test_the_quick_pass_over_a_block_finds_a_problem_wherever_a_rule_does(asset_type: str) -> None:
    """row_problems first checks a whole block in a few passes and only applies the rules one by one when a bar
    fails; bar by bar, on prices, volumes, counts and times picked to sit on every rule's edge, the quick pass
    says "sound" only where no rule finds a problem, and "not sound" where one does or where a high or low is off
    by no more than the rules' tolerance (the rules then decide)."""
    from lumibot_duckdb.store import validate

    rng = np.random.default_rng(19)
    n = 20_000
    edges = np.array([100.0, 100.0, 100.0 + 1e-8, 100.0 - 1e-8, 99.0, 101.0, 0.0, -0.0, -1.0, -100.0, 1e-300,
                      np.nan, np.inf, -np.inf])
    o, h, lo, c = (rng.choice(edges, n) for _ in range(4))
    v = rng.choice([0.0, 5.0, -1.0, np.nan, np.inf, -np.inf], n)
    count = rng.choice([np.nan, 0.0, 3.0, -1.0, np.inf, -np.inf], n)
    now = np.datetime64("2024-01-01T00:00:00", "ns")
    starts = now + rng.choice([-60, 0, 60], n).astype("timedelta64[s]")
    starts[rng.random(n) < 0.01] = np.datetime64("NaT")
    skip = rng.random(n) < 0.1
    rule = price_rule(asset_type)
    judged = validate._judged(o, h, lo, c, v, count, rule, starts, now, skip)
    flagged = np.zeros(n, dtype=bool)
    for mask in judged.values():
        flagged |= mask
    sound = np.array([validate._all_sound(o[i:i + 1], h[i:i + 1], lo[i:i + 1], c[i:i + 1], v[i:i + 1],
                                          count[i:i + 1], rule, starts[i:i + 1], now, skip[i:i + 1])
                      for i in range(n)])
    assert not (sound & flagged).any(), np.flatnonzero(sound & flagged)[:5]  # a problem is never passed over
    with np.errstate(invalid="ignore"):
        tol = 1e-9 * np.maximum(np.abs(h), np.abs(lo))
        within = (np.maximum(o, c) - h <= tol) & (lo - np.minimum(o, c) <= tol)
    unsure = ~sound & ~flagged
    assert unsure.any() and within[unsure].all(), np.flatnonzero(unsure & ~within)[:5]
    assert sound.sum() > 100 and flagged.sum() > 100  # (both sides are exercised)
    quick = row_problems(o[sound], h[sound], lo[sound], c[sound], v[sound], count[sound], asset_type=asset_type,
                         starts=starts[sound], now=now, skip=skip[sound])
    assert list(quick) == list(validate.PROBLEMS) and not any(mask.any() for mask in quick.values())
    whole = row_problems(o, h, lo, c, v, count, asset_type=asset_type, starts=starts, now=now, skip=skip)
    assert all((whole[name] == judged[name]).all() for name in judged)
