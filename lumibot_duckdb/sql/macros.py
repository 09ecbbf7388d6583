"""The indicator table macros (``sma``, ``ema``, ``bollinger``, ``rsi``, ``vwap``, ``volatility``,
``rolling_corr``, ``asof_align``) in DuckDB SQL, registered by :func:`register` on every connection
:mod:`lumibot_duckdb.sql.query` makes. Conventions: :mod:`lumibot_duckdb.sql.analytics`.

**How they compute.** ``sma``, ``ema``, ``bollinger``, ``rsi``, ``vwap``, ``volatility`` and
``rolling_corr`` collect each series' bars as lists (``list(ts), list(close) … GROUP BY sid``: one
row per series, no sort) and hand that row to a Python function of :mod:`lumibot_duckdb.sql.kernels`
(an Arrow UDF: whole arrays in and out, no per-row conversion), which sorts the series by ``ts`` and
computes with NumPy/pandas (O(n) rolling sums, pandas' compiled ``ewm`` for the recursions); the
values are unnested next to the key columns. ``asof_align`` hands all its series to one function that
builds the grid with ``np.searchsorted``. This replaced window functions over ``PARTITION BY sid
ORDER BY ts`` (a sort of bars the files already hold in order, then a generic aggregate per frame)
and, for EMA/RSI, a block formulation of the recursion as running sums, joins and GROUP BYs:
``benchmarks/bench_analytics.py`` times both sides. The key columns come as an ENUM of the key
values the store held when the connection was made (Arrow dictionaries, pandas categories).

**Names and times.** The macros name series the way the rest of the package does
(:mod:`lumibot_duckdb.store.naming`, registered here as three Python functions): ``tf`` takes the
timeframe aliases (``'1d'``, ``'daily'``, ``'1m'``…), ``sym`` may be ``'BTC/USDT'``, and a name
that matches no stored series is an error saying what the store holds for that symbol (an empty
result means the series exists but has no bar in the range asked). Naive ``as_of``/``since`` are
in Lumibot's default time zone (New York), as everywhere in the package.

**Speed.** Series are numbered (``sid``) by the file each bar comes from (one short text per bar
joined to the few rows of ``files``), not by joining the seven key columns per bar, which took
longer than reading the bars.
"""

from __future__ import annotations

import re
from typing import Any

import duckdb

from lumibot_duckdb.errors import LumibotDuckDBError
from lumibot_duckdb.sql.kernels import KERNELS, arrow_udf, asof_bar_udf, asof_grid_udf, asof_value_udf
from lumibot_duckdb.store.coverage import SeriesKey, canonical_timeframe
from lumibot_duckdb.store.naming import SeriesName, matching, parse_time

KEY_COLUMNS_SQL = _KEY = "source, symbol, asset_type, quote, exchange, timeframe, adjustment"
_COMMON = "tf := 'day', src := NULL, as_of := NULL, since := NULL"
_BARS = "_lbd_bars(sym, tf, src, as_of, since, n)"
_NULLS = ", ".join(["NULL"] * 14)  # one per column of _lbd_bars
# sym names a series' symbol, or BASE/QUOTE of one stored as BASE with that quote (store.naming's rule)
# (written as an IN of constants once sym is bound, so DuckDB skips the other files by their statistics:
#  "symbol = sym OR (…)" left "symbol = 'X' OR false" on every row of every file)
_SYMBOL = ("(symbol IN ({sym}, split_part({sym}, '/', 1)) "
           "AND (symbol = {sym} OR (contains({sym}, '/') AND quote = upper(split_part({sym}, '/', 2)))))")
# The key columns of a macro's output, typed by the connection's ENUM of every key value the store holds
_KEY_OUT = ", ".join(f"CAST({c} AS _lbd_key) AS {c}" for c in _KEY.split(", "))
MACROS = ("sma", "ema", "bollinger", "rsi", "vwap", "volatility", "rolling_corr", "asof_align")


