"""Backtest offline from the store: stored series as Lumibot ``Data`` for its ``PandasDataBacktesting``.

No API key and no network: the bars come from the store (typically from files loaded with
:func:`lumibot_duckdb.ingest.load.ingest`) and go through Lumibot's own ``PandasData`` path::

    from lumibot.backtesting import PandasDataBacktesting
    from lumibot_duckdb import DuckDBDataStorage
    from lumibot_duckdb.ingest.load import ingest
    from lumibot_duckdb.sources.pandas_data import pandas_data

    store = DuckDBDataStorage("./bars")
    ingest(store, ["SPY_1d_2019.csv", "TLT_1d_2019.csv"])
    MyStrategy.backtest(PandasDataBacktesting, datetime(2019, 2, 1), datetime(2019, 12, 31),
                        pandas_data=pandas_data(store, ["SPY", "TLT"], timeframe="day"))
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from lumibot_duckdb.config import default_timezone
from lumibot_duckdb.errors import ConfigError
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey
from lumibot_duckdb.store.coverage import canonical_timeframe
from lumibot_duckdb.store.naming import parse_time, show_time

__all__ = ["pandas_data"]

_COLUMNS = ["open", "high", "low", "close", "volume"]
_EARLIEST, _LATEST = "1677-09-22", "2262-04-11"
_FIAT = ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD")


def pandas_data(
    store: DuckDBDataStorage | str | os.PathLike[str] | None,
    assets: Iterable[Any],
    /,
    *,
    timeframe: str = "day",
    source: str | None = None,
    quote: str | None = None,
    adjustment: str | None = None,
    start: Any = None,
    end: Any = None,
    timezone: str | None = None,
) -> list[Any]:
    """One Lumibot ``Data`` per asset, read from the store, for ``pandas_data=`` of a Lumibot backtest.

    ``assets``: symbols (``"SPY"``), Lumibot ``Asset`` objects (crypto included: its series is the
    one ingested with ``asset_type="crypto"``) or :class:`SeriesKey` objects. ``timeframe`` is
    ``"day"`` or ``"minute"`` (the bars Lumibot's ``PandasData`` trades on; aliases such as ``"1d"``
    work). ``source``, ``quote`` and ``adjustment`` pick among the series stored for a symbol (left
    out: the one there is). ``start``/``end`` (naive = Lumibot's default time zone, New York) limit
    the bars read; by default every stored bar is handed over. Bars are given to Lumibot with their
    index in ``timezone`` (default: Lumibot's own, New York). Raises
    :class:`~lumibot_duckdb.errors.SeriesNotFoundError` when a series is not in the store, naming
    what is there instead, and :class:`ConfigError` when a held series has no bar in the range.
    """
    from lumibot.entities import Asset, Data

    step = canonical_timeframe(timeframe)
    if step not in ("day", "minute"):
        raise ConfigError(f"timeframe={timeframe!r}: Lumibot's PandasData trades on day or minute bars.")
    db = store if isinstance(store, DuckDBDataStorage) else DuckDBDataStorage(store)
    lo = parse_time(start if start is not None else _EARLIEST)
    hi = parse_time(end if end is not None else _LATEST)
    zone = timezone or default_timezone()
    result = []
    for item in assets:
        key = db.find_series(item) if isinstance(item, SeriesKey) else db.find_series(
            item, source=source, timeframe=step, quote=quote, adjustment=adjustment)
        bars = db.read(key, lo, hi, columns=_COLUMNS)
        if bars.empty:
            covered = db.coverage(key)
            raise ConfigError(f"Series {key} has no bar from {show_time(lo)} to {show_time(hi)}; it covers "
                              f"{show_time(covered[0].start)} to {show_time(covered[-1].end)} (exclusive).")
        frame = bars.copy()
        frame.index = bars.index.tz_convert(zone).as_unit("ns")
        frame.index.name = "datetime"
        asset = item if isinstance(item, Asset) else Asset(key.symbol, key.asset_type)
        quote_symbol = key.quote or "USD"
        quote_asset = Asset(quote_symbol, Asset.AssetType.FOREX if quote_symbol in _FIAT else Asset.AssetType.CRYPTO)
        result.append(Data(asset, frame, timestep=step, quote=quote_asset))
    return result
