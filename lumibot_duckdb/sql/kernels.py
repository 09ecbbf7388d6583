"""The per-series computations behind the indicator macros of :mod:`lumibot_duckdb.sql.macros`.

A macro groups its bars by series (``list(ts), list(close) … GROUP BY sid``: one row per series) and
calls one of these functions on that row; DuckDB hands the lists over as Arrow arrays (no row
conversion) and unnests what comes back next to the input lists. Each function sorts one series by
``ts`` (the lists come in scan order, a few sorted runs), computes with NumPy/pandas over whole
arrays, and returns the values in the order it received them. (The lists of one aggregate are filled
together, row by row, so element ``i`` of each is the same bar; the UDF checks their lengths agree.)

Why not SQL windows: a DuckDB window over ``PARTITION BY sid ORDER BY ts`` re-sorts bars the files
already hold in order and evaluates a generic aggregate per frame (~200 ns a bar); EMA and RSI are
recursions SQL can only express as set operations over blocks or as a recursive CTE. Here a rolling
sum is O(n) and the recursions run in pandas' compiled ``ewm`` (the convention they are specified
by), so a series of a year of minute bars takes a few milliseconds.

Exactness (``tests/test_analytics.py`` compares with pandas and pandas-ta-classic on real bars):

* rolling means: block sums (:func:`rolling_moments`): the window ending in block ``j`` is the head
  of block ``j`` (a prefix sum) plus the tail of block ``j-1`` (a suffix sum of its own), every value
  taken relative to the first value of block ``j``: each partial sum spans at most ``n`` values near
  the window's level, so the error is that of summing the window's deviations, never that of a
  running total over the whole series (a year of minute bars: |Σ| ~ 1e7, ~1e-9 lost);
* standard deviations: the same block sums of squared deviations from that reference, minus the
  mean's share (``Σd² - (Σd)²/n``, both small): within ~1e-13 of NumPy's two-pass ``std`` over each
  window — pandas' online ``rolling().std()`` drifts by up to ~1e-8 on long minute series;
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


def _blocks(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` cut in blocks of ``n`` (zero-padded), one block per column: shape ``(n, blocks)``."""
    blocks = max(1, -(-len(x) // n))
    padded = np.zeros(blocks * n)
    padded[: len(x)] = x
    return padded.reshape(blocks, n).T


def _unblock(values: np.ndarray, m: int) -> np.ndarray:
    return values.T.ravel()[:m]


def rolling_moments(x: np.ndarray, n: int, /, *, squares: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and sum of squared deviations of every window ``x[i-n+1..i]`` (valid for ``i >= n - 1``). No NaN in ``x``.

    O(len(x)): block ``j`` holds rows ``j·n … j·n+n-1``; the window ending at row ``r`` of block ``j``
    is rows ``0..r`` of block ``j`` plus rows ``r+1..n-1`` of block ``j-1``, each summed by a prefix
    sum that spans at most ``n`` values. Values are taken relative to ``c_j`` (the first value of block
    ``j``, within ``n`` rows of the window), so sums stay near the deviations' size: the mean is exact to
    ~eps·|x|, the sum of squares to ~eps·n·(deviation)² (a running total over a year of minute bars
    would lose ~1e-9).
    """
    m = len(x)
    if m == 0:
        return np.empty(0), (np.empty(0) if squares else None)
    blocks = _blocks(x, n)
    ref = blocks[0].copy()
    # C order: the prefix sums run down the columns, row after row (the blocks are a transposed view)
    own = np.subtract(blocks, ref, order="C")  # block j relative to c_j
    prev = np.subtract(blocks[:, :-1], ref[1:], order="C")  # block j-1 relative to c_j
    # rows r+1.. of block j-1 by a suffix sum of their own (a total minus a prefix would cancel digits)
    s1 = np.cumsum(own, axis=0)
    s1[:-1, 1:] += np.cumsum(prev[::-1], axis=0)[::-1][1:]
    mean = ref + s1 / n
    if not squares:
        return _unblock(mean, m), None
    s2 = np.cumsum(own * own, axis=0)
    s2[:-1, 1:] += np.cumsum((prev * prev)[::-1], axis=0)[::-1][1:]
    ssd = np.maximum(s2 - s1 * s1 / n, 0.0)
    return _unblock(mean, m), _unblock(ssd, m)


def rolling_count(valid: np.ndarray, n: int, /) -> np.ndarray:
    """How many of ``valid[i-n+1..i]`` are true (exact: integer prefix sums)."""
    total = np.cumsum(valid, dtype=np.int64)
    out = total.copy()
    out[n:] -= total[:-n]
    return out


def _windows(x: np.ndarray, n: int, *, squares: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(count, mean, ssd)``: the non-NaN count per window, the window mean and sum of squared deviations
    (empty without ``squares``; NaN counted as 0: such windows are masked by their count)."""
    valid = ~np.isnan(x)
    mean, ssd = rolling_moments(np.where(valid, x, 0.0), n, squares=squares)
    return rolling_count(valid, n), mean, np.empty(0) if ssd is None else ssd


def _full(mask: np.ndarray, *values: np.ndarray) -> None:
    for v in values:
        v[mask] = np.nan


def sma(close: np.ndarray, n: int) -> dict[str, np.ndarray]:
    count, mean, _ = _windows(close, n, squares=False)
    _full(count < n, mean)
    return {"sma": mean}


def bollinger(close: np.ndarray, n: int, k: float, ddof: int) -> dict[str, np.ndarray]:
    count, mid, ssd = _windows(close, n, squares=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(ssd / (n - (0 if ddof == 0 else 1)))
    lower, upper = mid - k * sd, mid + k * sd
    _full(count < n, lower, mid, upper, sd)
    return {"lower": lower, "mid": mid, "upper": upper, "stddev": sd}


def volatility(close: np.ndarray, n: int, annualize: float | None) -> dict[str, np.ndarray]:
    log_return = np.full(len(close), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_return[1:] = np.log(close[1:] / close[:-1])
    count, _, ssd = _windows(log_return, n, squares=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(ssd / (n - 1)) * np.sqrt(1.0 if annualize is None else annualize)
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


def vwap(ts: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray,
         tz: str) -> dict[str, np.ndarray]:
    """Per session day in ``tz``: ``cumsum(hlc3·volume) / cumsum(volume)`` (NULLs count as 0, as SQL's sum)."""
    day = pd.DatetimeIndex(ts.view("datetime64[us]")).tz_localize("UTC").tz_convert(tz).normalize().asi8
    flow = np.nan_to_num((high + low + close) / 3 * volume, nan=0.0)
    shares = np.nan_to_num(volume, nan=0.0)
    # pandas' grouped cumsum (compensated), as pandas-ta's vwap: a plain running sum drifts by ~1e-12
    sums = pd.DataFrame({"flow": flow, "shares": shares}).groupby(day, sort=False).cumsum()
    cum_flow, cum_shares = sums["flow"].to_numpy(), sums["shares"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.where(cum_shares == 0, np.nan, cum_flow / np.where(cum_shares == 0, 1.0, cum_shares))
    return {"vwap": value}


def rolling_corr(close_a: np.ndarray, close_b: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Correlation of the log returns over ``n`` rows (both symbols' common bars): two-pass per window."""
    m = len(close_a)
    returns = []
    for close in (close_a, close_b):
        r = np.full(m, np.nan)
        with np.errstate(invalid="ignore", divide="ignore"):
            r[1:] = np.log(close[1:] / close[:-1])
        returns.append(r)
    ra, rb = returns
    valid = ~(np.isnan(ra) | np.isnan(rb))
    count = rolling_count(valid, n)
    fa, fb = np.where(valid, ra, 0.0), np.where(valid, rb, 0.0)
    corr = np.full(m, np.nan)
    if m >= n:
        width = m - n + 1
        mean_a, ssd_a = rolling_moments(fa, n)
        mean_b, ssd_b = rolling_moments(fb, n)
        ca, cb = mean_a[n - 1:], mean_b[n - 1:]
        cross = np.zeros(width)
        for j in range(n):
            cross += (fa[j: j + width] - ca) * (fb[j: j + width] - cb)
        with np.errstate(invalid="ignore", divide="ignore"):
            corr[n - 1:] = cross / np.sqrt(ssd_a[n - 1:] * ssd_b[n - 1:])  # type: ignore[index]
    corr[count < n] = np.nan
    return {"return_a": ra, "return_b": rb, "corr": corr}


KERNELS: dict[str, tuple[Kernel, tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    # name: (function, its list inputs (sorted by ts; "ts" itself if it needs it), its other parameters'
    #        DuckDB types, its outputs (DOUBLE lists))
    "sma": (sma, ("close",), ("BIGINT",), ("sma",)),
    "bollinger": (bollinger, ("close",), ("BIGINT", "DOUBLE", "BIGINT"), ("lower", "mid", "upper", "stddev")),
    "volatility": (volatility, ("close",), ("BIGINT", "DOUBLE"), ("log_return", "volatility")),
    "ema": (ema, ("close",), ("BIGINT", "BOOLEAN"), ("ema",)),
    "rsi": (rsi, ("close",), ("BIGINT",), ("avg_gain", "avg_loss", "rsi")),
    "vwap": (vwap, ("ts", "high", "low", "close", "volume"), ("VARCHAR",), ("vwap",)),
    "rolling_corr": (rolling_corr, ("close_a", "close_b"), ("BIGINT",), ("return_a", "return_b", "corr")),
}


def _array(value: Any) -> Any:
    return value.combine_chunks() if isinstance(value, pa.ChunkedArray) else value


def arrow_udf(name: str, /) -> Callable[..., pa.Array]:
    """The Arrow UDF for kernel ``name``: ``(ts[], *input lists, *params) -> STRUCT(out DOUBLE[], …)``, one
    row per series, each output list in the order of the input lists."""
    kernel, inputs, parameters, outputs = KERNELS[name]
    columns = [c for c in inputs if c != "ts"]

    def udf(ts: Any, *rest: Any) -> pa.Array:
        ts = _array(ts)
        lists = [_array(v) for v in rest[: len(columns)]]
        rows = [_array(p).to_pylist() for p in rest[len(columns):]]
        offsets = ts.offsets.to_numpy()
        for values in lists:
            if not np.array_equal(offsets, values.offsets.to_numpy()):
                raise ValueError(f"{name}: the lists of a series differ in length")
        times = ts.values.view(pa.int64()).to_numpy()
        flat = {c: v.values.to_numpy(zero_copy_only=False).astype(float, copy=False) for c, v in zip(columns, lists)}
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
            sort = (lambda v: v) if order is None else (lambda v: v[order])  # noqa: B023 (used right here)
            given = {"ts": sort(t), **{c: sort(flat[c][a:b]) for c in columns}}
            computed = kernel(*(given[c] for c in inputs), *args)
            for out in outputs:
                target = results[out][a - start: b - start]
                if order is None:
                    target[:] = computed[out]
                else:
                    target[order] = computed[out]
        list_offsets = pa.array(offsets - start, type=pa.int32())
        built = [pa.ListArray.from_arrays(list_offsets, pa.array(results[out], from_pandas=True)) for out in outputs]
        return pa.StructArray.from_arrays(built, list(outputs))

    # DuckDB counts the parameters of the signature: ts, the input lists, then the kernel's own
    names = ["ts", *columns, *(f"parameter_{i}" for i in range(len(parameters)))]
    udf.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_ONLY) for n in names])
    return udf


# -- asof_align: every symbol's last bar at or before each timestamp of the grid -----------------------
def _flat_lists(value: Any) -> tuple[np.ndarray, Any]:
    """The lists of a one-row LIST(LIST(x)) column: (offsets per inner list, flat values array)."""
    outer = _array(value)
    if outer.null_count or len(outer) == 0:
        return np.zeros(1, dtype=np.int64), pa.array([], type=pa.float64())
    inner = outer.values.slice(outer.offsets[0].as_py(), len(outer[0]))
    return inner.offsets.to_numpy().astype(np.int64), inner.values


class _Grid:
    """The grid of one ``asof_align`` call: every timestamp of the series (or of ``base``'s) × the names asked
    (sorted), timestamp-major; for each name, the position of its last bar at or before each grid time."""

    def __init__(self, names: Any, sids: Any, ts: Any, held_sids: Any, held_names: Any, held_symbols: Any,
                 base: Any) -> None:
        from lumibot_duckdb.errors import ConfigError

        columns = [_array(v).to_pylist()[0] for v in (names, sids, held_sids, held_names, held_symbols)]
        self.wanted, self.series_ids, held_sid, held_name, held_symbol = [c or [] for c in columns]
        base_symbol = _array(base).to_pylist()[0]
        name_of, symbol_of = dict(zip(held_sid, held_name)), dict(zip(held_sid, held_symbol))
        symbols = [symbol_of[s] for s in self.series_ids]
        if len(set(symbols)) < len(symbols):
            raise ConfigError("a symbol is held by several series; pass src := '<source>'")
        self.offsets, flat_ts = _flat_lists(ts)
        times_all = flat_ts.view(pa.int64()).to_numpy() if len(flat_ts) else np.empty(0, dtype=np.int64)
        self.rows: dict[str, tuple[int, np.ndarray, np.ndarray]] = {}  # name -> (series row, order, sorted times)
        parts = []
        for row, sid in enumerate(self.series_ids):
            times = times_all[int(self.offsets[row]): int(self.offsets[row + 1])]
            order = np.argsort(times, kind="stable")
            self.rows[name_of[sid]] = (row, order, times[order])
            if base_symbol is None or symbol_of[sid] == base_symbol:
                parts.append(times[order])
        merged = np.sort(np.concatenate(parts), kind="stable") if parts else np.empty(0, dtype=np.int64)
        self.grid = merged[np.r_[True, merged[1:] != merged[:-1]]] if len(merged) else merged  # sorted runs: a merge
        self.width, self.count = len(self.grid), len(self.wanted)
        no_index = np.full(self.width, -1, dtype=np.int64)  # -1: no bar yet
        self.index = [np.searchsorted(self.rows[n][2], self.grid, side="right") - 1 if n in self.rows else no_index
                      for n in self.wanted]

    def gather(self, take: Callable[[str, np.ndarray], np.ndarray], dtype: Any) -> np.ndarray:
        """``take(name, index)`` for every name, laid out timestamp-major block by block (a block stays in
        cache; a plain ``.T.ravel()`` strides across the whole array once per name)."""
        out = np.empty((self.width, self.count), dtype=dtype)
        for start in range(0, self.width, 8_192):
            stop = min(self.width, start + 8_192)
            block = np.empty((self.count, stop - start), dtype=dtype)
            for i, name in enumerate(self.wanted):
                block[i] = take(name, self.index[i][start:stop])
            out[start:stop] = block.T
        return out.ravel()

    def one_list(self, values: pa.Array) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array([0, self.width * self.count], type=pa.int32()), values)


_STAMP = pa.timestamp("us", tz="UTC")


def asof_grid_udf(names: Any, sids: Any, ts: Any, held_sids: Any, held_names: Any, held_symbols: Any,
                  base: Any) -> pa.Array:
    """``STRUCT(ts, symbol_index)`` lists of the grid (one row in, one out). Raises when a symbol has bars in
    several series (the caller must pass a source)."""
    grid = _Grid(names, sids, ts, held_sids, held_names, held_symbols, base)
    return pa.StructArray.from_arrays(
        [grid.one_list(pa.array(np.repeat(grid.grid, grid.count), type=_STAMP)),
         grid.one_list(pa.array(np.tile(np.arange(grid.count, dtype=np.int32), grid.width)))],
        ["ts", "symbol_index"])


def asof_bar_udf(names: Any, sids: Any, ts: Any, held_sids: Any, held_names: Any, held_symbols: Any,
                 base: Any) -> pa.Array:
    """``STRUCT(bar_ts, staleness_seconds)`` lists: each grid row's bar time and its age (NULL: no bar yet)."""
    grid = _Grid(names, sids, ts, held_sids, held_names, held_symbols, base)

    def stamp_of(name: str, where: np.ndarray) -> np.ndarray:
        times = grid.rows[name][2] if name in grid.rows else np.zeros(1, dtype=np.int64)
        return times[np.maximum(where, 0)] if len(times) else np.zeros(len(where), dtype=np.int64)

    missing = grid.gather(lambda name, where: where < 0, bool)
    bar_ts = grid.gather(stamp_of, np.int64)
    staleness = (np.repeat(grid.grid, grid.count) - bar_ts) / 1e6
    return pa.StructArray.from_arrays(
        [grid.one_list(pa.array(bar_ts, type=_STAMP, mask=missing)),
         grid.one_list(pa.array(staleness, mask=missing))], ["bar_ts", "staleness_seconds"])


def asof_value_udf(names: Any, sids: Any, ts: Any, values: Any, held_sids: Any, held_names: Any,
                   held_symbols: Any, base: Any) -> pa.Array:
    """One column (``values``: one list per series) on the grid: each name's value at its last bar."""
    grid = _Grid(names, sids, ts, held_sids, held_names, held_symbols, base)
    offsets, flat = _flat_lists(values)
    flat_values = flat.to_numpy(zero_copy_only=False).astype(float) if len(flat) else np.empty(0)
    nothing = np.full(1, np.nan)
    columns = {}
    for name, (row, order, _) in grid.rows.items():  # one NaN after the last bar: "no bar yet" (-1) gathers it
        columns[name] = np.append(flat_values[int(offsets[row]): int(offsets[row + 1])][order], np.nan)
    out = grid.gather(lambda name, where: columns.get(name, nothing)[where], float)
    return grid.one_list(pa.array(out, from_pandas=True))
