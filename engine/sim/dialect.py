"""The simulated exchange's JSON wire dialect: requests in, replies and data out.

Pure functions and value types, no I/O and no clock. Every message is one JSON
object in one text frame. ``id`` is echoed as sent (any JSON value; ``null``
when the request had none or could not be parsed).

Client -> server, with the server's answer:

- ``{"op":"subscribe","channel":"ticker"|"trades"|"book","symbols":["BTC-USD"],"id":7}``
  -> ``{"event":"subscribed","channel":"ticker","symbols":["BTC-USD"],"id":7}``;
  the private channels ``"orders"`` and ``"fills"`` need a login first
  (otherwise an error with code 401, :data:`UNAUTHORIZED`)
- ``{"op":"unsubscribe", ...same fields}`` -> ``{"event":"unsubscribed", ...}``
  (unsubscribing from something not subscribed is acknowledged too)
- ``{"op":"login","key":"...","timestamp":...,"nonce":"...","signature":"...","id":1}``
  -> ``{"event":"login","ok":true,"id":1}`` or
  ``{"event":"login","ok":false,"id":1,"code":401,"message":"invalid signature"}``.
  With credentials configured (``SimExchange(credentials={key: secret})``)
  ``signature`` is the lowercase hex HMAC-SHA256, keyed by the secret, of
  ``"login\n{key}\n{timestamp}\n{nonce}"`` (``timestamp`` rendered by
  Python's ``str()`` of the decoded JSON value, so send it as a string to be
  safe; each nonce once per key; see :mod:`engine.sim.auth`, whose
  ``sign_login`` computes it). Without credentials any non-empty ``key`` logs
  in. The account is the key; a second login with another key is refused.
- ``{"op":"place_order","symbol":"BTC-USD","side":"buy"|"sell","price":"50000.10","size":"0.5","client_order_id":"c1","id":9}``
  (after a login; price up to 2 decimals, size up to 4, both positive decimal
  strings) -> ``{"event":"order","ok":true,"id":9,"order_id":1,"client_order_id":"c1","status":"accepted"}``.
  The answer may be late (``response_delay``: a seeded delay per answer, so
  answers to back-to-back orders arrive out of order) and the order's first
  ``orders`` update may arrive before it. Then the order fills (see
  :mod:`engine.sim.orders`).
- ``{"op":"ping","id":3}`` -> ``{"event":"pong","id":3}``
- anything wrong -> ``{"event":"error","id":...,"code":...,"message":"..."}`` and
  the connection stays open: code 400 (:data:`BAD_REQUEST`) for invalid JSON, a
  non-object, an unknown ``op``, a missing/ill-typed field or a binary frame;
  401 (:data:`UNAUTHORIZED`) for private requests before a login; 404
  (:data:`NOT_FOUND`) for an unknown channel or symbol (the whole request is
  refused, nothing changes); a subscribe refused by the ``reject_subscribes``
  fault gets the code it was given (503, :data:`REFUSED`, by default).

Server -> client data, only for subscribed (channel, symbol) pairs:

- ``{"channel":"ticker","symbol":"BTC-USD","bid":"49990.12","ask":"49995.12","seq":1,"ts":12.5}``
- ``{"channel":"trades","symbol":"ETH-USD","price":"3001.50","size":"0.1250","side":"buy","seq":1,"ts":12.5}``
- ``book`` (full depth, :mod:`engine.sim.book`): right after the ``subscribed``
  ack, to that connection only, a snapshot
  ``{"channel":"book","symbol":"BTC-USD","type":"snapshot","bids":[["49997.50","0.8429"],...],"asks":[...],"seq":41,"checksum":-1881014294,"ts":12.5}``
  (every level, best first; ``seq`` is the last update it includes, 0 before
  the first), then exchange-wide deltas
  ``{"channel":"book","symbol":"BTC-USD","type":"update","bids":[[price,size],...],"asks":[...],"prev_seq":41,"seq":42,"checksum":...,"ts":12.6}``
  with the changed levels only (absolute sizes; size ``"0.0000"`` removes the
  level), mostly near the top; ``prev_seq`` is always ``seq - 1``, so a delta
  whose ``prev_seq`` is not the last ``seq`` applied means a gap: resync.
  Prices always have 2 decimals and sizes 4 (``"0.5000"``: keep the raw text).
  ``checksum`` is over the book *after* the message, OKX's format: take the
  best 25 bids (highest first) and best 25 asks (lowest first); interleave
  ``bid price, bid size, ask price, ask size`` level by level; when one side
  has fewer levels the other side's remaining levels follow alone; join all
  fields with ``:``; CRC32 (``zlib.crc32``) of that ASCII string as a *signed*
  32-bit integer. ``SimExchange.book_snapshot(symbol)``, or an HTTP
  ``GET /book?symbol=BTC-USD[&depth=N]`` on the same port
  (:mod:`engine.sim.rest`), gives the same snapshot as a REST call would (Binance-style flow: buffer deltas, fetch it,
  apply the deltas whose ``seq`` is greater). A snapshot is per connection;
  only deltas are exchange-wide (deduplicate on ``(channel, symbol, type, seq)``
  when you also keep snapshots).

Private data, to every connection logged in with the account and subscribed
to the (channel, symbol); ``seq`` counts per account and channel from 1:

- ``{"channel":"orders","symbol":"BTC-USD","order_id":1,"client_order_id":"c1","side":"buy","price":"50000.10","size":"0.5","filled":"0.2500","status":"open"|"partially_filled"|"filled","ts":13.1,"seq":2}``
- ``{"channel":"fills","symbol":"BTC-USD","order_id":1,"client_order_id":"c1","trade_id":7,"side":"buy","price":"50000.10","size":"0.2500","ts":13.1,"seq":1}``

Prices and sizes are decimal strings; ``ts`` is the server's
``anyio.current_time()`` when the message was made.

Market data is exchange-wide (:mod:`engine.sim.feed`): each message is made
once, at its scheduled time, and the same text goes to every connection
subscribed to its (channel, symbol), so two connections receive byte-identical
frames. ``seq`` numbers the messages of one (channel, symbol) exchange-wide,
from 1, +1 per message, and never restarts (not after an unsubscribe, not for
a new connection): **``(channel, symbol, seq)`` identifies a data message
across connections** (deduplicate on it; a jump in ``seq`` on one connection is
a loss there, e.g. messages missed during a stall, which are never re-sent).
A stream is made only while somebody is subscribed: its first message follows
the first subscriber's ack at once; a later ticker subscriber first gets a
copy of the latest ticker (same text and ``seq``), a later trades subscriber
the next trade. (Before the feed became exchange-wide ``seq`` counted per
connection and subscription; that meaning is gone.)
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import orjson

from engine.sim.market import Quote, Trade

__all__ = [
    "BAD_REQUEST",
    "CHANNELS",
    "NOT_FOUND",
    "PRIVATE_CHANNELS",
    "REFUSED",
    "UNAUTHORIZED",
    "Invalid",
    "Login",
    "Ping",
    "PlaceOrder",
    "Request",
    "Subscribe",
    "Unsubscribe",
    "encode",
    "error",
    "fill_message",
    "order_ack",
    "order_update",
    "login_result",
    "parse_request",
    "pong",
    "subscription_ack",
    "book_snapshot",
    "book_update",
    "ticker_message",
    "trade_message",
]

#: Public channels.
CHANNELS = ("ticker", "trades", "book")
#: Private channels: only after a successful login.
PRIVATE_CHANNELS = ("orders", "fills")
BAD_REQUEST = 400
UNAUTHORIZED = 401
NOT_FOUND = 404
#: The code of a request refused by a fault control (``reject_subscribes``, ``reject_logins``).
REFUSED = 503
_PRICE = re.compile(r"^\d+(\.\d{1,2})?$")
_SIZE = re.compile(r"^\d+(\.\d{1,4})?$")


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Start ``channel`` for ``symbols`` (deduplicated, in request order)."""

    channel: str
    symbols: tuple[str, ...]
    id: Any = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Stop ``channel`` for ``symbols``."""

    channel: str
    symbols: tuple[str, ...]
    id: Any = None


@dataclass(frozen=True, slots=True)
class Login:
    """Authenticate; ``key`` may be empty (then the login fails). The signature never shows in a repr."""

    key: str
    id: Any = None
    timestamp: Any = None
    nonce: Any = None
    signature: Any = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class PlaceOrder:
    """A limit order: ``price`` and ``size`` as sent (decimal strings)."""

    symbol: str
    side: str
    price: str
    size: str
    client_order_id: str | None = None
    id: Any = None


@dataclass(frozen=True, slots=True)
class Ping:
    """Application-level ping."""

    id: Any = None


@dataclass(frozen=True, slots=True)
class Invalid:
    """A request that gets an error event instead of being carried out."""

    code: int
    message: str
    id: Any = None


Request = Subscribe | Unsubscribe | Login | Ping | PlaceOrder | Invalid


def parse_request(text: str | bytes, symbols: Collection[str]) -> Request:
    """Decode and validate one client message against the known ``symbols``."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return Invalid(BAD_REQUEST, f"invalid JSON: {exc}")
    if not isinstance(data, dict):
        return Invalid(BAD_REQUEST, f"a request must be a JSON object, not {type(data).__name__}")
    request_id = data.get("id")
    op = data.get("op")
    if op == "ping":
        return Ping(request_id)
    if op == "login":
        key = data.get("key")
        return Login(
            key if isinstance(key, str) else "", request_id, data.get("timestamp"), data.get("nonce"), data.get("signature")
        )
    if op == "place_order":
        return _place_order(data, symbols, request_id)
    if op not in ("subscribe", "unsubscribe"):
        return Invalid(BAD_REQUEST, f"unknown op {op!r}", request_id)
    channel = data.get("channel")
    if not isinstance(channel, str):
        return Invalid(BAD_REQUEST, "'channel' must be a string", request_id)
    if channel not in CHANNELS and channel not in PRIVATE_CHANNELS:
        known = ", ".join((*CHANNELS, *PRIVATE_CHANNELS))
        return Invalid(NOT_FOUND, f"unknown channel {channel!r} (known: {known})", request_id)
    wanted = data.get("symbols")
    if not isinstance(wanted, list) or not wanted or not all(isinstance(s, str) for s in wanted):
        return Invalid(BAD_REQUEST, "'symbols' must be a non-empty list of strings", request_id)
    unknown = [s for s in wanted if s not in symbols]
    if unknown:
        return Invalid(NOT_FOUND, f"unknown symbol(s): {', '.join(unknown)}", request_id)
    chosen = tuple(dict.fromkeys(wanted))
    if op == "subscribe":
        return Subscribe(channel, chosen, request_id)
    return Unsubscribe(channel, chosen, request_id)


