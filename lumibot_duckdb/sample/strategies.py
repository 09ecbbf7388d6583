"""Three small Lumibot strategies the A/B harness runs on both data paths.

They exercise what differs between data paths: daily and minute history requests, several
symbols per iteration, ``get_last_price`` for sizing, and market orders filled by the broker
from the data source's bars.
"""

from __future__ import annotations

from typing import Any

from lumibot.strategies import Strategy


class BuyAndHold(Strategy):
    """Buy ``symbol`` with all the cash on the first day and hold it."""

    parameters = {"symbol": "SPY"}

    def initialize(self) -> None:
        self.sleeptime = "1D"

    def on_trading_iteration(self) -> None:
        if self.first_iteration:
            symbol = self.parameters["symbol"]
            price = self.get_last_price(symbol)
            quantity = int(self.get_cash() // price) if price else 0
            if quantity > 0:
                self.submit_order(self.create_order(symbol, quantity, "buy"))


class MomentumRebalance(Strategy):
    """Every ``period`` days hold the ``top`` symbols with the best ``lookback``-day return, equal weight."""

    parameters = {"symbols": ["SPY", "TLT", "GLD"], "lookback": 20, "top": 1, "period": 5}

    def initialize(self) -> None:
        self.sleeptime = "1D"
        self.vars.day = 0

    def on_trading_iteration(self) -> None:
        params: dict[str, Any] = self.parameters
        self.vars.day += 1
        if (self.vars.day - 1) % params["period"]:
            return
        scores = {}
        for symbol in params["symbols"]:
            bars = self.get_historical_prices(symbol, params["lookback"] + 1, "day")
            if bars is None or len(bars.df) < 2:
                continue
            closes = bars.df["close"]
            scores[symbol] = closes.iloc[-1] / closes.iloc[0] - 1.0
        if not scores:
            return
        chosen = sorted(scores, key=lambda s: (-scores[s], s))[: params["top"]]
        for position in self.get_positions():
            symbol = position.asset.symbol
            if position.asset.asset_type == "stock" and symbol not in chosen and position.quantity > 0:
                self.submit_order(self.create_order(symbol, position.quantity, "sell"))
        budget = self.get_portfolio_value() / len(chosen)
        for symbol in chosen:
            price = self.get_last_price(symbol)
            if not price:
                continue
            held = self.get_position(symbol)
            current = float(held.quantity) if held else 0.0
            target = int(budget * 0.98 // price)
            if target > current:
                self.submit_order(self.create_order(symbol, target - current, "buy"))
            elif target < current:
                self.submit_order(self.create_order(symbol, current - target, "sell"))


class MinuteSMA(Strategy):
    """Minute bars: long ``symbol`` while the ``fast``-bar mean is above the ``slow``-bar mean."""

    parameters = {"symbol": "SPY", "fast": 10, "slow": 30, "quantity": 10}

    def initialize(self) -> None:
        self.sleeptime = "1M"

    def on_trading_iteration(self) -> None:
        params: dict[str, Any] = self.parameters
        bars = self.get_historical_prices(params["symbol"], params["slow"], "minute")
        if bars is None or len(bars.df) < params["slow"]:
            return
        closes = bars.df["close"]
        fast, slow = closes.iloc[-params["fast"]:].mean(), closes.mean()
        held = self.get_position(params["symbol"])
        quantity = float(held.quantity) if held else 0.0
        if fast > slow and quantity == 0:
            self.submit_order(self.create_order(params["symbol"], params["quantity"], "buy"))
        elif fast < slow and quantity > 0:
            self.submit_order(self.create_order(params["symbol"], quantity, "sell"))


STRATEGIES = {
    "buy_and_hold": BuyAndHold,
    "momentum": MomentumRebalance,
    "minute_sma": MinuteSMA,
}