def _kernel(name: str, params: str, outputs: tuple[str, ...]) -> str:
    """SQL of a macro computed by :mod:`lumibot_duckdb.sql.kernels` on ``close``: the bars of each series as
    two lists (one row per series), the kernel on each row, and the rows unnested again next to the key
    columns (as ENUMs: Arrow dictionaries, a pandas category, not one string per bar)."""
    unnested = ", ".join(f"unnest(_v.{out}) AS {out}" for out in outputs)
    # (the key columns are joined to the unnested rows: a join before would copy every list once more)
    return f"""
            WITH _g AS (SELECT sid, list(ts) AS _t, list(close) AS _c FROM {_BARS} GROUP BY sid),
                 _k AS (SELECT sid, _t, _c, _lbd_{name}(_t, _c, {params}) AS _v FROM _g),
                 _u AS (SELECT sid, unnest(_t) AS ts, unnest(_c) AS close, {unnested} FROM _k)
            SELECT {_KEY}, ts, close, {", ".join(outputs)} FROM _u JOIN _lbd_keys() USING (sid)"""


def _macros() -> list[str]:
    return [
        # sid: a small integer per series, numbered the same way on every evaluation
        f"""CREATE OR REPLACE TEMP MACRO _lbd_series() AS TABLE
            SELECT *, row_number() OVER (ORDER BY {_KEY}) AS sid FROM (SELECT DISTINCT {_KEY} FROM files)""",
        f"""CREATE OR REPLACE TEMP MACRO _lbd_keys() AS TABLE SELECT sid, {_KEY_OUT} FROM _lbd_series()""",
        # Each bar's series by the file it comes from (one short text joined per bar, not the seven key columns)
        f"""CREATE OR REPLACE TEMP MACRO _lbd_bars(sym, tf, src, as_of, since, n) AS TABLE
            SELECT {_KEY}, sid, ts, open, high, low, close, volume
            FROM _bar_rows JOIN (SELECT path AS filename, sid FROM files JOIN _lbd_series() USING ({_KEY}))
                 USING (filename)
            WHERE (sym IS NULL OR {_SYMBOL.format(sym="sym")}) AND timeframe = _lbd_tf(tf)
              AND (src IS NULL OR source = lower(src))
              AND (as_of IS NULL OR ts <= _lbd_time(CAST(as_of AS VARCHAR)))
              AND (since IS NULL OR ts >= _lbd_time(CAST(since AS VARCHAR)))
            -- The checks, on a one-row side that always runs (a WHERE over no bars would never raise):
            UNION ALL
            SELECT {_NULLS} FROM (SELECT _lbd_check([sym], tf, src) AS problem)
            WHERE CASE WHEN n IS NULL OR n < 1 THEN error('n (the window length) must be 1 or more')
                       WHEN problem IS NOT NULL THEN error(problem) ELSE false END""",
        # One series per symbol where two symbols are put side by side.
        """CREATE OR REPLACE TEMP MACRO _lbd_one_series(sym, tf, src, as_of, since) AS TABLE
            WITH b AS (SELECT sid, ts, close FROM _lbd_bars(sym, tf, src, as_of, since, 2))
            SELECT ts, close, CASE WHEN c > 1
                   THEN error('symbol ' || sym || ' is held by several series (sources or adjustments); '
                              || 'pass src := ''<source>''') END AS _ambiguous
            FROM b CROSS JOIN (SELECT count(DISTINCT sid) AS c FROM b)""",
        f"""CREATE OR REPLACE TEMP MACRO sma(sym, n, {_COMMON}) AS TABLE
            {_kernel("sma", "n", ("sma",))}""",
        f"""CREATE OR REPLACE TEMP MACRO bollinger(sym, n, k := 2.0, ddof := 0, {_COMMON}) AS TABLE
            {_kernel("bollinger", "n, k, ddof", ("lower", "mid", "upper", "stddev"))}""",
        f"""CREATE OR REPLACE TEMP MACRO ema(sym, n, sma_seed := false, {_COMMON}) AS TABLE
            {_kernel("ema", "n, sma_seed", ("ema",))}""",
        f"""CREATE OR REPLACE TEMP MACRO rsi(sym, n, {_COMMON}) AS TABLE
            {_kernel("rsi", "n", ("avg_gain", "avg_loss", "rsi"))}""",
        f"""CREATE OR REPLACE TEMP MACRO vwap(sym, tz := NULL, {_COMMON}) AS TABLE
            WITH _g AS (SELECT sid, list(ts) AS _t, list(high) AS _h, list(low) AS _l, list(close) AS _c,
                               list(volume) AS _vol
                        FROM _lbd_bars(sym, tf, src, as_of, since, 1) GROUP BY sid),
                 _s AS (SELECT *, coalesce(tz, CASE WHEN asset_type = 'crypto' THEN 'UTC'
                                                  ELSE 'America/New_York' END) AS _tz FROM _lbd_series()),
                 _k AS (SELECT sid, _tz, unnest(_t) AS ts, unnest(_c) AS close, unnest(_vol) AS volume,
                               unnest(_lbd_vwap(_t, _h, _l, _c, _vol, _tz).vwap) AS vwap
                        FROM _g JOIN (SELECT sid, _tz FROM _s) USING (sid))
            SELECT {_KEY}, ts, close, volume, CAST(timezone(_tz, ts) AS DATE) AS session, vwap
            FROM _k JOIN _lbd_keys() USING (sid)""",
        f"""CREATE OR REPLACE TEMP MACRO volatility(sym, n, annualize := NULL, {_COMMON}) AS TABLE
            {_kernel("volatility", "n, annualize", ("log_return", "volatility"))}""",
        """CREATE OR REPLACE TEMP MACRO rolling_corr(sym_a, sym_b, n, tf := 'day', src := NULL, as_of := NULL,
                                                     since := NULL) AS TABLE
            WITH a AS (SELECT ts, close AS close_a FROM _lbd_one_series(sym_a, tf, src, as_of, since)
                       WHERE _ambiguous IS NULL),
                 b AS (SELECT ts, close AS close_b FROM _lbd_one_series(sym_b, tf, src, as_of, since)
                       WHERE _ambiguous IS NULL),
                 j AS (SELECT ts, close_a, close_b FROM a JOIN b USING (ts)
                       WHERE CASE WHEN n IS NULL OR n < 2 THEN error('n must be 2 or more') ELSE true END),
                 -- the common bars as one row of lists, the kernel on it, unnested again
                 g AS (SELECT list(ts) AS _t, list(close_a) AS _a, list(close_b) AS _b FROM j),
                 k AS (SELECT _t, _a, _b, _lbd_rolling_corr(_t, _a, _b, n) AS _v FROM g)
            SELECT unnest(_t) AS ts, unnest(_a) AS close_a, unnest(_b) AS close_b, unnest(_v.return_a) AS return_a,
                   unnest(_v.return_b) AS return_b, unnest(_v.corr) AS corr
            FROM k""",
        """CREATE OR REPLACE TEMP MACRO asof_align(syms, tf := 'day', src := NULL, as_of := NULL, since := NULL,
                                                   base := NULL) AS TABLE
            -- the series asked for (a few rows), then their bars as one row of lists per series, then all of
            -- them in one row for the kernel, which builds the grid (timestamp-major, names sorted)
            WITH sel AS (SELECT sid, symbol, CASE WHEN list_contains(syms, symbol) THEN symbol
                                                  ELSE symbol || '/' || quote END AS named
                         FROM _lbd_series()
                         WHERE (list_contains(syms, symbol) OR list_contains(syms, symbol || '/' || quote))
                           AND timeframe = _lbd_tf(tf) AND (src IS NULL OR source = lower(src))),
                 per AS (SELECT sid, list(ts) AS _t, list(open) AS _o, list(high) AS _h, list(low) AS _l,
                                list(close) AS _c, list(volume) AS _v
                         FROM _lbd_bars(NULL, tf, src, as_of, since, 1) WHERE sid IN (SELECT sid FROM sel)
                         GROUP BY sid),
                 one AS (SELECT list(sid) AS _sid, list(_t) AS _t, list(_o) AS _o, list(_h) AS _h, list(_l) AS _l,
                                list(_c) AS _c, list(_v) AS _v FROM per),
                 m AS (SELECT list(sid) AS _msid, list(named) AS _mnamed, list(symbol) AS _msym FROM sel),
                 -- one call per column asked (the ones a query does not select are never computed)
                 k AS (SELECT *,
                              _lbd_asof_grid(_names, _sid, _t, _msid, _mnamed, _msym, base) AS _g,
                              _lbd_asof_bar(_names, _sid, _t, _msid, _mnamed, _msym, base) AS _bar,
                              _lbd_asof_value(_names, _sid, _t, _o, _msid, _mnamed, _msym, base) AS _open,
                              _lbd_asof_value(_names, _sid, _t, _h, _msid, _mnamed, _msym, base) AS _high,
                              _lbd_asof_value(_names, _sid, _t, _l, _msid, _mnamed, _msym, base) AS _low,
                              _lbd_asof_value(_names, _sid, _t, _c, _msid, _mnamed, _msym, base) AS _close,
                              _lbd_asof_value(_names, _sid, _t, _v, _msid, _mnamed, _msym, base) AS _volume
                       FROM (SELECT list_sort(list_distinct(syms)) AS _names, * FROM one CROSS JOIN m)),
                 u AS (SELECT *, unnest(_g.ts) AS ts, unnest(_g.symbol_index) AS _i,
                              unnest(generate_series(1, len(_g.ts))) AS _row FROM k)
            -- (rows come in (ts, symbol) order from the kernel: no sort of the grid here)
            SELECT ts, _names[_i + 1] AS symbol, _bar.bar_ts[_row] AS bar_ts,
                   _bar.staleness_seconds[_row] AS staleness_seconds, _open[_row] AS open, _high[_row] AS high,
                   _low[_row] AS low, _close[_row] AS close, _volume[_row] AS volume
            FROM u
            UNION ALL
            SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL
            FROM (SELECT _lbd_check(syms, tf, src) AS problem)
            WHERE CASE WHEN problem IS NOT NULL THEN error(problem) ELSE false END""",
    ]


