"""The per-series computations behind the indicator macros of :mod:`lumibot_duckdb.sql.macros`.

A macro groups its bars by series (``list(ts), list(close) … GROUP BY sid``: one row per series) and
calls one of these functions on that row; DuckDB hands the lists over as Arrow arrays (no row
conversion) and unnests what comes back next to the input lists. Each function sorts one series by
``ts`` (the lists come in scan order, a few sorted runs), computes with NumPy/pandas over whole
arrays, and returns the values in the order it received them.

Why not SQL windows: a DuckDB window over ``PARTITION BY sid ORDER BY ts`` re-sorts bars the files
already hold in order and evaluates a generic aggregate per frame (~200 ns a bar); EMA and RSI are
recursions SQL can only express as set operations over blocks or as a recursive CTE. Here a rolling
sum is O(n) and the recursions run in pandas' compiled ``ewm`` (the convention they are specified
by), so a series of a year of minute bars takes a few milliseconds.

Exactness (``tests/test_analytics.py`` compares with pandas and pandas-ta-classic on real bars):

* rolling sums: prefix sums restarted every ``n`` rows, a window being the end of one block plus
  the head of the next (``S[i] = C[j, r] + (T[j-1] - C[j-1, r])``): every partial sum spans at most
  ``n`` values, so the error is that of summing the window directly, never that of a running total
  over the whole series (a year of minute bars: |Σ| ~ 1e7);
* standard deviations: two passes (the window's mean, then the sum of squared deviations), as NumPy's
  ``std`` — pandas' online ``rolling().std()`` drifts by up to ~1e-8 on long minute series;
* EMA/RSI: ``Series.ewm(…, adjust=False)``, NaN handling included (a missing close keeps the average).

A missing close (NULL) makes every window that contains it NULL, as the SQL windows did
(``count(close) = n``). Outputs that are NaN (a window with a gap, 0/0) come back as SQL NULL.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

Kernel = Callable[..., dict[str, np.ndarray]]


def rolling_sum(x: np.ndarray, n: int, /) -> np.ndarray:
    """``x[i-n+1] + … + x[i]`` for every ``i >= n - 1`` (earlier entries: the partial sums from 0). ``x`` has no NaN."""
    m = len(x)
    if m == 0:
        return np.empty(0)
    blocks = -(-m // n)
    padded = np.zeros(blocks * n)
    padded[:m] = x
    prefix = padded.reshape(blocks, n).cumsum(axis=1)
    out = prefix.copy()
    out[1:] += prefix[:-1, -1:] - prefix[:-1]
    return out.ravel()[:m]


def rolling_count(valid: np.ndarray, n: int, /) -> np.ndarray:
    """How many of ``valid[i-n+1..i]`` are true (exact: integer prefix sums)."""
    total = np.cumsum(valid, dtype=np.int64)
    out = total.copy()
    out[n:] -= total[:-n]
    return out


def _windows(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(filled, count, mean)``: ``x`` with NaN as 0, the non-NaN count per window, and the window mean."""
    valid = ~np.isnan(x)
    filled = np.where(valid, x, 0.0)
    count = rolling_count(valid, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = rolling_sum(filled, n) / n
    return filled, count, mean


def _sum_squared_deviations(filled: np.ndarray, mean: np.ndarray, n: int) -> np.ndarray:
    """``Σ (x[i-j] - mean[i])²`` over each window (entries before ``n - 1``: NaN)."""
    m = len(filled)
    out = np.full(m, np.nan)
    if m < n:
        return out
    width = m - n + 1
    centre = mean[n - 1:]
    acc = np.zeros(width)
    for j in range(n):
        d = filled[j: j + width] - centre
        acc += d * d
    out[n - 1:] = acc
    return out


def _full(mask: np.ndarray, *values: np.ndarray) -> None:
    for v in values:
        v[mask] = np.nan


def sma(close: np.ndarray, n: int) -> dict[str, np.ndarray]:
    _, count, mean = _windows(close, n)
    _full(count < n, mean)
    return {"sma": mean}


def bollinger(close: np.ndarray, n: int, k: float, ddof: int) -> dict[str, np.ndarray]:
    filled, count, mid = _windows(close, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(_sum_squared_deviations(filled, mid, n) / (n - ddof))
    lower, upper = mid - k * sd, mid + k * sd
    _full(count < n, lower, mid, upper, sd)
    return {"lower": lower, "mid": mid, "upper": upper, "stddev": sd}


def volatility(close: np.ndarray, n: int, annualize: float | None) -> dict[str, np.ndarray]:
    log_return = np.full(len(close), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_return[1:] = np.log(close[1:] / close[:-1])
    filled, count, mean = _windows(log_return, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(_sum_squared_deviations(filled, mean, n) / (n - 1)) * np.sqrt(
            1.0 if annualize is None else annualize)
    _full(count < n, sd)
    return {"log_return": log_return, "volatility": sd}


def ema(close: np.ndarray, n: int, sma_seed: bool) -> dict[str, np.ndarray]:
    series = pd.Series(close)
    if sma_seed:  # pandas-ta-classic / TA-Lib: the first value is the SMA of the first n closes
        seed = series.iloc[:n].mean()
        series = series.copy()
        series.iloc[: n - 1] = np.nan
        if len(series) >= n:
            series.iloc[n - 1] = seed
    return {"ema": series.ewm(span=n, adjust=False).mean().to_numpy(dtype=float)}


def rsi(close: np.ndarray, n: int) -> dict[str, np.ndarray]:
    m = len(close)
    delta = np.full(m, np.nan)
    delta[1:] = close[1:] - close[:-1]
    averages = {}
    for name, moves in (("avg_gain", np.maximum(delta, 0.0)), ("avg_loss", np.maximum(-delta, 0.0))):
        seeded = np.full(m, np.nan)
        if m > n:  # Wilder: seeded with the mean of the first n moves, then ewm(alpha=1/n)
            seeded[n] = pd.Series(moves[1: n + 1]).mean()
            seeded[n + 1:] = moves[n + 1:]
        averages[name] = pd.Series(seeded).ewm(alpha=1.0 / n, adjust=False).mean().to_numpy(dtype=float)
    gain, loss = averages["avg_gain"], averages["avg_loss"]
    with np.errstate(invalid="ignore", divide="ignore"):
        total = gain + loss
        value = np.where(total == 0, np.nan, 100 * gain / np.where(total == 0, 1.0, total))
    return {"avg_gain": gain, "avg_loss": loss, "rsi": value}


KERNELS: dict[str, tuple[Kernel, tuple[str, ...], tuple[str, ...]]] = {
    # name: (function, its parameters' DuckDB types after (ts[], close[]), its outputs)
    "sma": (sma, ("BIGINT",), ("sma",)),
    "bollinger": (bollinger, ("BIGINT", "DOUBLE", "BIGINT"), ("lower", "mid", "upper", "stddev")),
    "volatility": (volatility, ("BIGINT", "DOUBLE"), ("log_return", "volatility")),
    "ema": (ema, ("BIGINT", "BOOLEAN"), ("ema",)),
    "rsi": (rsi, ("BIGINT",), ("avg_gain", "avg_loss", "rsi")),
}


def _array(value: Any) -> Any:
    return value.combine_chunks() if isinstance(value, pa.ChunkedArray) else value


def arrow_udf(name: str, /) -> Callable[..., pa.Array]:
    """The Arrow UDF for kernel ``name``: ``(ts[], close[], *params) -> STRUCT(out1 DOUBLE[], …)``, one
    row per series, each output list in the order of the input lists."""
    kernel, _, outputs = KERNELS[name]

    def udf(ts: Any, close: Any, *params: Any) -> pa.Array:
        ts, close = _array(ts), _array(close)
        rows = [_array(p).to_pylist() for p in params]
        offsets = ts.offsets.to_numpy()
        if not np.array_equal(offsets, close.offsets.to_numpy()):
            raise ValueError(f"{name}: ts and close lists differ in length")
        times = ts.values.cast(pa.int64()).to_numpy()
        values = close.values.to_numpy(zero_copy_only=False).astype(float, copy=False)
        start, end = int(offsets[0]), int(offsets[-1])
        results = {out: np.full(end - start, np.nan) for out in outputs}
        missing = ts.is_null().to_numpy(zero_copy_only=False)
        for row in range(len(ts)):
            a, b = int(offsets[row]), int(offsets[row + 1])
            args = [r[row] for r in rows]
            if a == b or missing[row] or args[0] is None:  # (n is never NULL: the macros refuse it)
                continue
            t = times[a:b]
            order = None if bool(np.all(t[1:] > t[:-1])) else np.argsort(t, kind="stable")
            x = values[a:b] if order is None else values[a:b][order]
            computed = kernel(x, *args)
            for out in outputs:
                target = results[out][a - start: b - start]
                if order is None:
                    target[:] = computed[out]
                else:
                    target[order] = computed[out]
        list_offsets = pa.array(offsets - start, type=pa.int32())
        lists = [pa.ListArray.from_arrays(list_offsets, pa.array(results[out], from_pandas=True))
                 for out in outputs]
        return pa.StructArray.from_arrays(lists, list(outputs))

    # DuckDB counts the parameters of the signature: name them (ts, close, then the kernel's own)
    names = ["ts", "close", *list(inspect.signature(kernel).parameters)[1:]]
    udf.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in names])
    return udf
