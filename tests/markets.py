"""Markets built from the real data in ../shared/data (read in place, never copied)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from lumibot_duckdb.testing.market import FrameMarket


def yahoo_daily(path: Path) -> pd.DataFrame:
    """A Yahoo-format daily CSV as Polygon-style daily bars stamped 00:00 New York."""
    frame = pd.read_csv(path, parse_dates=["Date"]).set_index("Date")
    frame.index = pd.DatetimeIndex(frame.index).tz_localize(None) if frame.index.tz is not None else frame.index
    return frame[["Open", "High", "Low", "Close", "Volume"]]


def minute_csv(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    time_column = next(c for c in frame.columns if c.lower() in ("time", "datetime", "date", "timestamp"))
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame[time_column]))  # naive = New York, or with offset
    return frame.drop(columns=[time_column])


def real_market(data: Path) -> FrameMarket:
    frames = {(s, "day"): yahoo_daily(data / f"{s}_1d_2019.csv") for s in ("SPY", "TLT", "GLD")}
    frames[("XYZ", "minute")] = minute_csv(data / "XYZ_1m_2020.csv")
    frames[("SPY", "minute")] = minute_csv(data / "SPY_1m_2020-01-06.csv")
    return FrameMarket(frames)


def shared_market() -> FrameMarket:
    """The real-data market, for the A/B harness (``Scenario(market="markets:shared_market")``)."""
    return real_market(Path(__file__).resolve().parents[2] / "shared" / "data")