def _place_order(data: dict[str, Any], symbols: Collection[str], request_id: Any) -> Request:
    symbol, side, price, size = (data.get(k) for k in ("symbol", "side", "price", "size"))
    client_order_id = data.get("client_order_id")
    if not isinstance(symbol, str) or symbol not in symbols:
        return Invalid(NOT_FOUND, f"unknown symbol {symbol!r}", request_id)
    if side not in ("buy", "sell"):
        return Invalid(BAD_REQUEST, "'side' must be 'buy' or 'sell'", request_id)
    if not isinstance(price, str) or not _PRICE.match(price) or not price.strip("0."):
        return Invalid(BAD_REQUEST, "'price' must be a positive decimal string with up to 2 decimals", request_id)
    if not isinstance(size, str) or not _SIZE.match(size) or not size.strip("0."):
        return Invalid(BAD_REQUEST, "'size' must be a positive decimal string with up to 4 decimals", request_id)
    if client_order_id is not None and not isinstance(client_order_id, str):
        return Invalid(BAD_REQUEST, "'client_order_id' must be a string", request_id)
    return PlaceOrder(symbol, side, price, size, client_order_id, request_id)


def encode(message: dict[str, Any]) -> str:
    """One message as the text of a frame."""
    return orjson.dumps(message).decode()


