"""The server side of one client connection to the simulated exchange.

A :class:`Session` owns one byte stream: it answers the opening handshake
(wsproto, server role), then runs two tasks until the connection ends:

- the reader: frames in, requests carried out, replies out, close handshake;
- the writer: sleeps until the exchange-wide feed (:class:`~engine.sim.feed.Feed`)
  handed it data messages (:meth:`Session.deliver`), writes them, sleeps again.

Every write goes through one lock, so frames never interleave and the wire
order is the order in which they were encoded.

Faults, applied by :class:`~engine.sim.exchange.SimExchange`:

- :meth:`Session.stall` freezes the outgoing direction. Data is missed (the
  feed's messages are dropped and counted in ``missed``, never re-sent), pings (protocol and ``op: ping``) are not answered, and replies to requests are
  held and delivered in order on :meth:`Session.resume`. Reading goes on, so a
  client that gives up and leaves is still noticed and removed.
- :meth:`Session.reset` ends the connection without a close frame (in-memory:
  the peer's next receive is broken; TCP: SO_LINGER 0, so the peer gets a RST).
- :meth:`Session.close` sends a close frame (even while stalled) and waits a
  bounded time for the client's reply.

A client that vanishes, resets or breaks the protocol only ends its own
session: nothing escapes :meth:`Session.run`.
"""

from __future__ import annotations

import enum
import logging
import random
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import anyio
import h11
import wsproto.events as wse
from anyio.abc import ByteStream, SocketAttribute
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from engine.sim import dialect
from engine.sim.feed import Feed

__all__ = ["Acceptance", "Admission", "Rejection", "Session"]

log = logging.getLogger("wirestate.sim")

#: What ends a connection from the client's side: nothing to report.
GONE: tuple[type[BaseException], ...] = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)
HANDSHAKE_TIMEOUT = 10.0  # seconds for the client to send its upgrade request
MAX_HANDSHAKE_BYTES = 16 * 1024
MAX_MESSAGE_SIZE = 1024 * 1024  # wsproto has no limit of its own
#: Data messages a connection may have waiting to be written; more are dropped and counted.
MAX_OUTBOX = 10_000
_END_OF_HEAD = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Rejection:
    """Answer the handshake with this HTTP status, headers and body, then close."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Acceptance:
    """Accept the handshake: ``rng`` for this connection's own draws; ``raw`` bytes follow the 101 as is."""

    rng: random.Random
    raw: bytes = b""


Admission = Rejection | Acceptance


class _Stalled(enum.Enum):
    """What a write does while the session is stalled."""

    HOLD = "hold"  # keep the bytes, send them on resume (replies)
    DROP = "drop"  # forget them (data, pongs)
    SEND = "send"  # send anyway, forgetting what was held (close frames)


class _Outcome(enum.Enum):
    SENT = "sent"
    HELD = "held"
    DROPPED = "dropped"


def _sendable(state: ConnectionState, event: wse.Event) -> bool:
    if isinstance(event, wse.CloseConnection):
        return state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)
    return state is ConnectionState.OPEN


