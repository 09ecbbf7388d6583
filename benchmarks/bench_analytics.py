"""Indicators for many symbols at once: the SQL macros beside a pandas loop over symbols.

A temporary store gets ``--symbols`` US stocks × one year of minute bars (extended hours, from
:class:`lumibot_duckdb.testing.market.SyntheticMarket`; 50 × 2023 ≈ 7.4M bars). Each round, for
each indicator, both sides start from the store and end with pandas objects holding every value:

* **SQL**: one query over all symbols (``SELECT symbol, ts, <value> FROM sma(NULL, 20, tf := 'minute')``)
  on a fresh read-only connection (:func:`lumibot_duckdb.sql.query.connect`, views and macros
  included), fetched as Arrow, converted to pandas (symbol as a category) and split into one
  Series of values by ``ts`` per symbol.
* **pandas**: per symbol, ``store.read`` of the year (the columns the expression uses: ``close``;
  VWAP: high, low, close, volume), then the pandas expression the indicator is checked against in
  ``tests/test_analytics.py`` (pandas-ta-classic's ``rsi``; ``ewm``, ``rolling``,
  ``groupby().cumsum()``…), one Series per symbol.

Both sides thus read the same bars from the store and end with the same objects (a dict of Series).

The first round checks that both sides agree (max |difference| printed); the ratio
pandas/SQL is taken per round (> 1: SQL faster) and reported as median, min–max and n.
Rolling correlation runs on ``--pairs`` pairs (symbol 0 with symbols 1..k), ASOF alignment on
every symbol at once.

Reproduce (about 5 minutes on 2 CPUs)::

    python3 dev.py bench benchmarks/bench_analytics.py --symbols 50 --rounds 3 --pairs 10 \\
        --out benchmarks/results/analytics.md
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandas_ta_classic as ta

from lumibot_duckdb.sql.query import connect
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey
from lumibot_duckdb.testing.market import SyntheticMarket

START, END = "2023-01-01", "2024-01-01"  # --months shortens END (smoke runs)


def build_store(root: Path, symbols: list[str]) -> int:
    market = SyntheticMarket(seed=42)
    total = 0
    with DuckDBDataStorage(root) as store:
        for symbol in symbols:
            bars = market.bars(symbol, "minute", START, END)
            store.write(SeriesKey("bench", symbol, "minute", quote="USD"), bars, covered=(START, END))
            total += len(bars)
    return total


# -- SQL side ----------------------------------------------------------------------------------------
def by_symbol(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """One long frame (symbol, ts, value) as the pandas loop's output: a Series of values by ts per symbol."""
    codes = frame["symbol"].cat.codes.to_numpy()
    if len(codes) and (np.diff(codes) != 0).sum() >= len(frame["symbol"].cat.categories):  # not grouped already
        frame = frame.iloc[np.argsort(codes, kind="stable")]
        codes = frame["symbol"].cat.codes.to_numpy()
    ts, value = pd.DatetimeIndex(frame["ts"], name="ts"), frame["value"].to_numpy()
    edges = np.r_[0, np.flatnonzero(np.diff(codes)) + 1, len(codes)]
    names = frame["symbol"].cat.categories
    return {str(names[codes[a]]): pd.Series(value[a:b], index=ts[a:b], name="value")
            for a, b in itertools.pairwise(edges) if b > a}


def sql_runner(store: DuckDBDataStorage, sql: str) -> Callable[[], dict[str, pd.Series]]:
    def run() -> dict[str, pd.Series]:
        con = connect(store)
        try:
            relation = con.sql(sql)
            fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table  # DuckDB 2.x, 1.x
            table = fetch()
        finally:
            con.close()
        return by_symbol(table.to_pandas(strings_to_categorical=True))
    return run


