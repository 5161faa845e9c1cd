"""CRC32 book checksums over the exchange's own price and size text.

A checksum hook (``BookConfig.checksum``) is any ``(book) -> int`` callable;
the driver compares its result with the ``checksum`` the exchange sent with a
delta (or snapshot) and resyncs that symbol on a mismatch. The hooks below
read the book's best levels; the ``*_text`` and ``*_crc32`` functions take
levels directly, best first: each level's *last two items* are the price and
size text, so both ``(price_text, size_text)`` pairs and the book's
``(price, size, price_text, size_text)`` levels work. The text must be
exactly what the exchange sent (``"0.05000"``, not ``"0.05"``): keep it from
decoding (parse JSON numbers as text or Decimal, never float).

Formats, from the exchanges' public documentation:

**Kraken** (spot WebSocket v1 ``book`` and v2 ``book``; :func:`kraken_checksum`).
Over the best 10 asks, lowest price first, then the best 10 bids, highest
price first (fewer when the book has fewer). For each level: the price text
with the ``.`` removed and then leading ``0`` characters removed, followed by
the size text treated the same way (``"0.05005"``, ``"0.00000500"`` →
``"5005"`` + ``"500"``). All levels' strings are concatenated (asks, then
bids; no separator); the checksum is the CRC32 of that ASCII string as an
*unsigned* 32-bit integer (v1 sends it as decimal text in ``"c"``; v2 as an
integer). v2 sends prices and sizes as JSON numbers at the pair's precision:
decode them to text unchanged. Kraken checksums only the top 10 levels
whatever the subscribed depth.

**OKX** (``books``, ``books-l2-tbt``, ``books50-l2-tbt``; :func:`okx_checksum`).
Over the best 25 bids and 25 asks: interleave ``bid price, bid size, ask
price, ask size`` level by level (best first); when one side has fewer
levels, the other side's remaining levels follow alone; join every field
with ``:``. The checksum is the CRC32 of that string as a *signed* 32-bit
integer. OKX's own examples: bids ``3366.1/7, 3366/6`` and asks
``3366.8/9, 3368/8`` give ``"3366.1:7:3366.8:9:3366:6:3368:8"`` →
``-1881014294``; one bid ``3366.1/7`` and asks ``3366.8/9, 3368/8, 3372/8``
give ``"3366.1:7:3366.8:9:3368:8:3372:8"`` → ``831078360``. OKX announced
that from June 2026 the field is always ``0`` and that continuity is to be
checked with ``seqId``/``prevSeqId`` (:class:`engine.books.sequence.Linked`):
pass ``checksum=None`` in the delta when the exchange sends 0.

**Interleaved** (:func:`interleaved_crc32`): the OKX shape with any depth
and either sign, which other exchanges document too (for example 100 levels,
unsigned: bid ``9/2`` and ask ``10/1`` → ``"9:2:10:1"`` → ``1226559413``).

**Gate.io**: its public book channels (``spot.order_book_update``,
``spot.obu``, ``futures.order_book_update``, ``futures.obu``) send no
checksum; their integrity check is the ``U``/``u`` sequence
(:class:`~engine.books.sequence.Strict` for ``obu``,
:class:`~engine.books.sequence.Binance` for the REST-snapshot flow). A
Gate.io-style setup that checks a checksum of its own passes its own
``(book) -> int`` as the hook (the interleaved helper covers the common shape).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from itertools import zip_longest
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.books.book import Book

__all__ = [
    "interleaved_crc32",
    "interleaved_text",
    "kraken_checksum",
    "kraken_crc32",
    "kraken_text",
    "okx_checksum",
    "okx_crc32",
    "okx_text",
    "signed32",
]

#: a level whose last two items are the exchange's price and size text
TextLevel = Sequence[object]


def signed32(value: int) -> int:
    """An unsigned 32-bit CRC as the signed integer some exchanges send."""
    return value - 0x1_0000_0000 if value >= 0x8000_0000 else value


def kraken_text(bids: Sequence[TextLevel], asks: Sequence[TextLevel], depth: int = 10) -> str:
    """The string Kraken checksums: best ``depth`` asks then bids, ``.`` and leading zeros removed."""
    parts = []
    for level in (*asks[:depth], *bids[:depth]):
        price: str = level[-2]  # type: ignore[assignment]
        size: str = level[-1]  # type: ignore[assignment]
        parts.append(price.replace(".", "").lstrip("0"))
        parts.append(size.replace(".", "").lstrip("0"))
    return "".join(parts)


def kraken_crc32(bids: Sequence[TextLevel], asks: Sequence[TextLevel], depth: int = 10) -> int:
    """Kraken's checksum of these levels (unsigned 32-bit)."""
    return zlib.crc32(kraken_text(bids, asks, depth).encode("ascii"))


def interleaved_text(bids: Sequence[TextLevel], asks: Sequence[TextLevel], depth: int, sep: str = ":") -> str:
    """``bid price:bid size:ask price:ask size:...`` over the best ``depth`` levels per side."""
    parts: list[str] = []
    extend = parts.extend
    for bid, ask in zip_longest(bids[:depth], asks[:depth]):
        if bid is not None:
            extend(bid[-2:])  # type: ignore[arg-type]
        if ask is not None:
            extend(ask[-2:])  # type: ignore[arg-type]
    return sep.join(parts)


def interleaved_crc32(
    bids: Sequence[TextLevel], asks: Sequence[TextLevel], depth: int, signed: bool = False, sep: str = ":"
) -> int:
    """CRC32 of :func:`interleaved_text`, unsigned or as a signed 32-bit integer."""
    value = zlib.crc32(interleaved_text(bids, asks, depth, sep).encode("ascii"))
    return signed32(value) if signed else value


def okx_text(bids: Sequence[TextLevel], asks: Sequence[TextLevel]) -> str:
    """The string OKX checksums (25 levels per side, interleaved, ``:``-joined)."""
    return interleaved_text(bids, asks, 25)


def okx_crc32(bids: Sequence[TextLevel], asks: Sequence[TextLevel]) -> int:
    """OKX's checksum of these levels (signed 32-bit)."""
    return signed32(zlib.crc32(interleaved_text(bids, asks, 25).encode("ascii")))


def kraken_checksum(book: Book) -> int:
    """Checksum hook for Kraken books: :func:`kraken_crc32` of the book's best 10 levels."""
    bids, asks = book.top(10)
    return kraken_crc32(bids, asks)


def okx_checksum(book: Book) -> int:
    """Checksum hook for OKX books: :func:`okx_crc32` of the book's best 25 levels."""
    bids, asks = book.top(25)
    return okx_crc32(bids, asks)
