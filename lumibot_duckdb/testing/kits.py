"""One *kit* per data source: what the A/B harness and the conformance suite need to drive it offline.

A kit names the two classes (Lumibot's legacy one and ours), starts the offline provider at the
source's network seam, says which provider calls count as requests, which functions make up the
source's "data layer" (timed the same way on both paths), and how big the legacy cache is.

Kits are looked up by source name with :func:`kit`; each vendor's kit lives beside its fake
provider (``lumibot_duckdb.testing.<source>``) and is imported only when asked for.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol

from lumibot_duckdb import registry
from lumibot_duckdb.registry import load

VALUE_FAULTS = ("negative", "inverted", "infinite")
"""Faults that answer with well-formed bars holding an impossible value in the first bar of each answer: a
negative low and close, a high below the low, an infinite close (:func:`spoil`)."""
FAULTS = ("empty", "malformed", "error", *VALUE_FAULTS)
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


class FakeProvider(Protocol):
    """What every offline provider offers tests and the harness."""

    def count(self, kind: str | None = None) -> int:
        """Requests made so far (of one kind, or all)."""

    def requested_days(self) -> int:
        """Calendar days spanned by all bar requests (a re-download shows up here)."""

    def fail(self, mode: str, *, symbol: str | None = None) -> None:
        """From now on, answer bar requests (for ``symbol``, or all) with a fault of :data:`FAULTS`:
        ``empty`` (a well-formed answer with no bars), ``malformed`` (the provider's format, but
        garbage inside), ``error`` (the provider's error for a failed request), or a value fault of
        :data:`VALUE_FAULTS` (well-formed bars with an impossible value)."""

    def heal(self) -> None:
        """Stop injecting faults."""


class SourceKit(ABC):
    """How to drive one data source offline, legacy and DuckDB alike."""

    name: ClassVar[str]
    asset_types: ClassVar[tuple[str, ...]] = ("stock",)
    """Asset types the source serves in backtests ("stock", "crypto")."""
    timeframes: ClassVar[tuple[str, ...]] = ("day", "minute")
    """Bar timeframes a strategy can backtest on with this source."""
    request_kinds: ClassVar[tuple[str, ...]] = ()
    """Kinds of :meth:`FakeProvider.count` reported by the harness (every kind is a provider request)."""
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
