"""Retries of provider requests: which failures are worth another try, how long to wait, how often.

Every vendor's requests go through one :class:`RetryPolicy` (tenacity underneath): the shared fill
of :mod:`lumibot_duckdb.sources.fill` wraps each provider request with it, and so do the few
requests a source makes outside a fill (CCXT's ``load_markets``, its candles still forming).

Worth another try (:func:`transient`): HTTP 5xx and 408, HTTP 429 and the providers' own
rate-limit errors (ccxt ``RateLimitExceeded``/``DDoSProtection``, yfinance ``YFRateLimitError``),
timeouts and dropped or refused connections (Python's, urllib3's, requests', curl_cffi's, ccxt's
``NetworkError``). Never: an answer that is not bars (:class:`~lumibot_duckdb.errors.ProviderDataError`),
HTTP 4xx other than 408/429 (a bad key, an unknown symbol), anything else; those reach the caller
at once, unchanged.

Waits grow 1, 2, 4, 8… seconds (each between half and all of that, so parallel requests spread
out), never longer than ``retry_wait``; a rate-limited request waits what the provider asked
(``Retry-After``), else ``retry_wait``, and is waited out longer: up to four times the attempts (by
default 20 tries, up to a minute apart), since a plan's rate limit lifts by itself. When every
attempt failed, the caller gets a :class:`~lumibot_duckdb.errors.ProviderRequestError` naming the
provider, the series and the range, saying that nothing was stored and that a rerun asks again; the
provider's last error is its cause.
"""

from __future__ import annotations

import logging
import random
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import tenacity

from lumibot_duckdb.config import Settings
from lumibot_duckdb.errors import ProviderDataError, ProviderRequestError
from lumibot_duckdb.log import get_logger

log = get_logger(__name__)
T = TypeVar("T")

RATE_LIMIT_PATIENCE = 4
"""A rate-limited request may be tried this many times the attempts of other failures."""
_TOO_MANY = re.compile(r"too many (\d{3}) error responses")


@dataclass(frozen=True)
class Transient:
    """Why a failure is worth another try."""

    reason: str
    """In words: ``"HTTP 503"``, ``"rate limited (HTTP 429)"``, ``"a timeout"``, ``"a dropped connection"``."""
    rate_limited: bool = False
    retry_after: float | None = None
    """Seconds the provider asked to wait, when it said."""


def transient(error: BaseException) -> Transient | None:
    """Why ``error`` (or an error it was raised from) is worth retrying; None when it is not."""
    current: BaseException | None = error
    seen: set[int] = set()
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        if isinstance(current, ProviderDataError) or getattr(current, "retryable", None) is False:
            return None
        verdict = _classify(current)
        if verdict is not None:
            return verdict or None  # False: a definite "no" (e.g. HTTP 403), whatever caused it
        current = current.__cause__ or current.__context__
    return None


def _classify(error: BaseException) -> Transient | bool | None:
    """A verdict for this one exception: a :class:`Transient`, False (not worth it), None (no opinion)."""
    status = _status(error)
    if status is not None:
        return _by_status(status, _retry_after(error))
    module = type(error).__module__ or ""
    name = type(error).__name__
    if module.startswith("ccxt"):
        ccxt = sys.modules.get("ccxt")
        if ccxt is not None:
            if isinstance(error, (ccxt.RateLimitExceeded, ccxt.DDoSProtection)):
                return Transient("rate limited", rate_limited=True)
            if isinstance(error, ccxt.RequestTimeout):
                return Transient("a timeout")
            if isinstance(error, ccxt.NetworkError):
                return Transient("a network error")
        return False
    if module.startswith("yfinance"):
        return Transient("rate limited", rate_limited=True) if "RateLimit" in name else None
    if module.startswith("urllib3"):
        if name == "MaxRetryError":
            reason = getattr(error, "reason", None)
            found = _TOO_MANY.search(str(reason or ""))
            if found:
                return _by_status(int(found.group(1)), None)
            return _classify(reason) if isinstance(reason, BaseException) else Transient("a dropped connection")
        if "Timeout" in name:
            return Transient("a timeout")
        if name in ("ProtocolError", "NewConnectionError", "IncompleteRead", "ConnectionError"):
            return Transient("a dropped connection")
        return None
    if module.startswith(("requests", "curl_cffi", "httpx")):
        if "Timeout" in name:
            return Transient("a timeout")
        if "Connection" in name or name in ("ChunkedEncodingError", "RemoteProtocolError"):
            return Transient("a dropped connection")
        return None
    if isinstance(error, TimeoutError):
        return Transient("a timeout")
    if isinstance(error, ConnectionError):
        return Transient("a dropped connection")
    return None


def _by_status(status: int, retry_after: float | None) -> Transient | bool:
    if status == 429:
        return Transient("rate limited (HTTP 429)", rate_limited=True, retry_after=retry_after)
    if status == 408:
        return Transient("a timeout (HTTP 408)")
    if 500 <= status <= 599:
        return Transient(f"HTTP {status}", retry_after=retry_after)
    return False


def _status(error: BaseException) -> int | None:
    """The HTTP status an error carries (``status_code``, ``status``, or its ``response``'s), if any."""
    for owner in (error, getattr(error, "response", None)):
        if owner is None:
            continue
        for attribute in ("status_code", "status"):
            try:
                value = getattr(owner, attribute, None)
            except Exception:  # noqa: BLE001 - a property of a half-built error object
                value = None
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
                return value
    return None


