"""The one set of rules a bar must pass to be stored: provider answers and ingested files alike.

A bar is refused when

=================  ================================================================================
problem            the bar has...
=================  ================================================================================
``missing``        no open, high, low, close or volume (NaN)
``infinite``       an infinite open, high, low, close, volume or trade count
``negative``       a negative volume or trade count, or a negative price where its asset type has none
``zero_price``     a price of exactly zero where its asset type's prices are positive
``ohlc``           a high below its open, close or low, or a low above its open, close or high
                   (within a relative 1e-9, for prices rounded differently by the provider)
``future``         a start after now (files only: providers are never asked past their settled horizon)
=================  ================================================================================

**Per asset type** (:data:`PRICE_RULES`): prices of stocks, options, crypto, forex and indexes are
positive (a share, a contract premium, a coin, an exchange rate or an index level at or below zero is a
data error); prices of futures, continuous futures, crypto futures and multi-leg instruments (spreads) may
be zero or negative (WTI crude futures settled at -37.63 USD on 2020-04-20; a calendar spread is a
difference of two prices). A type not listed here (a source's own, e.g. ``prediction_contract``) is held to
positive prices: pass ``asset_type`` of a listed type, or add it here, for instruments that may go negative.

:func:`bar_problems` (whole frames, a sentence) is what the fetch path of every data source checks before
anything is stored; :func:`row_problems` (per-row masks) is what ``ingest`` counts, reports and repairs.
Both apply the same rules, in this one place.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

PRICES = ("open", "high", "low", "close")


@dataclass(frozen=True)
class PriceRule:
    """What prices of one asset type may be."""

    positive: bool
    reason: str


_POSITIVE = PriceRule(True, "a share, premium, coin, exchange rate or index level is never at or below zero")
_ANY_SIGN = PriceRule(False, "futures and spreads can trade at or below zero (WTI crude settled at -37.63 on "
                             "2020-04-20; a spread is a difference of prices)")
PRICE_RULES: Mapping[str, PriceRule] = {
    "stock": _POSITIVE, "option": _POSITIVE, "crypto": _POSITIVE, "forex": _POSITIVE, "index": _POSITIVE,
    "future": _ANY_SIGN, "cont_future": _ANY_SIGN, "crypto_future": _ANY_SIGN, "multileg": _ANY_SIGN,
    "spread": _ANY_SIGN,
}
"""Price rules by asset type (Lumibot's ``Asset.AssetType`` values, plus ``spread``)."""
DEFAULT_RULE = _POSITIVE
"""The rule of an asset type not in :data:`PRICE_RULES`."""

PROBLEMS: Mapping[str, str] = {
    "missing": "a missing price or volume",
    "infinite": "an infinite price, volume or trade count",
    "negative": "a negative price, volume or trade count",
    "zero_price": "a price of zero",
    "ohlc": "a high/low that does not bracket open and close",
    "future": "a start in the future",
}
"""Each problem of :func:`row_problems`, in words (a bar is counted under the first that applies)."""

_TOLERANCE = 1e-9


def price_rule(asset_type: str) -> PriceRule:
    """The :class:`PriceRule` of ``asset_type`` (``"stock"``, ``"future"``...)."""
    return PRICE_RULES.get(str(asset_type or "stock").strip().lower(), DEFAULT_RULE)


def row_problems(open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray,
                 trade_count: np.ndarray | None = None, *, asset_type: str = "stock",
                 starts: np.ndarray | None = None, now: np.datetime64 | None = None,
                 skip: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per problem of :data:`PROBLEMS`, a boolean mask of the bars that have it (each bar under its first
    problem only; bars in ``skip`` are not judged). ``starts``/``now`` (datetime64) enable ``future``."""
    o, h, lo, c, v = (np.asarray(a, dtype="float64") for a in (open_, high, low, close, volume))
    if trade_count is None:
        count = np.full(len(o), np.nan)
    elif isinstance(trade_count, np.ndarray) and trade_count.dtype.kind in "fiu":  # (NaN: no count)
        count = trade_count.astype("float64", copy=False)
    else:  # nullable integers, objects...: pandas' coercion (slower: ~85 ms a million rows)
        count = np.asarray(pd.array(trade_count, dtype="Float64").to_numpy(dtype="float64", na_value=np.nan))
    rule = price_rule(asset_type)
    if _all_sound(o, h, lo, c, v, count, rule, starts, now, skip):  # (the usual block: a quarter of the passes)
        return {name: np.zeros(len(o), dtype=bool) for name in PROBLEMS}
    return _judged(o, h, lo, c, v, count, rule, starts, now, skip)


def _judged(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray, count: np.ndarray,
            rule: PriceRule, starts: np.ndarray | None, now: np.datetime64 | None,
            skip: np.ndarray | None) -> dict[str, np.ndarray]:
    """:func:`row_problems` rule by rule (float64 columns, counts NaN where there are none)."""
    taken = np.zeros(len(o), dtype=bool) if skip is None else np.asarray(skip, dtype=bool).copy()
    found: dict[str, np.ndarray] = {}

    def flag(name: str, mask: np.ndarray) -> None:
        mask = mask & ~taken
        found[name] = mask
        taken[:] |= mask

    prices = (o, h, lo, c)

    def any_price(test: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """Rows where ``test`` holds for one of the four prices (column by column: no 4-row copy of the block)."""
        mask = test(o)
        for values in prices[1:]:
            mask |= test(values)
        return mask

    with np.errstate(invalid="ignore"):
        flag("missing", any_price(np.isnan) | np.isnan(v))
        flag("infinite", any_price(np.isinf) | np.isinf(v) | np.isinf(count))
        negative = (v < 0) | (count < 0)
        if rule.positive:
            negative |= any_price(lambda x: x < 0)
        flag("negative", negative)
        flag("zero_price", any_price(lambda x: x == 0) if rule.positive else np.zeros(len(o), dtype=bool))
        tol = _TOLERANCE * np.maximum(np.abs(h), np.abs(lo))
        flag("ohlc", (h + tol < np.maximum(o, c)) | (lo - tol > np.minimum(o, c)) | (h < lo))
        if starts is not None and now is not None:
            flag("future", np.asarray(starts) > now)
        else:
            found["future"] = np.zeros(len(o), dtype=bool)
    return found


def _all_sound(o: np.ndarray, h: np.ndarray, lo: np.ndarray, c: np.ndarray, v: np.ndarray, count: np.ndarray,
               rule: PriceRule, starts: np.ndarray | None, now: np.datetime64 | None, skip: np.ndarray | None) -> bool:
    """Whether no bar (outside ``skip``) has any problem, in a few passes: ``low <= open, close <= high`` with a
    finite high and a low above zero (a finite low where prices may be negative), a finite volume at or above
    zero, a trade count that is NaN or finite and not negative, no start after ``now``. Every comparison with
    NaN is false, so a bar this passes has none of the problems of :func:`row_problems`, whose rules decide
    whenever one bar does not pass."""
    with np.errstate(invalid="ignore"):
        sound = (lo > 0) if rule.positive else (lo > -np.inf)
        for test in ((lo <= o), (lo <= c), (o <= h), (c <= h), (h < np.inf), (v >= 0), (v < np.inf)):
            sound &= test
        if not np.isnan(count).all():
            sound &= ~((count < 0) | (count == np.inf))
        if starts is not None and now is not None:
            sound &= ~(np.asarray(starts) > now)
    if skip is not None:
        sound |= np.asarray(skip, dtype=bool)
    return bool(sound.all())


def bar_problems(bars: pd.DataFrame, *, asset_type: str = "stock") -> str:
    """What is wrong with a frame of bars (columns of :func:`lumibot_duckdb.store.schema.normalize_bars`), in a
    sentence naming the problem, how many bars have it and the first such bar; empty if nothing is.

    A ``volume`` column that is absent counts as 0 (as the store stores it).
    """
    if bars.empty:
        return ""
    absent = [c for c in PRICES if c not in bars.columns]
    if absent:
        return f"bars without {', '.join(absent)}"
    volume = bars["volume"].to_numpy(dtype="float64", na_value=np.nan) if "volume" in bars.columns \
        else np.zeros(len(bars))
    counts = bars["trade_count"] if "trade_count" in bars.columns else None
    values = [bars[c].to_numpy(dtype="float64", na_value=np.nan) for c in PRICES]
    found = row_problems(values[0], values[1], values[2], values[3], volume, counts, asset_type=asset_type)
    for name, mask in found.items():
        if mask.any():
            first = int(np.flatnonzero(mask)[0])
            example = {"t": str(bars.index[first]), **{c: float(bars[c].iloc[first]) for c in PRICES}}
            if "volume" in bars.columns:
                example["volume"] = float(volume[first])
            words = PROBLEMS[name]
            if name == "negative":
                prices = np.stack(values)[:, first]
                words = "a negative price" if (prices < 0).any() else "a negative volume or trade count"
            if name in ("zero_price", "negative") and words.endswith("price"):
                words += f" (impossible for a {asset_type}: {price_rule(asset_type).reason})"
            return f"{int(mask.sum())} bar(s) with {words} (e.g. {example})"
    return ""
