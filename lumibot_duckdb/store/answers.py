"""Empty answers that heal: when a provider said "no bars" over a range where the market was open.

Coverage is the list of published files, and a file with no rows means "asked, no bars there". That is
right for a weekend, a holiday or a symbol that did not trade yet, and wrong when the provider had an
outage and answered nothing: stored for good, such an answer would make every later backtest trade on a
hole. So an empty answer to a request (the data source judged the market open: it asked) is recorded
with **when it was given** and **how many times in a row** it was given, in the file's footer
(``lumibot_duckdb.empty``), and healed by one rule:

    **An empty answer is asked again once, on the first request for its range at least**
    :data:`RECHECK_AFTER` **(one day) after it was given. If the provider answers with bars, they replace
    it; if it answers empty again, the range is trusted as empty from then on** (:data:`TRUSTED_AFTER`
    answers). Ranges with no trading session are never asked, so they carry no mark and are trusted at once.

What it costs: one more request per empty range, once; a warm rerun the same day asks nothing, and so does
any rerun after the second answer (measured in ``benchmarks/empty_answers.py``). Empty answers stored
before this rule existed carry no mark and are trusted; ``lumibot-duckdb maintain forget-empty`` makes any
empty answer (of a series, over a range) be asked again at the next request. ``db-status`` lists the empty
answers waiting to be asked again.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from lumibot_duckdb.store.local import BarFile, read_footer

EMPTY_MARK = b"lumibot_duckdb.empty"
RECHECK_AFTER = pd.Timedelta(days=1)
"""An empty answer is asked again on the first request for its range this long after it was given."""
TRUSTED_AFTER = 2
"""After this many empty answers in a row (the first and the one asked again), the range is trusted as empty."""


def now() -> pd.Timestamp:
    """The wall clock the rule reads (a function, so tests can stand in a later day)."""
    return pd.Timestamp.now(tz="UTC")


def mark(asked: pd.Timestamp, answers: int) -> dict[bytes, bytes]:
    """The footer metadata of an empty answer given at ``asked``, the ``answers``-th empty one in a row."""
    return {EMPTY_MARK: json.dumps({"asked": pd.Timestamp(asked).tz_convert("UTC").isoformat(),
                                    "answers": int(answers)}).encode()}


@dataclass(frozen=True)
class EmptyAnswer:
    """A published file with no bars that a provider gave in answer to a request."""

    file: BarFile
    asked: pd.Timestamp
    answers: int

    @property
    def trusted(self) -> bool:
        """True once the provider answered "no bars" :data:`TRUSTED_AFTER` times in a row."""
        return self.answers >= TRUSTED_AFTER

    @property
    def recheck_after(self) -> pd.Timestamp | None:
        """When a request for the range asks the provider again (None: trusted, never)."""
        return None if self.trusted else self.asked + RECHECK_AFTER

    def due(self, at: pd.Timestamp) -> bool:
        """Whether a request at ``at`` asks the provider again for this range."""
        after = self.recheck_after
        return after is not None and at >= after


def empty_answer(bar_file: BarFile) -> EmptyAnswer | None:
    """The empty-answer record of ``bar_file``, or None (it has bars, or it is an unmarked empty file)."""
    raw = _empty_mark(str(bar_file.path))
    if raw is None:
        return None
    try:
        record = json.loads(raw)
        return EmptyAnswer(bar_file, pd.Timestamp(record["asked"]).tz_convert("UTC"), int(record["answers"]))
    except (KeyError, TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=65536)
def _empty_mark(path: str) -> bytes | None:
    """The empty-answer mark in the footer of the file at ``path``, if it has no bars (once per process and file:
    files never change once published, and every fill asks this of the files of its range)."""
    footer = read_footer(path)
    if footer is None or footer.num_rows:
        return None
    return (footer.metadata or {}).get(EMPTY_MARK)


def empty_answers(files: Iterable[BarFile]) -> list[EmptyAnswer]:
    """The empty answers among ``files`` (footers only; each read once per process)."""
    found = []
    for bar_file in files:
        answer = empty_answer(bar_file)
        if answer is not None:
            found.append(answer)
    return found
