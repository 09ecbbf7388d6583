"""Lumibot ``Data`` made cheap to build and to look up, for windowed sources (Polygon today).

A window is a ``Data`` over a few weeks of bars, built again at every roll, so what Lumibot does
once per backtest it does here once per roll. These are the same computations with the same
answers (tested against Lumibot's own), minus per-bar Python objects.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd
from lumibot.constants import LUMIBOT_DEFAULT_PYTZ
from lumibot.entities import Data
from lumibot.entities import data as _data_module
from lumibot.entities.dataline import Dataline

from lumibot_duckdb.sources.window import frame_bytes

_PREPARE_LOCK = threading.Lock()


class WindowData(Data):
    """Lumibot's ``Data`` over a window, cheaper to build (windows are built again at every roll).

    * ``set_date_format`` skips ``pd.to_datetime`` over an index that already is a zoned
      ``DatetimeIndex``: it returns the same index, after pandas has turned 10,000 of its entries into
      ``Timestamp`` objects to decide whether to cache them (about 10 ms per build). Any other index
      takes Lumibot's own path.
    * ``to_datalines``: see :func:`prepare`.
    * ``get_iter_count`` finds the bar at the clock by binary search. Lumibot's own finds it in a
      dict of every timestamp for frames up to 50,000 rows; above that (and for windows, which
      skip the dict, see :func:`prepare`) it walks a cursor forward one bar at a time in Python:
      a day of minute bars, up to 960 steps and ~150 µs, at the first request of every clock step.
      Same answer: the last bar at or before the clock, from the clock as Lumibot converts it.

    Methods only, no state of its own: a ``Data`` Lumibot built over a window becomes one in place.
    """

    _iter_count_last_dt_key: Any  # Lumibot's own lookup memo (set in Data.__init__)
    _iter_count_cursor_i: Any
    _iter_count_cursor_ns: Any

    def set_date_format(self, df: pd.DataFrame) -> pd.DataFrame:
        index = df.index
        if not isinstance(index, pd.DatetimeIndex) or index.tz is None:
            return super().set_date_format(df)
        index.name = "datetime"
        if index.tzinfo != LUMIBOT_DEFAULT_PYTZ:
            df.index = index.tz_convert(LUMIBOT_DEFAULT_PYTZ)
        return df

    def get_iter_count(self, dt: Any) -> int:
        index_ns = getattr(self, "_index_values_ns", None)
        if index_ns is None or self.iter_index_dict:  # not prepared as a window: Lumibot's way
            return super().get_iter_count(dt)
        dt_key = dt.to_pydatetime() if isinstance(dt, pd.Timestamp) else dt
        if dt_key == self._iter_count_last_dt_key and self._iter_count_cursor_i is not None:
            return int(self._iter_count_cursor_i)
        try:
            dt_ns = int(dt_key.timestamp() * 1_000_000_000)  # exactly as Lumibot computes it
        except Exception:  # noqa: BLE001 - Lumibot falls back to pandas for such a clock
            return super().get_iter_count(dt)
        i = int(np.searchsorted(index_ns, dt_ns, side="right")) - 1
        self._iter_count_cursor_ns, self._iter_count_cursor_i, self._iter_count_last_dt_key = dt_ns, i, dt_key
        return i

    def to_datalines(self) -> None:
        """``Data.to_datalines`` (Lumibot 4.6) with the ``datetime`` line read from the index on demand."""
        line = IndexLine(self.df.index)
        self.datalines["datetime"] = Dataline(self.asset, "datetime", line, self.df.index.dtype)
        self.datetime = line
        for column in self.df.columns:
            values = self.df[column].to_numpy()
            self.datalines[column] = Dataline(self.asset, column, values, self.df[column].dtype)
            setattr(self, column, values)
        self._quote_required_cols_present = all(c in self.datalines for c in _data_module._DATA_REQUIRED_PRICE_COLS)
        self._quote_missing_cols = [c for c in _data_module._DATA_QUOTE_COLS if c not in self.datalines]
        self._quote_presence_logged = False


def prepare(data: Data) -> None:
    """Finish a window's ``Data`` now (Lumibot would on first use) without two per-bar Python objects.

    * Lumibot keeps a dict of every timestamp for frames up to 50,000 rows and looks larger frames
      up by binary search instead; windows take the second way, which answers the same.
    * Its ``datetime`` data line is the index as an object array (one ``Timestamp`` object per bar,
      ~20x the bar's own size, and most of the cost of building a ``Data``). Lumibot only ever reads
      single elements of it, so a window's line reads them from the index on demand.
    """
    if getattr(data, "iter_index_dict", None) is not None:
        return
    if type(data) is Data:  # built by Lumibot from the seam's window: the same object, with WindowData's methods
        data.__class__ = WindowData
    if not isinstance(data, WindowData):
        return
    with _PREPARE_LOCK:
        saved = _data_module._ITER_INDEX_DICT_MAX_ROWS
        _data_module._ITER_INDEX_DICT_MAX_ROWS = -1
        try:
            data.repair_times_and_fill(data.df.index)
        finally:
            _data_module._ITER_INDEX_DICT_MAX_ROWS = saved


class IndexLine:
    """Reads like the object array of a ``DatetimeIndex`` (``line[i]`` is a ``Timestamp``), holds nothing.

    The last element read is kept: the calls of one clock step read the same bar again and again.
    """

    __slots__ = ("_last", "index")

    def __init__(self, index: pd.DatetimeIndex) -> None:
        self.index = index
        self._last: tuple[Any, Any] = (None, None)  # (position, value), one attribute: safe across threads

    def __getitem__(self, position: Any) -> Any:
        last = self._last
        if position.__class__ is int and position == last[0]:
            return last[1]
        value = self.index[position]
        if position.__class__ is int:
            self._last = (position, value)
        return value

    def __len__(self) -> int:
        return len(self.index)


def data_bytes(data: Data) -> int:
    """Bytes a ``Data`` holds: its frame (the per-column arrays and the bars view share its memory)."""
    return frame_bytes(data.df)
