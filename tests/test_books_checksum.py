"""engine.books.checksum and engine.books.sequence, against worked examples.

Every expected checksum is computed here independently: ``zlib.crc32`` of a
string written out by hand from the exchange's documented format (and OKX's
own published examples), never by calling the helper under test twice.
"""

from __future__ import annotations

import zlib

import pytest

from engine.books import Book
from engine.books.checksum import (
    interleaved_crc32,
    kraken_checksum,
    kraken_crc32,
    kraken_text,
    okx_checksum,
    okx_crc32,
    okx_text,
    signed32,
)
from engine.books.sequence import APPLY, GAP, STALE, Binance, Linked, Strict, Unchecked
from engine.events import BookUpdate


def _signed(value: int) -> int:
    return value - 2**32 if value >= 2**31 else value


# -- Kraken ------------------------------------------------------------------------------

_KRAKEN_ASKS = [("0.05005", "0.00000500"), ("0.05010", "0.00000500"), ("0.05015", "0.00000500")]
_KRAKEN_BIDS = [("0.05000", "0.00000304"), ("0.04995", "0.00000500"), ("0.04990", "0.01200000")]


def test_kraken_text_removes_dots_then_leading_zeros_asks_first() -> None:
    # asks low to high, then bids high to low; "0.05005" -> "005005" -> "5005", "0.00000500" -> "500"
    by_hand = "5005500" "5010500" "5015500" "5000304" "4995500" "49901200000"
    assert kraken_text(_KRAKEN_BIDS, _KRAKEN_ASKS) == by_hand
    assert kraken_crc32(_KRAKEN_BIDS, _KRAKEN_ASKS) == zlib.crc32(by_hand.encode())  # unsigned, as Kraken sends


def test_kraken_uses_only_the_best_ten_levels_and_the_hook_reads_the_book() -> None:
    asks = [(f"{100 + i}.5", f"{i + 1}.00000000") for i in range(12)]
    bids = [(f"{99 - i}.5", f"0.{i + 1:02d}000000") for i in range(12)]
    by_hand = "".join(f"{100 + i}5{i + 1}00000000" for i in range(10)) + "".join(
        f"{99 - i}5{i + 1}000000" for i in range(10)
    )
    book = Book("XBT/USD")
    book.update(list(reversed(bids)), asks)  # arrival order does not matter: the book sorts
    assert kraken_checksum(book) == zlib.crc32(by_hand.encode())
    assert kraken_crc32(bids, asks) == zlib.crc32(by_hand.encode())


# -- OKX and interleaved -------------------------------------------------------------------


def test_okx_examples_from_its_documentation() -> None:
    bids = [("3366.1", "7"), ("3366", "6")]
    asks = [("3366.8", "9"), ("3368", "8")]
    assert okx_text(bids, asks) == "3366.1:7:3366.8:9:3366:6:3368:8"
    assert okx_crc32(bids, asks) == -1881014294
    # one side shorter: the other side's levels follow alone
    assert okx_text(bids[:1], [("3366.8", "9"), ("3368", "8"), ("3372", "8")]) == "3366.1:7:3366.8:9:3368:8:3372:8"
    assert okx_crc32(bids[:1], [("3366.8", "9"), ("3368", "8"), ("3372", "8")]) == 831078360


def test_okx_uses_the_best_25_levels_of_the_book_with_its_raw_text() -> None:
    book = Book("BTC-USDT")
    bids = [(f"{1000 - i}.0", f"{i + 1}.10") for i in range(30)]
    asks = [(f"{1001 + i}.0", f"{i + 2}.20") for i in range(30)]
    book.update(bids, asks)
    by_hand = ":".join(f"{1000 - i}.0:{i + 1}.10:{1001 + i}.0:{i + 2}.20" for i in range(25))
    assert okx_checksum(book) == _signed(zlib.crc32(by_hand.encode()))


def test_interleaved_unsigned_and_signed() -> None:
    assert interleaved_crc32([("9", "2")], [("10", "1")], depth=100) == 1226559413  # a documented example
    assert interleaved_crc32([("9", "2")], [("10", "1")], depth=100, signed=True) == 1226559413
    text = "1:2:3:4"
    assert interleaved_crc32([("1", "2")], [("3", "4")], 5, signed=True) == _signed(zlib.crc32(text.encode()))
    assert signed32(0xFFFFFFFF) == -1 and signed32(0x7FFFFFFF) == 0x7FFFFFFF


# -- sequence rules ------------------------------------------------------------------------


def _d(first: int | None, last: int | None, prev: int | None = None) -> BookUpdate:
    return BookUpdate(symbol="BTC", first_seq=first, seq=last, prev_seq=prev)


@pytest.mark.parametrize(
    "delta, last, bridged, verdict",
    [
        (_d(1, 5), 10, False, STALE),  # u <= lastUpdateId: already in the snapshot
        (_d(8, 10), 10, False, STALE),
        (_d(8, 12), 10, False, APPLY),  # U <= last+1 <= u: bridges the snapshot
        (_d(11, 12), 10, False, APPLY),
        (_d(12, 14), 10, False, GAP),  # U > last+1: update 11 is missing
        (_d(11, 13), 10, True, APPLY),  # then strictly U == last+1
        (_d(10, 13), 10, True, GAP),  # overlap after the first is not Binance's contract
        (_d(12, 13), 10, True, GAP),
        (_d(None, 11), 10, True, APPLY),  # one number per message
        (_d(1, 2), None, False, APPLY),  # a book without a sequence takes what comes
        (_d(None, None), 10, True, GAP),  # no sequence where one is required
    ],
)
def test_binance_rule(delta: BookUpdate, last: int | None, bridged: bool, verdict: int) -> None:
    assert Binance().check(delta, last, bridged) == verdict


@pytest.mark.parametrize(
    "delta, last, verdict",
    [
        (_d(None, 11), 10, APPLY),
        (_d(11, 15), 10, APPLY),
        (_d(None, 12), 10, GAP),
        (_d(9, 11), 10, GAP),  # no overlap allowed even first
        (_d(None, 10), 10, STALE),
        (_d(None, 3), None, APPLY),
    ],
)
def test_strict_rule(delta: BookUpdate, last: int | None, verdict: int) -> None:
    for bridged in (False, True):
        assert Strict().check(delta, last, bridged) == verdict


@pytest.mark.parametrize(
    "delta, last, verdict",
    [
        (_d(None, 120, prev=100), 100, APPLY),  # OKX: seqIds need not be consecutive
        (_d(None, 100, prev=100), 100, APPLY),  # no change: prevSeqId == seqId
        (_d(None, 130, prev=120), 100, GAP),
        (_d(None, 90, prev=80), 100, STALE),
        (_d(None, 5, prev=-1), None, APPLY),
    ],
)
def test_linked_rule(delta: BookUpdate, last: int | None, verdict: int) -> None:
    assert Linked().check(delta, last, False) == verdict


def test_unchecked_rule_applies_everything() -> None:
    assert {Unchecked().check(_d(f, l), 10, b) for f, l in [(1, 2), (50, 60), (None, None)] for b in (0, 1)} == {APPLY}
