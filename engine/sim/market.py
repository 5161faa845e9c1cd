"""Seeded random-walk prices for the simulated exchange.

Prices are kept as integer ticks of 0.01 and rendered as decimal strings, so
they never pick up float noise (``"50012.37"``, never ``"50012.370000001"``).
Every draw comes from the :class:`random.Random` handed in: no global random
state, and the same seed gives the same prices.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Market", "Quote", "Trade"]

_TICKS_PER_UNIT = 100  # prices have two decimals
_SIZE_UNITS = 10_000  # sizes have four decimals
_STARTING_PRICES = {"BTC-USD": 50_000, "ETH-USD": 3_000}  # whole units
_STEP_STDDEV = 2e-4  # relative standard deviation of one random-walk step
_HALF_SPREAD = 5e-5  # relative half spread between bid and ask
_MIN_TICKS = 100  # the walk never goes below 1.00


@dataclass(frozen=True, slots=True)
class Quote:
    """Best bid and ask, as decimal strings."""

    bid: str
    ask: str


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade: price and size as decimal strings, side ``"buy"`` or ``"sell"``."""

    price: str
    size: str
    side: str


def _price(ticks: int) -> str:
    return f"{ticks // _TICKS_PER_UNIT}.{ticks % _TICKS_PER_UNIT:02d}"


def _size(units: int) -> str:
    return f"{units // _SIZE_UNITS}.{units % _SIZE_UNITS:04d}"


class Market:
    """A random walk per symbol; each quote or trade moves that symbol's mid a step.

    BTC-USD starts at 50000.00 and ETH-USD at 3000.00; any other symbol starts
    at a seeded price between 10.00 and 1000.00.
    """

    def __init__(self, symbols: Iterable[str], rng: random.Random) -> None:
        self._rng = rng
        self._mid: dict[str, int] = {}
        for symbol in symbols:
            units = _STARTING_PRICES.get(symbol)
            if units is None:
                self._mid[symbol] = rng.randint(10 * _TICKS_PER_UNIT, 1000 * _TICKS_PER_UNIT)
            else:
                self._mid[symbol] = units * _TICKS_PER_UNIT

    def mid(self, symbol: str) -> int:
        """``symbol``'s current mid price in ticks of 0.01 (``KeyError`` if unknown)."""
        return self._mid[symbol]

    def _step(self, symbol: str) -> tuple[int, int]:
        """Move ``symbol``'s mid one step; return the new (bid, ask) in ticks."""
        mid = self._mid[symbol]
        mid = max(_MIN_TICKS, mid + round(mid * self._rng.gauss(0.0, _STEP_STDDEV)))
        self._mid[symbol] = mid
        half = max(1, round(mid * _HALF_SPREAD))
        return mid - half, mid + half

    def quote(self, symbol: str) -> Quote:
        """The next best bid/ask for ``symbol`` (``KeyError`` if unknown)."""
        bid, ask = self._step(symbol)
        return Quote(_price(bid), _price(ask))

    def trade(self, symbol: str) -> Trade:
        """The next trade for ``symbol``: a buy lifts the ask, a sell hits the bid."""
        bid, ask = self._step(symbol)
        buy = self._rng.random() < 0.5
        units = self._rng.randint(1, 5 * _SIZE_UNITS)
        return Trade(_price(ask if buy else bid), _size(units), "buy" if buy else "sell")
