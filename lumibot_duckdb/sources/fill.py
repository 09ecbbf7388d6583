"""The one fill loop: make a range of one series present in the store, asking the provider only for what
it lacks. Used by every data source on a cold read (:meth:`EnhancedDataSourceBacktesting.serve
<lumibot_duckdb.sources.base.EnhancedDataSourceBacktesting.serve>`) and by ``lumibot-duckdb fetch``
(:mod:`lumibot_duckdb.fetch`), so both ask the same questions and store the same answers.

Under the series' lock (:meth:`DuckDBDataStorage.writer <lumibot_duckdb.store.DuckDBDataStorage.writer>`):
what is missing; the provider's check that stored bars are still valid; the missing ranges clipped
to what is final; the provider's requests for them (:meth:`Provider.plan`); ranges that need no
request recorded as empty at once; the requests run in parallel (``max_workers``), each one
retried by the :class:`~lumibot_duckdb.sources.retry.RetryPolicy` and stored the moment it is
answered (an empty answer is recorded as "no bars there"), with a progress bar per series. A
failed request stores nothing for its range and is raised once the others are stored; an
interrupt (Ctrl-C) keeps every answer stored so far and drops the rest, so the next fill asks only
for what is still missing.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from lumibot_duckdb.errors import ProviderDataError
from lumibot_duckdb.sources.retry import RetryPolicy, describe
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey, answers
from lumibot_duckdb.store.coverage import missing_ranges, normalize
from lumibot_duckdb.store.validate import bar_problems


@dataclass
class FillResult:
    """What one :func:`fill` did."""

    key: SeriesKey
    chunks: int = 0
    """Planned requests answered and stored (a CCXT chunk is up to 10 pages)."""
    requests: int = 0
    """Provider calls made for them (the provider's ``calls`` count when it keeps one, else :attr:`chunks`)."""
    retries: int = 0
    """Attempts that failed and were made again."""
    bars: int = 0
    """Bars fetched and stored."""
    empty: int = 0
    """Requests answered with no bars, and ranges with no session (recorded without asking)."""
    missing: list[Interval] = field(default_factory=list)
    """What the store lacked before the fill (after clipping to what is final)."""
    empty_answers: int = 0
    """Requests the provider answered with no bars (recorded with when they were given)."""
    rechecks: int = 0
    """Earlier empty answers asked again by the rule of :mod:`lumibot_duckdb.store.answers`."""
    horizon: pd.Timestamp = field(default_factory=lambda: pd.Timestamp.max.tz_localize("UTC"))
    """The provider's settled horizon the fill went up to (nothing later is covered)."""


def fill(store: DuckDBDataStorage, key: SeriesKey, wanted: Interval | list[Interval], provider: Any, *,
         refresh: bool = False, policy: RetryPolicy | None = None, progress: bool = False,
         on_request: Callable[[int], None] | None = None, result: FillResult | None = None) -> FillResult:
    """Make ``wanted`` (a range, or several) of ``key`` present in ``store`` through ``provider`` (a
    :class:`Provider <lumibot_duckdb.sources.base.Provider>`); see the module docstring.

    ``refresh`` asks for all of ``wanted`` again. Empty answers stored earlier in ``wanted`` are asked again
    when the rule of :mod:`lumibot_duckdb.store.answers` says so, and replaced by the new answer. Every answer
    is checked (:func:`lumibot_duckdb.store.validate.bar_problems`, the rules ingest applies) before it is
    stored. ``progress`` draws a bar for the series when something is asked for. ``on_request(bars)`` is
    called once per answered request (from this thread), e.g. to count requests. Raises the first failed
    request's error after every other answer is stored: :class:`~lumibot_duckdb.errors.ProviderDataError`
    (an answer that is not bars, or holds impossible values) or :class:`~lumibot_duckdb.errors.ProviderRequestError`
    (the provider kept failing). ``result``: a :class:`FillResult` to count into, which keeps what was
    stored also when the fill raises or is interrupted.
    """
    policy = policy or RetryPolicy.from_settings()
    result = result if result is not None else FillResult(key)
    ranges = [wanted] if isinstance(wanted, Interval) else list(wanted)
    ranges = [r for r in ranges if not r.empty]
    if not ranges:
        return result
    source = str(getattr(provider, "name", key.source))
    if not refresh and not any(store.missing_ranges(key, want.start, want.end) for want in ranges) and \
            not _rechecks(lambda want: answers.empty_answers(store.files(key, want)), ranges, answers.now()):
        return result  # nothing to ask: no lock taken (on a shared store, no lease); the lock would find the same
    with store.writer(key) as writer:
        asked_at = answers.now()

        def gaps() -> tuple[list[Interval], list[answers.EmptyAnswer]]:
            missing = list(ranges) if refresh else [g for want in ranges for g in writer.missing(want)]
            return missing, _rechecks(writer.empty_answers, ranges, asked_at, every=refresh)

        missing, recheck = gaps()
        if not missing and not recheck:
            return result
        if writer.coverage():
            policy.call(lambda: provider.revalidate(key, writer), source=source,
                        what=f"a check of the stored {key}", series=key)
            missing, recheck = gaps()
        horizon = result.horizon = provider.settled_until()

        def settled(found: list[Interval]) -> list[Interval]:
            return [Interval(g.start, min(g.end, horizon)) for g in normalize(found) if g.start < horizon]

        # (planned apart: an answer to a range asked for the first time is never counted as a second one)
        ask, again = settled(missing), [] if refresh else settled([r.file.interval for r in recheck])
        result.missing = ask
        if not ask and not again:
            return result
        tasks = policy.call(lambda: (provider.plan(key, ask) if ask else []) + (provider.plan(key, again) if again
                                                                                 else []),
                            source=source, what=f"what to ask for {key}", series=key)
        asked = [t for t in tasks if t.request is not None]
        for task in tasks:
            if task.request is None:
                writer.write(no_bars(), covered=task.covers)
                result.empty += 1
        stored = [t.covers for t in tasks if t.request is None]
        retries = _Counter()
        calls_before = getattr(provider, "calls", 0)

        def fetch(task: Any) -> pd.DataFrame:
            bars = policy.call(lambda: provider.fetch(task), source=source, what=describe(provider, task),
                               series=key, interval=task.covers, on_retry=retries.add)
            inside = bars[(bars.index >= task.covers.start) & (bars.index < task.covers.end)]
            problem = bar_problems(inside, asset_type=key.asset_type)
            if problem:
                raise bad_answer(str(getattr(provider, "name", None) or key.source.capitalize()), "the request",
                                 problem, advice=str(getattr(provider, "advice", None)
                                                     or "check the symbol and the provider's status."))
            return inside

        errors: list[BaseException] = []
        workers = max(1, min(int(getattr(provider, "max_workers", 1)), len(asked) or 1))
        with contextlib.ExitStack() as counting:
            counting.callback(_count, result, provider, calls_before, retries)
            bar = counting.enter_context(_bar(key, len(asked), progress and bool(asked)))
            pool = counting.enter_context(_pool(workers))
            pending: dict[Future[pd.DataFrame], Any] = {pool.submit(fetch, task): task for task in asked}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    try:
                        inside = future.result()
                    except ProviderDataError as exc:
                        errors.append(exc.locate(series=key, interval=task.covers))
                        bar.update(1)
                        continue
                    except Exception as exc:  # noqa: BLE001 - raised below, after the others are stored
                        errors.append(exc)
                        bar.update(1)
                        continue
                    if inside.empty:
                        times = 1 + max((r.answers for r in recheck if r.file.interval.overlaps(task.covers)),
                                        default=0)
                        writer.record_empty(task.covers, asked=asked_at, times=times)
                        result.empty += 1
                        result.empty_answers += 1
                    else:
                        writer.write(inside, covered=task.covers)
                    stored.append(task.covers)
                    result.chunks += 1
                    result.bars += len(inside)
                    bar.set_postfix(bars=f"{result.bars:,}", refresh=False)
                    bar.update(1)
                    if on_request is not None:
                        on_request(len(inside))
        if recheck:
            done_ranges = normalize(stored)
            replaced = [r.file for r in recheck if not missing_ranges(done_ranges, r.file.interval)]
            writer.remove(replaced)  # (their ranges are covered by the new answers, published first)
            result.rechecks += len(recheck)
        if errors:
            raise errors[0]
    return result


def _rechecks(recorded: Callable[[Interval], list[answers.EmptyAnswer]], wanted: list[Interval], at: pd.Timestamp,
              *, every: bool = False) -> list[answers.EmptyAnswer]:
    """Empty answers in ``wanted`` (``recorded(range)`` lists them) that the rule of
    :mod:`lumibot_duckdb.store.answers` asks again at ``at`` (``every``: all of them, for a refresh)."""
    found: dict[Any, answers.EmptyAnswer] = {}
    for want in wanted:
        for answer in recorded(want):
            if every or answer.due(at):
                found[answer.file.path] = answer
    return list(found.values())


def _count(result: FillResult, provider: Any, calls_before: int, retries: _Counter) -> None:
    result.retries = retries.value
    calls = getattr(provider, "calls", None)
    result.requests = calls - calls_before if isinstance(calls, int) else result.chunks


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool that, on an interrupt or an error, drops the requests not started yet instead of
    waiting for all of them (those already running finish in the background; their answers are not stored)."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lumibot-duckdb-fetch")
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **_: Any) -> None:
        pass


