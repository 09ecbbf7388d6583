"""SQL analytics: each indicator equals an independent pandas computation, and never looks ahead."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pandas_ta_classic as ta
import pytest
from factories import key, make_bars

from lumibot_duckdb.errors import ConfigError, SeriesNotFoundError
from lumibot_duckdb.sql import analytics
from lumibot_duckdb.sql.query import query
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey

# Max absolute differences found on real data, printed at the end of the run (`pytest -s` or -rA shows them).
DIFFERENCES: dict[str, float] = {}


def _load_real(store: DuckDBDataStorage, shared: Path) -> dict[str, pd.DataFrame]:
    """Real bars into the store: SPY/TLT/GLD daily 2019 (Yahoo shape), XYZ minute bars (naive New York time)."""
    frames = {}
    for symbol in ("SPY", "TLT", "GLD"):
        raw = pd.read_csv(shared / f"{symbol}_1d_2019.csv")
        bars = pd.DataFrame({"open": raw["Open"], "high": raw["High"], "low": raw["Low"], "close": raw["Close"],
                             "volume": raw["Volume"].astype(float)})
        bars.index = pd.DatetimeIndex(pd.to_datetime(raw["Date"]).dt.tz_localize("America/New_York")
                                      .dt.tz_convert("UTC"), name="ts")
        store.write(SeriesKey("yahoo", symbol, "day"), bars)
        frames[symbol] = bars
    raw = pd.read_csv(shared / "XYZ_1m_2020.csv")
    bars = raw[["open", "high", "low", "close", "volume"]].astype(float)
    bars.index = pd.DatetimeIndex(pd.to_datetime(raw["time"]).dt.tz_localize("America/New_York")
                                  .dt.tz_convert("UTC"), name="ts")
    store.write(SeriesKey("ingest", "XYZ", "minute", asset_type="future"), bars)
    frames["XYZ"] = bars
    return frames


@pytest.fixture
def real(shared_data: Path, tmp_path: Path):
    store = DuckDBDataStorage(tmp_path / "real")
    frames = _load_real(store, shared_data)
    yield store, frames
    store.close()


def _record(name: str, ours: pd.Series, theirs: pd.Series, *, tolerance: float) -> None:
    """Same NaN pattern, values within ``tolerance``; the max difference is kept for the report."""
    ours, theirs = ours.astype(float), theirs.astype(float).reindex(ours.index)
    assert (ours.isna() == theirs.isna()).all(), f"{name}: NaN pattern differs"
    diff = float(np.nanmax(np.abs(ours.to_numpy() - theirs.to_numpy()))) if ours.notna().any() else 0.0
    DIFFERENCES[name] = max(DIFFERENCES.get(name, 0.0), diff)
    assert diff <= tolerance, f"{name}: max |diff| {diff}"


@pytest.fixture(scope="module", autouse=True)
def report_differences():
    yield
    if DIFFERENCES:
        print("\nmax |SQL - independent| on real data:")
        for name, diff in sorted(DIFFERENCES.items()):
            print(f"  {name:<34} {diff:.3g}")


SERIES = [("SPY", "day", "yahoo"), ("XYZ", "minute", "ingest")]


@pytest.mark.parametrize(("symbol", "timeframe", "source"), SERIES)
def test_sma_ema_bollinger_match_pandas_and_pandas_ta(real, symbol: str, timeframe: str, source: str) -> None:
    store, frames = real
    close = frames[symbol]["close"]
    for n in (5, 20, 50):
        got = analytics.sma(store, symbol, n, timeframe=timeframe, source=source)
        _record(f"sma vs pandas rolling.mean ({symbol})", got["sma"], close.rolling(n).mean(), tolerance=1e-9)
        _record(f"sma vs pandas-ta sma ({symbol})", got["sma"], ta.sma(close, n), tolerance=1e-9)

        got = analytics.ema(store, symbol, n, timeframe=timeframe, source=source)
        _record(f"ema vs ewm(span, adjust=False) ({symbol})", got["ema"],
                close.ewm(span=n, adjust=False).mean(), tolerance=1e-9)
        got = analytics.ema(store, symbol, n, timeframe=timeframe, source=source, sma_seed=True)
        _record(f"ema sma_seed vs pandas-ta ema ({symbol})", got["ema"], ta.ema(close, n), tolerance=1e-9)

        got = analytics.bollinger(store, symbol, n, k=2.0, timeframe=timeframe, source=source)
        bands = ta.bbands(close, n, 2.0)
        _record(f"bollinger lower vs pandas-ta ({symbol})", got["lower"], bands.iloc[:, 0], tolerance=1e-8)
        _record(f"bollinger mid vs pandas-ta ({symbol})", got["mid"], bands.iloc[:, 1], tolerance=1e-9)
        _record(f"bollinger upper vs pandas-ta ({symbol})", got["upper"], bands.iloc[:, 2], tolerance=1e-8)
        sample = analytics.bollinger(store, symbol, n, k=1.5, ddof=1, timeframe=timeframe, source=source)
        # (pandas' rolling().std() drifts by up to ~2e-8 over 30k minute bars here — its online update —
        # so the sample σ is checked against numpy over each window instead)
        windows = np.lib.stride_tricks.sliding_window_view(close.to_numpy(), n)
        exact = pd.Series(np.r_[[np.nan] * (n - 1), windows.mean(axis=1) + 1.5 * windows.std(axis=1, ddof=1)],
                          index=close.index)
        _record(f"bollinger ddof=1 vs numpy windows ({symbol})", sample["upper"], exact, tolerance=1e-9)


@pytest.mark.parametrize(("symbol", "timeframe", "source"), SERIES)
def test_rsi_matches_pandas_ta_wilder(real, symbol: str, timeframe: str, source: str) -> None:
    store, frames = real
    close = frames[symbol]["close"]
    for n in (2, 14, 30):
        got = analytics.rsi(store, symbol, n, timeframe=timeframe, source=source)
        _record(f"rsi vs pandas-ta rsi ({symbol})", got["rsi"], ta.rsi(close, n), tolerance=1e-8)
        # and against a plain-pandas Wilder recursion written out here
        delta = close.diff()
        gain, loss = delta.clip(lower=0), (-delta).clip(lower=0)
        seeded_gain, seeded_loss = gain.copy(), loss.copy()
        seeded_gain.iloc[: n] = np.nan
        seeded_loss.iloc[: n] = np.nan
        seeded_gain.iloc[n] = gain.iloc[1: n + 1].mean()
        seeded_loss.iloc[n] = loss.iloc[1: n + 1].mean()
        avg_gain = seeded_gain.ewm(alpha=1 / n, adjust=False).mean()
        avg_loss = seeded_loss.ewm(alpha=1 / n, adjust=False).mean()
        _record(f"rsi avg_gain vs pandas ewm ({symbol})", got["avg_gain"], avg_gain, tolerance=1e-9)
        _record(f"rsi vs pandas Wilder ({symbol})", got["rsi"], 100 * avg_gain / (avg_gain + avg_loss),
                tolerance=1e-8)


def test_vwap_matches_pandas_ta_per_new_york_session(real) -> None:
    store, frames = real
    bars = frames["XYZ"]
    got = analytics.vwap(store, "XYZ", timeframe="minute", source="ingest")
    local = bars.tz_convert("America/New_York")
    with warnings.catch_warnings():  # pandas-ta converts to periods (drops the tz it was given: New York)
        warnings.simplefilter("ignore", UserWarning)
        theirs = ta.vwap(local["high"], local["low"], local["close"], local["volume"], anchor="D")
    theirs.index = theirs.index.tz_convert("UTC")
    _record("vwap vs pandas-ta vwap (XYZ)", got["vwap"], theirs, tolerance=1e-8)


@pytest.mark.parametrize(("symbol", "timeframe", "source"), SERIES)
def test_volatility_matches_pandas(real, symbol: str, timeframe: str, source: str) -> None:
    store, frames = real
    close = frames[symbol]["close"]
    got = analytics.volatility(store, symbol, 20, timeframe=timeframe, source=source, annualize=252)
    theirs = np.log(close).diff().rolling(20).std() * np.sqrt(252)
    _record(f"volatility vs pandas ({symbol})", got["volatility"], theirs, tolerance=1e-12)


def test_rolling_corr_and_asof_align_match_pandas(real) -> None:
    store, frames = real
    got = analytics.rolling_corr(store, "SPY", "TLT", 20, source="yahoo")
    joined = pd.concat({"a": frames["SPY"]["close"], "b": frames["TLT"]["close"]}, axis=1, join="inner")
    ra, rb = np.log(joined["a"]).diff(), np.log(joined["b"]).diff()
    _record("rolling_corr vs pandas (SPY,TLT)", got["corr"], ra.rolling(20).corr(rb), tolerance=1e-9)

    aligned = analytics.asof_align(store, ["SPY", "TLT", "GLD"], source="yahoo")
    theirs = pd.concat({s: frames[s]["close"] for s in ("SPY", "TLT", "GLD")}, axis=1).sort_index().ffill()
    for symbol in ("SPY", "TLT", "GLD"):
        _record("asof_align vs pandas ffill", aligned[symbol], theirs[symbol], tolerance=0.0)


# -- synthetic data: no look-ahead, recursion across blocks, SQL surface -------------------------------
@pytest.fixture
def store(store_dir: Path):
    with DuckDBDataStorage(store_dir) as s:
        yield s


def test_no_look_ahead_values_at_t_do_not_change_when_later_bars_arrive(store: DuckDBDataStorage) -> None:
    """Invariant: an indicator at time t uses only bars at or before t (as_of bounds every input)."""
    bars = make_bars(periods=1500, seed=3)
    later = make_bars(start="2024-01-03 15:30", periods=500, seed=4)
    other = make_bars(periods=1500, seed=5)
    store.write(key("AAA"), bars)
    store.write(key("BBB"), other)
    as_of = bars.index[999]
    calls = {
        "sma": lambda: analytics.sma(store, "AAA", 20, timeframe="minute", as_of=as_of)["sma"],
        "ema": lambda: analytics.ema(store, "AAA", 50, timeframe="minute", as_of=as_of)["ema"],
        "bollinger": lambda: analytics.bollinger(store, "AAA", 20, timeframe="minute", as_of=as_of)["upper"],
        "rsi": lambda: analytics.rsi(store, "AAA", 14, timeframe="minute", as_of=as_of)["rsi"],
        "vwap": lambda: analytics.vwap(store, "AAA", timeframe="minute", as_of=as_of)["vwap"],
        "volatility": lambda: analytics.volatility(store, "AAA", 20, timeframe="minute", as_of=as_of)["volatility"],
        "corr": lambda: analytics.rolling_corr(store, "AAA", "BBB", 20, timeframe="minute", as_of=as_of)["corr"],
        "asof": lambda: analytics.asof_align(store, ["AAA", "BBB"], timeframe="minute", as_of=as_of)["AAA"],
    }
    before = {name: call() for name, call in calls.items()}
    store.write(key("AAA"), later)  # bars after as_of arrive (and BBB's later bars exist all along)
    store.write(key("BBB"), make_bars(start="2024-01-03 15:30", periods=500, seed=6))
    for name, call in calls.items():
        after = call()
        assert after.index.max() <= as_of, name
        pd.testing.assert_series_equal(after, before[name], check_exact=True, obj=name)
    # and the full, unbounded series has later values that were not visible before
    assert analytics.sma(store, "AAA", 20, timeframe="minute").index.max() > as_of


def test_ema_and_rsi_exact_over_many_recursion_blocks(store: DuckDBDataStorage) -> None:
    """The block formulation (M = 415 rows for span 20) must equal the recursion far past many blocks."""
    bars = make_bars(periods=20_000, seed=9, price=250.0)
    store.write(key("LONG"), bars)
    close = bars["close"]
    got = analytics.ema(store, "LONG", 20, timeframe="minute")["ema"]
    np.testing.assert_allclose(got, close.ewm(span=20, adjust=False).mean(), rtol=0, atol=1e-9)
    got = analytics.ema(store, "LONG", 1, timeframe="minute")["ema"]  # alpha = 1: the close itself
    np.testing.assert_allclose(got, close, rtol=0, atol=1e-12)
    rsi = analytics.rsi(store, "LONG", 14, timeframe="minute")["rsi"]
    np.testing.assert_allclose(rsi.to_numpy()[14:], ta.rsi(close, 14).to_numpy()[14:], rtol=0, atol=1e-8)
    assert rsi.iloc[:14].isna().all()


def test_macros_are_reachable_from_sql_and_refuse_bad_arguments(store: DuckDBDataStorage) -> None:
    store.write(key("AAA"), make_bars(periods=300, seed=1))
    store.write(key("BBB"), make_bars(periods=300, seed=2))
    rows = query(store, "SELECT symbol, count(sma) AS n FROM sma(NULL, 10, tf := 'minute') GROUP BY ALL "
                        "ORDER BY symbol").table.to_pylist()
    assert rows == [{"symbol": "AAA", "n": 291}, {"symbol": "BBB", "n": 291}]
    last = query(store, "SELECT max(ts) AS t FROM rsi('AAA', 14, tf := 'minute', "
                        "as_of := TIMESTAMPTZ '2024-01-02 15:00:00+00')").table.to_pylist()
    assert str(last[0]["t"]) == "2024-01-02 15:00:00+00:00"
    with pytest.raises(ConfigError, match="must be 1 or more"):
        query(store, "SELECT * FROM sma('AAA', 0, tf := 'minute')")
    with pytest.raises(ConfigError, match="whole number"):
        analytics.sma(store, "AAA", 0, timeframe="minute")
    with pytest.raises(ConfigError, match="Unknown option"):
        analytics.sma(store, "AAA", 5, timeframe="minute", until="2024")
    with pytest.raises(SeriesNotFoundError, match="holds no series ZZZ"):  # never an empty answer
        analytics.sma(store, "ZZZ", 5, timeframe="minute")
    staleness = analytics.asof_align(store, ["AAA", "BBB"], timeframe="minute", column="staleness_seconds",
                                     as_of="2024-01-02 11:00")  # naive: New York, 16:00 UTC
    assert len(staleness) == 91 and (staleness == 0).all().all()
    with pytest.raises(ConfigError, match="column="):
        analytics.asof_align(store, ["AAA"], column="adj_close")


def test_a_symbol_in_two_sources_must_be_disambiguated(store: DuckDBDataStorage) -> None:
    store.write(key("AAA", source="polygon"), make_bars(periods=50, seed=1))
    store.write(key("AAA", source="alpaca"), make_bars(periods=50, seed=2))
    store.write(key("BBB", source="alpaca"), make_bars(periods=50, seed=3))
    with pytest.raises(ConfigError, match="several series"):
        analytics.sma(store, "AAA", 5, timeframe="minute")
    assert len(analytics.sma(store, "AAA", 5, timeframe="minute", source="alpaca")) == 50
    with pytest.raises(ConfigError, match="several series"):
        analytics.rolling_corr(store, "AAA", "BBB", 5, timeframe="minute")
    assert len(analytics.rolling_corr(store, "AAA", "BBB", 5, timeframe="minute", source="alpaca")) == 50
    with pytest.raises(ConfigError, match="several series"):
        analytics.asof_align(store, ["AAA", "BBB"], timeframe="minute")
    assert list(analytics.asof_align(store, ["AAA", "BBB"], timeframe="minute", source="alpaca").columns) == [
        "AAA", "BBB"]
    with pytest.raises(ConfigError, match="2 or more"):
        query(store, "SELECT * FROM rolling_corr('AAA', 'BBB', 1, tf := 'minute', src := 'alpaca')")


def test_a_reused_connection_gives_the_same_answers(store: DuckDBDataStorage) -> None:
    from lumibot_duckdb.sql.query import connect

    store.write(key("AAA"), make_bars(periods=500, seed=1))
    con = connect(store)
    try:
        for function in (analytics.sma, analytics.ema, analytics.rsi, analytics.volatility):
            pd.testing.assert_frame_equal(function(con, "AAA", 14, timeframe="minute"),
                                          function(store, "AAA", 14, timeframe="minute"))
    finally:
        con.close()


# -- the per-series kernels behind the macros (sql/kernels.py) -----------------------------------------
def _windowed(x: np.ndarray, n: int, reduce) -> np.ndarray:
    """``reduce`` over every full window of ``x`` by NumPy (two-pass), NaN before ``n - 1`` or over a gap."""
    out = np.full(len(x), np.nan)
    if len(x) >= n:
        out[n - 1:] = reduce(np.lib.stride_tricks.sliding_window_view(x, n))
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 61])
@pytest.mark.parametrize("length", [0, 1, 6, 20, 21, 400, 5_003])
def test_rolling_kernels_equal_numpy_windows(n: int, length: int) -> None:
    """Invariant: the O(n) block sums give every window's mean and σ as NumPy's two-pass over the window,
    NULL (NaN) wherever the window is short or holds a missing close, on any length and window size."""
    from lumibot_duckdb.sql import kernels

    rng = np.random.default_rng(n * 10_007 + length)
    close = 3_000 + np.cumsum(rng.normal(0, 2, length))  # prices ~3,000 drifting: a running total would lose digits
    if length > 50:
        close[rng.choice(length, 3, replace=False)] = np.nan
    mean = _windowed(close, n, lambda w: w.mean(axis=1))
    np.testing.assert_allclose(kernels.sma(close, n)["sma"], mean, rtol=0, atol=5e-12)  # ~10 ulp of 3,000
    for ddof in (0, 1):
        bands = kernels.bollinger(close, n, 2.0, ddof)
        sd = _windowed(close, n, lambda w, d=ddof: w.std(axis=1, ddof=d)) if n > ddof else np.full(length, np.nan)
        np.testing.assert_allclose(bands["stddev"], sd, rtol=0, atol=1e-11)
        np.testing.assert_allclose(bands["upper"], mean + 2.0 * sd, rtol=0, atol=2e-11)
    log_return = np.r_[np.nan, np.log(close[1:] / close[:-1])] if length else close
    vol = kernels.volatility(close, n, 252.0)["volatility"]
    expected = (_windowed(log_return, n, lambda w: w.std(axis=1, ddof=1)) * np.sqrt(252) if n > 1
                else np.full(length, np.nan))
    np.testing.assert_allclose(vol, expected, rtol=0, atol=1e-15)


def test_recursive_kernels_follow_pandas_over_missing_closes() -> None:
    """EMA and RSI are pandas' ewm recursions, a missing close included (the average carries over it)."""
    from lumibot_duckdb.sql import kernels

    close = 100 + np.cumsum(np.random.default_rng(4).normal(0, 1, 3_000))
    close[[5, 700, 701, 2_000]] = np.nan
    series = pd.Series(close)
    np.testing.assert_array_equal(kernels.ema(close, 20, False)["ema"],
                                  series.ewm(span=20, adjust=False).mean().to_numpy())
    np.testing.assert_allclose(kernels.ema(close, 20, True)["ema"], ta.ema(series, 20).to_numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(kernels.rsi(close, 14)["rsi"], ta.rsi(series, 14).to_numpy(), rtol=0, atol=1e-9)


def test_asof_align_grid_in_time_then_symbol_order(store: DuckDBDataStorage) -> None:
    """The grid is every timestamp of any symbol × every name asked (sorted), time-major; a name's values
    are its last bar at or before the time, NULL before its first bar or when it has none in range."""
    store.write(key("AAA"), make_bars(periods=30, seed=1))
    store.write(key("BBB"), make_bars(start="2024-01-02 14:40", periods=30, freq="2min", seed=2))
    store.write(key("CCC"), make_bars(start="2024-01-05 14:30", periods=5, seed=3))
    rows = query(store, "SELECT * FROM asof_align(['CCC', 'BBB', 'AAA'], tf := 'minute', "
                        "as_of := TIMESTAMPTZ '2024-01-03 00:00:00+00')").table.to_pandas()
    times = sorted(set(make_bars(periods=30).index) | set(make_bars(start="2024-01-02 14:40", periods=30,
                                                                     freq="2min").index))
    assert len(rows) == 3 * len(times)
    assert list(rows["symbol"]) == ["AAA", "BBB", "CCC"] * len(times)
    assert list(pd.DatetimeIndex(rows["ts"])[::3]) == times
    ccc, bbb = rows[rows["symbol"] == "CCC"], rows[rows["symbol"] == "BBB"].set_index("ts")
    assert ccc[["bar_ts", "close", "staleness_seconds"]].isna().all().all()  # no bar of CCC by as_of
    assert bbb.loc[:"2024-01-02 14:39:00+00:00", "close"].isna().all()
    later = bbb.loc["2024-01-02 14:51:00+00:00"]  # an AAA time; BBB has bars every 2 minutes from 14:40
    assert str(later["bar_ts"]) == "2024-01-02 14:50:00+00:00" and later["staleness_seconds"] == 60
