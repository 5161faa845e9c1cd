"""Dial and WebSocket handshake: one attempt, ending open or with a typed cause."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from engine.causes import Cause, HandshakeRejection, InvalidHandshake, TransportError
from engine.config import ConnectionSetup
from engine.wire import TRANSPORT_ERRORS, describe
from transports.base import ByteStream, Dialer, capabilities_of
from transports.websocket import Accepted, ClientProtocol, Rejected
from transports.websocket import InvalidHandshake as InvalidHandshakeError

__all__ = ["HandshakeFailed", "close_quietly", "open_websocket"]


class HandshakeFailed(Exception):
    """Internal: the attempt ended before the WebSocket opened; ``cause`` says why."""

    def __init__(self, cause: Cause, rejection: Rejected | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.rejection = rejection


async def open_websocket(
    setup: ConnectionSetup, dialer: Dialer, wall_clock: Callable[[], float]
) -> tuple[ByteStream, ClientProtocol, list[object]]:
    """Dial ``setup.url`` and upgrade. Returns the stream, the open protocol and
    whatever arrived after the 101 (events). Raises :class:`HandshakeFailed`.

    The caller bounds it (``open_timeout``). ``wall_clock`` (POSIX seconds)
    is read only to turn an HTTP-date ``Retry-After`` into a delay.
    """
    url = setup.parsed_url
    proto = ClientProtocol(
        url.host_header,
        url.resource,
        subprotocols=setup.subprotocols,
        extra_headers=setup.extra_headers,
        max_message_size=setup.max_message_size,
        frame_path=setup.frame_path,
    )
    try:
        request = proto.connect()
    except ValueError as exc:  # our own request cannot be built: retrying won't help
        raise HandshakeFailed(InvalidHandshake(str(exc), ours=True)) from None
    stream: ByteStream | None = None
    try:
        stream = await dialer(url)
    except TRANSPORT_ERRORS as exc:
        raise HandshakeFailed(TransportError(describe(exc), during="dial")) from None
    try:
        await stream.send(request)
        while True:
            try:
                data = await stream.receive(setup.read_size)
                events = proto.receive_data(data)
            except anyio.EndOfStream:
                events = proto.receive_eof()
            if events:
                first = events[0]
                if isinstance(first, Accepted):
                    return stream, proto, events[1:]
                if isinstance(first, Rejected):
                    raise HandshakeFailed(_rejection(first, wall_clock), first)
    except HandshakeFailed:
        await close_quietly(stream)
        raise
    except InvalidHandshakeError as exc:
        await close_quietly(stream)
        raise HandshakeFailed(InvalidHandshake(str(exc))) from None
    except TRANSPORT_ERRORS as exc:
        await close_quietly(stream)
        raise HandshakeFailed(TransportError(describe(exc), during="dial")) from None
    except BaseException:
        await close_quietly(stream)
        raise


def _rejection(rejected: Rejected, wall_clock: Callable[[], float]) -> HandshakeRejection:
    retry_after = rejected.retry_after
    if retry_after is None:
        when = rejected.retry_after_date
        if when is not None:
            retry_after = max(0.0, when - wall_clock())
    return HandshakeRejection(rejected.status, retry_after, rejected.headers)


async def close_quietly(stream: ByteStream | None) -> None:
    """Close ``stream`` without raising, bounded (a TLS goodbye to a dead peer must not hang)."""
    if stream is None:
        return
    if capabilities_of(stream).instant_close:
        await stream.aclose()
        return
    with anyio.move_on_after(1.0, shield=True):
        try:
            await stream.aclose()
        except Exception:  # closing a broken stream may fail; it is closed either way
            pass
