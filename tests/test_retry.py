"""Transient provider failures are retried (bounded, with backoff), everything else is not; cold fills show progress.

Invariants:
* worth retrying: HTTP 5xx/408/429, rate-limit errors, timeouts, dropped connections; never a malformed
  answer, a 4xx refusal, or an exchange error;
* a request that recovers is stored once, with one warning; one that keeps failing raises an error that
  names the provider, the series and the range, stores nothing, and is asked again next time;
* tests never sleep: the wait is injectable (and zero here, LUMIBOT_DUCKDB_RETRY_WAIT=0 in conftest);
* the progress bar follows Lumibot's quiet-logs and progress-bar settings and the terminal.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import ccxt
import pytest
import requests
import urllib3
from yfinance.exceptions import YFRateLimitError

from lumibot_duckdb.ab.harness import Scenario, run_here
from lumibot_duckdb.config import Settings, progress_wanted
from lumibot_duckdb.errors import ConfigError, ProviderDataError, ProviderRequestError
from lumibot_duckdb.registry import SOURCES
from lumibot_duckdb.sources.retry import RetryPolicy, transient
from lumibot_duckdb.store import DuckDBDataStorage
from lumibot_duckdb.testing.kits import kit


class HTTPError(Exception):
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"HTTP {status}")
        self.response = SimpleNamespace(status_code=status, headers=headers or {})


@pytest.mark.parametrize("error, reason", [
    (HTTPError(500), "HTTP 500"),
    (HTTPError(503), "HTTP 503"),
    (HTTPError(429), "rate limited (HTTP 429)"),
    (HTTPError(408), "a timeout (HTTP 408)"),
    (TimeoutError("read timed out"), "a timeout"),
    (ConnectionRefusedError(111, "Connection refused"), "a dropped connection"),
    (ConnectionResetError(104, "Connection reset by peer"), "a dropped connection"),
    (urllib3.exceptions.ProtocolError("Connection aborted.", ConnectionResetError()), "a dropped connection"),
    (urllib3.exceptions.MaxRetryError(None, "/v2/aggs", urllib3.exceptions.ResponseError(
        "too many 502 error responses")), "HTTP 502"),
    (urllib3.exceptions.MaxRetryError(None, "/v2/aggs", urllib3.exceptions.ResponseError(
        "too many 429 error responses")), "rate limited (HTTP 429)"),
    (requests.exceptions.ConnectionError("reset"), "a dropped connection"),
    (requests.exceptions.ReadTimeout("slow"), "a timeout"),
    (ccxt.RequestTimeout("binance 10000 ms"), "a timeout"),
    (ccxt.RateLimitExceeded("binance 429"), "rate limited"),
    (ccxt.ExchangeNotAvailable("binance down"), "a network error"),
    (YFRateLimitError(), "rate limited"),
])
def test_transient_failures_are_recognised(error: BaseException, reason: str) -> None:
    found = transient(error)
    assert found is not None and found.reason == reason


@pytest.mark.parametrize("error", [
    HTTPError(400), HTTPError(401), HTTPError(403), HTTPError(404),
    ccxt.ExchangeError("Invalid symbol"), ccxt.BadSymbol("NOPE/USDT"), ccxt.AuthenticationError("key"),
    ProviderDataError("Polygon answered with garbage"), ValueError("no"), KeyError("x"),
])
def test_other_failures_are_not_retried(error: BaseException) -> None:
    assert transient(error) is None


def test_the_cause_chain_is_read_and_a_definite_no_wins() -> None:
    try:
        try:
            raise HTTPError(503)
        except HTTPError as inner:
            raise RuntimeError("Failed to fetch data for SPY") from inner
    except RuntimeError as outer:
        assert transient(outer).reason == "HTTP 503"
    blocked = ConnectionError("network access blocked")
    blocked.retryable = False  # what the test network guard raises: never retried
    assert transient(blocked) is None


def test_waits_grow_with_jitter_up_to_the_longest_wait_and_honour_retry_after() -> None:
    policy = RetryPolicy(attempts=6, max_wait=5.0)
    for attempt, base in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (5, 5.0)):
        waits = [policy.wait_for(attempt, transient(HTTPError(500))) for _ in range(50)]
        assert all(base / 2 <= w <= base for w in waits), (attempt, min(waits), max(waits))
    assert policy.wait_for(1, transient(HTTPError(429, {"Retry-After": "3"}))) == 3.0
    assert policy.wait_for(1, transient(HTTPError(429))) == 5.0, "a rate limit without Retry-After waits the longest"
    assert RetryPolicy(max_wait=0).wait_for(3, transient(HTTPError(500))) == 0.0


def test_a_request_that_recovers_is_tried_again_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []
    answers = iter([HTTPError(500), HTTPError(500), "bars"])

    def request() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    retried: list[int] = []
    policy = RetryPolicy(attempts=5, max_wait=8.0, sleep=slept.append)
    with caplog.at_level(logging.INFO, logger="lumibot.lumibot_duckdb"):
        assert policy.call(request, source="Polygon", what="AAA minute bars", on_retry=lambda: retried.append(1)) \
            == "bars"
    assert len(slept) == 2 and 0.5 <= slept[0] <= 1.0 and 1.0 <= slept[1] <= 2.0
    assert len(retried) == 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "Polygon: HTTP 500 for AAA minute bars (attempt 1 of up to 5)" in warnings[0].message


def test_a_request_that_keeps_failing_names_provider_series_and_range() -> None:
    calls: list[int] = []

    def request() -> None:
        calls.append(1)
        raise HTTPError(503)

    policy = RetryPolicy(attempts=3, max_wait=0)
    with pytest.raises(ProviderRequestError) as raised:
        policy.call(request, source="Polygon", what="AAA minute bars 2024-01-02..2024-02-01", series="polygon:AAA",
                    interval="[2024-01-02, 2024-02-02)")
    error = raised.value
    assert len(calls) == 3 and error.attempts == 3 and isinstance(error.__cause__, HTTPError)
    assert str(error).startswith("Polygon did not answer AAA minute bars 2024-01-02..2024-02-01: HTTP 503, 3 times")
    assert "Nothing was stored for series polygon:AAA, range [2024-01-02, 2024-02-02); running again asks" in str(error)


def test_rate_limits_are_waited_out_longer_and_other_errors_pass_at_once() -> None:
    limited: list[int] = []

    def rate_limited() -> None:
        limited.append(1)
        raise HTTPError(429)

    with pytest.raises(ProviderRequestError, match="rate limited"):
        RetryPolicy(attempts=2, max_wait=0).call(rate_limited, source="Alpaca", what="AAA day bars")
    assert len(limited) == 8, "four times the attempts for a rate limit"
    refused: list[int] = []

    def forbidden() -> None:
        refused.append(1)
        raise HTTPError(403)

    with pytest.raises(HTTPError):
        RetryPolicy(attempts=5, max_wait=0).call(forbidden, source="Polygon", what="AAA day bars")
    assert len(refused) == 1


def test_retry_settings_come_from_the_environment_and_are_checked() -> None:
    settings = Settings.resolve(environ={"LUMIBOT_DUCKDB_RETRIES": "2", "LUMIBOT_DUCKDB_RETRY_WAIT": "1.5"})
    assert (settings.retries, settings.retry_wait) == (2, 1.5)
    assert Settings.resolve(environ={}).retries == 5 and Settings.resolve(environ={}).retry_wait == 60.0
    assert Settings.resolve(retries=1, environ={"LUMIBOT_DUCKDB_RETRIES": "9"}).retries == 1
    for name, value in (("LUMIBOT_DUCKDB_RETRIES", "0"), ("LUMIBOT_DUCKDB_RETRIES", "2.5"),
                        ("LUMIBOT_DUCKDB_RETRIES", "many"), ("LUMIBOT_DUCKDB_RETRY_WAIT", "-1")):
        with pytest.raises(ConfigError, match=name):
            Settings.resolve(environ={name: value})


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("environ, backtest, terminal, shown", [
    ({}, False, True, True),
    ({}, False, False, False),                                           # not a terminal: as tqdm's disable=None
    ({"BACKTESTING_QUIET_LOGS": "false"}, True, True, True),
    ({"BACKTESTING_QUIET_LOGS": "true"}, True, True, False),              # Lumibot's quiet logs
    ({}, True, True, False),                                             # unset: Lumibot's default is quiet
    ({"BACKTESTING_QUIET_LOGS": "false", "BACKTESTING_SHOW_PROGRESS_BAR": "false"}, True, True, False),
    ({"BACKTESTING_QUIET_LOGS": "true", "LUMIBOT_DUCKDB_PROGRESS": "on"}, True, False, True),   # forced
    ({"BACKTESTING_QUIET_LOGS": "false", "LUMIBOT_DUCKDB_PROGRESS": "off"}, True, True, False),
    ({"LUMIBOT_DUCKDB_PROGRESS": "auto"}, False, True, True),
])
def test_progress_follows_lumibots_settings_and_the_terminal(environ: dict[str, str], backtest: bool,
                                                             terminal: bool, shown: bool) -> None:
    stream = _Terminal() if terminal else io.StringIO()
    assert progress_wanted(backtest=backtest, stream=stream, environ=environ) is shown


# -- through a backtest, on every source -------------------------------------------------------------
def _scenario(name: str) -> Scenario:
    source = kit(name)
    params: dict[str, Any] = {"symbol": "BTC" if "stock" not in source.asset_types else "AAA"}
    if "stock" not in source.asset_types:
        params.update(asset_type="crypto", quote=source.default_quote or "USD")
    return Scenario("buy-and-hold", "buy_and_hold", params, "2024-01-02", "2024-01-20", source=name)


@pytest.mark.backtest
@pytest.mark.parametrize("name", list(SOURCES))
def test_a_provider_failing_twice_then_answering_is_stored_once_with_one_warning(
        name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    scenario = _scenario(name)
    clean = run_here(scenario, "duckdb", "cold", tmp_path / "clean" / "duckdb", fast=True)
    with caplog.at_level(logging.WARNING, logger="lumibot.lumibot_duckdb"):
        flaky = run_here(scenario, "duckdb", "cold", tmp_path / "flaky" / "duckdb", fast=True,
                         on_serve=lambda provider: provider.fail("transient", times=2))
    assert (flaky.fills, flaky.final_value) == (clean.fills, clean.final_value)
    assert flaky.provider_requests == clean.provider_requests + 2, (flaky.requests, clean.requests)
    retried = [r for r in caplog.records if "trying again" in r.message]
    assert len(retried) == 1, [r.message for r in retried]
    with DuckDBDataStorage(tmp_path / "flaky" / "duckdb" / "duckdb") as flaky_store, \
            DuckDBDataStorage(tmp_path / "clean" / "duckdb" / "duckdb") as clean_store:
        for key in clean_store.series():
            assert flaky_store.coverage(key) == clean_store.coverage(key)
            assert flaky_store.read(key, "1900-01-01", "2100-01-01").equals(
                clean_store.read(key, "1900-01-01", "2100-01-01"))
    warm = run_here(scenario, "duckdb", "warm", tmp_path / "flaky" / "duckdb", fast=True)
    assert warm.provider_requests == 0


@pytest.mark.backtest
@pytest.mark.parametrize("name", list(SOURCES))
def test_a_provider_that_keeps_failing_gets_a_clear_error_and_nothing_is_stored(name: str, tmp_path: Path) -> None:
    scenario = _scenario(name)
    errors: list[BaseException] = []
    try:
        broken = run_here(scenario, "duckdb", "cold", tmp_path / "duckdb", fast=True,
                          on_serve=lambda provider: provider.fail("transient"))
    except Exception as exc:  # noqa: BLE001 - Polygon and CCXT stop the backtest; Lumibot's Yahoo/Alpaca log it
        errors.append(exc)
    else:
        assert broken.fills == [], "no bars, no trade"
    chain = []
    for error in errors:
        while error is not None:
            chain.append(error)
            error = error.__cause__ or error.__context__
    found = [e for e in chain if isinstance(e, ProviderRequestError)]
    if errors:
        assert found, f"the error does not say the provider kept failing: {errors[0]!r}"
        text = str(found[0])
        assert f"series {name}:" in text and "range [" in text and "Nothing was stored" in text, text
        assert "5 times" in text
    with DuckDBDataStorage(tmp_path / "duckdb" / "duckdb") as store:
        assert all(not store.coverage(k) for k in store.series() if k.source == name), "a failed range was recorded"
    healed = run_here(scenario, "duckdb", "cold", tmp_path / "duckdb", fast=True)
    assert healed.provider_requests > 0 and len(healed.fills) == 1


@pytest.mark.backtest
def test_a_cold_fill_inside_a_backtest_shows_a_bar_per_series(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    case = Scenario("minute SMA", "minute_sma", {"symbol": "AAA", "fast": 5, "slow": 20, "quantity": 1},
                    "2024-01-08", "2024-01-12", timestep="minute")
    run_here(case, "duckdb", "cold", tmp_path / "quiet", fast=True)  # quiet_logs=True, as the harness runs
    assert "Fetching" not in capsys.readouterr().err
    monkeypatch.setenv("LUMIBOT_DUCKDB_PROGRESS", "on")
    run_here(case, "duckdb", "cold", tmp_path / "shown", fast=True)
    shown = capsys.readouterr().err
    assert "Fetching polygon AAA minute (split)" in shown and "100%" in shown and "bars=" in shown
    run_here(case, "duckdb", "warm", tmp_path / "shown", fast=True)
    assert "Fetching" not in capsys.readouterr().err, "a warm run fetches nothing: no bar"


def test_our_polygon_client_keeps_http_statuses_and_never_sleeps_a_minute_in_a_loop(monkeypatch) -> None:
    """Lumibot's client sleeps 60 s and tries again, forever, when urllib3 gives up; ours hands that to the
    bounded retries, and tells a 500 (worth retrying) from a 403 (not) although polygon's error has no status."""
    from polygon.exceptions import BadResponse

    from lumibot_duckdb.sources.polygon import PolygonClient
    from lumibot_duckdb.testing.polygon import FakeResponse

    client = PolygonClient.create(api_key="key")
    answers = iter([urllib3.exceptions.MaxRetryError(None, "/v2/aggs", urllib3.exceptions.ResponseError(
        "too many 503 error responses")), FakeResponse(500, b'{"status":"ERROR"}'),
        FakeResponse(403, b'{"status":"NOT_AUTHORIZED"}')])

    def request(*args: Any, **kwargs: Any) -> Any:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(client.client._pool, "request", request)
    monkeypatch.setattr("time.sleep", lambda seconds: pytest.fail(f"slept {seconds} s"))
    with pytest.raises(urllib3.exceptions.MaxRetryError) as gave_up:
        client.get_aggs("AAA", 1, "day", "2024-01-02", "2024-01-31", raw=True)
    assert transient(gave_up.value).reason == "HTTP 503"
    with pytest.raises(BadResponse) as server_error:
        client.get_aggs("AAA", 1, "day", "2024-01-02", "2024-01-31", raw=True)
    assert server_error.value.status == 500 and transient(server_error.value).reason == "HTTP 500"
    with pytest.raises(BadResponse) as refused:
        client.get_aggs("AAA", 1, "day", "2024-01-02", "2024-01-31", raw=True)
    assert refused.value.status == 403 and transient(refused.value) is None
