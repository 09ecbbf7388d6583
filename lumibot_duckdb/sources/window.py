"""Bounded memory: each series is held as a window of bars around the simulated clock.

Lumibot's sources load a series from the first request to the end of the backtest and keep it.
On the DuckDB path a data source holds, per series, only

* the history its requests reach back to (the longest lookback asked lately for that series, in
  time and in bars, plus a margin), and
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
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import pandas as pd

AHEAD = {"minute": pd.Timedelta(days=40), "hour": pd.Timedelta(days=120), "day": pd.Timedelta(days=3660)}
"""How far past the clock a window is read. Minute bars: 40 days, chosen by measurement (Polygon daily
momentum over 10 symbols for 2023, DuckDB path, one run each: 21 days 13.2 s / 352 MB peak RSS, 40 days
10.6 s / 368 MB, 60 days 10.3 s / 384 MB, 120 days 11.0 s / 428 MB; ``benchmarks/window_policy.py``
measures the same on a minute scan). Daily series are small enough to be read to the end at once."""
GUARD = pd.Timedelta(days=6)
"""A window is rolled when the clock is this close to its end: more than the longest gap between two
iterations of a daily strategy (a long weekend), so the broker's fills never run past a window."""
SHRINK = pd.Timedelta(days=60)
"""A window holding this much more history than its lookbacks need is read again, smaller."""
MARGIN = pd.Timedelta(days=7)
"""Extra history kept behind the longest lookback seen."""
ROW_MARGIN = 2
"""Extra bars kept behind the longest lookback in bars (the first bar's return needs the one before)."""
_FOREVER = 2**63 - 1


@dataclass(frozen=True)
class WindowPolicy:
    """How a source sizes its windows (one per data source class; frozen, so no window changes another's)."""

    margin: pd.Timedelta = MARGIN
    """History kept behind the longest lookback in time (a source whose lookbacks are exact in bars needs none)."""
    guard: pd.Timedelta = GUARD
    """How close the clock may come to a window's end before it rolls (a source that checks its windows at
    every call, not once per iteration, can roll later)."""
    ahead: Mapping[str, pd.Timedelta] = field(default_factory=lambda: MappingProxyType(AHEAD))
    """How far past the clock a window is read, per timestep (default :data:`AHEAD`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ahead", MappingProxyType({**AHEAD, **self.ahead}))


DEFAULT_POLICY = WindowPolicy()


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
    asked_span: pd.Timedelta = field(default_factory=lambda: pd.Timedelta(0))
    asked_rows: int = 0
    """The longest lookback asked since the window was last read, in time and in bars."""
    before_span: pd.Timedelta = field(default_factory=lambda: pd.Timedelta(0))
    before_rows: int = 0
    """The same, for the reads before the last one (what the window was last sized for)."""
    policy: WindowPolicy = DEFAULT_POLICY
    reach: tuple[pd.Timedelta, int] | None = None
    """The lookback of a request being served that was never asked before (see :meth:`WindowBook.need`)."""
    asked_kinds: set[Hashable] = field(default_factory=set)
    timestep: str = "minute"
    request_start: object = None
    """The source's own start argument of the request that made the window (for its range filter)."""
    nbytes: int = 0
    used: int = 0
    data_id: int = 0
    """``id()`` of the in-memory object the source built over the window (0: none), to notice a new one
    (set it with :meth:`holds`)."""
    enough: dict[Hashable, int] = field(default_factory=dict)
    """Per request kind, the earliest clock (ns) from which the source's own check found that object
    enough for the request: the check only gets easier as the clock advances, so later requests of the
    kind may skip it. Forgotten when the object changes."""
    bare: bool = False
    """The last read found no bar in ``[start, end]``: the window is held all the same (an empty window is a
    window, read again when it is due like any other), and the source holds nothing for it."""
    filled: tuple[pd.Timestamp, pd.Timestamp] | None = None
    """The range this process already made present in the store for the window's series (a request inside it
    needs no fill), or None."""
    _live: tuple[object, object, object, int, int] = field(default=(None, None, None, 0, 0), repr=False)

    @property
    def guard(self) -> pd.Timedelta:
        return self.policy.guard

    def place(self, first: pd.Timestamp, last: pd.Timestamp, timestep: str, *, request_start: object = None) -> None:
        """The series' range is ``[first, last]`` in bars of ``timestep`` (what the legacy path would hold)."""
        self.first, self.last = first, last
        if request_start is not None:
            self.request_start = request_start
        self.retime(timestep)

    def cover(self, start: pd.Timestamp, end: pd.Timestamp) -> None:
        """The source (re)built its in-memory object over ``[start, end]`` (recorded by :meth:`WindowBook.loaded`)."""
        self.start, self.end = start, end

    @property
    def span(self) -> pd.Timedelta:
        """The lookback in time the window is sized for: the longest asked since the read before the last.

        A lookback asked once (Lumibot's corporate-action check asks a year of daily bars on the first
        day) stops widening the window two reads later; a request that reaches further than the window
        holds makes the source read it again, further back, so what it gets never changes.
        """
        reach = self.reach[0] if self.reach else pd.Timedelta(0)
        return max(self.asked_span, self.before_span, reach)

    @property
    def rows(self) -> int:
        """The lookback in bars the window is sized for (as :attr:`span`)."""
        return max(self.asked_rows, self.before_rows, self.reach[1] if self.reach else 0)

    def oversized(self, now: pd.Timestamp) -> bool:
        """True when the window holds far more history than its lookbacks need (a one-off request widened it)."""
        return self.held and self.first is not None and self.start is not None and \
            self.start < self.bounds(now)[0] - SHRINK

    def ask(self, span: pd.Timedelta, rows: int) -> None:
        self.asked_span = max(self.asked_span, span)
        self.asked_rows = max(self.asked_rows, rows)

    def sized(self) -> None:
        """The window was just read: the lookbacks asked so far become what it was sized for."""
        self.before_span, self.before_rows = self.asked_span, self.asked_rows
        self.asked_span, self.asked_rows = pd.Timedelta(0), 0

    def retime(self, timestep: str) -> None:
        """The series is now held in bars of ``timestep``: what earlier reads were sized for no longer applies.

        (On Polygon a year of daily bars asked once is cheap in daily bars; when the series turns to
        minute bars, held for pricing, it must not size a year of those. Asked again, it sizes the next read.)
        """
        if timestep != self.timestep:
            self.timestep = timestep
            self.before_span, self.before_rows = pd.Timedelta(0), 0
            self.bare, self.filled = False, None

    def fill(self, start: pd.Timestamp, end: pd.Timestamp) -> None:
        """The store now holds (or knows there are no bars in) ``[start, end)`` of the window's series."""
        known = self.filled
        if known is not None and start <= known[1] and known[0] <= end:  # overlapping or adjacent: one range
            start, end = min(start, known[0]), max(end, known[1])
        self.filled = (start, end)

    def has_filled(self, start: pd.Timestamp, end: pd.Timestamp) -> bool:
        known = self.filled
        return known is not None and known[0] <= start and end <= known[1]

    def holds(self, data_id: int) -> None:
        """The window's in-memory object is now the one with ``id()`` ``data_id`` (0: none)."""
        self.data_id = data_id
        self.enough.clear()

    @property
    def held(self) -> bool:
        return self.start is not None

    def complete(self) -> bool:
        return self.end is not None and self.last is not None and self.end >= self.last

    def due(self, now: pd.Timestamp) -> bool:
        """True when the window must be (re)read before bars at ``now`` are asked for.

        Asked on every request: it compares nanoseconds, worked out again only when the window changed.
        """
        live = self._live
        if live[0] is not self.start or live[1] is not self.end or live[2] is not self.last:
            live = self._live = self._live_span()
        return not live[3] <= now.value < live[4]

    def _live_span(self) -> tuple[object, object, object, int, int]:
        """``(start, end, last, from_ns, until_ns)``: the window serves a clock in ``[from_ns, until_ns)``."""
        start, end, last = self.start, self.end, self.last
        if start is None or end is None:
            return start, end, last, 0, 0
        until = _FOREVER if self.complete() else (end - self.guard).value
        return start, end, last, start.value, until

    def bounds(self, now: pd.Timestamp) -> tuple[pd.Timestamp, pd.Timestamp]:
        """Where to read from and to, for the clock at ``now``."""
        assert self.first is not None and self.last is not None, "a window is read after its range is known"
        start = max(self.first, min(now, now - self.span - self.policy.margin))
        ahead = self.policy.ahead.get(self.timestep, AHEAD["minute"])
        end = min(self.last, now + max(ahead, self.guard * 2))
        return start, max(start, end)

    def read(self, start: pd.Timestamp, now: pd.Timestamp,
             read: Callable[[pd.Timestamp], pd.DataFrame]) -> tuple[pd.DataFrame, pd.Timestamp]:
        """``read(start)``, from further back until the frame holds the longest lookback in bars behind ``now``.

        A lookback in time can leave too few bars (a halted or sparse series), or none at all; the legacy
        path, which holds everything from ``first``, would still give them. Returns the frame and where it
        starts.
        """
        assert self.first is not None, "a window is read after its range is known"
        while True:
            frame = read(start)
            if start <= self.first:
                return frame, start
            behind = int(frame.index.searchsorted(now, side="right")) if len(frame) else 0
            if behind > 0 and behind >= self.rows + ROW_MARGIN:
                return frame, start
            start = max(self.first, now - max(now - start, pd.Timedelta(days=1)) * 2)


