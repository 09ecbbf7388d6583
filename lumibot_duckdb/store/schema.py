"""The one bar schema every source is stored in.

Key columns repeat the :class:`SeriesKey` in every row so that any file, or any SQL over many
files, is self-describing. Prices and volumes are float64 exactly as the provider sent them: no
DECIMAL, no rounding. Fields a source does not provide are null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from lumibot_duckdb.config import default_timezone
from lumibot_duckdb.errors import BarsValidationError
from lumibot_duckdb.store.coverage import SeriesKey
from lumibot_duckdb.store.memory import arrow_pool

SCHEMA_VERSION = "1"

KEY_COLUMNS = ("source", "symbol", "asset_type", "quote", "exchange", "timeframe", "adjustment")
PRICE_COLUMNS = ("open", "high", "low", "close")
VALUE_COLUMNS = (*PRICE_COLUMNS, "volume", "vwap", "trade_count", "adj_close", "dividend", "split_ratio")
BAR_COLUMNS = ("ts", *VALUE_COLUMNS, "metadata")

_DICT_STR = pa.dictionary(pa.int32(), pa.string())

ARROW_SCHEMA = pa.schema(
    [
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        *(pa.field(name, _DICT_STR, nullable=False) for name in KEY_COLUMNS),
        pa.field("open", pa.float64()),
        pa.field("high", pa.float64()),
        pa.field("low", pa.float64()),
        pa.field("close", pa.float64()),
        pa.field("volume", pa.float64()),
        pa.field("vwap", pa.float64()),
        pa.field("trade_count", pa.int64()),
        pa.field("adj_close", pa.float64()),
        pa.field("dividend", pa.float64()),
        pa.field("split_ratio", pa.float64()),
        pa.field("metadata", pa.string()),
    ]
)

COLUMN_DOCS: Mapping[str, str] = {
    "ts": "bar start, UTC (microseconds)",
    "source": "provider the bars came from (polygon, yahoo, alpaca, ccxt, ingest…)",
    "symbol": "provider symbol (options: OCC-style, e.g. SPY240119C00470000)",
    "asset_type": "stock, option, crypto, forex, index, future",
    "quote": "quote currency (USD for US stocks, USDT for BTC/USDT)",
    "exchange": "venue when prices differ by venue (CCXT exchange id), else empty",
    "timeframe": "minute, hour or day",
    "adjustment": "price adjustment applied by the provider: raw, split or all",
    "open": "float64", "high": "float64", "low": "float64", "close": "float64",
    "volume": "float64, as sent (fractional for crypto)",
    "vwap": "volume-weighted average price, when provided",
    "trade_count": "number of trades in the bar, when provided",
    "adj_close": "adjusted close (Yahoo's Adj Close), when provided",
    "dividend": "cash dividend paid on this bar's date, when provided",
    "split_ratio": "split ratio effective on this bar's date (2.0 = 2-for-1), when provided",
    "metadata": "JSON object with provider fields that have no column (e.g. Polygon's otc flag)",
}


def empty_bars() -> pd.DataFrame:
    """A zero-row frame with the bar columns and dtypes, indexed by ``ts``."""
    frame = pd.DataFrame({name: pd.Series(dtype=_pandas_dtype(name)) for name in BAR_COLUMNS[1:]})
    frame.index = pd.DatetimeIndex([], tz="UTC", name="ts").as_unit("us")
    return frame


def _pandas_dtype(name: str) -> Any:
    if name == "trade_count":
        return "Int64"
    if name == "metadata":
        return "object"
    return "float64"


def normalize_bars(frame: pd.DataFrame) -> pd.DataFrame:
    """Check and coerce bars into the value columns of the schema, sorted by ``ts``, unique ``ts``.

    ``frame`` has a ``ts`` column or a datetime index (naive times are in Lumibot's default time zone,
    New York, as Lumibot reads them) and at least
    ``open high low close``; ``volume`` defaults to 0, every other value column to null.
    Raises :class:`BarsValidationError` with the reason when the frame cannot be stored.
    Duplicate timestamps keep the last row, as a provider's later correction would.
    """
    if not isinstance(frame, pd.DataFrame):
        raise BarsValidationError(f"Bars must be a pandas DataFrame, not {type(frame).__name__}.")
    ready = _already_normal(frame)
    if ready is not None:
        return ready
    data = frame.copy()
    if "ts" not in data.columns:
        if not isinstance(data.index, pd.DatetimeIndex):
            raise BarsValidationError("Bars need a 'ts' column or a DatetimeIndex with the bar start times.")
        data = data.rename_axis("ts").reset_index()
    try:
        ts = _bar_times(data["ts"])
    except (TypeError, ValueError) as exc:
        raise BarsValidationError(f"Column 'ts' does not hold times: {exc}") from exc
    if ts.isna().any():
        raise BarsValidationError(f"{int(ts.isna().sum())} bar(s) have no timestamp.")
    data["ts"] = ts.dt.as_unit("us")

    missing = [c for c in PRICE_COLUMNS if c not in data.columns]
    if missing:
        raise BarsValidationError(f"Bars are missing price column(s) {missing}; got {list(frame.columns)}.")
    for name in VALUE_COLUMNS:
        if name not in data.columns:
            data[name] = 0.0 if name == "volume" else pd.NA
        try:
            if name == "trade_count":
                data[name] = pd.to_numeric(data[name], errors="raise").astype("Int64")
            else:
                data[name] = pd.to_numeric(data[name], errors="raise").astype("float64")
        except (TypeError, ValueError) as exc:
            raise BarsValidationError(f"Column {name!r} is not numeric: {exc}") from exc
    prices = data[list(PRICE_COLUMNS)].to_numpy()
    if not np.isfinite(prices).all():
        bad = int((~np.isfinite(prices)).any(axis=1).sum())
        raise BarsValidationError(f"{bad} bar(s) have a missing or infinite open/high/low/close.")
    if "metadata" not in data.columns:
        data["metadata"] = None
    data = data[list(BAR_COLUMNS)]
    if not _strictly_increasing(data["ts"].to_numpy()):
        data = data.sort_values("ts", kind="stable").drop_duplicates("ts", keep="last")
    return data.set_index("ts")


def _strictly_increasing(values: np.ndarray) -> bool:
    """Sorted with no repeated value (one vectorised pass; the same as monotonic and unique)."""
    return len(values) < 2 or bool((values[1:] > values[:-1]).all())


def _already_normal(frame: pd.DataFrame) -> pd.DataFrame | None:
    """``frame`` itself (its columns, no copy) when it already is what :func:`normalize_bars` makes, else None.

    That is: a UTC ``DatetimeIndex``, strictly increasing, and exactly the value columns with their dtypes
    (``metadata`` optional) and finite prices. Callers that build bars themselves (ingest, the sources'
    answer parsers) hand such frames over; normalizing them again would copy every column several times.
    """
    index = frame.index
    if not isinstance(index, pd.DatetimeIndex) or str(index.tz) != "UTC" or "ts" in frame.columns:
        return None
    extra = set(frame.columns) - {*VALUE_COLUMNS, "metadata"}
    if extra or not set(VALUE_COLUMNS) <= set(frame.columns):
        return None
    for name in VALUE_COLUMNS:
        dtype = frame[name].dtype
        if dtype != (pd.Int64Dtype() if name == "trade_count" else np.dtype("float64")):
            return None
    if not all(np.isfinite(frame[name].to_numpy()).all() for name in PRICE_COLUMNS):
        return None
    micros = pd.DatetimeIndex(index.as_unit("us").asi8.view("datetime64[us]"), name="ts").tz_localize("UTC")
    if not _strictly_increasing(micros.asi8):
        return None
    columns: dict[str, Any] = {name: frame[name].to_numpy() if name != "trade_count" else frame[name].array
                               for name in VALUE_COLUMNS}  # (views of the same values)
    metadata = frame["metadata"].to_numpy() if "metadata" in frame.columns else np.full(len(frame), None, dtype=object)
    # (a Series of dtype object: pandas takes it as it is; an object array would be scanned for a better dtype)
    columns["metadata"] = pd.Series(metadata, index=micros, dtype=object, copy=False)
    return pd.DataFrame(columns, index=micros, copy=False)


def _bar_times(column: pd.Series) -> pd.Series:
    """Bar start times in UTC: aware values converted, naive ones taken in Lumibot's default time zone."""
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return column.dt.tz_convert("UTC")
    if not pd.api.types.is_datetime64_any_dtype(column.dtype):
        try:
            parsed = pd.to_datetime(column)
        except (TypeError, ValueError):  # offsets that differ from row to row
            return pd.to_datetime(column, utc=True)
        if isinstance(parsed.dtype, pd.DatetimeTZDtype):
            return parsed.dt.tz_convert("UTC")
        column = parsed
    zone = default_timezone()
    try:
        local = column.dt.tz_localize(zone, ambiguous="infer", nonexistent="shift_forward")
    except (TypeError, ValueError):  # an ambiguous hour that order cannot settle: the earlier reading
        local = column.dt.tz_localize(zone, ambiguous=np.ones(len(column), dtype=bool), nonexistent="shift_forward")
    return local.dt.tz_convert("UTC")


