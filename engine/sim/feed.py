"""Exchange-wide market data: one stream per (channel, symbol), broadcast to its subscribers.

As on a real exchange, a data message is made once, at its scheduled time, and
the very same text goes to every connection subscribed to that (channel,
symbol). Its ``seq`` numbers the stream exchange-wide, from 1 without gaps, so
two connections subscribed to the same thing receive byte-identical frames and
a client can deduplicate across connections by ``(channel, symbol, seq)`` and
see a loss as a gap.

A stream runs only while somebody is subscribed (an idle exchange costs
nothing on a long virtual run); its ``seq`` carries on where it stopped. When
a stream starts, its first message is made at once (it follows the first
subscriber's ack); a ticker subscription to a stream already running starts
with a copy of the latest ticker (same text, same ``seq``), as exchanges push
the current ticker on subscribe.

One task (:meth:`Feed.run`, started by the exchange) makes every message; it
never waits on a connection: a :class:`Subscriber` takes the text at once and
writes it later (or drops and counts it when stalled or too far behind).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from engine.sim import dialect
from engine.sim.book import SimBook
from engine.sim.market import Market
from engine.sim.schedule import Schedule
from transports.encode import OP_TEXT, encode_frame

__all__ = ["Feed", "Subscriber"]


class Subscriber(Protocol):
    """What the feed needs of a connection: take one data message's text, now."""

    def deliver(self, channel: str, symbol: str, text: str, frame: bytes | None = None) -> None:
        """Queue ``text`` for writing (or drop and count it); never blocks.

        ``frame`` is ``text`` already encoded as an unmasked WebSocket text
        frame (made once for every subscriber); None: the connection encodes.
        """


@dataclass(slots=True)
class _Stream:
    seq: int = 0  # the last number given out
    last: tuple[str, bytes] | None = None  # the latest message's text and frame
    # dict as an ordered set: broadcast order is subscribe order (deterministic)
    subscribers: dict[Subscriber, None] = field(default_factory=dict)


#: How a channel's message is made: (feed, symbol, seq, now) -> message.
Maker = Callable[["Feed", str, int, float], dict[str, Any]]


def _ticker(feed: Feed, symbol: str, seq: int, now: float) -> dict[str, Any]:
    return dialect.ticker_message(symbol, feed.market.quote(symbol), seq, now)


def _trade(feed: Feed, symbol: str, seq: int, now: float) -> dict[str, Any]:
    return dialect.trade_message(symbol, feed.market.trade(symbol), seq, now)


def _book(feed: Feed, symbol: str, seq: int, now: float) -> dict[str, Any]:
    book = feed.book(symbol)
    bids, asks = book.step()
    return dialect.book_update(symbol, bids, asks, seq, book.checksum(), now)


class Feed:
    """The exchange's market data streams at ``rate`` messages per second each.

    Prices come from one :class:`~engine.sim.market.Market` seeded by ``rng``:
    the same seed and the same subscribe/unsubscribe history give the same
    messages.
    """

    def __init__(self, symbols: Iterable[str], rate: float, rng: random.Random, book_depth: int = 100) -> None:
        self.market = Market(symbols, rng)
        self._book_seed = rng.getrandbits(64)
        self._book_depth = book_depth
        self._books: dict[str, SimBook] = {}
        self._schedule = Schedule(rate)  # due times of the running streams
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._makers: dict[str, Maker] = {"ticker": _ticker, "trades": _trade, "book": _book}
        self._wake: anyio.Event | None = None  # made by run(): no event loop needed before
        #: Data messages made so far (each counted once, however many subscribers).
        self.made = 0

    def stream_seq(self, channel: str, symbol: str) -> int:
        """The last ``seq`` given out on (channel, symbol); 0 before the first message."""
        stream = self._streams.get((channel, symbol))
        return 0 if stream is None else stream.seq

    def book(self, symbol: str) -> SimBook:
        """``symbol``'s order book, made on first use around the market's mid price.

        Each book draws from its own generator seeded by the feed's seed and the
        symbol, so books do not depend on which one was made first.
        """
        book = self._books.get(symbol)
        if book is None:
            rng = random.Random(f"{self._book_seed}:{symbol}")
            book = self._books[symbol] = SimBook(self.market.mid(symbol), rng, self._book_depth)
        return book

    def book_snapshot(self, symbol: str, now: float, depth: int | None = None) -> dict[str, Any]:
        """``symbol``'s book as a snapshot message, as of its stream's latest ``seq``."""
        book = self.book(symbol)
        bids, asks = book.levels(depth)
        return dialect.book_snapshot(symbol, bids, asks, self.stream_seq("book", symbol), book.checksum(), now)

    def subscribers(self, channel: str, symbol: str) -> int:
        """How many connections are subscribed to (channel, symbol)."""
        stream = self._streams.get((channel, symbol))
        return 0 if stream is None else len(stream.subscribers)

    def subscribe(self, channel: str, symbol: str, subscriber: Subscriber, now: float) -> None:
        """Add ``subscriber``; data follows from now on (nothing if already subscribed)."""
        key = (channel, symbol)
        stream = self._streams.setdefault(key, _Stream())
        if subscriber in stream.subscribers:
            return
        stream.subscribers[subscriber] = None
        if channel == "book":  # the snapshot goes first, then the deltas after its seq
            subscriber.deliver(channel, symbol, dialect.encode(self.book_snapshot(symbol, now)))
        if len(stream.subscribers) == 1:
            self._schedule.add(channel, symbol, now)  # due at once
            self._notify()
        elif channel == "ticker" and stream.last is not None:
            subscriber.deliver(channel, symbol, *stream.last)

    def unsubscribe(self, channel: str, symbol: str, subscriber: Subscriber) -> None:
        """Remove ``subscriber``; the stream stops when nobody is left."""
        stream = self._streams.get((channel, symbol))
        if stream is None or subscriber not in stream.subscribers:
            return
        del stream.subscribers[subscriber]
        if not stream.subscribers:
            self._schedule.remove(channel, symbol)
            self._notify()

    def leave(self, subscriber: Subscriber, keys: Iterable[tuple[str, str]]) -> None:
        """Remove ``subscriber`` from every stream in ``keys`` (its connection ended)."""
        for channel, symbol in keys:
            self.unsubscribe(channel, symbol, subscriber)

    def _notify(self) -> None:
        if self._wake is not None:
            self._wake.set()
            self._wake = None

    def make_due(self, now: float) -> int:
        """Make and broadcast every message due at ``now``; returns how many were made."""
        made = 0
        for due in self._schedule.pop_due(now):
            stream = self._streams[(due.channel, due.symbol)]
            stream.seq += 1
            text = dialect.encode(self._makers[due.channel](self, due.symbol, stream.seq, now))
            frame = encode_frame(OP_TEXT, text.encode(), mask=False)  # the same bytes for everyone
            stream.last = (text, frame)
            for subscriber in stream.subscribers:
                subscriber.deliver(due.channel, due.symbol, text, frame)
            made += 1
        self.made += made
        return made

    async def run(self) -> None:
        """Make messages at their due times until cancelled (the exchange's task)."""
        while True:
            wake = self._wake = anyio.Event()  # made before any await, so no notification is missed
            self.make_due(anyio.current_time())
            next_due = self._schedule.next_due()
            with anyio.CancelScope(deadline=math.inf if next_due is None else next_due):
                await wake.wait()