def register(con: duckdb.DuckDBPyConnection, /, *, where: str = "the store") -> None:
    """Create the analytics macros on ``con`` (which must have the ``market_data`` and ``files`` views of
    :mod:`lumibot_duckdb.store.views`); ``where`` names the store in error messages."""
    held = held_series(con)
    varchar = duckdb.sqltype("VARCHAR")
    functions: list[tuple[str, Any, list[Any], Any]] = [
        ("_lbd_check", lambda syms, tf, src: _problem(held, syms, tf, src, where),
         [duckdb.sqltype("VARCHAR[]"), varchar, varchar], varchar),
        ("_lbd_tf", _timeframe, [varchar], varchar),
        ("_lbd_time", _time, [varchar], duckdb.sqltype("TIMESTAMPTZ")),
    ]
    create: Any = con.create_function  # (its stubs want an enum for null_handling; DuckDB 1.5 and 2 take the name)
    for name, function, parameters, returns in functions:
        create(name, function, parameters, returns, null_handling="special", side_effects=False)
    columns = " UNION ".join(f"SELECT {c} AS v FROM files" for c in _KEY.split(", "))
    con.execute(f"CREATE OR REPLACE TYPE _lbd_key AS ENUM (SELECT v FROM ({columns}) WHERE v IS NOT NULL ORDER BY v)")
    doubles = duckdb.list_type(duckdb.sqltype("DOUBLE"))
    stamps, texts = duckdb.list_type(duckdb.sqltype("TIMESTAMPTZ")), duckdb.list_type(varchar)
    sids = duckdb.list_type(duckdb.sqltype("BIGINT"))
    grid_inputs = [texts, sids, duckdb.list_type(stamps)]
    selected = [sids, texts, texts, varchar]  # (not "held": _lbd_check's closure reads that name)
    integers = duckdb.list_type(duckdb.sqltype("INTEGER"))
    for udf, inputs, returns in (
            (asof_grid_udf, [*grid_inputs, *selected], duckdb.struct_type({"ts": stamps, "symbol_index": integers})),
            (asof_bar_udf, [*grid_inputs, *selected],
             duckdb.struct_type({"bar_ts": stamps, "staleness_seconds": doubles})),
            (asof_value_udf, [*grid_inputs, duckdb.list_type(doubles), *selected], doubles)):
        create(f"_lbd_{udf.__name__.removesuffix('_udf')}", udf, inputs, returns, type="arrow",
               null_handling="special", side_effects=False)
    for name, (_, inputs, kernel_parameters, outputs) in KERNELS.items():  # one row per series, Arrow in and out
        kernel_lists = [duckdb.list_type(duckdb.sqltype("TIMESTAMPTZ")), *(doubles for c in inputs if c != "ts")]
        returns = duckdb.struct_type({out: doubles for out in outputs})
        create(f"_lbd_{name}", arrow_udf(name), [*kernel_lists, *(duckdb.sqltype(t) for t in kernel_parameters)],
               returns, type="arrow", null_handling="special", side_effects=False)
    con.execute(";\n".join(_macros()))  # (one call: each statement apart paid the client's round trip)


