"""What a user names → what the store holds: series names and times as people write them.

One resolver for every way in — the Python API (:meth:`DuckDBDataStorage.get_historical_prices`,
:meth:`~DuckDBDataStorage.find_series`, the analytics functions, ``pandas_data``, ``export``), the
command line and the SQL macros:

* **A series name** (:class:`SeriesName`) is a symbol and whichever of source, timeframe, asset type,
  quote, exchange and adjustment were given; the rest match anything. Timeframes take their aliases
  (``1d``, ``1D``, ``day``, ``daily``; ``1m``, ``minute``; ``1h``, ``hour``); ``"BTC/USDT"`` names
  the pair whether it is stored as symbol ``BTC`` with quote ``USDT`` or as ``BTC/USDT``.
* **Resolving** a name against what the store holds gives the one series it means
  (:func:`resolve`), or every series it matches (:func:`matching`). A name that matches nothing is
  a :class:`~lumibot_duckdb.errors.SeriesNotFoundError` saying what the store holds for that
  symbol (the same symbol in another case, with another quote, adjustment, timeframe or source)
  and which option to change — never an empty answer. A held series over a range without bars is
  an empty answer, rightly.
* **Times** (:func:`parse_time`): aware times are converted to UTC; naive times and plain dates are
  in Lumibot's default time zone (:func:`lumibot_duckdb.config.default_timezone`, New York), the
  one rule of the whole package.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from lumibot_duckdb.config import default_timezone
from lumibot_duckdb.errors import ConfigError, SeriesNotFoundError, current_surface, spell
from lumibot_duckdb.store.coverage import SeriesKey, canonical_timeframe, parse_time

__all__ = ["SeriesName", "matching", "parse_time", "resolve", "show_time"]

_FIELDS = ("source", "timeframe", "asset_type", "quote", "exchange", "adjustment")
_LISTED = 8


# -- times -------------------------------------------------------------------------------------------
def show_time(value: Any, /, *, tz: str | None = None) -> str:
    """An instant as people read it, in ``tz`` (default Lumibot's default time zone): ``2019-01-02`` for
    a local midnight (a daily bar), else ``2020-01-06 09:31-05:00`` (minutes, seconds if any, and the
    offset, so the text means one instant and reads back through :func:`parse_time`)."""
    local = pd.Timestamp(value).tz_convert(tz or default_timezone())
    if local == local.normalize():
        return local.strftime("%Y-%m-%d")
    text = local.strftime("%Y-%m-%d %H:%M:%S" if local.second or local.microsecond else "%Y-%m-%d %H:%M")
    offset = local.strftime("%z")
    return f"{text}{offset[:3]}:{offset[3:]}"


def option_symbol(underlying: str, expiration: Any, right: str, strike: float) -> str:
    """OCC-style contract symbol: ``SPY240119C00470000`` (root, YYMMDD, C/P, strike x 1000 in 8 digits)."""
    side = str(right).strip().upper()[:1]
    if side not in ("C", "P"):
        raise ValueError(f"Option right must be CALL or PUT, not {right!r}.")
    return f"{underlying}{expiration:%y%m%d}{side}{round(float(strike) * 1000):08d}"


# -- series names ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesName:
    """What a user named: a symbol (None: any) and the key fields given (None: any)."""

    symbol: str | None = None
    source: str | None = None
    timeframe: str | None = None
    asset_type: str | None = None
    quote: str | None = None
    exchange: str | None = None
    adjustment: str | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.symbol is not None:
            set_(self, "symbol", str(self.symbol).strip())
            if not self.symbol:
                raise ConfigError("A symbol must not be empty.")
        for field in ("source", "timeframe", "asset_type", "adjustment"):  # "" names nothing: any
            if getattr(self, field) is not None and not str(getattr(self, field)).strip():
                set_(self, field, None)
        for field in ("source", "asset_type", "exchange", "adjustment"):
            value = getattr(self, field)
            if value is not None:
                set_(self, field, str(value).strip().lower())
        if self.quote is not None:
            set_(self, "quote", str(self.quote).strip().upper())
        if self.timeframe is not None:
            set_(self, "timeframe", canonical_timeframe(self.timeframe))

    @classmethod
    def of(cls, asset: Any, /, *, source: str | None = None, timeframe: str | None = None, quote: Any = None,
           exchange: str | None = None, adjustment: str | None = None,
           asset_type: str | None = None) -> SeriesName:
        """The name a caller gives: a symbol (``"SPY"``, ``"BTC/USDT"``), a Lumibot ``Asset`` (its symbol and
        asset type; options by their contract symbol), a ``(base, quote)`` tuple, or a :class:`SeriesKey`
        (every field given)."""
        if isinstance(asset, SeriesKey):
            return cls(**asset.as_dict())
        if isinstance(asset, SeriesName):
            return asset
        if isinstance(asset, tuple) and len(asset) == 2:
            asset, quote = asset
        symbol = getattr(asset, "symbol", asset)
        kind = getattr(asset, "asset_type", None)
        if kind is not None:
            asset_type = asset_type or str(kind)
            if str(kind) == "option" and getattr(asset, "expiration", None) is not None:
                symbol = option_symbol(symbol, asset.expiration, asset.right, asset.strike)
        quote_symbol = getattr(quote, "symbol", quote)
        return cls(symbol=None if symbol is None else str(symbol), source=source, timeframe=timeframe,
                   asset_type=asset_type, quote=quote_symbol or None, exchange=exchange, adjustment=adjustment)

    def given(self) -> dict[str, str]:
        """The key fields named (symbol excluded)."""
        return {f: getattr(self, f) for f in _FIELDS if getattr(self, f) is not None}

    def matches(self, key: SeriesKey) -> bool:
        if self.symbol is not None and not _same_symbol(self.symbol, key, exact=True):
            return False
        if self.quote is not None and key.quote != self.quote and not (
                "/" in key.symbol and key.symbol.split("/", 1)[1].upper() == self.quote):
            return False
        return all(getattr(key, f) == v for f, v in self.given().items() if f != "quote")

    def __str__(self) -> str:
        given = self.given()
        fields = ", ".join(f"{f.replace('_', ' ')} {v}" for f, v in given.items())
        symbol = self.symbol if self.symbol is not None else "(any symbol)"
        return f"{symbol} ({fields})" if fields else symbol


def _same_symbol(symbol: str, key: SeriesKey, *, exact: bool) -> bool:
    """``symbol`` names ``key``'s symbol: ``SPY``, or ``BTC/USDT`` for symbol ``BTC`` with quote ``USDT``."""
    fold = (lambda s: s) if exact else str.upper
    if fold(key.symbol) == fold(symbol):
        return True
    base, slash, quote = symbol.partition("/")
    return bool(slash) and fold(key.symbol) == fold(base) and key.quote == quote.upper()


# -- resolving -----------------------------------------------------------------------------------------
def matching(name: SeriesName, held: Iterable[SeriesKey], /, *, where: str = "the store",
             on: str | None = None) -> list[SeriesKey]:
    """Every held series ``name`` matches (at least one), or :class:`SeriesNotFoundError` saying what is held."""
    keys = sorted(set(held))
    found = [k for k in keys if name.matches(k)]
    if not found:
        raise not_found(name, keys, where=where, on=on)
    return found


def resolve(name: SeriesName, held: Iterable[SeriesKey], /, *, where: str = "the store",
            on: str | None = None) -> SeriesKey:
    """The one held series ``name`` means; :class:`SeriesNotFoundError` when it means none, and a
    :class:`ConfigError` naming the option that tells them apart when it means several."""
    found = matching(name, held, where=where, on=on)
    if len(found) == 1:
        return found[0]
    field = next(f for f in ("source", "timeframe", "adjustment", "quote", "asset_type", "exchange", "symbol")
                 if len({getattr(k, f) for k in found}) > 1)
    choices = " or ".join(spell(field, v, on=on) for v in sorted({getattr(k, field) for k in found}))
    raise ConfigError(f"{name} names {len(found)} series of {where}: {_listing(found)}. Pass {choices}, "
                      "to say which.")


def not_found(name: SeriesName, held: Sequence[SeriesKey], /, *, where: str = "the store",
              on: str | None = None) -> SeriesNotFoundError:
    """The error for a name that matches nothing held: what is held for that symbol, and what to pass."""
    surface = on or current_surface()
    what = f"{where[:1].upper()}{where[1:]} holds no series {name}."
    if not held:
        return SeriesNotFoundError(f"{what} It holds no series at all: {_how_to_load(surface)}", wanted=name)
    if name.symbol is None:  # only the other fields were given (SQL: every symbol of a timeframe)
        near = [k for k in held if all(getattr(k, f) == v for f, v in name.given().items() if f == "source")]
        return SeriesNotFoundError(f"{what} {_other_values(name, near or list(held), on=on)}", wanted=name,
                                   near=near)
    near = sorted((k for k in held if _same_symbol(name.symbol, k, exact=False)),
                  key=lambda k: (len(_differences(name, k)), str(k)))
    if near:
        best = _differences(name, near[0])
        hints = [f"write {near[0].symbol!r}"] if "symbol" in best else []
        options = [spell(f, getattr(near[0], f), on=on) for f in best if f != "symbol"]
        hints += [f"pass {', '.join(options)}"] if options else []
        lead = f"Symbols are case-sensitive: it holds {near[0].symbol}" if "symbol" in best else \
            f"For {near[0].symbol} it holds"
        todo = " and ".join(hints)
        return SeriesNotFoundError(f"{what} {lead}: {_listing(near)}. {todo[0].upper()}{todo[1:]}.",
                                   wanted=name, near=near)
    symbols = sorted({k.symbol for k in held})
    import difflib

    close = difflib.get_close_matches(name.symbol.upper(), [s.upper() for s in symbols], n=3, cutoff=0.6)
    by_upper = {s.upper(): s for s in symbols}
    guess = f" Did you mean {' or '.join(by_upper[c] for c in close)}?" if close else ""
    shown = ", ".join(symbols[:_LISTED]) + (f", … ({len(symbols)} in all)" if len(symbols) > _LISTED else "")
    return SeriesNotFoundError(f"{what} It holds {len(symbols)} symbol(s): {shown}.{guess} "
                               f"{_how_to_list(surface)}", wanted=name)


def _differences(name: SeriesName, key: SeriesKey) -> list[str]:
    """The named fields ``key`` differs in (``symbol`` when only its case differs)."""
    fields = ["symbol"] if name.symbol is not None and not _same_symbol(name.symbol, key, exact=True) else []
    return fields + [f for f, v in name.given().items() if not SeriesName(**{f: v}).matches(key)]


def _other_values(name: SeriesName, near: list[SeriesKey], *, on: str | None) -> str:
    parts = []
    for field, value in name.given().items():
        values = sorted({getattr(k, field) for k in near} - {value})
        if values:
            parts.append(f"{field.replace('_', ' ').capitalize()}s held: {', '.join(values)} (pass "
                         f"{' or '.join(spell(field, v, on=on) for v in values[:3])})")
    return "; ".join(parts) + "." if parts else ""


def _listing(keys: Sequence[SeriesKey]) -> str:
    shown = "; ".join(str(k) for k in keys[:_LISTED])
    return shown + (f"; … ({len(keys)} in all)" if len(keys) > _LISTED else "")


def _how_to_list(surface: str) -> str:
    return {"cli": "`lumibot-duckdb db-status` lists every series.",
            "sql": "SELECT * FROM symbols lists every series."}.get(surface, "store.series() lists every series.")


def _how_to_load(surface: str) -> str:
    if surface == "python":
        return "load bars with lumibot_duckdb.ingest.ingest(store, files), or run a backtest with use_duckdb=True."
    return "load bars with `lumibot-duckdb ingest FILE…`, or run a backtest with use_duckdb=True."