class Session:
    """One client connection: handshake, requests, data, faults.

    ``admit`` is called once the upgrade request has arrived and decides the
    handshake; ``on_end`` is called once when the session is over (whatever
    the reason). Both are synchronous.
    """

    def __init__(
        self,
        stream: ByteStream,
        *,
        symbols: Sequence[str],
        feed: Feed,
        admit: Callable[[Session], Admission],
        on_end: Callable[[Session], None],
    ) -> None:
        self._stream = stream
        self._symbols = tuple(symbols)
        self._admit = admit
        self._on_end = on_end
        self._ws = WSConnection(ConnectionType.SERVER)
        self._feed = feed
        self._keys: dict[tuple[str, str], None] = {}  # subscriptions, in subscribe order
        self._outbox: list[str] = []  # data texts from the feed, not yet written
        self._rng: random.Random | None = None  # this connection's own draws, once accepted
        self._scope = anyio.CancelScope()
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._finished = anyio.Event()
        self._held: list[bytes] = []
        self._stalled = False
        self._close_when_flushed = False
        self._parts: list[str | bytes] = []
        self._part_size = 0
        #: The request target of the upgrade request (``"/ws"``), once known.
        self.target: str | None = None
        #: True after a login with a non-empty key.
        self.authenticated = False
        #: Data messages written to the stream so far.
        self.data_sent = 0
        #: Data messages the feed offered while stalled (skipped, never re-sent).
        self.missed = 0
        #: Data messages dropped because :data:`MAX_OUTBOX` were already waiting (a slow reader).
        self.overflowed = 0
        #: Every text message this client sent: ``(anyio.current_time(), text)``, in order.
        self.received: list[tuple[float, str]] = []

    # -- views ---------------------------------------------------------------

    @property
    def subscriptions(self) -> frozenset[tuple[str, str]]:
        """The ``(channel, symbol)`` pairs this client is subscribed to."""
        return frozenset(self._keys)

    @property
    def stalled(self) -> bool:
        """True between :meth:`stall` and :meth:`resume`."""
        return self._stalled

    # -- faults (called by the exchange) -------------------------------------

    def stall(self) -> None:
        """Stop sending: no data, no pongs, replies held until :meth:`resume`."""
        self._stalled = True
        self._notify()

    def resume(self) -> None:
        """End a stall: held replies go out first, then data is due again."""
        self._stalled = False
        self._notify()

    def reset(self) -> None:
        """End the connection abruptly, without a close frame."""
        abort = getattr(self._stream, "abort", None)
        if callable(abort):
            abort()
        else:
            sock = self._stream.extra(SocketAttribute.raw_socket, None)
            if sock is not None:
                try:  # linger 0: closing sends a RST instead of a FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                except OSError:
                    pass
        self._scope.cancel()

    async def close(self, code: int, reason: str, timeout: float) -> None:
        """Send a close frame, wait up to ``timeout`` for the reply, then end."""
        with anyio.move_on_after(timeout):
            try:
                await self._emit([wse.CloseConnection(code=code, reason=reason)], _Stalled.SEND)
            except GONE:
                self._scope.cancel()
            await self._finished.wait()
        self._scope.cancel()
        await self._finished.wait()

    # -- running ------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it ends; never raises for client behaviour."""
        try:
            with self._scope:
                try:
                    rest = await self._handshake()
                except GONE:
                    return
                if rest is None:
                    return
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._pump)
                    await self._read(rest)
                    tg.cancel_scope.cancel()
        finally:
            self._feed.leave(self, list(self._keys))
            self._on_end(self)
            await anyio.aclose_forcefully(self._stream)
            self._finished.set()
            log.debug("sim connection to %s ended", self.target)

    async def _handshake(self) -> bytes | None:
        """Answer the upgrade request; returns bytes received after it, or None if not accepted."""
        buffer = b""
        with anyio.move_on_after(HANDSHAKE_TIMEOUT):
            while _END_OF_HEAD not in buffer:
                if len(buffer) > MAX_HANDSHAKE_BYTES:
                    return None
                buffer += await self._stream.receive()
        if _END_OF_HEAD not in buffer:
            return None
        end = buffer.index(_END_OF_HEAD) + len(_END_OF_HEAD)
        head, rest = buffer[:end], buffer[end:]  # wsproto's server would drop early frames
        try:
            self._ws.receive_data(head)
            request = next((e for e in self._ws.events() if isinstance(e, wse.Request)), None)
        except RemoteProtocolError as exc:
            hint = exc.event_hint if isinstance(exc.event_hint, wse.RejectConnection) else None
            await self._refuse(hint or wse.RejectConnection(status_code=400))
            return None
        if request is None:
            return None
        self.target = request.target
        decision = self._admit(self)
        if isinstance(decision, Rejection):
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in decision.headers]
            if decision.body and not any(k.lower() == b"content-length" for k, _ in headers):
                headers.append((b"content-length", str(len(decision.body)).encode()))
            await self._refuse(
                wse.RejectConnection(status_code=decision.status, headers=headers, has_body=bool(decision.body)),
                decision.body,
            )
            return None
        self._rng = decision.rng
        await self._stream.send(self._ws.send(wse.AcceptConnection()) + decision.raw)
        log.debug("sim accepted a connection to %s", self.target)
        return rest

    async def _refuse(self, rejection: wse.RejectConnection, body: bytes = b"") -> None:
        try:
            data = self._ws.send(rejection)
            if body:
                data += self._ws.send(wse.RejectData(data=body, body_finished=True))
        except (LocalProtocolError, h11.LocalProtocolError):
            return  # the request was too broken to answer
        await self._stream.send(data)

    # -- reading ------------------------------------------------------------

    async def _read(self, data: bytes) -> None:
        try:
            while True:
                if data and self._ws.state is not ConnectionState.CLOSED:
                    self._ws.receive_data(data)
                    if not await self._handle_events():
                        return
                # Once the close reply is held by a stall, keep reading only to see the client go.
                data = await self._stream.receive()
        except GONE:
            self._scope.cancel()

    async def _handle_events(self) -> bool:
        """Act on every received event; False when the session should end now."""
        for event in self._ws.events():
            if isinstance(event, (wse.TextMessage, wse.BytesMessage)):
                self._parts.append(event.data if isinstance(event.data, str) else bytes(event.data))
                self._part_size += len(event.data)
                if self._part_size > MAX_MESSAGE_SIZE:
                    await self._emit([wse.CloseConnection(code=1009, reason="message too big")], _Stalled.SEND)
                    return False
                if event.message_finished:
                    await self._on_message(event)
            elif isinstance(event, wse.Ping):
                await self._emit([event.response()], _Stalled.DROP)
            elif isinstance(event, wse.CloseConnection):
                return await self._on_close(event)
        return True

    async def _on_message(self, last: wse.Message) -> None:
        parts, self._parts, self._part_size = self._parts, [], 0
        if isinstance(last, wse.BytesMessage):
            request: dialect.Request = dialect.Invalid(dialect.BAD_REQUEST, "binary messages are not supported")
        else:
            text = "".join(cast("list[str]", parts))
            self.received.append((anyio.current_time(), text))
            request = dialect.parse_request(text, self._symbols)
        await self._carry_out(request)

    async def _on_close(self, event: wse.CloseConnection) -> bool:
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:  # the client closes: same code back
            outcome = await self._emit([event.response()], _Stalled.HOLD)
            if outcome is _Outcome.HELD:
                self._close_when_flushed = True
                self._notify()
                return True
            return False
        if state is ConnectionState.CLOSED:  # the client's reply to our close frame
            return False
        # Still OPEN: wsproto turned a protocol violation into this close event.
        await self._emit([wse.CloseConnection(code=event.code, reason=event.reason)], _Stalled.SEND)
        return False

    async def _carry_out(self, request: dialect.Request) -> None:
        reply: dict[str, object]
        if isinstance(request, dialect.Ping):
            if self._stalled:
                return
            await self._reply(dialect.pong(request), _Stalled.DROP)
            return
        if isinstance(request, dialect.Login):
            self.authenticated = bool(request.key)
            reply = dialect.login_result(request)
        elif isinstance(request, dialect.Subscribe):
            await self._reply(dialect.subscription_ack(request))  # the ack goes before any data
            now = anyio.current_time()
            for symbol in request.symbols:
                if (request.channel, symbol) not in self._keys:
                    self._keys[(request.channel, symbol)] = None
                    self._feed.subscribe(request.channel, symbol, self, now)
            return
        elif isinstance(request, dialect.Unsubscribe):
            for symbol in request.symbols:  # no data after the ack
                if self._keys.pop((request.channel, symbol), 0) is None:
                    self._feed.unsubscribe(request.channel, symbol, self)
            reply = dialect.subscription_ack(request)
        else:
            reply = dialect.error(request)
        await self._reply(reply)

    async def _reply(self, message: dict[str, object], stalled: _Stalled = _Stalled.HOLD) -> None:
        await self._emit([wse.TextMessage(data=dialect.encode(message))], stalled)

    # -- writing ------------------------------------------------------------

    def _notify(self) -> None:
        """Wake the data pump: subscriptions, stall or closing changed."""
        self._wake.set()
        self._wake = anyio.Event()

    def deliver(self, channel: str, symbol: str, text: str) -> None:
        """Take one data message from the feed; the writer sends it soon (never blocks).

        While stalled the message is missed (counted in :attr:`missed`); with
        :data:`MAX_OUTBOX` messages already waiting it is dropped (counted in
        :attr:`overflowed`).
        """
        if self._stalled or self._ws.state is not ConnectionState.OPEN:
            self.missed += 1
        elif len(self._outbox) >= MAX_OUTBOX:
            self.overflowed += 1
        else:
            self._outbox.append(text)
            if len(self._outbox) == 1:
                self._notify()

    async def _emit(self, events: Sequence[wse.Event], stalled: _Stalled) -> _Outcome:
        """Encode and write ``events`` after the held replies and queued data (empty: just flush).

        Everything goes out in the order it was queued: data the feed handed
        over before a reply is written before it (no data after an
        unsubscribe's ack).
        """
        async with self._lock:
            if self._stalled and stalled is _Stalled.DROP:
                return _Outcome.DROPPED
            chunks = [self._ws.send(e) for e in events if _sendable(self._ws.state, e)]
            if events and not chunks:
                return _Outcome.DROPPED  # the close handshake has begun: too late
            if stalled is _Stalled.SEND:
                self._held.clear()
            elif self._stalled:
                if chunks:
                    self._held.append(b"".join(chunks))
                return _Outcome.HELD
            outbox, self._outbox = self._outbox, []
            if outbox and self._ws.state is ConnectionState.OPEN:
                chunks[:0] = [self._ws.send(wse.TextMessage(data=text)) for text in outbox]
            else:
                self.missed += len(outbox)
                outbox = []
            data = b"".join(self._held) + b"".join(chunks)
            self._held.clear()
            if data:
                await self._stream.send(data)
            self.data_sent += len(outbox)
            return _Outcome.SENT

    async def _pump(self) -> None:
        """The writer task: wake when the feed delivered data (or on a change), write it."""
        try:
            while True:
                wake = self._wake  # taken before any await, so no notification is missed
                if not self._stalled:
                    await self._emit([], _Stalled.HOLD)  # held replies, then queued data
                    if self._close_when_flushed:
                        self._scope.cancel()
                        return
                await wake.wait()
        except GONE:
            self._scope.cancel()
