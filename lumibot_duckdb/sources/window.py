"""Bounded memory: each series is held as a window of bars around the simulated clock.

Lumibot's sources load a series from the first request to the end of the backtest and keep it.
On the DuckDB path a data source holds, per series, only

* the history its requests reach back to (the longest lookback seen for that series, in time and
  in bars, plus a margin), and
* a chunk ahead of the clock, so the per-bar loop slices memory and never queries DuckDB;

and when the clock nears the end of a window, the window is read again from the store, further on
(a *roll*). With a memory budget (``max_memory=`` / ``LUMIBOT_DUCKDB_MAX_MEMORY``), the least
recently used windows are dropped when the total exceeds it, and read again when next used.

A window always holds every bar a request can touch, so what the strategy sees is what the legacy
path's whole-range frame gives. :class:`WindowBook` only does the bookkeeping; each source decides
what a window is made of (a Lumibot ``Data``, a DataFrame) and how to build it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import pandas as pd

AHEAD = {"minute": pd.Timedelta(days=21), "hour": pd.Timedelta(days=120), "day": pd.Timedelta(days=3660)}
"""How far past the clock a window is read: about 15 trading days of minute bars (chosen by measurement:
``benchmarks/universe.py``); daily series are small enough to be read to the end at once."""
GUARD = pd.Timedelta(days=6)
"""A window is rolled when the clock is this close to its end: more than the longest gap between two
iterations of a daily strategy (a long weekend), so the broker's fills never run past a window."""
MARGIN = pd.Timedelta(days=7)
"""Extra history kept behind the longest lookback seen."""
ROW_MARGIN = 2
"""Extra bars kept behind the longest lookback in bars (the first bar's return needs the one before)."""


@dataclass
class Window:
    """What one series has in memory, and what its requests need."""

    first: pd.Timestamp | None = None
    """The earliest instant the legacy path would hold for this series (its first request's start)."""
    last: pd.Timestamp | None = None
    """The end of the series' range (the backtest's end)."""
    start: pd.Timestamp | None = None
    end: pd.Timestamp | None = None
    """Held: bars in ``[start, end]``; ``end >= last`` means nothing is left to roll into."""
    span: pd.Timedelta = field(default_factory=lambda: pd.Timedelta(0))
    rows: int = 0
    """The longest lookback seen, in time and in bars."""
    timestep: str = "minute"
    request_start: object = None
    """The source's own start argument of the request that made the window (for its range filter)."""
    nbytes: int = 0
    used: int = 0

    @property
    def held(self) -> bool:
        return self.start is not None

    def complete(self) -> bool:
        return self.end is not None and self.last is not None and self.end >= self.last

    def due(self, now: pd.Timestamp) -> bool:
        """True when the window must be (re)read before bars at ``now`` are asked for."""
        if self.start is None or self.end is None:
            return True
        if now < self.start:
            return True
        return not self.complete() and now + GUARD >= self.end

    def bounds(self, now: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
        """Where to read from and to, for the clock at ``now``."""
        assert self.first is not None and self.last is not None, "a window is read after its range is known"
        start = max(self.first, min(now, now - self.span - MARGIN))
        end = min(self.last, now + max(AHEAD.get(self.timestep, AHEAD["minute"]), GUARD * 2))
        return start, max(start, end)

    def read(self, start: pd.Timestamp, now: pd.Timestamp,
             read: Callable[[pd.Timestamp], pd.DataFrame]) -> tuple[pd.DataFrame, pd.Timestamp]:
        """``read(start)``, from further back until the frame holds the longest lookback in bars behind ``now``.

        A lookback in time can leave too few bars (a halted or sparse series); the legacy path, which
        holds everything from ``first``, would still give them. Returns the frame and where it starts.
        """
        assert self.first is not None, "a window is read after its range is known"
        while True:
            frame = read(start)
            if start <= self.first or frame.empty:
                return frame, start
            behind = int(frame.index.searchsorted(now, side="right"))
            if behind > 0 and behind >= self.rows + ROW_MARGIN:
                return frame, start
            start = max(self.first, now - max(now - start, pd.Timedelta(days=1)) * 2)


@dataclass
class WindowBook:
    """The windows of one data source, and the memory budget they share."""

    budget: int | None = None
    windows: dict[Hashable, Window] = field(default_factory=dict)
    clock: int = 0
    evictions: int = 0
    loads: int = 0
    peak_bytes: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def window(self, key: Hashable) -> Window:
        found = self.windows.get(key)
        if found is None:
            with self._lock:
                found = self.windows.setdefault(key, Window())
        return found

    def need(self, key: Hashable, span: pd.Timedelta, rows: int) -> Window:
        """Record a request's lookback for ``key`` (a window keeps the longest one)."""
        found = self.window(key)
        if span > found.span:
            found.span = span
        if rows > found.rows:
            found.rows = rows
        return found

    def next_roll(self) -> pd.Timestamp | None:
        """The earliest clock at which some held window is due to roll."""
        ends = [w.end - GUARD for w in self.windows.values() if w.held and not w.complete() and w.end is not None]
        return min(ends) if ends else None

    def touch(self, key: Hashable) -> Window | None:
        found = self.windows.get(key)
        if found is not None:
            self.clock += 1
            found.used = self.clock
        return found

    def loaded(self, key: Hashable, start: pd.Timestamp, end: pd.Timestamp, nbytes: int) -> list[Hashable]:
        """Record a (re)read window; return the keys to drop to stay within the budget (least recently used)."""
        with self._lock:
            found = self.windows[key]
            found.start, found.end, found.nbytes = start, end, nbytes
            self.loads += 1
            self.clock += 1
            found.used = self.clock
            total = self.held_bytes()
            self.peak_bytes = max(self.peak_bytes, total)
            drop: list[Hashable] = []
            if self.budget is not None and total > self.budget:
                for other_key, other in sorted(self.windows.items(), key=lambda kv: kv[1].used):
                    if total <= self.budget:
                        break
                    if other_key == key or not other.held:
                        continue
                    total -= other.nbytes
                    drop.append(other_key)
            for other_key in drop:
                self.dropped(other_key)
            return drop

    def dropped(self, key: Hashable) -> None:
        """The window of ``key`` left memory (evicted, or replaced by the source itself)."""
        found = self.windows.get(key)
        if found is not None and found.held:
            found.start = found.end = None
            found.nbytes = 0
            self.evictions += 1

    def held_bytes(self) -> int:
        return sum(w.nbytes for w in self.windows.values())

    def stats(self) -> dict[str, int]:
        return {"windows": sum(w.held for w in self.windows.values()), "held_bytes": self.held_bytes(),
                "peak_bytes": self.peak_bytes, "loads": self.loads, "evictions": self.evictions}


def frame_bytes(frame: pd.DataFrame) -> int:
    """Bytes a frame holds (index included; object columns counted shallowly)."""
    return int(frame.memory_usage(index=True, deep=False).sum())
