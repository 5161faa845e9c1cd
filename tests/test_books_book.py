"""engine.books.book: the maintained book stays equal to a plain reference model.

The reference is a dict ``Decimal price -> Decimal size`` per side, sorted only
when read; the book must agree with it level for level (prices, sizes and the
exchange's text) after any valid stream of updates, with and without a depth limit.
"""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.books import Book, BookDataError
from transports.errors import WirestateError


class Reference:
    """The plainest correct book: dicts, sorted at read time, truncated after every update."""

    def __init__(self, depth: int | None = None) -> None:
        self.depth = depth
        self.bids: dict[Decimal, tuple[Decimal, str, str]] = {}
        self.asks: dict[Decimal, tuple[Decimal, str, str]] = {}

    def set(self, is_bid: bool, price: str, size: str) -> None:
        side = self.bids if is_bid else self.asks
        p, s = Decimal(price), Decimal(size)
        if s == 0:
            side.pop(p, None)
            return
        side[p] = (s, price, size)
        if self.depth is not None and len(side) > self.depth:
            del side[min(side) if is_bid else max(side)]

    def levels(self) -> tuple[list[tuple[Decimal, Decimal, str, str]], list[tuple[Decimal, Decimal, str, str]]]:
        bids = [(p, *self.bids[p]) for p in sorted(self.bids, reverse=True)]
        asks = [(p, *self.asks[p]) for p in sorted(self.asks)]
        return bids, asks  # type: ignore[return-value]


def test_zero_size_deletes_and_a_missing_delete_is_ignored() -> None:
    book = Book("BTC")
    book.update([("100.5", "2"), ("100.0", "1")], [("101", "3")])
    book.update([("100.5", "0.000")], [("105", "0")])  # the second names no level: ignored
    assert book.top() == ([(Decimal("100.0"), Decimal(1), "100.0", "1")], [(Decimal(101), Decimal(3), "101", "3")])
    assert book.best_bid == (Decimal("100"), Decimal("1"), "100.0", "1")
    book.update([("100", "0")], [("101.000", "0")])  # other texts of the same prices delete them too
    assert len(book) == 0 and book.best_bid is None and book.best_ask is None


def test_best_levels_follow_inserts_and_deletes() -> None:
    book = Book("BTC")
    book.update([("99", "1"), ("98", "1")], [("101", "1"), ("102", "1")])
    assert book.best_bid is not None and book.best_bid[0] == 99
    book.set_level(True, "100", "5")
    assert book.best_bid[0] == 100  # type: ignore[index]
    book.set_level(True, "100", "0")
    assert book.best_bid[0] == 99  # type: ignore[index]
    book.set_level(False, "101", "0")
    assert book.best_ask is not None and book.best_ask[0] == 102


def test_the_latest_text_of_a_price_is_kept_for_checksums() -> None:
    book = Book("BTC")
    book.update([("0.05000", "0.00000500")], [])
    book.update([("0.050", "0.0000031")], [])
    assert book.top() == ([(Decimal("0.05"), Decimal("0.0000031"), "0.050", "0.0000031")], [])


def test_depth_limit_keeps_only_the_best_levels_and_counts_the_rest() -> None:
    book = Book("BTC", depth=3)
    book.update([(str(p), "1") for p in (95, 96, 97, 98, 99)], [(str(p), "1") for p in (105, 104, 103, 102, 101)])
    bids, asks = book.top()
    assert [b[0] for b in bids] == [99, 98, 97]
    assert [a[0] for a in asks] == [101, 102, 103]
    assert book.truncated == 4
    book.update([("90", "1")], [("110", "1")])  # worse than the worst kept: not kept
    assert book.bid_count == 3 and book.ask_count == 3 and book.truncated == 6
    book.update([("99", "0")], [])  # a delete leaves room; nothing comes back by itself
    assert [b[0] for b in book.top()[0]] == [98, 97]


def test_view_is_an_immutable_copy_of_the_top() -> None:
    book = Book("BTC")
    book.update([("99", "1"), ("100", "2"), ("98", "3")], [("101", "1"), ("102", "2")])
    book.seq, book.ts, book.received = 7, 1.5, 2.5
    view = book.view(2)
    assert [b[0] for b in view.bids] == [100, 99] and [a[0] for a in view.asks] == [101, 102]
    assert view.best_bid == (Decimal(100), Decimal(2), "100", "2") and view.synced
    assert (view.seq, view.ts, view.received) == (7, 1.5, 2.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.bids = ()  # type: ignore[misc]
    book.update([("100", "0")], [])
    assert view.best_bid is not None and view.best_bid[0] == 100  # the view did not move with the book
    assert book.view().bids[0][0] == 99


@pytest.mark.parametrize(
    "price, size, what",
    [
        ("abc", "1", "price 'abc'"),
        ("NaN", "1", "price 'NaN'"),
        (100.5, "1", "price 100.5"),  # a float: never for money
        ("100", "-1", "size '-1'"),
        ("100", "Infinity", "size 'Infinity'"),
        ("100", "sNaN", "size 'sNaN'"),
        ("100", 1.5, "size 1.5"),
    ],
)
def test_bad_levels_raise_a_clear_error(price: object, size: object, what: str) -> None:
    book = Book("ETH-USD")
    with pytest.raises(BookDataError, match=f"book ETH-USD: ask {what}") as caught:
        book.update([], [(price, size)])  # type: ignore[list-item]
    assert isinstance(caught.value, WirestateError) and isinstance(caught.value, ValueError)
    with pytest.raises(BookDataError, match=f"book ETH-USD: bid {what}"):
        book.set_level(True, price, size)  # type: ignore[arg-type]
    assert len(book) == 0


def test_bad_depth_is_refused() -> None:
    with pytest.raises(BookDataError, match="depth must be a positive integer"):
        Book("BTC", depth=0)


# -- the book against the reference, on random streams --------------------------------------

_PRICES = [f"{100 + i * 0.5:.1f}" for i in range(-12, 13)] + ["100", "100.00", "99.50"]  # same prices, other text
_SIZES = ["0", "0.0", "1", "2.50", "0.00000001", "7"]
_UPDATE = st.tuples(st.booleans(), st.sampled_from(_PRICES), st.sampled_from(_SIZES))


@settings(max_examples=300, deadline=None)
@given(
    updates=st.lists(st.lists(_UPDATE, min_size=1, max_size=6), max_size=60),
    depth=st.one_of(st.none(), st.integers(1, 8)),
    cache=st.sampled_from([1, 3, 4096]),
    one_by_one=st.booleans(),
)
def test_random_streams_keep_the_book_equal_to_the_reference(
    updates: list[list[tuple[bool, str, str]]], depth: int | None, cache: int, one_by_one: bool
) -> None:
    book = Book("BTC", depth=depth, price_cache=cache)
    ref = Reference(depth)
    for message in updates:
        if one_by_one:  # set_level, level by level in arrival order
            for b, p, s in message:
                book.set_level(b, p, s)
                ref.set(b, p, s)
        else:  # update: the bids, then the asks, each in order
            book.update([(p, s) for b, p, s in message if b], [(p, s) for b, p, s in message if not b])
            for is_bid in (True, False):
                for b, p, s in message:
                    if b is is_bid:
                        ref.set(is_bid, p, s)
        bids, asks = book.top()
        assert (bids, asks) == ref.levels()
        assert book.best_bid == (bids[0] if bids else None)
        assert book.best_ask == (asks[0] if asks else None)
        assert book.top(3) == (bids[:3], asks[:3])
        assert book.view(2).bids == tuple(bids[:2])