@dataclass
class WindowBook:
    """The windows of one data source, and the memory budget they share."""

    budget: int | None = None
    policy: WindowPolicy = DEFAULT_POLICY
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
                found = self.windows.setdefault(key, Window(policy=self.policy))
        return found

    def need(self, key: Hashable, span: pd.Timedelta, rows: int, kind: Hashable = None) -> Window:
        """Record a request's lookback for ``key`` (the window is sized for the longest asked lately); mark it used.

        With ``kind`` (what identifies a request: its length and timestep), a kind asked for the first
        time only *reaches* (the window covers it while it is served, see :attr:`Window.reach`; the
        source clears it after) and sizes the window only when asked again. Lumibot's own one-off
        requests (a year of daily bars for corporate actions, on the first day) then do not keep a
        year of minute bars in memory.
        """
        found = self.window(key)
        if kind is None or kind in found.asked_kinds:
            found.ask(span, rows)
        else:
            found.asked_kinds.add(kind)
            found.reach = (span, rows)
        self.clock += 1  # and it is in use: the budget drops the least recently used first
        found.used = self.clock
        return found

    def next_roll(self) -> pd.Timestamp | None:
        """The earliest clock at which some held window is due to roll."""
        ends = [w.end - w.guard for w in self.windows.values()
                if w.held and not w.bare and not w.complete() and w.end is not None]
        return min(ends) if ends else None

    def loaded(self, key: Hashable, start: pd.Timestamp, end: pd.Timestamp, nbytes: int) -> list[Hashable]:
        """Record a (re)read window; return the keys to drop to stay within the budget (least recently used)."""
        with self._lock:
            found = self.windows[key]
            found.start, found.end, found.nbytes = start, end, nbytes
            found.bare = False  # (the source says so again after an empty read)
            found.sized()
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
        if found is None:
            return
        found.holds(0)  # whatever it held is gone, held or not (its id may be reused)
        found.bare = False
        if found.held:
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
