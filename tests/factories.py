"""Small builders of test data."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lumibot_duckdb.store import SeriesKey


def make_bars(start: str = "2024-01-02 14:30", periods: int = 100, freq: str = "1min", *, seed: int = 0,
              price: float = 100.0) -> pd.DataFrame:
    """Bars with a UTC index, OHLC consistent, volumes and trade counts; deterministic per seed."""
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=periods, freq=freq, tz="UTC", name="ts")
    close = price * np.exp(np.cumsum(rng.normal(0, 1e-3, periods)))
    open_ = np.concatenate([[price], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.random(periods) * 1e-3)
    low = np.minimum(open_, close) * (1 - rng.random(periods) * 1e-3)
    return pd.DataFrame({"open": open_, "high": high, "low": low, "close": close,
                         "volume": rng.integers(1, 10_000, periods).astype(float),
                         "vwap": (high + low + close) / 3, "trade_count": rng.integers(1, 500, periods)},
                        index=index)


def key(symbol: str = "SPY", timeframe: str = "minute", source: str = "test", **fields: str) -> SeriesKey:
    return SeriesKey(source, symbol, timeframe, quote=fields.pop("quote", "USD"), **fields)