SQL = {
    "sma(20)": "SELECT symbol, ts, sma AS value FROM sma(NULL, 20, tf := 'minute')",
    "ema(20)": "SELECT symbol, ts, ema AS value FROM ema(NULL, 20, tf := 'minute')",
    "bollinger(20, 2)": "SELECT symbol, ts, upper AS value FROM bollinger(NULL, 20, tf := 'minute')",
    "rsi(14)": "SELECT symbol, ts, rsi AS value FROM rsi(NULL, 14, tf := 'minute')",
    "vwap (session)": "SELECT symbol, ts, vwap AS value FROM vwap(NULL, tf := 'minute')",
    "volatility(20)": "SELECT symbol, ts, volatility AS value FROM volatility(NULL, 20, tf := 'minute')",
}


# -- pandas side -------------------------------------------------------------------------------------
def pandas_value(name: str, bars: pd.DataFrame) -> pd.Series:
    close = bars["close"]
    if name == "sma(20)":
        return close.rolling(20).mean()
    if name == "ema(20)":
        return close.ewm(span=20, adjust=False).mean()
    if name == "bollinger(20, 2)":
        return ta.bbands(close, 20, 2.0).iloc[:, 2]
    if name == "rsi(14)":
        return ta.rsi(close, 14)
    if name == "vwap (session)":
        session = bars.index.tz_convert("America/New_York").date
        typical = (bars["high"] + bars["low"] + close) / 3
        return (typical * bars["volume"]).groupby(session).cumsum() / bars["volume"].groupby(session).cumsum()
    if name == "volatility(20)":
        return np.log(close).diff().rolling(20).std()
    raise KeyError(name)


NEEDS = {"vwap (session)": ["high", "low", "close", "volume"]}  # the others read close only


def pandas_runner(store: DuckDBDataStorage, name: str, keys: list[SeriesKey]) -> Callable[[], dict[str, pd.Series]]:
    columns = NEEDS.get(name, ["close"])  # what the expression uses, as the SQL side reads only that

    def run() -> dict[str, pd.Series]:
        return {k.symbol: pandas_value(name, store.read(k, START, END, columns=columns)) for k in keys}
    return run


def compare(sql_values: dict[str, pd.Series], pandas_values: dict[str, pd.Series]) -> float:
    worst = 0.0
    assert sorted(sql_values) == sorted(pandas_values), "SQL and pandas differ in symbols"
    for symbol, expected in pandas_values.items():
        got = sql_values[symbol].sort_index().astype(float)
        got.index = pd.DatetimeIndex(got.index).tz_convert("UTC")
        assert len(got) == len(expected), f"{symbol}: {len(got)} SQL rows, {len(expected)} pandas rows"
        expected = expected.reindex(got.index).astype(float)
        assert (got.isna() == expected.isna()).all(), f"{symbol}: NaN pattern differs"
        if got.notna().any():
            worst = max(worst, float(np.nanmax(np.abs(got.to_numpy() - expected.to_numpy()))))
    return worst


