"""The sample market and the offline Polygon: deterministic, calendar-true, and faithful to Polygon's wire format."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from lumibot.tools.polygon_helper import PolygonClient

from lumibot_duckdb.testing.market import SyntheticMarket
from lumibot_duckdb.testing.offline import NetworkBlocked
from lumibot_duckdb.testing.polygon import FakeResponse, serve_polygon


def test_bars_are_a_pure_function_of_time(market: SyntheticMarket) -> None:
    whole = market.bars("AAA", "minute", "2024-01-02", "2024-01-12")
    parts = pd.concat([market.bars("AAA", "minute", a, b) for a, b in
                       [("2024-01-02", "2024-01-04 15:07"), ("2024-01-04 15:07", "2024-01-12")]])
    pd.testing.assert_frame_equal(whole, parts)
    assert not SyntheticMarket(seed=12).bars("AAA", "minute", "2024-01-02", "2024-01-03").equals(
        market.bars("AAA", "minute", "2024-01-02", "2024-01-03"))


def test_stock_calendar_sessions_and_extended_hours(market: SyntheticMarket) -> None:
    day = market.bars("AAA", "day", "2024-11-25", "2024-12-03")
    assert [t.tz_convert("America/New_York").date() for t in day.index] == [
        dt.date(2024, 11, d) for d in (25, 26, 27, 29)] + [dt.date(2024, 12, 2)]  # Thanksgiving closed
    minutes = market.bars("AAA", "minute", "2024-11-29 05:00", "2024-11-30 05:00").index.tz_convert("America/New_York")
    regular = minutes[minutes.indexer_between_time("09:30", "12:59")]
    after_early_close = minutes[minutes.indexer_between_time("13:00", "15:59")]
    assert len(regular) == 210  # every minute of the session, which closed early at 13:00
    assert 0 < len(after_early_close) < 180  # extended hours: only minutes with trades
    assert minutes.min().hour == 4 and minutes.max().hour == 19


def test_daily_bars_aggregate_the_regular_session(market: SyntheticMarket) -> None:
    day = market.bars("AAA", "day", "2024-03-05", "2024-03-06").iloc[0]
    minutes = market.bars("AAA", "minute", "2024-03-05", "2024-03-06").tz_convert("America/New_York")
    session = minutes.between_time("09:30", "15:59")
    assert day["open"] == session["open"].iloc[0] and day["close"] == session["close"].iloc[-1]
    assert day["high"] == session["high"].max() and day["volume"] == session["volume"].sum()
    assert (minutes["high"] >= minutes[["open", "close"]].max(axis=1)).all()


def test_crypto_trades_every_minute(market: SyntheticMarket) -> None:
    bars = market.bars("BTC", "minute", "2024-01-06", "2024-01-07", asset_type="crypto")  # a Saturday
    assert len(bars) == 1440


def test_offline_polygon_speaks_the_wire_format(market: SyntheticMarket) -> None:
    with serve_polygon(market) as polygon:
        client = PolygonClient.create(api_key="k")
        aggs = client.get_aggs("AAA", 1, "day", dt.date(2024, 1, 2), dt.date(2024, 1, 5))
        assert [a.close for a in aggs] == market.bars("AAA", "day", "2024-01-02", "2024-01-06")["close"].tolist()
        assert isinstance(aggs[0].volume, int) and isinstance(aggs[0].timestamp, int)
        assert list(client.list_splits(ticker="AAA")) == []
        polygon.intercept(lambda r: FakeResponse(403, b'{"status":"NOT_AUTHORIZED"}'))
        with pytest.raises(Exception, match="NOT_AUTHORIZED"):
            client.get_aggs("AAA", 1, "day", dt.date(2024, 1, 2), dt.date(2024, 1, 5))
    assert polygon.count("aggs") == 2 and polygon.requested_days() == 8


@pytest.mark.network_attempt_expected
def test_network_guard_blocks_sockets_dns_and_curl(no_network) -> None:
    import socket

    from curl_cffi import requests as curl_requests

    with pytest.raises(NetworkBlocked):
        socket.create_connection(("example.com", 443), timeout=1)  # the guard must block this
    with pytest.raises(NetworkBlocked):
        socket.getaddrinfo("example.com", 443)
    with pytest.raises(NetworkBlocked):
        curl_requests.Session().get("https://query1.finance.yahoo.com")
    assert len(no_network.attempts) == 3
