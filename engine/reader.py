"""The reader: one socket read, every complete message of it to the handler; liveness.

The hot path. Per read: one deadline-bounded receive, one decode call, one
delivery call and one clock read; never per message. Control frames, close
frames and pending requests take the slow path (:func:`_dispatch`). When the
read ends the session (close, failure, EOF, silence) the reader reports the
typed cause to the connection, which fires ``lost`` (unless the user is
closing), and returns.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
from stringzilla import contains

from engine.causes import Cause, ClosedByPeer, ProtocolError, Silence, TransportError
from engine.liveness import Expiry, Liveness
from engine.wire import TRANSPORT_ERRORS, WRITE_FAILED, Wire, describe
from machines.connection import State
from transports.base import ByteStream, deadline_receiver
from transports.websocket import ClientProtocol, Close, Failure, ProtocolState

if TYPE_CHECKING:
    from engine.host import SessionHost

__all__ = ["read"]

log = logging.getLogger("wirestate.connection")

_LIVE, _STALE = State.LIVE.value, State.STALE.value


async def read(conn: SessionHost, wire: Wire, leftovers: list[object]) -> None:
    """Read until the session ends (see the module doc)."""
    stream, proto = wire.stream, wire.proto
    assert stream is not None and proto is not None
    if leftovers and await _dispatch(conn, wire, proto, leftovers):
        return
    setup = conn.setup
    receive_before = deadline_receiver(stream)
    feed = proto.receive_data
    clock = conn._clock
    model = conn._model
    requests = conn._requests
    delivery = conn._delivery
    outlet = conn._outlet
    size = setup.read_size
    app_ping = setup.app_ping
    live = Liveness(setup.traffic_timeout, setup.pong_timeout, setup.keepalive or app_ping is not None,
                    app_ping.interval if app_ping is not None else None)  # fmt: skip
    swallow = app_ping.reply if app_ping is not None else None  # the app ping's answer: not for the handler
    tail, carry = b"", False  # (the answer prefilter's view of earlier reads, below)
    while True:
        stale = model.state == _STALE
        try:
            data = await receive_before(live.due(wire.last_rx, stale), size)
        except anyio.EndOfStream:
            _done(conn, wire, _eof_cause(proto))
            return
        except TRANSPORT_ERRORS as exc:
            _done(conn, wire, TransportError(describe(exc)))
            return
        if data is None:  # the deadline passed with no complete frame
            now = clock()
            expiry = live.expired(wire.last_rx, now, live=model.state == _LIVE, stale=stale)
            if expiry is Expiry.LOST:
                _done(conn, wire, Silence(live.grace))
                return
            if expiry is Expiry.SILENCE:
                conn._fire("silence", note=f"no traffic for {live.timeout:g} s")
            if expiry is Expiry.IDLE:
                wire.last_rx = now  # setting up or closing: setup_timeout / close_timeout bound those
            elif not await _ping(conn, wire, proto):
                return
            continue
        items = feed(data)
        if requests and requests.marker is not None:
            # An answer holds the marker in its raw bytes (server frames are unmasked,
            # uncompressed): one vectorized search of the read instead of a key lookup
            # per message. A message begun in an earlier read that had it, or the
            # marker cut between two reads, counts as found.
            marker = requests.marker
            cut = len(marker) - 1
            found = contains(data, marker) or carry or (cut > 0 and marker in tail + data[:cut])
            carry = found and proto.holding
            if cut > 0:
                tail = (tail + data[-cut:])[-cut:]  # the stream's last bytes, even over 1-byte reads
        else:
            found = True
        if not items:
            continue  # part of a frame: not traffic (a peer dripping bytes is silent)
        if stale:
            conn._fire("traffic", note="frame within the grace")
        if proto.controls or (requests and found):
            if await _dispatch(conn, wire, proto, items):
                return
        else:
            if swallow is not None and swallow in items:
                items = [m for m in items if m != swallow]
                if not items:
                    wire.last_rx = clock()
                    continue
            conn.messages_received += len(items)
            await delivery.deliver(items)  # type: ignore[arg-type]  # controls==False: all str/bytes
        if outlet.full:
            # Backpressure: a `block` stream is full, so read no more until its
            # consumer takes a batch (the overshoot is this one read).
            await outlet.relieve()
        # Taken after handling (and after a backpressure wait): time spent in a slow
        # handler or a slow consumer is not the peer's silence.
        wire.last_rx = clock()


def _done(conn: SessionHost, wire: Wire, cause: Cause) -> None:
    """The reader ends the session: report why, stop a setup still running."""
    conn._lose(cause)
    wire.stop_setup()


def _eof_cause(proto: ClientProtocol) -> Cause:
    if proto.close_received is not None:
        return ClosedByPeer(*proto.close_received)
    return ClosedByPeer(1006)


async def _ping(conn: SessionHost, wire: Wire, proto: ClientProtocol) -> bool:
    """Send a ping if the WebSocket is open; False when that ended the session."""
    if proto.state is not ProtocolState.OPEN:
        return True
    app_ping = conn.setup.app_ping
    if app_ping is None:
        return await _reader_write(conn, wire, proto.send_ping(b"wirestate"), "ping")
    message = app_ping.message
    frame = proto.send_text(message) if isinstance(message, str) else proto.send_bytes(message)
    return await _reader_write(conn, wire, frame, "ping")


async def _reader_write(conn: SessionHost, wire: Wire, data: bytes, what: str) -> bool:
    """A control write by the reader, bounded so that a peer that stops reading
    (or a send stuck ahead of it) cannot stall liveness. False: the session ended."""
    grace = conn.setup.pong_timeout
    try:
        with anyio.CancelScope(deadline=conn._clock() + grace) as scope:
            await wire.write_control(data)
    except WRITE_FAILED as exc:
        _done(conn, wire, TransportError(f"{what} failed: {describe(exc)}"))
        return False
    if scope.cancelled_caught:
        _done(conn, wire, Silence(grace, what))
        return False
    return True


async def _dispatch(conn: SessionHost, wire: Wire, proto: ClientProtocol, items: list[object]) -> bool:
    """Slow path: a read with control events or pending requests. True: the session is over."""
    messages: list[str | bytes] = []
    requests = conn._requests
    # (asked once per read: nothing registers a request while this read is handled)
    offer = requests.offer if requests else None
    app_ping = conn.setup.app_ping
    swallow = app_ping.reply if app_ping is not None else None
    for item in items:
        kind = type(item)
        if kind is str or kind is bytes:
            if item == swallow or (offer is not None and offer(item)):  # type: ignore[arg-type]
                continue
            messages.append(item)  # type: ignore[arg-type]
        elif kind is Close:
            conn.last_close_received = (item.code, item.reason)  # type: ignore[attr-defined]
        elif kind is Failure:
            log.warning("%s: protocol violation by server: %s (%s)", conn.id, item.reason, item.code)  # type: ignore[attr-defined]
    # Pongs (and a close reply) go out before the handler sees this read's
    # messages: a ping that arrived before a message is answered before
    # anything the handler sends in reply to that message.
    outgoing = proto.data_to_send()
    over = False
    if outgoing:
        if proto.close_sent is not None:
            conn.last_close_sent = proto.close_sent
        if proto.state is ProtocolState.CLOSED:
            # Our close reply or failure close: best effort, bounded; the close
            # (or violation) is what ends the session, not this write.
            with anyio.CancelScope(deadline=conn._clock() + conn.setup.close_timeout):
                try:
                    await wire.write_control(outgoing)
                except WRITE_FAILED:
                    pass
        else:
            over = not await _reader_write(conn, wire, outgoing, "pong")
    closed = proto.state is ProtocolState.CLOSED
    if messages:
        # What arrived before the close (or the failure) is handed over first,
        # while the session still counts as up; when ending, within close_timeout.
        conn.messages_received += len(messages)
        if over or closed:
            with anyio.CancelScope(shield=True, deadline=conn._clock() + conn.setup.close_timeout):
                await conn._delivery.deliver(messages)
        else:
            await conn._delivery.deliver(messages)
    if closed:
        cause: Cause
        if proto.close_received is None:  # we failed the connection
            code, why = proto.close_sent or (1002, "protocol error")
            cause = ProtocolError(code, why)
        else:
            cause = ClosedByPeer(*proto.close_received)
        _done(conn, wire, cause)
        over = True
        stream = wire.stream
        assert stream is not None
        deadline = conn._clock() + conn.setup.close_timeout
        if isinstance(cause, ProtocolError):
            # RFC 6455 7.1.1: the server closes TCP first. Closing with unread
            # bytes would reset the connection and could destroy our close frame
            # before the server reads it: half-close, then drain to EOF.
            await _half_close(stream)
        await _drain_to_eof(stream, deadline)
    return over


async def _half_close(stream: ByteStream) -> None:
    try:
        await stream.send_eof()
    except (NotImplementedError, *TRANSPORT_ERRORS):
        pass  # (TLS cannot half-close; the drain still waits for the server)


async def _drain_to_eof(stream: ByteStream, deadline: float) -> None:
    """Read and drop until end of stream, an error, or ``deadline``."""
    receive_before = deadline_receiver(stream)
    try:
        while await receive_before(deadline, 65536) is not None:
            pass
    except TRANSPORT_ERRORS:
        return