def held_series(con: duckdb.DuckDBPyConnection, /) -> list[SeriesKey]:
    """The series of the ``files`` view of ``con`` (what the store held when the connection was made)."""
    rows = con.execute(f"SELECT DISTINCT {_KEY} FROM files").fetchall()
    names = _KEY.split(", ")
    return sorted(SeriesKey(**dict(zip(names, row))) for row in rows)


_OURS: dict[str, None] = {}  # messages the checks raised (recent ones), to recognise them in DuckDB's errors
_UDF_ERROR = re.compile(r"Python exception occurred while executing the UDF: (\w+): (.*)$")
_OUR_ERRORS = {"ConfigError", "SeriesNotFoundError", "LumibotDuckDBError"}


def _problem(held: list[SeriesKey], syms: list[str | None] | None, tf: str | None, src: str | None,
             where: str) -> str | None:
    """Why (sym, tf, src) names no stored series — the resolver's message, in SQL's words — or None."""
    try:
        for sym in syms if syms else [None]:
            matching(SeriesName(symbol=sym, source=src, timeframe=tf if tf is not None else "day"), held,
                     where=where, on="sql")
    except LumibotDuckDBError as exc:
        message = str(exc)
        _OURS[message] = None
        while len(_OURS) > 64:
            _OURS.pop(next(iter(_OURS)))
        return message
    return None


def our_message(exc: BaseException) -> str | None:
    """The message of a check of these macros inside a DuckDB error (its own words, without DuckDB's
    ``Invalid Input Error:`` wrapping), or None when the error is DuckDB's own."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text.removeprefix("Invalid Input Error: ")
    udf = _UDF_ERROR.search(text)
    if udf and udf.group(1) in _OUR_ERRORS:
        return udf.group(2)
    return text if text in _OURS or text.startswith("n (the window length)") else None


def _timeframe(tf: str | None) -> str | None:
    try:
        return canonical_timeframe(tf if tf is not None else "day")
    except LumibotDuckDBError:
        return tf  # matches nothing; _lbd_check raises the reason


def _time(value: str | None) -> Any:
    return None if value is None else parse_time(value).to_pydatetime()