def subscription_ack(request: Subscribe | Unsubscribe) -> dict[str, Any]:
    """``subscribed`` / ``unsubscribed`` for a carried-out request."""
    event = "subscribed" if isinstance(request, Subscribe) else "unsubscribed"
    return {"event": event, "channel": request.channel, "symbols": list(request.symbols), "id": request.id}


def login_result(request: Login, refusal: str | None = None) -> dict[str, Any]:
    """The answer to a login: ok unless ``refusal`` says why not."""
    if refusal is None:
        return {"event": "login", "ok": True, "id": request.id}
    return {"event": "login", "ok": False, "id": request.id, "code": UNAUTHORIZED, "message": refusal}


def order_ack(order: PlaceOrder, order_id: int) -> dict[str, Any]:
    """The answer to an accepted ``place_order``."""
    return {
        "event": "order",
        "ok": True,
        "id": order.id,
        "order_id": order_id,
        "client_order_id": order.client_order_id,
        "status": "accepted",
    }


def order_update(order: PlaceOrder, order_id: int, status: str, filled: str, ts: float) -> dict[str, Any]:
    """An ``orders`` channel message (the desk adds ``seq``)."""
    return {
        "channel": "orders",
        "symbol": order.symbol,
        "order_id": order_id,
        "client_order_id": order.client_order_id,
        "side": order.side,
        "price": order.price,
        "size": order.size,
        "filled": filled,
        "status": status,
        "ts": ts,
    }


