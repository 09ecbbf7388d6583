"""Coverage is data and gaps are a pure function: ``missing_ranges`` and friends."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lumibot_duckdb.errors import ConfigError
from lumibot_duckdb.store.coverage import (
    Interval,
    SeriesKey,
    canonical_timeframe,
    has_overlaps,
    missing_ranges,
    normalize,
    utc,
)

T0 = pd.Timestamp("2024-01-01", tz="UTC")


def iv(a: int, b: int) -> Interval:
    return Interval(T0 + pd.Timedelta(hours=a), T0 + pd.Timedelta(hours=b))


def test_nothing_covered_means_everything_missing() -> None:
    assert missing_ranges([], iv(0, 10)) == [iv(0, 10)]


def test_gaps_before_between_and_after() -> None:
    covered = [iv(2, 4), iv(6, 8)]
    assert missing_ranges(covered, iv(0, 10)) == [iv(0, 2), iv(4, 6), iv(8, 10)]


def test_fully_covered_needs_nothing_even_across_touching_blocks() -> None:
    assert missing_ranges([iv(0, 5), iv(5, 10)], iv(1, 9)) == []


def test_empty_wanted_range() -> None:
    assert missing_ranges([iv(0, 1)], iv(5, 5)) == []


def test_normalize_merges_touching_and_overlapping_and_sorts() -> None:
    assert normalize([iv(6, 8), iv(0, 2), iv(1, 3), iv(3, 4), iv(9, 9)]) == [iv(0, 4), iv(6, 8)]


def test_has_overlaps_ignores_touching() -> None:
    assert not has_overlaps([iv(0, 2), iv(2, 4)])
    assert has_overlaps([iv(0, 10), iv(2, 3), iv(20, 30)])


def test_naive_and_aware_times_are_utc() -> None:
    assert utc("2024-01-01 10:00") == pd.Timestamp("2024-01-01 10:00", tz="UTC")
    assert utc(pd.Timestamp("2024-01-01 05:00", tz="America/New_York")).hour == 10


def test_series_key_is_canonical() -> None:
    key = SeriesKey(" Polygon ", "SPY", "1Min", asset_type="STOCK", quote="usd", adjustment="Split")
    assert key == SeriesKey("polygon", "SPY", "minute", asset_type="stock", quote="USD", adjustment="split")
    assert str(key) == "polygon:stock:SPY/USD:minute:split"


@pytest.mark.parametrize("bad", [{"timeframe": "5 weeks"}, {"symbol": " "}, {"source": "poly gon"}])
def test_series_key_rejects_unusable_values(bad: dict) -> None:
    fields = {"source": "polygon", "symbol": "SPY", "timeframe": "day", **bad}
    with pytest.raises(ConfigError):
        SeriesKey(**fields)


def test_timeframe_aliases() -> None:
    assert [canonical_timeframe(x) for x in ("1m", "Minute", "1h", "1Day", "D")] == [
        "minute", "minute", "hour", "day", "day"]


hours = st.integers(min_value=0, max_value=200)
intervals = st.builds(lambda a, n: iv(a, a + n), hours, st.integers(min_value=0, max_value=50))


@settings(max_examples=300, deadline=None)
@given(covered=st.lists(intervals, max_size=8), start=hours, length=st.integers(min_value=0, max_value=120))
def test_missing_ranges_is_exactly_the_uncovered_part(covered: list[Interval], start: int, length: int) -> None:
    """Invariant: gaps ∪ (covered ∩ wanted) = wanted, gaps are disjoint from covered, sorted, not touching."""
    wanted = iv(start, start + length)
    gaps = missing_ranges(covered, wanted)
    hour_set = lambda spans: {h for s in spans for h in range(  # noqa: E731
        int((s.start - T0) / pd.Timedelta(hours=1)), int((s.end - T0) / pd.Timedelta(hours=1)))}
    wanted_hours = hour_set([wanted])
    assert hour_set(gaps) == wanted_hours - hour_set(covered)
    assert all(g.start < g.end for g in gaps)
    assert all(a.end < b.start for a, b in itertools.pairwise(gaps))


@settings(max_examples=200, deadline=None)
@given(st.lists(intervals, max_size=10))
def test_normalize_is_idempotent_and_disjoint(spans: list[Interval]) -> None:
    merged = normalize(spans)
    assert normalize(merged) == merged
    assert all(a.end < b.start for a, b in itertools.pairwise(merged))
    assert not has_overlaps(merged)
