"""The server side of one client connection to the simulated exchange.

A :class:`Session` owns one byte stream: it answers the opening handshake
(wsproto, server role), then runs until the connection ends:

- the reader: frames in, requests handed to the connection's
  :class:`~engine.sim.service.Service`, close handshake;
- the writer (:class:`~engine.sim.writer.Writer`): writes the data the
  exchange-wide feed or the order desk hands over (:meth:`Session.deliver`)
  and every answer, in the order they were queued;
- on demand: late answers (``reply_later``), a ping storm, the lifetime timer.

Every frame in and out is logged in the session's
:class:`~engine.sim.wirelog.Transcript` with the time it crossed.

Faults, applied by :class:`~engine.sim.exchange.SimExchange`:

- :meth:`Session.stall` freezes the outgoing direction. Data is missed (the
  feed's messages are dropped and counted in ``missed``, never re-sent), pings
  (protocol and ``op: ping``) are not answered, and replies to requests are
  held and delivered in order on :meth:`Session.resume`. Reading goes on, so a
  client that gives up and leaves is still noticed and removed.
- :meth:`Session.half_open`: a stall that also stops reading: nothing flows
  either way, the socket stays open (until :meth:`Session.resume`, a reset or
  the exchange's end).
- :meth:`Session.reset` ends the connection without a close frame (in-memory:
  the peer's next receive is broken; TCP: SO_LINGER 0, so the peer gets a RST).
- :meth:`Session.close` sends a close frame (even while stalled) and waits a
  bounded time for the client's reply.
- :meth:`Session.skip_book` / :meth:`Session.corrupt_book`: the next book
  delta is not sent (a sequence gap) / carries a wrong checksum.
- :meth:`Session.send_text` / :meth:`Session.send_raw`: any text (malformed
  JSON, an oversize message) or raw bytes, now; :meth:`Session.ping_storm`.

A client that vanishes, resets or breaks the protocol only ends its own
session: nothing escapes :meth:`Session.run`.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import anyio
import anyio.abc
import h11
import wsproto.events as wse
from anyio.abc import ByteStream, SocketAttribute
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from engine.sim import dialect
from engine.sim import rest as rest_api
from engine.sim.service import Service, Venue
from engine.sim.wirelog import Transcript, redact
from engine.sim.writer import Mode, Outcome, Writer

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
        venue: Venue,
        admit: Callable[[Session], Admission],
        on_end: Callable[[Session], None],
    ) -> None:
        self._stream = stream
        self._venue = venue
        self._admit = admit
        self._on_end = on_end
        self._ws = WSConnection(ConnectionType.SERVER)
        self._service = Service(venue, self)
        self._scope = anyio.CancelScope()
        self._tg: anyio.abc.TaskGroup | None = None
        self._hearing = anyio.Event()  # set while the reader may read (replaced by half_open)
        self._hearing.set()
        self._finished = anyio.Event()
        self._parts: list[str | bytes] = []
        self._part_size = 0
        #: Every frame in and out, with time and direction (see :mod:`engine.sim.wirelog`).
        self.transcript = Transcript(venue.log_limit)
        self._out = Writer(stream, self._ws, self.transcript)
        #: The request target of the upgrade request (``"/ws"``), once known.
        self.target: str | None = None
        #: When the handshake was accepted (exchange clock), once accepted.
        self.opened_at: float | None = None
        #: Every text message this client sent: ``(anyio.current_time(), text)``, in order (signatures redacted).
        self.received: list[tuple[float, str]] = []

    # -- views ---------------------------------------------------------------

    @property
    def subscriptions(self) -> frozenset[tuple[str, str]]:
        """The public ``(channel, symbol)`` pairs this client is subscribed to."""
        return frozenset(self._service.keys)

    @property
    def private_subscriptions(self) -> frozenset[tuple[str, str]]:
        """The private ``(channel, symbol)`` pairs this client is subscribed to."""
        return frozenset(self._service.private)

    @property
    def authenticated(self) -> bool:
        """True after a successful login."""
        return self._service.authenticated

    @property
    def account(self) -> str | None:
        """The API key this client logged in with."""
        return self._service.account

    @property
    def stalled(self) -> bool:
        """True between :meth:`stall` (or :meth:`half_open`) and :meth:`resume`."""
        return self._out.stalled

    @property
    def data_sent(self) -> int:
        """Data messages written to the stream so far."""
        return self._out.data_sent

    @property
    def missed(self) -> int:
        """Data messages offered while stalled or closing (skipped, never re-sent)."""
        return self._out.missed

    @property
    def overflowed(self) -> int:
        """Data messages dropped because too many were already waiting (a slow reader)."""
        return self._out.overflowed

    @property
    def book_faults(self) -> int:
        """Book deltas left out or corrupted on this connection."""
        return self._out.book_faults

    # -- faults (called by the exchange) -------------------------------------

    def _note(self, kind: str, data: str = "") -> None:
        self._out.note(kind, data)

    def stall(self) -> None:
        """Stop sending: no data, no pongs, replies held until :meth:`resume`."""
        self._note("stall")
        self._out.stall()

    def half_open(self) -> None:
        """Stop sending and reading: nothing flows either way; the socket stays open."""
        self._note("half_open")
        self._hearing = anyio.Event()
        self._out.stall()

    def resume(self) -> None:
        """End a stall or half-open: held replies go out first, then data flows again."""
        self._note("resume")
        self._hearing.set()
        self._out.resume()

    def reset(self) -> None:
        """End the connection abruptly, without a close frame."""
        self._note("reset")
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
                await self._out.emit([wse.CloseConnection(code=code, reason=reason)], Mode.SEND)
            except GONE:
                self._scope.cancel()
            await self._finished.wait()
        self._scope.cancel()
        await self._finished.wait()

    def skip_book(self, symbol: str | None = None) -> None:
        """Leave out the next book delta (of ``symbol``, or any): the client sees a sequence gap."""
        self._out.skip_book(symbol)

    def corrupt_book(self, symbol: str | None = None) -> None:
        """Send the next book delta (of ``symbol``, or any) with a wrong checksum."""
        self._out.corrupt_book(symbol)

    async def send_text(self, text: str) -> None:
        """Write one text message now (any text: malformed JSON, an oversize message), even if stalled."""
        await self._out.emit([wse.TextMessage(data=text)], Mode.SEND)

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` as is now (no framing), even if stalled."""
        await self._out.send_raw(data)

    def ping_storm(self, count: int, interval: float, payload: bytes = b"storm") -> None:
        """Send ``count`` protocol pings, ``interval`` seconds apart, starting now."""
        self._start(self._storm, count, interval, payload)

    async def _storm(self, count: int, interval: float, payload: bytes) -> None:
        for i in range(count):
            if i:
                await anyio.sleep(interval)
            await self._out.emit([wse.Ping(payload=payload)], Mode.DROP)

    def _start(self, func: Callable[..., Any], *args: Any) -> None:
        if self._tg is not None:
            self._tg.start_soon(self._guarded, func, *args)

    async def _guarded(self, func: Callable[..., Any], *args: Any) -> None:
        try:
            await func(*args)
        except GONE:
            self._scope.cancel()

    # -- the service's write path (Replier) ------------------------------------

    async def reply(self, message: dict[str, Any], *, droppable: bool = False) -> None:
        """Write one answer after whatever was queued before it."""
        await self._out.emit([wse.TextMessage(data=dialect.encode(message))], Mode.DROP if droppable else Mode.HOLD)

    def reply_later(self, message: dict[str, Any], delay: float) -> None:
        """Write one answer ``delay`` seconds from now."""
        self._start(self._later, message, delay)

    async def _later(self, message: dict[str, Any], delay: float) -> None:
        await anyio.sleep(delay)
        await self.reply(message)

    def deliver(self, channel: str, symbol: str, text: str, frame: bytes | None = None) -> None:
        """Take one data message (feed or desk); see :meth:`Writer.deliver`."""
        self._out.deliver(channel, symbol, text, frame)

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
                    self._tg = tg
                    tg.start_soon(self._write)
                    if self._venue.lifetime is not None:
                        tg.start_soon(self._expire, self._venue.lifetime)
                    await self._read(rest)
                    tg.cancel_scope.cancel()
        finally:
            self._tg = None
            self._service.leave()
            self._on_end(self)
            await anyio.aclose_forcefully(self._stream)
            self._finished.set()
            log.debug("sim connection to %s ended", self.target)

    async def _expire(self, lifetime: float) -> None:
        """The server-imposed connection lifetime: close ``lifetime`` seconds after the handshake."""
        await anyio.sleep(lifetime)
        self._note("lifetime")
        try:
            await self._out.emit([wse.CloseConnection(code=self._venue.lifetime_code, reason="lifetime")], Mode.SEND)
        except GONE:
            self._scope.cancel()
            return
        await anyio.sleep(self._venue.close_timeout)
        self._scope.cancel()

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
        answer = rest_api.respond(head, self._book_snapshot)
        if answer is not None:  # GET /book?symbol=...: the REST snapshot, then close
            await self._stream.send(answer)
            return None
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
        self._service.rng = decision.rng
        self.opened_at = anyio.current_time()
        self._note("open", request.target)
        await self._stream.send(self._ws.send(wse.AcceptConnection()) + decision.raw)
        if decision.raw:
            self.transcript.add(self.opened_at, "out", "raw", decision.raw.hex())
        log.debug("sim accepted a connection to %s", self.target)
        return rest

    def _book_snapshot(self, symbol: str, depth: int | None) -> dict[str, Any]:
        if symbol not in self._venue.symbols:
            raise KeyError(symbol)
        return self._venue.feed.book_snapshot(symbol, anyio.current_time(), depth)

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
                await self._hearing.wait()  # half-open: nothing is read
                if data and self._ws.state is not ConnectionState.CLOSED:
                    self._ws.receive_data(data)
                    if not await self._handle_events():
                        return
                # Once the close reply is held by a stall, keep reading only to see the client go.
                await self._hearing.wait()
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
                    await self._out.emit([wse.CloseConnection(code=1009, reason="message too big")], Mode.SEND)
                    return False
                if event.message_finished:
                    await self._on_message(event)
            elif isinstance(event, wse.Ping):
                self.transcript.add(anyio.current_time(), "in", "ping", bytes(event.payload).hex())
                await self._out.emit([event.response()], Mode.DROP)
            elif isinstance(event, wse.Pong):
                self.transcript.add(anyio.current_time(), "in", "pong", bytes(event.payload).hex())
            elif isinstance(event, wse.CloseConnection):
                self.transcript.add(anyio.current_time(), "in", "close", f"{event.code} {event.reason}".rstrip())
                return await self._on_close(event)
        return True

    async def _on_message(self, last: wse.Message) -> None:
        parts, self._parts, self._part_size = self._parts, [], 0
        now = anyio.current_time()
        if isinstance(last, wse.BytesMessage):
            self.transcript.add(now, "in", "binary", b"".join(cast("list[bytes]", parts)).hex())
            request: dialect.Request = dialect.Invalid(dialect.BAD_REQUEST, "binary messages are not supported")
        else:
            text = "".join(cast("list[str]", parts))
            logged = redact(text)
            self.received.append((now, logged))
            self.transcript.add(now, "in", "text", logged)
            request = dialect.parse_request(text, self._venue.symbols)
        await self._service.carry_out(request, stalled=self._out.stalled)

    async def _on_close(self, event: wse.CloseConnection) -> bool:
        state = self._ws.state
        if state is ConnectionState.REMOTE_CLOSING:  # the client closes: same code back
            outcome = await self._out.emit([event.response()], Mode.HOLD)
            if outcome is Outcome.HELD:
                self._out.close_when_flushed()
                return True
            return False
        if state is ConnectionState.CLOSED:  # the client's reply to our close frame
            return False
        # Still OPEN: wsproto turned a protocol violation into this close event.
        await self._out.emit([wse.CloseConnection(code=event.code, reason=event.reason)], Mode.SEND)
        return False

    async def _write(self) -> None:
        """The writer task; the session ends when it returns (a close answer held by a stall went out)."""
        try:
            await self._out.run()
        except GONE:
            pass
        self._scope.cancel()
