"""A simulated full-depth order book per symbol: snapshots, deltas and an OKX-style checksum.

Prices are integer ticks of 0.01 and sizes integer units of 0.0001, rendered
as decimal strings with a fixed number of decimals (``"50012.30"``,
``"0.5000"``): never float noise, and trailing zeros kept, so a client that
checksums re-rendered numbers instead of the exchange's raw strings fails.

Each :meth:`SimBook.step` changes a few levels, mostly near the top (the level
index is drawn from a geometric-like distribution): a new size for a level, a
level removed (size ``"0.0000"`` in the delta), or a new level inside or next
to the spread (the best price moves). The book keeps between ``depth // 2``
and ``depth + depth // 5`` levels per side by adding or trimming far levels.

Checksum (:func:`checksum`), the OKX shape: over the best 25 bids (highest
first) and best 25 asks (lowest first), interleave ``bid price, bid size, ask
price, ask size`` level by level; when one side runs out, the other side's
remaining levels follow alone; join the fields with ``:``; the value is
``zlib.crc32`` of that ASCII string as a *signed* 32-bit integer.
"""

from __future__ import annotations

import bisect
import random
import zlib
from collections.abc import Iterator

__all__ = ["CHECKSUM_DEPTH", "Level", "SimBook", "checksum", "checksum_text", "render_price", "render_size"]

#: Levels per side the checksum covers.
CHECKSUM_DEPTH = 25
_TICKS = 100  # prices: two decimals
_UNITS = 10_000  # sizes: four decimals

#: One level as the exchange sends it: ``[price, size]`` decimal strings.
Level = list[str]


def render_price(ticks: int) -> str:
    """``5001230`` ticks -> ``"50012.30"``."""
    return f"{ticks // _TICKS}.{ticks % _TICKS:02d}"


def render_size(units: int) -> str:
    """``5000`` units -> ``"0.5000"``; 0 -> ``"0.0000"`` (a deleted level)."""
    return f"{units // _UNITS}.{units % _UNITS:04d}"


def checksum_text(bids: list[Level], asks: list[Level]) -> str:
    """The string the checksum covers: interleaved best 25 levels per side, ``:``-joined."""
    parts: list[str] = []
    for i in range(max(min(len(bids), CHECKSUM_DEPTH), min(len(asks), CHECKSUM_DEPTH))):
        if i < len(bids) and i < CHECKSUM_DEPTH:
            parts += bids[i]
        if i < len(asks) and i < CHECKSUM_DEPTH:
            parts += asks[i]
    return ":".join(parts)


def checksum(bids: list[Level], asks: list[Level]) -> int:
    """CRC32 of :func:`checksum_text` as a signed 32-bit integer (levels best first)."""
    value = zlib.crc32(checksum_text(bids, asks).encode("ascii"))
    return value - 0x1_0000_0000 if value >= 0x8000_0000 else value


