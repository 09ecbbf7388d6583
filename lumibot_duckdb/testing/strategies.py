"""Four small Lumibot strategies the A/B harness runs on both data paths.

They exercise what differs between data paths: daily and minute history requests, several
symbols per iteration, ``get_last_price`` for sizing, and market orders filled by the broker
from the data source's bars.
"""

from __future__ import annotations

from typing import Any

from lumibot.entities import Asset
from lumibot.strategies import Strategy


class _Assets:
    """Symbols → Lumibot assets: stocks by default; ``asset_type="crypto"`` and ``quote`` in the parameters
    make every symbol a crypto base asset priced in ``quote`` (e.g. BTC in USDT on CCXT)."""

    parameters: dict[str, Any]

    def asset(self, symbol: str) -> Asset:
        return Asset(symbol, self.parameters.get("asset_type", "stock"))

    def quote(self) -> Asset | None:
        quote = self.parameters.get("quote")
        return Asset(quote, "crypto" if quote not in ("USD", "EUR") else "forex") if quote else None

    def prices(self, symbol: str, length: int, timestep: str) -> Any:
        quote = self.quote()
        extra = {"quote": quote} if quote is not None else {}
        return self.get_historical_prices(self.asset(symbol), length, timestep, **extra)  # type: ignore[attr-defined]

    def price(self, symbol: str) -> Any:
        quote = self.quote()
        extra = {"quote": quote} if quote is not None else {}
        return self.get_last_price(self.asset(symbol), **extra)  # type: ignore[attr-defined]

    def order(self, symbol: str, quantity: float, side: str) -> Any:
        quote = self.quote()
        extra = {"quote": quote} if quote is not None else {}
        return self.submit_order(  # type: ignore[attr-defined]
            self.create_order(self.asset(symbol), quantity, side, **extra))  # type: ignore[attr-defined]

    def returns(self, symbols: list[str], length: int, timestep: str, *, since: str = "close") -> dict[str, float]:
        """Each symbol's return over its last ``length`` bars: the last close over the first bar's ``since``."""
        scores = {}
        for symbol in symbols:
            bars = self.prices(symbol, length, timestep)
            if bars is None or len(bars.df) < 2:
                continue
            frame = bars.df
            scores[symbol] = frame["close"].iloc[-1] / frame[since].iloc[0] - 1.0
        return scores

    def rebalance(self, scores: dict[str, float], symbols: list[str], top: int, *, fractional: bool = False) -> None:
        """Hold the ``top`` best-scored symbols, equal weight (98 % of the portfolio); sell the others."""
        chosen = sorted(scores, key=lambda s: (-scores[s], s))[:top]
        for symbol in symbols:
            current = self.held(symbol)
            if symbol not in chosen and current > 0:
                self.order(symbol, current, "sell")
        budget = self.get_portfolio_value() / len(chosen)  # type: ignore[attr-defined]
        for symbol in chosen:
            price = self.price(symbol)
            if not price:
                continue
            current = self.held(symbol)
            target = round(budget * 0.98 / price, 4) if fractional else int(budget * 0.98 // price)
            if target > current:
                self.order(symbol, target - current, "buy")
            elif target < current:
                self.order(symbol, current - target, "sell")

    def held(self, symbol: str) -> float:
        position = self.get_position(self.asset(symbol))  # type: ignore[attr-defined]
        return float(position.quantity) if position else 0.0


class BuyAndHold(_Assets, Strategy):
    """Buy ``symbol`` with all the cash on the first day and hold it."""

    parameters = {"symbol": "SPY"}

    def initialize(self) -> None:
        self.sleeptime = "1D"

    def on_trading_iteration(self) -> None:
        if self.first_iteration:
            symbol = self.parameters["symbol"]
            price = self.price(symbol)
            quantity = int(self.get_cash() // price) if price else 0
            if quantity > 0:
                self.order(symbol, quantity, "buy")


class _Daily(_Assets):
    """One iteration a day, counted; a rebalance every ``period`` days, the first day included."""

    def initialize(self) -> None:
        self.sleeptime = "1D"
        self.vars.day = 0  # type: ignore[attr-defined]

    def rebalance_day(self) -> bool:
        self.vars.day += 1  # type: ignore[attr-defined]
        return (self.vars.day - 1) % self.parameters["period"] == 0  # type: ignore[attr-defined]


class MomentumRebalance(_Daily, Strategy):
    """Every ``period`` days hold the ``top`` symbols with the best ``lookback``-day return, equal weight."""

    parameters = {"symbols": ["SPY", "TLT", "GLD"], "lookback": 20, "top": 1, "period": 5}

    def on_trading_iteration(self) -> None:
        params: dict[str, Any] = self.parameters
        if not self.rebalance_day():
            return
        scores = self.returns(params["symbols"], params["lookback"] + 1, "day")
        if not scores:
            return
        self.rebalance(scores, params["symbols"], params["top"])


class MinuteSMA(_Assets, Strategy):
    """Minute bars: long ``symbol`` while the ``fast``-bar mean is above the ``slow``-bar mean."""

    parameters = {"symbol": "SPY", "fast": 10, "slow": 30, "quantity": 10}

    def initialize(self) -> None:
        self.sleeptime = "1M"

    def on_trading_iteration(self) -> None:
        params: dict[str, Any] = self.parameters
        bars = self.prices(params["symbol"], params["slow"], "minute")
        if bars is None or len(bars.df) < params["slow"]:
            return
        closes = bars.df["close"]
        fast, slow = closes.iloc[-params["fast"]:].mean(), closes.mean()
        quantity = self.held(params["symbol"])
        if fast > slow and quantity == 0:
            self.order(params["symbol"], params["quantity"], "buy")
        elif fast < slow and quantity > 0:
            self.order(params["symbol"], quantity, "sell")


class DailyMinuteScan(_Daily, Strategy):
    """Once a day, read the last ``bars`` minute bars of every symbol and hold the ``top`` with the best
    return over them (equal weight), rebalancing every ``period`` days.

    The shape of a universe scan on intraday data: many symbols, a day of minute bars each, one
    decision a day.
    """

    parameters = {"symbols": ["SPY", "TLT", "GLD"], "bars": 390, "top": 1, "period": 1}

    def on_trading_iteration(self) -> None:
        params: dict[str, Any] = self.parameters
        rebalance = self.rebalance_day()
        scores = self.returns(params["symbols"], params["bars"], "minute", since="open")  # read every day
        if not scores or not rebalance:
            return
        self.rebalance(scores, params["symbols"], params["top"], fractional=params.get("asset_type") == "crypto")


def lumibot_example(module: str, name: str) -> type:
    """The strategy class ``name`` of Lumibot's own ``lumibot.example_strategies.<module>``, unchanged.

    Lumibot's single-file examples import ``credentials`` (a file of the user's keys) for their live
    branch; loading the example here gives that import an empty stand-in, so the class runs as shipped.
    """
    import importlib
    import sys
    import types

    if "credentials" not in sys.modules:
        stand_in = types.ModuleType("credentials")
        stand_in.__getattr__ = lambda attribute: None  # type: ignore[method-assign]
        sys.modules["credentials"] = stand_in
    return getattr(importlib.import_module(f"lumibot.example_strategies.{module}"), name)


def simple_start_single_file() -> type:
    """``MyStrategy`` of Lumibot's ``example_strategies/simple_start_single_file.py``: an order every 180 minutes."""
    return lumibot_example("simple_start_single_file", "MyStrategy")


STRATEGIES = {
    "buy_and_hold": BuyAndHold,
    "momentum": MomentumRebalance,
    "minute_sma": MinuteSMA,
    "minute_scan": DailyMinuteScan,
    "simple_start": simple_start_single_file,
}
