"""The simulated exchange's dialect (:mod:`engine.sim.dialect`) as typed events.

A reference adapter, written as a user would write one for a real exchange,
with public names only: callbacks for a :class:`~engine.config.ConnectionSetup`
or :class:`~engine.config.WebsocketSetup` and a decoder::

    setup = ConnectionSetup(url, batch_handler=sim.batch_handler,
                            subscriber=sim.subscribe, generate_subscriptions=...)
    async with Connection(setup, dialer=exchange.dialer()) as conn:
        async for batch in conn.stream(Ticker, policy="conflate"):
            ...

Data messages decode straight from JSON into msgspec Structs (one C call per
message; the ``channel`` field picks ticker or trades), then into
:class:`~engine.events.Ticker` / :class:`~engine.events.Trade` stamped with
the connection id and the injected clock's receive time. Prices and sizes stay
the exchange's strings; ``book`` messages become
:class:`~engine.events.BookSnapshot` / :class:`~engine.events.BookUpdate` (a
manager with ``WebsocketSetup.orderbook`` keeps the books). Replies (acks, pongs, logins) are not events; the
exchange's ``error`` replies become :class:`~engine.events.Error` (``EXCHANGE``)
and anything that does not decode an ``Error`` (``DECODE``) keeping the raw
message: the stream goes on.
"""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from engine import AuthenticationFailed, Subscription
from engine.events import BookSnapshot, BookUpdate, Error, ErrorKind, Event, Ticker, Trade

__all__ = ["batch_handler", "decode", "handler", "login", "subscribe", "unsubscribe"]

Message = str | bytes


class _TickerMessage(msgspec.Struct, tag_field="channel", tag="ticker", frozen=True, gc=False):
    symbol: str
    bid: str
    ask: str
    seq: int
    ts: float


class _TradeMessage(msgspec.Struct, tag_field="channel", tag="trades", frozen=True, gc=False):
    symbol: str
    price: str
    size: str
    side: str
    seq: int
    ts: float


class _BookMessage(msgspec.Struct, tag_field="channel", tag="book", frozen=True, gc=False):
    symbol: str
    type: str  # "snapshot" | "update"
    bids: tuple[tuple[str, str], ...]
    asks: tuple[tuple[str, str], ...]
    seq: int
    ts: float
    checksum: int | None = None
    prev_seq: int | None = None


_decode = msgspec.json.Decoder(_TickerMessage | _TradeMessage | _BookMessage).decode


# Data messages start with their channel (the dialect writes it first): trades and tickers decode
# straight into the engine's events, then get their stamps (half the cost of the general path).
_STRAIGHT = (
    ('{"channel":"trades",', b'{"channel":"trades",', msgspec.json.Decoder(Trade).decode),
    ('{"channel":"ticker",', b'{"channel":"ticker",', msgspec.json.Decoder(Ticker).decode),
)
_stamp = msgspec.structs.force_setattr


def decode(message: Message, connection: str = "", received: float = 0.0) -> Event | None:
    """One message as a typed event; None for replies that are not data (acks, pongs)."""
    for text, raw, straight in _STRAIGHT:
        if message.startswith(text if type(message) is str else raw):  # type: ignore[arg-type]
            try:
                event = straight(message)
            except msgspec.DecodeError:
                break  # (the general path says what is wrong with it)
            _stamp(event, "connection", connection)
            _stamp(event, "received", received)
            return event  # type: ignore[no-any-return]
    try:
        wire = _decode(message)
    except msgspec.DecodeError as exc:
        return _not_data(message, connection, received, exc)
    if isinstance(wire, _BookMessage):
        if wire.type == "snapshot":
            return BookSnapshot(
                symbol=wire.symbol, bids=wire.bids, asks=wire.asks, seq=wire.seq, ts=wire.ts,
                checksum=wire.checksum, connection=connection, received=received,
            )  # fmt: skip
        return BookUpdate(
            symbol=wire.symbol, bids=wire.bids, asks=wire.asks, seq=wire.seq, prev_seq=wire.prev_seq,
            ts=wire.ts, checksum=wire.checksum, connection=connection, received=received,
        )  # fmt: skip
    if isinstance(wire, _TickerMessage):
        return Ticker(
            symbol=wire.symbol, bid=wire.bid, ask=wire.ask, seq=wire.seq, ts=wire.ts,
            connection=connection, received=received,
        )  # fmt: skip
    return Trade(
        symbol=wire.symbol, price=wire.price, size=wire.size, side=wire.side,
        seq=wire.seq, ts=wire.ts, connection=connection, received=received,
    )  # fmt: skip


def _not_data(message: Message, connection: str, received: float, exc: Exception) -> Event | None:
    """The slow path: a reply, an exchange error, or garbage."""
    try:
        data = orjson.loads(message)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict) and "event" in data:
        if data["event"] != "error":
            return None  # subscribed, unsubscribed, pong, login: answers, not data
        code = data.get("code")
        return Error(
            kind=ErrorKind.EXCHANGE,
            message=str(data.get("message", "error")),
            raw=message,
            code=code if isinstance(code, int) else None,
            connection=connection,
            received=received,
        )
    return Error(kind=ErrorKind.DECODE, message=str(exc), raw=message, connection=connection, received=received)


def handler(conn: Any, message: Message) -> None:
    """A per-message ``handler``: decode, emit."""
    event = decode(message, conn.id, conn.now())
    if event is not None:
        conn.emit(event)


def batch_handler(conn: Any, messages: list[Message]) -> None:
    """A ``batch_handler``: every message of one read, one clock read for all."""
    received = conn.now()
    connection = conn.id
    events = [decode(message, connection, received) for message in messages]
    conn.emit_many([event for event in events if event is not None])


async def subscribe(conn: Any, subs: list[Subscription]) -> None:
    """A ``subscriber``: one request per subscription; an error reply fails it."""
    for sub in subs:
        await _request(conn, {"op": "subscribe", "channel": sub.channel, "symbols": list(sub.symbols)}, str(sub))


async def unsubscribe(conn: Any, subs: list[Subscription]) -> None:
    """An ``unsubscriber``."""
    for sub in subs:
        await _request(conn, {"op": "unsubscribe", "channel": sub.channel, "symbols": list(sub.symbols)}, str(sub))


async def login(conn: Any, key: str = "sim") -> None:
    """A ``connector`` for authenticated setups: log in before subscribing."""
    reply = await _request(conn, {"op": "login", "key": key}, "login", check=False)
    if not reply.get("ok"):
        raise AuthenticationFailed(f"login rejected: {reply.get('message', reply)}")


async def _request(conn: Any, message: dict[str, Any], what: str, *, check: bool = True) -> dict[str, Any]:
    rid = conn.next_id()
    message["id"] = rid
    reply = orjson.loads(await conn.request(message, key=rid))
    if check and reply.get("event") == "error":
        raise RuntimeError(f"{what}: {reply.get('message', 'rejected')}")
    return reply  # type: ignore[no-any-return]
