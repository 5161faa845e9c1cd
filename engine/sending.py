"""Sending and requests: the part of :class:`~engine.connection.Connection` that writes.

Every send goes through the session's :class:`~engine.wire.Wire`: the rate
limit first (``weight`` tokens), then the priority send queue. Requests
register their key before the frame goes out (:mod:`engine.requests`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any

import orjson

from engine.config import ConnectionSetup
from engine.errors import NotConnected
from engine.requests import Requests
from engine.sendqueue import Priority
from engine.wire import Wire
from machines.connection import State
from transports.errors import InvalidState
from transports.websocket import ClientProtocol, ProtocolState

__all__ = ["Sending"]

Message = str | bytes


class Sending:
    """Send, ping, request, message ids (a base of Connection; it holds no state of its own)."""

    __slots__ = ()

    # what it uses of the connection
    id: str
    setup: ConnectionSetup
    _wire: Wire | None
    _requests: Requests
    _clock: Callable[[], float]
    _ids: Callable[[], int | str]

    @property
    def state(self) -> State:  # (the connection's; declared here for the messages below)
        raise NotImplementedError

    def _open_wire(self) -> tuple[Wire, ClientProtocol]:
        wire = self._wire
        proto = wire.proto if wire is not None else None
        if wire is None or proto is None or proto.state is not ProtocolState.OPEN:
            raise self._not_connected()
        return wire, proto

    def _not_connected(self) -> NotConnected:
        return NotConnected(f"{self.id}: cannot send while {self.state.value}")

    def _send_now(
        self, wire: Wire, frame: bytes, priority: int | None = None, weight: int | None = None
    ) -> Awaitable[None] | None:
        """Send ``frame`` now if nothing makes it wait (None), else what finishes the send.

        ``priority`` None: by the connection's state (the wire asks, only if the send must queue).
        """
        try:
            rest = wire.write_now(frame, priority, weight)
        except NotConnected as exc:
            raise NotConnected(f"{self.id}: {exc}") from None
        return None if rest is None else self._finish(rest)

    async def _send_frame(self, wire: Wire, frame: bytes, priority: int | None, weight: int | None) -> None:
        rest = self._send_now(wire, frame, priority, weight)
        if rest is not None:
            await rest

    async def _finish(self, rest: Awaitable[None]) -> None:
        try:
            await rest
        except NotConnected as exc:
            raise NotConnected(f"{self.id}: {exc}") from None

    def _frame(self, payload: object) -> tuple[Wire, bytes]:
        """The open wire, and ``payload`` framed (see :meth:`send` for the types).

        The protocol checks that it is open as it frames (InvalidState): the hot
        path (``send`` of a dict, ``request``) tests the state once, not twice.
        """
        wire = self._wire
        if wire is None or wire.proto is None:
            raise self._not_connected()
        proto = wire.proto
        try:
            if isinstance(payload, (dict, list)):  # (the usual request first)
                return wire, proto.send_text_utf8(orjson.dumps(payload))
            if isinstance(payload, str):
                return wire, proto.send_text(payload)
            if isinstance(payload, (bytes, bytearray, memoryview)):
                return wire, proto.send_bytes(bytes(payload))
        except InvalidState:
            raise self._not_connected() from None
        raise TypeError(f"cannot send {type(payload).__name__}: use str, bytes, dict or list")

    async def send_text(self, text: str, *, weight: int | None = None, priority: int | None = None) -> None:
        """Send one text message (see :meth:`send` for ``weight`` and ``priority``)."""
        wire, proto = self._open_wire()
        await self._send_frame(wire, proto.send_text(text), priority, weight)

    async def send_bytes(self, data: bytes, *, weight: int | None = None, priority: int | None = None) -> None:
        """Send one binary message (see :meth:`send` for ``weight`` and ``priority``)."""
        wire, proto = self._open_wire()
        await self._send_frame(wire, proto.send_bytes(data), priority, weight)

    async def send(
        self,
        payload: str | bytes | dict[str, Any] | list[Any],
        *,
        weight: int | None = None,
        priority: int | None = None,
    ) -> None:
        """Send ``str`` as text, ``bytes`` as binary, a dict/list as JSON text.

        ``weight``: the tokens it costs under ``setup.rate_limit`` (default:
        the limit's weight); it waits for them on the injected clock.
        ``priority`` (:class:`~engine.sendqueue.Priority`): by default CONTROL
        while authenticating, SUBSCRIPTION while subscribing, NORMAL after.
        Raises :class:`~engine.errors.ConnectionLost` if the session ends
        while it waits (it was not sent), :class:`~engine.errors.SendQueueFull`
        past ``setup.max_queued`` waiting sends.
        """
        wire, frame = self._frame(payload)
        await self._send_frame(wire, frame, priority, weight)

    async def ping(self, payload: bytes = b"") -> None:
        """Send a protocol-level ping (the pong resets the traffic deadline)."""
        wire, proto = self._open_wire()
        await self._send_frame(wire, proto.send_ping(payload), Priority.CONTROL, None)

    def next_id(self) -> Any:
        """The next message id of this connection: 1, 2, 3, ... by default (never reused, across
        reconnects; safe from many tasks and threads), or what ``setup.message_id`` makes
        (``"uuid7"``, or your own ``() -> int | str``)."""
        return self._ids()

    def request(
        self,
        payload: str | bytes | dict[str, Any] | list[Any],
        *,
        key: Hashable,
        expect: int = 1,
        timeout: float | None = None,
        is_final: Callable[[Message], bool] | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Send ``payload`` and wait for the response(s) whose key is ``key``.

        A message answers when ``setup.response_key(message) == key`` (by
        default the ``"id"`` of a JSON object). The key is registered before
        the send, so a fast reply is never missed; answers are not passed to
        the handler. ``expect=N`` gathers N responses (returns a list);
        ``is_final(message)`` ends the wait early. ``timeout`` defaults to
        ``setup.response_max_limit * expect``; the send counts toward it.

        Raises :class:`~engine.errors.DuplicateRequest` if ``key`` is already
        pending, :class:`~engine.errors.RequestTimeout`, or
        :class:`~engine.errors.ConnectionLost` if the socket drops first (the
        request's outcome is then unknown). Don't await it from inside the
        handler: the handler runs in the reader, which delivers the reply.

        The arguments and the payload are checked, and the frame made, when it
        is called (a bad one raises there, :class:`~engine.errors.NotConnected`
        too); the coroutine it returns registers the key, sends and waits.
        (Not an ``async def`` itself: one coroutine frame less on every step
        of a request: 1.5 % of the instructions of a pipelined round trip.)
        """
        if type(expect) is not int and (isinstance(expect, bool) or not isinstance(expect, int)) or expect < 1:
            raise ValueError(f"expect must be a positive integer, not {expect!r}")
        limit = timeout if timeout is not None else self.setup.response_max_limit * expect
        clock = self._clock
        wire, frame = self._frame(payload)
        now = clock()
        return self._requests.request(self._send_now, wire, frame, key, expect, now + limit, is_final, clock, now)