def timed(function: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--months", type=int, default=12, help="Months of 2023 (12 = the whole year).")
    parser.add_argument("--out", type=Path, default=None, help="Also write the Markdown table here.")
    args = parser.parse_args()
    global END
    END = str((pd.Timestamp(START) + pd.DateOffset(months=args.months)).date())
    symbols = [f"S{i:02d}" for i in range(args.symbols)]

    with tempfile.TemporaryDirectory(prefix="bench-analytics-") as folder:
        root = Path(folder) / "store"
        seconds, bars = timed(lambda: build_store(root, symbols))
        print(f"store: {args.symbols} symbols, {bars:,} minute bars of {START[:4]}, generated and written in "
              f"{seconds:.1f} s", flush=True)
        store = DuckDBDataStorage(root)
        keys = [SeriesKey("bench", s, "minute", quote="USD") for s in symbols]
        cases: list[tuple[str, Callable[[], Any], Callable[[], Any], Callable[[Any, Any], float]]] = []
        for name, sql in SQL.items():
            cases.append((name, sql_runner(store, sql), pandas_runner(store, name, keys),
                          compare))

        pairs = [(symbols[0], s) for s in symbols[1: 1 + args.pairs]]
        corr_sql = " UNION ALL ".join(
            f"SELECT '{b}' AS symbol, ts, corr AS value FROM rolling_corr('{a}', '{b}', 20, tf := 'minute')"
            for a, b in pairs)  # symbols are the benchmark's own constants

        def corr_pandas() -> dict[str, pd.Series]:
            out = {}
            for a, b in pairs:
                ca = store.read(SeriesKey("bench", a, "minute", quote="USD"), START, END, columns=["close"])["close"]
                cb = store.read(SeriesKey("bench", b, "minute", quote="USD"), START, END, columns=["close"])["close"]
                joined = pd.concat({"a": ca, "b": cb}, axis=1, join="inner")
                ra, rb = np.log(joined["a"]).diff(), np.log(joined["b"]).diff()
                out[b] = ra.rolling(20).corr(rb)
            return out
        cases.append((f"rolling_corr(20), {len(pairs)} pairs", sql_runner(store, corr_sql), corr_pandas,
                      compare))

        listed = ", ".join(f"'{s}'" for s in symbols)
        asof_sql = f"SELECT symbol, ts, close AS value FROM asof_align([{listed}], tf := 'minute')"

        def asof_pandas() -> dict[str, pd.Series]:
            closes = {k.symbol: store.read(k, START, END, columns=["close"])["close"] for k in keys}
            wide = pd.concat(closes, axis=1).sort_index().ffill()
            return {s: wide[s] for s in symbols}
        cases.append((f"asof_align, {len(symbols)} symbols", sql_runner(store, asof_sql), asof_pandas,
                      compare))

        rows = []
        for name, sql_run, pandas_run, check in cases:
            sql_times, pandas_times = [], []
            for round_ in range(args.rounds):
                t_sql, sql_result = timed(sql_run)
                t_pd, pandas_result = timed(pandas_run)
                if round_ == 0:
                    diff = check(sql_result, pandas_result)
                    assert diff < 1e-6, f"{name}: SQL and pandas differ by {diff}"
                sql_times.append(t_sql)
                pandas_times.append(t_pd)
                del sql_result, pandas_result
            ratios = [p / s for p, s in zip(pandas_times, sql_times)]
            row = (name, statistics.median(sql_times), statistics.median(pandas_times), statistics.median(ratios),
                   min(ratios), max(ratios), args.rounds, diff)
            rows.append(row)
            print(f"{name:<28} SQL {row[1]:6.2f} s  pandas {row[2]:6.2f} s  pandas/SQL {row[3]:.2f}x "
                  f"({row[4]:.2f}–{row[5]:.2f}, n={row[6]})  max|diff| {diff:.2g}", flush=True)
        store.close()

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {__import__('os').cpu_count()} CPUs, {platform.machine()}, Python "
        f"{platform.python_version()}, duckdb {version('duckdb')}, pandas {version('pandas')}, pyarrow "
        f"{version('pyarrow')}, pandas-ta-classic {version('pandas-ta-classic')}.",
        "",
        f"Command: `python3 dev.py bench benchmarks/bench_analytics.py --symbols {args.symbols} --rounds "
        f"{args.rounds} --pairs {args.pairs}" + (f" --months {args.months}`" if args.months != 12 else "`"),
        "",
        f"{args.symbols} symbols × {START[:4]} minute bars ({bars:,} bars), from the store to pandas objects; "
        "ratio = pandas time / SQL time per round (> 1: SQL faster)",
        "",
        "| indicator | SQL median | pandas loop median | ratio median | ratio min–max | n | max abs diff |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r[0]} | {r[1]:.2f} s | {r[2]:.2f} s | {r[3]:.2f}x | {r[4]:.2f}–{r[5]:.2f}x | {r[6]} | {r[7]:.2g} |"
          for r in rows),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