def fill_message(order: PlaceOrder, order_id: int, trade_id: int, size: str, ts: float) -> dict[str, Any]:
    """A ``fills`` channel message (the desk adds ``seq``)."""
    return {
        "channel": "fills",
        "symbol": order.symbol,
        "order_id": order_id,
        "client_order_id": order.client_order_id,
        "trade_id": trade_id,
        "side": order.side,
        "price": order.price,
        "size": size,
        "ts": ts,
    }


def pong(request: Ping) -> dict[str, Any]:
    """The answer to an application-level ping."""
    return {"event": "pong", "id": request.id}


def error(request: Invalid) -> dict[str, Any]:
    """The error event for a refused request."""
    return {"event": "error", "id": request.id, "code": request.code, "message": request.message}


def ticker_message(symbol: str, quote: Quote, seq: int, ts: float) -> dict[str, Any]:
    """A ticker data message."""
    return {"channel": "ticker", "symbol": symbol, "bid": quote.bid, "ask": quote.ask, "seq": seq, "ts": ts}


def trade_message(symbol: str, trade: Trade, seq: int, ts: float) -> dict[str, Any]:
    """A trades data message."""
    return {
        "channel": "trades",
        "symbol": symbol,
        "price": trade.price,
        "size": trade.size,
        "side": trade.side,
        "seq": seq,
        "ts": ts,
    }


def book_snapshot(
    symbol: str, bids: list[list[str]], asks: list[list[str]], seq: int, checksum: int, ts: float
) -> dict[str, Any]:
    """The full book of ``symbol`` as of update ``seq`` (0: before the first update)."""
    return {
        "channel": "book",
        "symbol": symbol,
        "type": "snapshot",
        "bids": bids,
        "asks": asks,
        "seq": seq,
        "checksum": checksum,
        "ts": ts,
    }


def book_update(
    symbol: str, bids: list[list[str]], asks: list[list[str]], seq: int, checksum: int, ts: float
) -> dict[str, Any]:
    """One book delta: the changed levels (size ``"0.0000"``: removed), ``prev_seq`` is ``seq - 1``."""
    return {
        "channel": "book",
        "symbol": symbol,
        "type": "update",
        "bids": bids,
        "asks": asks,
        "prev_seq": seq - 1,
        "seq": seq,
        "checksum": checksum,
        "ts": ts,
    }
