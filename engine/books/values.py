"""What the book driver takes in: decoded deltas and snapshots, and the level shape.

Both are plain immutable value types (NamedTuple: ~0.3 µs to build, against
~1 µs for a frozen dataclass, which matters once per message). The driver
reads their attributes only, so any object with the same attributes (a
msgspec Struct of the typed-events module, say) works as well.

Prices and sizes are the exchange's own text (``"0.05000"``): the book keeps
it beside the exact ``Decimal`` because checksums are computed over it.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import NamedTuple

__all__ = ["BookDelta", "BookSnapshot", "Level", "RawLevel"]

#: one price level as the book keeps it: ``(price, size, price_text, size_text)``
Level = tuple[Decimal, Decimal, str, str]
#: a level as it arrives: ``(price_text, size_text)``; a size of zero deletes the level
RawLevel = tuple[str, str]


class BookDelta(NamedTuple):
    """An incremental update of one symbol's book.

    ``first`` and ``last`` are the exchange's sequence range of this update
    (Binance ``U`` and ``u``; an exchange with one number per message sets
    ``last`` and leaves ``first`` None); ``prev`` is the previous message's
    sequence where the exchange links messages that way (OKX ``prevSeqId``).
    ``checksum`` is the exchange's checksum of the book *after* this update,
    if it sends one. ``timestamp`` is the exchange's time, ``received_at`` the
    injected clock's time of receipt (events carry it as their ``at``).
    """

    symbol: str
    bids: Sequence[RawLevel]
    asks: Sequence[RawLevel]
    first: int | None = None
    last: int | None = None
    timestamp: float | None = None
    received_at: float = 0.0
    prev: int | None = None
    checksum: int | None = None


class BookSnapshot(NamedTuple):
    """A full book of one symbol (from the stream, or from a REST fetch).

    ``sequence`` is the update id the book is at (Binance ``lastUpdateId``,
    OKX ``seqId``); None when the exchange gives none (then the next delta
    is taken as it comes). ``checksum`` as in :class:`BookDelta`.
    """

    symbol: str
    bids: Sequence[RawLevel]
    asks: Sequence[RawLevel]
    sequence: int | None = None
    timestamp: float | None = None
    received_at: float = 0.0
    checksum: int | None = None