def _retry_after(error: BaseException) -> float | None:
    for owner in (error, getattr(error, "response", None)):
        headers = getattr(owner, "headers", None)
        if headers is None:
            continue
        try:
            value = headers.get("Retry-After") or headers.get("retry-after")
        except Exception:  # noqa: BLE001 - headers of an unknown shape
            return None
        try:
            return max(0.0, float(value)) if value is not None else None
        except (TypeError, ValueError):
            return None
    return None


@dataclass(frozen=True)
class RetryPolicy:
    """How often, and how patiently, a provider request is tried (see the module docstring)."""

    attempts: int = 5
    """Tries in all, the first included (``LUMIBOT_DUCKDB_RETRIES``); 1 = no retry."""
    max_wait: float = 60.0
    """The longest single wait, in seconds (``LUMIBOT_DUCKDB_RETRY_WAIT``); 0 = retry at once."""
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False)
    """How to wait (tests hand in a recorder instead of sleeping)."""

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> RetryPolicy:
        settings = settings or Settings.resolve()
        return cls(attempts=settings.retries, max_wait=settings.retry_wait)

    def wait_for(self, attempt: int, failure: Transient | None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        if self.max_wait <= 0:
            return 0.0
        if failure is not None and failure.rate_limited:
            return min(self.max_wait, failure.retry_after if failure.retry_after is not None else self.max_wait)
        base = min(self.max_wait, float(2 ** (attempt - 1)))
        if failure is not None and failure.retry_after is not None:
            base = min(self.max_wait, max(base, failure.retry_after))
        return base / 2 + random.uniform(0, base / 2)

    def call(self, request: Callable[[], T], *, source: str, what: str, series: object = None,
             interval: object = None, on_retry: Callable[[], None] | None = None) -> T:
        """``request()``, tried again while it fails transiently, at most :attr:`attempts` times in all.

        ``source`` is the provider as users know it ("Polygon"), ``what`` the request in words
        ("AAA minute bars 2024-01-02..2024-02-01"), ``series``/``interval`` what it was for. The
        first retry of a request logs a warning, later ones log at INFO; a request that failed every
        time raises :class:`ProviderRequestError` from the last failure. Other errors propagate at once.
        """
        import tenacity  # (here: a backtest whose data is all stored never loads it)

        tries = 0

        def once() -> T:
            nonlocal tries
            tries += 1
            return request()

        def wait(state: tenacity.RetryCallState) -> float:
            failure = state.outcome.exception() if state.outcome is not None else None
            return self.wait_for(state.attempt_number, transient(failure) if failure is not None else None)

        def before_sleep(state: tenacity.RetryCallState) -> None:
            failure = state.outcome.exception() if state.outcome is not None else None
            found = transient(failure) if failure is not None else None
            pause = state.next_action.sleep if state.next_action is not None else 0.0
            level = logging.WARNING if state.attempt_number == 1 else logging.INFO
            limit = self.attempts * (RATE_LIMIT_PATIENCE if found is not None and found.rate_limited else 1)
            log.log(level, "%s: %s for %s (attempt %d of up to %d); trying again in %.1f s.", source,
                    found.reason if found else "a failure", what, state.attempt_number, limit, pause)
            if on_retry is not None:
                on_retry()

        def stop(state: tenacity.RetryCallState) -> bool:
            failure = state.outcome.exception() if state.outcome is not None else None
            found = transient(failure) if failure is not None else None
            limit = self.attempts * RATE_LIMIT_PATIENCE if found is not None and found.rate_limited else self.attempts
            return state.attempt_number >= max(1, limit)

        retrying = tenacity.Retrying(
            stop=stop,
            wait=wait,
            retry=tenacity.retry_if_exception(lambda e: transient(e) is not None),
            before_sleep=before_sleep,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            return retrying(once)
        except Exception as exc:
            found = transient(exc)
            if found is None:
                raise
            raise request_failed(source, what, found, tries, exc, series=series, interval=interval) from exc


def request_failed(source: str, what: str, failure: Transient, attempts: int, last: BaseException, *,
                   series: object = None, interval: object = None) -> ProviderRequestError:
    """The error for a request that failed transiently every time it was tried."""
    where = ", ".join(f"{label} {part}" for label, part in (("series", series), ("range", interval))
                      if part is not None)
    times = "once" if attempts == 1 else f"{attempts} times"
    message = (f"{source} did not answer {what}: {failure.reason}, {times} (last: {_brief(last)}). "
               f"Nothing was stored for {where or 'it'}; running again asks for it again. If it "
               f"persists, check {source}'s status page and your plan's rate limit (LUMIBOT_DUCKDB_RETRIES "
               "and LUMIBOT_DUCKDB_RETRY_WAIT set the attempts and the longest wait).")
    return ProviderRequestError(message, source=source, series=series, interval=interval, attempts=attempts)


def _brief(error: BaseException, limit: int = 300) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def default_policy() -> RetryPolicy:
    """The policy of the environment (read when called: a data source reads it once when built)."""
    return RetryPolicy.from_settings()


def describe(provider: Any, task: Any) -> str:
    """A provider request in words, for messages (the provider's ``describe(task)`` if it has one)."""
    text = getattr(provider, "describe", None)
    if callable(text):
        try:
            return str(text(task))
        except Exception:  # noqa: BLE001 - a message must never fail the fill
            pass
    return f"the request for {getattr(task, 'covers', task)}"