@contextlib.contextmanager
def _bar(key: SeriesKey, total: int, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield _NoBar()
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=f"Fetching {key.label}", unit="chunk", leave=True, **_width())
    try:
        yield bar
    finally:
        bar.close()


def _width() -> dict[str, Any]:
    """Follow the terminal's size; one that reports none (a bare pseudo-terminal) gets 100 x 40 (tqdm hides bars
    below a screen of 0 rows)."""
    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return {"dynamic_ncols": True} if columns > 0 else {"ncols": 100, "nrows": 40}


def no_bars() -> pd.DataFrame:
    """An answer with no bars (what is written for a range the provider had nothing in)."""
    frame = pd.DataFrame({c: pd.Series(dtype="float64") for c in ("open", "high", "low", "close")})
    frame.index = pd.DatetimeIndex([], tz="UTC", name="ts")
    return frame

def bad_answer(source: str, what: str, problem: str, *, advice: str) -> ProviderDataError:
    """The error for a provider answer that is not usable bars: who answered what, with what, and what to do.

    ``source`` is the provider's name as users know it ("Polygon", "The exchange"...). The fetch path
    adds the series and the range (:meth:`ProviderDataError.locate`) before the error leaves it.
    """
    return ProviderDataError(f"{source} answered {what} with {problem}; nothing was stored, so the range is asked "
                             f"for again next time. If it persists, {advice}", source=source)
