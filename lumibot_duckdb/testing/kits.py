"""One *kit* per data source: what the A/B harness and the conformance suite need to drive it offline.

A kit names the two classes (Lumibot's legacy one and ours), starts the offline provider at the
source's network seam, says which provider calls count as requests, which functions make up the
source's "data layer" (timed the same way on both paths), and how big the legacy cache is.

Kits are looked up by source name with :func:`kit`; each vendor's kit lives beside its fake
provider (``lumibot_duckdb.testing.<source>``) and is imported only when asked for.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

from lumibot_duckdb import registry
from lumibot_duckdb.registry import load

VALUE_FAULTS = ("negative", "inverted", "infinite")
"""Faults that answer with well-formed bars holding an impossible value in the first bar of each answer: a
negative low and close, a high below the low, an infinite close (:func:`spoil`)."""
FAULTS = ("empty", "malformed", "error", "transient", *VALUE_FAULTS)
"""Faults a fake provider can be told to answer data requests with (see :meth:`FakeProvider.fail`)."""


def spoil(bars: Any, mode: str, *, capitalized: bool = False) -> Any:
    """``bars`` (a market frame: ``open high low close volume``…, or ``Open High…`` with ``capitalized``) with
    the impossible value of ``mode`` (one of :data:`VALUE_FAULTS`) in its first bar; a copy."""
    bars = bars.copy()
    if bars.empty:
        return bars
    high, low, close = ("High", "Low", "Close") if capitalized else ("high", "low", "close")
    first = bars.index[0]
    if mode == "negative":
        bars.loc[first, [low, close]] = -abs(float(bars.loc[first, close]))
    elif mode == "inverted":
        bars.loc[first, high] = float(bars.loc[first, low]) - 1.0
    elif mode == "infinite":
        bars.loc[first, [high, close]] = float("inf")
    else:
        raise ValueError(f"unknown value fault {mode!r}; use one of {VALUE_FAULTS}")
    return bars




class Faults:
    """The faults a fake provider injects: a mode per symbol (``None``: every symbol), for good or for
    the next ``times`` requests it applies to (then that symbol is answered normally again)."""

    def __init__(self, modes: tuple[str, ...] = FAULTS) -> None:
        self.modes = modes
        self._mode: dict[str | None, str] = {}
        self._left: dict[str | None, int] = {}
        self._lock = threading.Lock()

    def set(self, mode: str, symbol: str | None = None, times: int | None = None) -> None:
        if mode not in self.modes:
            raise ValueError(f"unknown fault {mode!r}; use one of {self.modes}")
        if times is not None and times < 1:
            raise ValueError(f"times={times!r}: a fault answers at least one request")
        with self._lock:
            self._mode[symbol] = mode
            if times is None:
                self._left.pop(symbol, None)
            else:
                self._left[symbol] = times

    def take(self, *symbols: str | None) -> str | None:
        """The fault for a request about ``symbols`` (the first one set, then the all-symbols one), used up once."""
        with self._lock:
            for symbol in (*symbols, None):
                if symbol in self._mode:
                    mode = self._mode[symbol]
                    left = self._left.get(symbol)
                    if left is not None:
                        if left <= 1:
                            del self._mode[symbol], self._left[symbol]
                        else:
                            self._left[symbol] = left - 1
                    return mode
        return None

    def clear(self) -> None:
        with self._lock:
            self._mode.clear()
            self._left.clear()

    def __bool__(self) -> bool:
        return bool(self._mode)


class FakeProvider(Protocol):
    """What every offline provider offers tests and the harness."""

    def count(self, kind: str | None = None) -> int:
        """Requests made so far (of one kind, or all)."""

    def requested_days(self) -> int:
        """Calendar days spanned by all bar requests (a re-download shows up here)."""

    def fail(self, mode: str, *, symbol: str | None = None, times: int | None = None) -> None:
        """From now on, answer bar requests (for ``symbol``, or all) with a fault of :data:`FAULTS`:
        ``empty`` (a well-formed answer with no bars), ``malformed`` (the provider's format, but
        garbage inside), ``error`` (the provider's error for a failed request: HTTP 500 on Polygon and
        Alpaca, an exchange error on CCXT, a rate-limit error on Yahoo), ``transient`` (the
        connection dropped or timed out), or a value fault of :data:`VALUE_FAULTS` (well-formed bars with
        an impossible value). ``times=N``: only the next N such requests fail, then the
        provider answers normally again (``fail("error", times=2)``: 500 twice, then 200)."""

    def heal(self) -> None:
        """Stop injecting faults."""

    def reset(self) -> None:
        """Forget the requests counted so far."""


class SourceKit(ABC):
    """How to drive one data source offline, legacy and DuckDB alike."""

    name: ClassVar[str]
    asset_types: ClassVar[tuple[str, ...]] = ("stock",)
    """Asset types the source serves in backtests ("stock", "crypto")."""
    timeframes: ClassVar[tuple[str, ...]] = ("day", "minute")
    """Bar timeframes a strategy can backtest on with this source."""
    request_kinds: ClassVar[tuple[str, ...]] = ()
    """Kinds of :meth:`FakeProvider.count` reported by the harness (every kind is a provider request)."""
    bar_request_kinds: ClassVar[tuple[str, ...]] = ()
    """Those of :attr:`request_kinds` that ask for bars (the others ask for metadata: markets, info, splits)."""
    legacy_differs_in: ClassVar[tuple[str, ...]] = ()
    """Phases of an A/B session (``"cold"``, ``"warm"``, ``"shifted"``) in which :meth:`legacy_defects` can make
    legacy's fills differ from DuckDB's (a defect in reading back Lumibot's own cache shows on warm runs
    only). A difference in any other phase fails parity, declared defect or not."""
    default_quote: ClassVar[str | None] = None
    """Quote asset symbol strategies pass for crypto (e.g. "USDT" on CCXT); None = Lumibot's default."""

    @property
    def legacy_class(self) -> type:
        """Lumibot's own data source class (:data:`lumibot_duckdb.registry.SOURCES`)."""
        return registry.source(self.name).load_legacy()

    @property
    def duckdb_class(self) -> type:
        """lumibot-duckdb's drop-in class of the same name."""
        return registry.source(self.name).load()

    @abstractmethod
    def serve(self, market: Any, *, fast: bool = False) -> contextlib.AbstractContextManager[FakeProvider]:
        """Answer the source's network calls from ``market`` inside the block.

        ``fast=True`` also removes the legacy path's deliberate sleeps (tests); the harness keeps
        them, because users wait for them.
        """

    def source_options(self) -> dict[str, Any]:
        """Keyword arguments every data source of this kind is built with (credentials, exchange...)."""
        return {}

    def data_source(self, variant: str, start: dt.datetime, end: dt.datetime, **options: Any) -> Any:
        """A data source built directly, as a user builds one: Lumibot's own class (``"legacy"``) or ours
        (``"duckdb"``, with ``use_duckdb=True`` unless ``options`` say otherwise; ``cache_dir``, ``strict``...)."""
        kwargs = {**self.source_options(), "show_progress_bar": False}
        if variant == "legacy":
            return self.legacy_class(start, end, **kwargs, **options)
        return self.duckdb_class(start, end, **kwargs, **{"use_duckdb": True, **options})

    def backtest_kwargs(self, variant: str, scenario: Any = None) -> dict[str, Any]:
        """Extra keyword arguments for ``run_backtest`` (credentials, exchange id...) for ``scenario``
        (a :class:`lumibot_duckdb.ab.harness.Scenario`, or None)."""
        return {}

    @abstractmethod
    def data_layer(self) -> list[tuple[Any, str]]:
        """``(owner, attribute)`` of the functions timed as "data layer": the same ones on both paths."""

    @abstractmethod
    def legacy_cache(self, cache_folder: Path) -> tuple[int, int]:
        """Bytes of the legacy cache files for this source under ``cache_folder``, and bars in them."""

    def legacy_defects(self) -> dict[str, Any]:
        """Known defects of the legacy path that make it differ from DuckDB, each ``name -> patch``.

        ``patch()`` applies the smallest fix that removes the defect and returns a callable that
        undoes it. The harness's ``legacy-fixed`` reference runs legacy with every patch applied:
        when DuckDB equals that run, a difference from legacy is declared, with its reason.
        """
        return {}

    def describe_defects(self, workdir: Path, window: tuple[Any, Any]) -> str:
        """Which of :meth:`legacy_defects` show in the legacy run kept in ``workdir``, in words."""
        return ", ".join(self.legacy_defects()) or "no known legacy defect"

    @contextlib.contextmanager
    def legacy_cache_folder(self, folder: Path) -> Iterator[None]:
        """Point Lumibot's copies of ``LUMIBOT_CACHE_FOLDER`` for this source at ``folder`` inside the block."""
        yield




def kit(source: str) -> SourceKit:
    """The kit of ``source`` ("polygon", "yahoo", "alpaca", "ccxt")."""
    return load(registry.source(source).kit)()


@contextlib.contextmanager
def patched(owner: Any, attribute: str, value: Any) -> Iterator[None]:
    """``setattr(owner, attribute, value)`` inside the block, restored after."""
    missing = object()
    previous = owner.__dict__.get(attribute, missing) if hasattr(owner, "__dict__") else getattr(owner, attribute)
    setattr(owner, attribute, value)
    try:
        yield
    finally:
        if previous is missing:
            delattr(owner, attribute)
        else:
            setattr(owner, attribute, previous)