class SimBook:
    """One symbol's book, moved only by :meth:`step` draws from the ``rng`` handed in."""

    def __init__(self, mid_ticks: int, rng: random.Random, depth: int = 100) -> None:
        if depth < 2:
            raise ValueError(f"depth must be >= 2, not {depth}")
        self._rng = rng
        self.depth = depth
        self._bids: dict[int, int] = {}  # price ticks -> size units
        self._asks: dict[int, int] = {}
        # Sorted keys, best first (bids stored negated): no sorting per step.
        self._order: dict[bool, list[int]] = {True: [], False: []}
        self._text: dict[bool, dict[int, Level]] = {True: {}, False: {}}  # rendered once per change
        half = max(1, mid_ticks // 20_000)
        for i in range(depth):
            self._put(True, mid_ticks - half - i, self._size())
            self._put(False, mid_ticks + half + i, self._size())

    def _put(self, is_bid: bool, price: int, size: int) -> None:
        levels = self._bids if is_bid else self._asks
        if price not in levels:
            bisect.insort(self._order[is_bid], -price if is_bid else price)
        levels[price] = size
        self._text[is_bid][price] = [render_price(price), render_size(size)]

    def _remove(self, is_bid: bool, price: int) -> None:
        del (self._bids if is_bid else self._asks)[price]
        del self._text[is_bid][price]
        keys = self._order[is_bid]
        del keys[bisect.bisect_left(keys, -price if is_bid else price)]

    def _price_at(self, is_bid: bool, index: int) -> int:
        key = self._order[is_bid][index]
        return -key if is_bid else key

    def _size(self) -> int:
        return self._rng.randint(1, 20 * _UNITS) if self._rng.random() < 0.2 else self._rng.randint(1, 2 * _UNITS)

    def _near_top(self, count: int) -> int:
        """An index in ``range(count)``, mostly small: changes concentrate near the top."""
        return min(count - 1, int(self._rng.expovariate(0.25)))

    def best(self) -> tuple[int, int]:
        """(best bid, best ask) in ticks."""
        return -self._order[True][0], self._order[False][0]

    def step(self) -> tuple[list[Level], list[Level]]:
        """Change 1 to 4 levels; returns the delta ``(bids, asks)`` (size ``"0.0000"``: removed), never empty."""
        while True:
            bids, asks = self._change()
            if bids or asks:
                return bids, asks

    def _change(self) -> tuple[list[Level], list[Level]]:
        changed: dict[tuple[bool, int], int] = {}
        before: dict[tuple[bool, int], bool] = {}  # was the level there before this step?
        for _ in range(self._rng.randint(1, 4)):
            is_bid = self._rng.random() < 0.5
            levels = self._bids if is_bid else self._asks
            action = self._rng.random()
            if action < 0.8:  # an existing level: a new size (mostly) or removed
                price = self._price_at(is_bid, self._near_top(len(levels)))
                remove = action >= 0.6 and len(levels) > self.depth // 2
            else:  # a new level, counted from just inside the opposite best price
                best_bid, best_ask = self.best()
                offset = int(self._rng.expovariate(0.3))
                price = best_ask - 1 - offset if is_bid else best_bid + 1 + offset
                remove = False
                if price <= 0:
                    continue
            before.setdefault((is_bid, price), price in levels)
            if remove and len(levels) > 1:  # never empty a side
                self._remove(is_bid, price)
            else:
                self._put(is_bid, price, self._size())
            changed[(is_bid, price)] = levels.get(price, 0)
        band = self.depth + self.depth // 5
        for is_bid in (True, False):  # trim far levels beyond the band
            while len(self._order[is_bid]) > band:
                price = self._price_at(is_bid, -1)
                self._remove(is_bid, price)
                before.setdefault((is_bid, price), True)
                changed[(is_bid, price)] = 0
        # a level added and removed within one step never existed for a client: leave it out
        changed = {key: size for key, size in changed.items() if size or before[key]}
        bids = [[render_price(p), render_size(s)] for (b, p), s in sorted(changed.items(), key=_order) if b]
        asks = [[render_price(p), render_size(s)] for (b, p), s in sorted(changed.items(), key=_order) if not b]
        return bids, asks

    def levels(self, depth: int | None = None) -> tuple[list[Level], list[Level]]:
        """The best ``depth`` levels per side (all when None), best first, as decimal strings."""
        bids, asks = self._text[True], self._text[False]
        return (
            [list(bids[-k]) for k in self._order[True][:depth]],
            [list(asks[k]) for k in self._order[False][:depth]],
        )

    def checksum(self) -> int:
        """The checksum of the current book (see :func:`checksum`)."""
        bids, asks = self._text[True], self._text[False]
        top_bids = [bids[-k] for k in self._order[True][:CHECKSUM_DEPTH]]
        top_asks = [asks[k] for k in self._order[False][:CHECKSUM_DEPTH]]
        return checksum(top_bids, top_asks)

    def __iter__(self) -> Iterator[tuple[str, int, int]]:
        """Every level as ``("bid"|"ask", price ticks, size units)``."""
        for price, size in self._bids.items():
            yield "bid", price, size
        for price, size in self._asks.items():
            yield "ask", price, size


def _order(item: tuple[tuple[bool, int], int]) -> tuple[bool, int]:
    (is_bid, price), _ = item
    return is_bid, -price if is_bid else price
