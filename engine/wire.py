"""One session's wire: its stream and protocol, its cancel scopes, and ordered writes.

A :class:`Wire` lives from dial to teardown of one socket. Every write goes
through its :class:`~engine.sendqueue.SendQueue`, so frames never interleave
and control frames (pongs, close frames, the keepalive ping: what the reader
writes) go before subscription and normal sends. A send that the rate limit
makes wait waits *before* it queues, so it never holds up a pong.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from engine.causes import Cause, TransportError
from engine.errors import ConnectionClosed, ConnectionLost, NotConnected
from engine.sendqueue import Priority, SendQueue, priority_in
from transports.base import NO_CAPABILITIES, ByteStream, Capabilities, capabilities_of
from transports.websocket import ClientProtocol

__all__ = ["TRANSPORT_ERRORS", "WRITE_FAILED", "Wire", "describe"]

TRANSPORT_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)
#: what a control write (pong, close frame, ping) may fail with when the session is going away:
#: the stream broke, or the send queue was closed (ConnectionLost) or never opened (NotConnected)
WRITE_FAILED = (*TRANSPORT_ERRORS, NotConnected, ConnectionClosed)
_UNSENT = "the session ended before this frame was sent"


class Stateful(Protocol):
    """What a wire asks for a send's default priority: a state machine's model."""

    state: str


def describe(exc: BaseException) -> str:
    """``Type: message`` (or just the type) for causes and logs."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Wire:
    """One socket of a connection (see the module doc).

    ``scope`` is the session's cancel scope (dial to teardown);
    ``setup_scope`` the connector/subscriber child's, while it runs.
    ``last_rx`` is the clock time of the last complete frame (liveness);
    ``live_since`` when the session went live (a long enough one resets the
    reconnect attempt count).
    """

    __slots__ = (
        "scope", "setup_scope", "stream", "proto", "caps", "gate", "last_rx", "live_since", "_end", "_limiter",
        "_metered", "_model",
    )  # fmt: skip

    def __init__(
        self,
        scope: anyio.CancelScope,
        end: Callable[[Cause], None],
        *,
        limiter: Any = None,
        max_queued: int = 10_000,
        model: Stateful | None = None,
    ) -> None:
        self.scope = scope
        self.setup_scope: anyio.CancelScope | None = None
        self.stream: ByteStream | None = None
        self.proto: ClientProtocol | None = None
        self.caps: Capabilities = NO_CAPABILITIES
        self.gate = SendQueue(max_queued)
        self.last_rx = 0.0
        self.live_since: float | None = None  # when this session went live
        self._end = end  # ends the session with a cause (the connection's)
        self._limiter = limiter  # the connection's rate limit (an engine.ratelimit.Limiter), or None
        # whose state gives a send's priority when it names none (the connection's
        # machine; NORMAL without one): asked only when the send must queue, as one
        # that goes out at once needs none. (A reference: a closure cost ~200 bytes a connection.)
        self._model = model
        # the scopes of sends waiting for rate-limit tokens (made at the first such wait:
        # an empty set is ~220 bytes on every connection); whether the session is over is
        # the gate's state
        self._metered: set[anyio.CancelScope] | None = None

    def attach(self, stream: ByteStream, proto: ClientProtocol, now: float) -> None:
        self.stream, self.proto = stream, proto
        self.caps = capabilities_of(stream)
        self.last_rx = now

    def shut(self) -> None:
        """The session is over: every send waiting (for tokens or for its turn) fails with ConnectionLost."""
        self.gate.close()
        metered, self._metered = self._metered, None
        for scope in metered or ():
            scope.cancel()

    def stop_setup(self) -> None:
        """Cancel the connector/subscriber if it is still running."""
        if self.setup_scope is not None:
            self.setup_scope.cancel()

    async def write_control(self, data: bytes) -> None:
        """A frame the protocol itself needs out (pong, close, keepalive ping): first in line."""
        if self._limiter is not None and self._limiter.rate.count_control:
            await self._limiter.acquire(1, first=True)  # counted, but never behind queued sends
        await self._write(data, Priority.CONTROL)

    async def settle(self, rounds: int = 3) -> None:
        """Give a write in flight a few scheduling rounds to finish before the stream closes.

        A write that is merely at its checkpoint (another task's close frame,
        on a stream with room) completes within a round or two; one blocked on
        a peer that does not read would hold the teardown forever, so after
        ``rounds`` the stream closes under it (which is what ends it).
        """
        for _ in range(rounds):
            if not self.gate.busy:
                return
            await anyio.lowlevel.cancel_shielded_checkpoint()

    def write_now(self, data: bytes, priority: int | None = None, weight: int | None = None) -> Awaitable[None] | None:
        """:meth:`write_data` without a wait when none is needed: None when ``data`` went out.

        It goes at once when nobody holds or waits for a turn, the tokens are
        free and the stream takes it without waiting (``try_send``); otherwise
        this returns what finishes the send (await it; it waits as
        :meth:`write_data` does, with the tokens it already took). ``priority``
        None: by the state of the wire's ``model`` (:func:`~engine.sendqueue.priority_in`).
        """
        if not self.caps.try_send or not self.gate.free:
            return self.write_data(data, self._priority(priority), weight)
        limiter = self._limiter
        if limiter is not None and not limiter.take(weight):
            # (take() took nothing)
            return self.write_data(data, self._priority(priority), weight)
        try:
            if self.stream.try_send(data):  # type: ignore[union-attr]  # (caps come with a stream)
                return None
        except TRANSPORT_ERRORS as exc:
            raise NotConnected(f"send failed: {describe(exc)}") from None
        # the stream would wait: the peer is not reading
        return self._write_paid(data, self._priority(priority))

    def _priority(self, priority: int | None) -> int:
        if priority is not None:
            return priority
        return Priority.NORMAL if self._model is None else priority_in(self._model.state)

    async def _write_paid(self, data: bytes, priority: int) -> None:
        try:
            await self._write(data, priority)
        except TRANSPORT_ERRORS as exc:
            raise NotConnected(f"send failed: {describe(exc)}") from None

    async def write_data(self, data: bytes, priority: int = Priority.NORMAL, weight: int | None = None) -> None:
        """A frame the application sends, after the rate limit; transport errors become :class:`NotConnected`.

        A send still waiting for its tokens when the session ends fails at once
        with :class:`ConnectionLost` and gives its place up (:meth:`shut`), so
        the next session's sends never wait behind dead ones.
        """
        limiter = self._limiter
        if limiter is not None and not limiter.take(weight):
            await self._wait_for_tokens(limiter, weight)
        await self._write_paid(data, priority)

    async def _wait_for_tokens(self, limiter: Any, weight: int | None) -> None:
        if self.gate.closed:
            raise ConnectionLost(_UNSENT)
        metered = self._metered
        if metered is None:
            metered = self._metered = set()
        # (a cancel scope only on this slow path: ~3.5 us each on asyncio, ~6.6 on trio)
        with anyio.CancelScope() as scope:
            metered.add(scope)
            try:
                await limiter.acquire(weight)
            finally:
                metered.discard(scope)
        if scope.cancelled_caught:
            raise ConnectionLost(_UNSENT)

    async def _write(self, data: bytes, priority: int) -> None:
        stream = self.stream
        if stream is None:
            raise NotConnected("not connected")
        gate = self.gate
        await gate.acquire(priority)
        try:
            try:
                await stream.send(data)
            except TRANSPORT_ERRORS:
                raise
            except BaseException:
                # Interrupted (cancelled, timed out): on a stream that writes in
                # pieces part of the frame may be on the wire, and anything sent
                # after it would be spliced into its payload. End the session.
                if not self.caps.atomic_send:
                    gate.close("the session ended: a send was interrupted mid-frame")
                    self._end(TransportError("a send was interrupted mid-frame"))
                raise
        finally:
            gate.release()