def to_arrow(bars: pd.DataFrame, key: SeriesKey) -> pa.Table:
    """Normalized bars (from :func:`normalize_bars`) plus the key columns, as an Arrow table."""
    n, pool = len(bars), arrow_pool()  # (the package's pool: see lumibot_duckdb.store.memory)
    index = bars.index if bars.index.unit == "us" else bars.index.as_unit("us")
    micros = pa.array(index.tz_convert("UTC").asi8 if index.tz is not None else index.asi8, type=pa.int64())
    columns: dict[str, Any] = {"ts": micros.view(pa.timestamp("us", tz="UTC"))}  # (UTC microseconds, no copy)
    first = pa.array(np.zeros(n, dtype=np.int32))  # (every row of a key column holds its one value)
    for name, value in key.as_dict().items():
        columns[name] = pa.DictionaryArray.from_arrays(first, pa.array([value]), safe=False)  # (index 0: valid)
    for name in VALUE_COLUMNS:
        series = bars[name]
        if name == "trade_count":
            columns[name] = pa.array(series.astype("Int64"), type=pa.int64(), from_pandas=True, memory_pool=pool)
        else:
            columns[name] = _floats(series.to_numpy() if series.dtype == np.dtype("float64") else
                                    series.to_numpy(dtype="float64", na_value=np.nan))
    metadata = bars["metadata"]
    columns["metadata"] = (pa.nulls(n, pa.string(), memory_pool=pool) if metadata.isna().all() else
                           pa.array(metadata.astype(object).where(metadata.notna(), None), type=pa.string(),
                                    memory_pool=pool))
    return pa.Table.from_pydict(columns, schema=ARROW_SCHEMA)


def _floats(values: np.ndarray) -> pa.Array:
    """float64 values as Arrow with NaN as null, as ``pa.array(values, from_pandas=True)`` makes them (a column
    without NaN is taken as it is, one of NaN only is all null: the usual columns, each without a second pass)."""
    nan = np.isnan(values)
    if not nan.any():
        return pa.array(values, type=pa.float64())  # (no copy)
    if nan.all():
        return pa.nulls(len(values), pa.float64(), memory_pool=arrow_pool())
    return pa.array(values, type=pa.float64(), from_pandas=True, memory_pool=arrow_pool())

