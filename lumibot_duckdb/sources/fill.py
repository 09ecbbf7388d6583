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
from lumibot_duckdb.store import DuckDBDataStorage, Interval, SeriesKey


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


def fill(store: DuckDBDataStorage, key: SeriesKey, wanted: Interval, provider: Any, *, refresh: bool = False,
         policy: RetryPolicy | None = None, progress: bool = False,
         on_request: Callable[[int], None] | None = None, result: FillResult | None = None) -> FillResult:
    """Make ``wanted`` of ``key`` present in ``store`` through ``provider`` (a :class:`Provider
    <lumibot_duckdb.sources.base.Provider>`); see the module docstring.

    ``refresh`` asks for all of ``wanted`` again. ``progress`` draws a bar for the series when
    something is asked for. ``on_request(bars)`` is called once per answered request (from this
    thread), e.g. to count requests. Raises the first failed request's error after every other
    answer is stored: :class:`~lumibot_duckdb.errors.ProviderDataError` (an answer that is not bars)
    or :class:`~lumibot_duckdb.errors.ProviderRequestError` (the provider kept failing). ``result``: a
    :class:`FillResult` to count into, which keeps what was stored also when the fill raises or is
    interrupted.
    """
    policy = policy or RetryPolicy.from_settings()
    result = result if result is not None else FillResult(key)
    source = str(getattr(provider, "name", key.source))
    with store.writer(key) as writer:
        missing = [wanted] if refresh else writer.missing(wanted)
        if not missing:
            return result
        if writer.coverage():
            policy.call(lambda: provider.revalidate(key, writer), source=source,
                        what=f"a check of the stored {key}", series=key)
            missing = [wanted] if refresh else writer.missing(wanted)
        horizon = provider.settled_until()
        missing = [Interval(gap.start, min(gap.end, horizon)) for gap in missing if gap.start < horizon]
        result.missing = missing
        if not missing:
            return result
        tasks = policy.call(lambda: provider.plan(key, missing), source=source,
                            what=f"what to ask for {key}", series=key)
        asked = [t for t in tasks if t.request is not None]
        for task in tasks:
            if task.request is None:
                writer.write(no_bars(), covered=task.covers)
                result.empty += 1
        if not asked:
            return result
        retries = _Counter()
        calls_before = getattr(provider, "calls", 0)

        def fetch(task: Any) -> pd.DataFrame:
            return policy.call(lambda: provider.fetch(task), source=source, what=describe(provider, task),
                               series=key, interval=task.covers, on_retry=retries.add)

        errors: list[BaseException] = []
        workers = max(1, min(int(getattr(provider, "max_workers", 1)), len(asked)))
        with contextlib.ExitStack() as counting:
            counting.callback(_count, result, provider, calls_before, retries)
            bar = counting.enter_context(_bar(key, len(asked), progress))
            pool = counting.enter_context(_pool(workers))
            pending: dict[Future[pd.DataFrame], Any] = {pool.submit(fetch, task): task for task in asked}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    task = pending.pop(future)
                    try:
                        bars = future.result()
                    except ProviderDataError as exc:
                        errors.append(exc.locate(series=key, interval=task.covers))
                        bar.update(1)
                        continue
                    except Exception as exc:  # noqa: BLE001 - raised below, after the others are stored
                        errors.append(exc)
                        bar.update(1)
                        continue
                    inside = bars[(bars.index >= task.covers.start) & (bars.index < task.covers.end)]
                    writer.write(inside, covered=task.covers)
                    result.chunks += 1
                    result.bars += len(inside)
                    result.empty += int(inside.empty)
                    bar.set_postfix(bars=f"{result.bars:,}", refresh=False)
                    bar.update(1)
                    if on_request is not None:
                        on_request(len(inside))
        if errors:
            raise errors[0]
    return result


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
