"""Typed events the engine hands to the application.

Market data (:class:`Trade`, :class:`Ticker`, :class:`BookSnapshot`,
:class:`BookUpdate`, :class:`Book`, :class:`Kline`) and private data
(:class:`Fill`, :class:`OrderUpdate`) are produced by a connection's handler
with ``conn.emit(event)``; the engine adds its own (:class:`Error`,
:class:`Backlog`, :class:`SubscriptionChanged`, :class:`Gap`,
:class:`BookResynced`) to the same streams (:mod:`engine.delivery`).
:class:`StateChanged` goes to state listeners instead.

Money is never a binary float: prices and sizes keep the exchange's own
decimal strings (what checksums are computed over), with a
:class:`~decimal.Decimal` view (``price_decimal``, ...) computed on demand.
Every event carries ``connection`` (the slot's logical id), ``symbol``, the
exchange's timestamp ``ts`` (seconds, as the adapter reports it; None when
the message has none) and ``received``, the injected clock's time when it
arrived.

The data events are msgspec Structs: frozen, and (holding only strings,
numbers and tuples of them) untracked by the cyclic GC (``gc=False``), so a
burst of events costs the collector nothing. Adapters decode the wire JSON
with ``msgspec.json.Decoder`` into their own wire Structs and build these.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import msgspec

from engine.causes import Cause
from machines.connection import State

__all__ = [
    "Backlog",
    "Book",
    "BookResynced",
    "BookSnapshot",
    "BookUpdate",
    "Error",
    "ErrorKind",
    "Event",
    "Fill",
    "Gap",
    "Kline",
    "Level",
    "MarketEvent",
    "OrderUpdate",
    "StateChanged",
    "SubscriptionChanged",
    "Ticker",
    "Trade",
]

#: one price level: the exchange's (price, size) decimal strings
Level = tuple[str, str]


def _decimal(text: str | None) -> Decimal | None:
    return None if text is None else Decimal(text)


class Event(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """What every streamed event has: where it came from and when it arrived.

    ``connection`` is the logical id of the connection that produced it (empty
    for a manager's own events), ``received`` the injected clock's time.
    """

    connection: str = ""
    received: float = 0.0


class MarketEvent(Event, frozen=True, gc=False, kw_only=True):
    """An exchange's data about one ``symbol``, with its timestamp ``ts`` and ``seq`` (None: none given)."""

    symbol: str
    ts: float | None = None
    seq: int | None = None


class Trade(MarketEvent, frozen=True, gc=False, kw_only=True):
    """A public trade. ``side`` is the taker's side (``"buy"``/``"sell"``) when the exchange says."""

    price: str
    size: str
    side: str | None = None
    trade_id: str | None = None

    @property
    def price_decimal(self) -> Decimal:
        """``price`` as an exact Decimal."""
        return Decimal(self.price)

    @property
    def size_decimal(self) -> Decimal:
        """``size`` as an exact Decimal."""
        return Decimal(self.size)


class Ticker(MarketEvent, frozen=True, gc=False, kw_only=True):
    """Best bid and ask (and last price) of a symbol; sizes when the exchange gives them."""

    bid: str
    ask: str
    bid_size: str | None = None
    ask_size: str | None = None
    last: str | None = None

    @property
    def bid_decimal(self) -> Decimal:
        """``bid`` as an exact Decimal."""
        return Decimal(self.bid)

    @property
    def ask_decimal(self) -> Decimal:
        """``ask`` as an exact Decimal."""
        return Decimal(self.ask)

    @property
    def last_decimal(self) -> Decimal | None:
        """``last`` as an exact Decimal (None when not given)."""
        return _decimal(self.last)


class BookSnapshot(MarketEvent, frozen=True, gc=False, kw_only=True):
    """A full (or depth-limited) order book: levels best first, as the exchange's strings.

    ``seq`` is the book's update id the snapshot is at (the sequence rule
    decides which buffered deltas follow it); ``checksum`` the exchange's, if sent.
    """

    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()
    checksum: int | None = None


class BookUpdate(MarketEvent, frozen=True, gc=False, kw_only=True):
    """A delta: changed levels (a size of zero deletes the level).

    ``first_seq``..``seq`` is the range of update ids it covers (Binance's
    ``U``..``u``; both equal for exchanges with one id per message), ``prev_seq``
    the id it follows when the exchange says (OKX's ``prevSeqId``).
    """

    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()
    first_seq: int | None = None
    prev_seq: int | None = None
    checksum: int | None = None


class Book(MarketEvent, frozen=True, gc=False, kw_only=True):
    """The maintained book of a symbol after an update: an immutable view, levels best first.

    ``depth`` levels per side at most (what the stream was asked for).
    """

    bids: tuple[Level, ...] = ()
    asks: tuple[Level, ...] = ()

    @property
    def best_bid(self) -> Level | None:
        """The best bid level, or None for an empty side."""
        return self.bids[0] if self.bids else None

    @property
    def best_ask(self) -> Level | None:
        """The best ask level, or None for an empty side."""
        return self.asks[0] if self.asks else None


class Kline(MarketEvent, frozen=True, gc=False, kw_only=True):
    """A candle of ``interval`` (the exchange's name, e.g. ``"1m"``) opening at ``start``; ``closed`` when final."""

    interval: str
    start: float
    open: str
    high: str
    low: str
    close: str
    volume: str
    closed: bool = False

    @property
    def close_decimal(self) -> Decimal:
        """``close`` as an exact Decimal."""
        return Decimal(self.close)


class Fill(MarketEvent, frozen=True, gc=False, kw_only=True):
    """One execution of one of our orders (private; delivered only with ``fills_feed``)."""

    order_id: str
    price: str
    size: str
    side: str
    trade_id: str | None = None
    client_order_id: str | None = None
    fee: str | None = None
    fee_currency: str | None = None
    maker: bool | None = None

    @property
    def price_decimal(self) -> Decimal:
        """``price`` as an exact Decimal."""
        return Decimal(self.price)

    @property
    def size_decimal(self) -> Decimal:
        """``size`` as an exact Decimal."""
        return Decimal(self.size)

    @property
    def fee_decimal(self) -> Decimal | None:
        """``fee`` as an exact Decimal (None when not given)."""
        return _decimal(self.fee)


class OrderUpdate(MarketEvent, frozen=True, gc=False, kw_only=True):
    """A change of one of our orders (private; delivered only with ``fills_feed``).

    ``status`` is the exchange's word (``"new"``, ``"partially_filled"``, ...);
    ``filled`` the cumulative executed size.
    """

    order_id: str
    status: str
    side: str | None = None
    price: str | None = None
    size: str | None = None
    filled: str | None = None
    client_order_id: str | None = None

    @property
    def filled_decimal(self) -> Decimal | None:
        """``filled`` as an exact Decimal (None when not given)."""
        return _decimal(self.filled)


# -- the engine's own events ----------------------------------------------------------------


class ErrorKind(enum.Enum):
    """What an :class:`Error` event reports."""

    DECODE = "decode"  # a message could not be decoded (``raw`` keeps it)
    EXCHANGE = "exchange"  # the exchange reported an error (``raw`` keeps its message)
    CLOSED = "closed"  # the exchange closed the connection (``code``); it reconnects per its policy
    AUTH = "auth"  # authentication failed: the connection gave up
    GAVE_UP = "gave_up"  # the connection stopped retrying
    OVERFLOW = "overflow"  # a ``fail`` stream's buffer was full: the stream ends after this event
    RESYNC = "resync"  # a book had to be resynchronised (``symbol``)


class Error(Event, frozen=True, gc=False, kw_only=True):
    """Something went wrong, told in the stream where the data would have been.

    ``raw`` is the message as received (decode and exchange errors), ``code``
    the close code (``CLOSED``) or the exchange's error code.
    """

    kind: ErrorKind
    message: str
    raw: str | bytes | None = None
    code: int | None = None
    symbol: str | None = None


class Backlog(Event, frozen=True, gc=False, kw_only=True):
    """A stream's buffer crossed its alert threshold (``queued`` of ``capacity``).

    The counts are the stream's totals so far; ``lag`` is how long the oldest
    queued event has waited (seconds, injected clock).
    """

    stream: str
    queued: int
    capacity: int
    dropped: int
    conflated: int
    lag: float


class SubscriptionChanged(Event, frozen=True, gc=False, kw_only=True):
    """A subscription of a manager's ledger changed state (``source`` -> ``dest`` on ``trigger``)."""

    subscription: Any
    source: str
    dest: str
    trigger: str
    error: str | None = None


class Gap(Event, frozen=True, gc=False, kw_only=True):
    """A sequence gap in ``symbol``'s book: ``expected`` was next, ``got`` arrived; that symbol resyncs."""

    symbol: str
    expected: int | None = None
    got: int | None = None


class BookResynced(Event, frozen=True, gc=False, kw_only=True):
    """``symbol``'s book is synchronised again (after a gap, a checksum mismatch or an overflow)."""

    symbol: str
    reason: str
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class StateChanged:
    """One transition of a connection's state machine.

    ``connection`` is the slot's logical id, stable across reconnects; ``at``
    is the injected clock's time of the change. ``cause`` is the typed cause
    (:mod:`engine.causes`) on transitions that have one (``lost``,
    ``give_up``, ``close``, ``closed``); ``reason`` is readable text, and
    ``delay`` the wait the reconnect policy chose (on ``lost`` when it will
    retry), already capped.
    """

    connection: str
    source: State
    dest: State
    trigger: str
    reason: str
    at: float
    cause: Cause | None = None
    delay: float | None = None

    def __str__(self) -> str:
        why = f" ({self.reason})" if self.reason else ""
        return f"[{self.at:10.3f}] {self.connection}: {self.source} -> {self.dest} on {self.trigger}{why}"
