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

from lumibot_duckdb.errors import ConfigError
from lumibot_duckdb.store import DuckDBDataStorage, SeriesKey, series_key
from lumibot_duckdb.store.coverage import canonical_timeframe, utc

__all__ = ["pandas_data"]

_COLUMNS = ["open", "high", "low", "close", "volume"]
_EARLIEST, _LATEST = "1677-09-22", "2262-04-11"


def pandas_data(
    store: DuckDBDataStorage | str | os.PathLike[str] | None,
    assets: Iterable[Any],
    /,
    *,
    timeframe: str = "day",
    source: str = "ingest",
    quote: str = "USD",
    adjustment: str = "raw",
    start: Any = None,
    end: Any = None,
    timezone: str = "America/New_York",
) -> list[Any]:
    """One Lumibot ``Data`` per asset, read from the store, for ``pandas_data=`` of a Lumibot backtest.

    ``assets``: symbols (``"SPY"``), Lumibot ``Asset`` objects (crypto included: its series is the
    one ingested with ``asset_type="crypto"``) or :class:`SeriesKey` objects. ``timeframe`` is
    ``"day"`` or ``"minute"`` (the bars Lumibot's ``PandasData`` trades on). ``start``/``end``
    (naive = UTC) limit the bars read; by default every stored bar is handed over. Bars are
    given to Lumibot with their index in ``timezone`` (Lumibot's own, New York, by default).
    Raises :class:`ConfigError` when a series is not in the store, naming what is there instead.
    """
    from lumibot.entities import Asset, Data

    step = canonical_timeframe(timeframe)
    if step not in ("day", "minute"):
        raise ConfigError(f"timeframe={timeframe!r}: Lumibot's PandasData trades on day or minute bars.")
    db = store if isinstance(store, DuckDBDataStorage) else DuckDBDataStorage(store)
    known = set(db.series())
    lo = utc(start if start is not None else _EARLIEST)
    hi = utc(end if end is not None else _LATEST)
    fiat = quote.upper() in ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD")
    quote_asset = Asset(quote.upper(), Asset.AssetType.FOREX if fiat else Asset.AssetType.CRYPTO)
    result = []
    for item in assets:
        key = item if isinstance(item, SeriesKey) else series_key(item, source, step, quote=quote,
                                                                  adjustment=adjustment)
        if key not in known:
            near = sorted(str(k) for k in known if k.symbol.upper() == key.symbol.upper())
            raise ConfigError(f"The store {db.root} holds no series {key}; "
                              + (f"for {key.symbol} it holds {', '.join(near)} (pass source=, timeframe=, "
                                 "quote= to match)." if near else
                                 f"ingest its bars first (lumibot-duckdb ingest FILE --store {db.root})."))
        bars = db.read(key, lo, hi, columns=_COLUMNS)
        if bars.empty:
            raise ConfigError(f"Series {key} has no bars between {lo} and {hi}.")
        frame = bars.copy()
        frame.index = bars.index.tz_convert(timezone).as_unit("ns")
        frame.index.name = "datetime"
        asset = item if isinstance(item, Asset) else Asset(key.symbol, key.asset_type)
        result.append(Data(asset, frame, timestep=step, quote=quote_asset))
    return result
