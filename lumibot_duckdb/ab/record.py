"""What a finished (or running) backtest is recorded by: its fills, its equity curve, the bars held at each fill.

All of it is read without asking the data source anything: fills from the broker's trade-event log,
the equity curve from the strategy's stats rows, and the bars around each fill from what the data
source already holds in memory at the moment of the fill (Lumibot's ``pandas_data`` ``Data`` objects
and ``_data_store`` frames, the same structures on both paths), so recording never changes what a
run does.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import pandas as pd

AROUND = 3
"""Bars kept on each side of a fill's time."""
MAX_RECORDED_FILLS = 2_000
"""Fills whose surrounding bars are recorded (the first ones; every fill is compared)."""
COLUMNS = ("open", "high", "low", "close", "volume")


def fills_of(strategy: Any) -> list[list[Any]]:
    """Every fill of a finished backtest: time, symbol, side, quantity, price."""
    log = strategy.broker._trade_event_log_df
    if log is None or log.empty:
        return []
    filled = log[log["status"].isin(["fill", "partial_fill"])]
    return [[str(t), str(s), str(side), float(q), float(p)] for t, s, side, q, p in
            zip(filled["time"], filled["symbol"], filled["side"], filled["filled_quantity"], filled["price"])]


def equity_of(strategy: Any) -> list[list[Any]]:
    """The portfolio value after each iteration: ``[time, value]`` rows (Lumibot's stats rows)."""
    rows = getattr(strategy, "_stats_list", None) or []
    curve = []
    for row in rows:
        when, value = row.get("datetime"), row.get("portfolio_value")
        if when is not None and value is not None:
            curve.append([str(pd.Timestamp(when)), float(value)])
    return curve


def held_bars(data_source: Any, symbol: str, when: Any, *, around: int = AROUND) -> list[dict[str, Any]]:
    """The bars of ``symbol`` the data source holds around ``when``: ``[{"held": where, "rows": [...]}]``.

    ``rows`` are ``[time, open, high, low, close, volume]``: the last ``around + 1`` bars at or
    before ``when`` and the ``around`` after it, from every in-memory frame of that symbol.
    """
    found: list[dict[str, Any]] = []
    seen: set[int] = set()
    stamp = pd.Timestamp(when)
    for attribute in ("pandas_data", "_data_store"):
        holder = getattr(data_source, attribute, None)
        if not isinstance(holder, dict):
            continue
        for key, value in list(holder.items()):
            if not _about(key, symbol) or id(value) in seen:  # (Lumibot may hold one Data in both)
                continue
            seen.add(id(value))
            frame = getattr(value, "df", value)
            if not isinstance(frame, pd.DataFrame) or frame.empty or not isinstance(frame.index, pd.DatetimeIndex):
                continue
            index = frame.index
            at = stamp
            if index.tz is None:
                at = stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp
            elif stamp.tzinfo is None:
                at = stamp.tz_localize(index.tz)
            stop = int(index.searchsorted(at, side="right"))
            chosen = frame.iloc[max(0, stop - around - 1):stop + around]
            columns = [c for c in COLUMNS if c in chosen.columns]
            rows = [[str(ts), *(_number(v) for v in values)]
                    for ts, values in zip(chosen.index, chosen[columns].itertuples(index=False, name=None))]
            timestep = getattr(value, "timestep", "")
            found.append({"held": f"{attribute}[{_label(key)}]" + (f" {timestep}" if timestep else ""),
                          "columns": ["time", *columns], "rows": rows})
    return found


def _about(key: Any, symbol: str) -> bool:
    if isinstance(key, tuple):
        return bool(key) and _about(key[0], symbol)
    if hasattr(key, "symbol"):
        return str(key.symbol).upper() == symbol.upper()
    if isinstance(key, str):
        upper, wanted = key.upper(), symbol.upper()
        return upper == wanted or upper.startswith((wanted + "/", wanted + "_", wanted + "-"))
    return False


def _label(key: Any) -> str:
    if isinstance(key, tuple):
        return "/".join(_label(k) for k in key)
    return str(getattr(key, "symbol", key))


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


@contextlib.contextmanager
def recording_fills() -> Iterator[list[dict[str, Any]]]:
    """Record, for every fill inside the block, the bars the broker's data source holds around it.

    Yields the list that fills up: one ``{"time", "symbol", "bars"}`` per fill, in the order of the
    broker's trade-event log (so item ``i`` belongs to fill ``i`` of :func:`fills_of`).
    """
    from lumibot.brokers.broker import Broker

    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    original = Broker._process_trade_event

    def process(self: Any, stored_order: Any, type_event: Any, *args: Any, **kwargs: Any) -> Any:
        if type_event in (Broker.FILLED_ORDER, Broker.PARTIALLY_FILLED_ORDER):
            with lock:
                if len(records) < MAX_RECORDED_FILLS:
                    try:
                        when = self.data_source.get_datetime()
                        symbol = str(getattr(stored_order.asset, "symbol", stored_order.asset))
                        records.append({"time": str(when), "symbol": symbol,
                                        "bars": held_bars(self.data_source, symbol, when)})
                    except Exception as exc:  # noqa: BLE001 - recording must never change the run
                        records.append({"time": "", "symbol": "", "bars": [], "error": repr(exc)})
        return original(self, stored_order, type_event, *args, **kwargs)

    Broker._process_trade_event = process
    try:
        yield records
    finally:
        Broker._process_trade_event = original
