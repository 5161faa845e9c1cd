"""One session's wire: its stream and protocol, its cancel scopes, and ordered writes.

A :class:`Wire` lives from dial to teardown of one socket. Every write goes
through its :class:`SendGate`, first come first served, so frames never
interleave. Writes are of two kinds: *control* (pongs, close frames, the
keepalive ping: what the reader writes) and *data* (what the application and
its hooks send); a priority send queue can put the first kind ahead.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel

from engine.causes import Cause, TransportError
from engine.errors import NotConnected
from transports.base import NO_CAPABILITIES, ByteStream, Capabilities, capabilities_of
from transports.websocket import ClientProtocol

__all__ = ["SendGate", "TRANSPORT_ERRORS", "Wire", "describe"]

TRANSPORT_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)


def describe(exc: BaseException) -> str:
    """``Type: message`` (or just the type) for causes and logs."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SendGate:
    """Serializes frame writes of one session, first come first served.

    Uncontended it is a flag (no checkpoint, no allocation); a waiter gets
    the gate handed over directly on release, so a sender that loops cannot
    starve the reader's pongs. ``close()`` fails every waiter.
    """

    __slots__ = ("busy", "waiters", "closed")

    def __init__(self) -> None:
        self.busy = False
        self.waiters: list[anyio.Event] = []
        self.closed = False

    async def acquire(self) -> None:
        if self.closed:
            raise NotConnected("the session has ended")
        if not self.busy:
            self.busy = True
            return
        turn = anyio.Event()
        self.waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn in self.waiters:
                self.waiters.remove(turn)
            elif not self.closed:
                self.release()  # it was handed to us as we were cancelled: pass it on
            raise
        if self.closed:
            raise NotConnected("the session has ended")

    def release(self) -> None:
        if self.closed:
            return
        if self.waiters:
            self.waiters.pop(0).set()  # stays busy: ownership moves to the next sender
        else:
            self.busy = False

    def close(self) -> None:
        self.closed = True
        waiters, self.waiters = self.waiters, []
        for turn in waiters:
            turn.set()


class Wire:
    """One socket of a connection (see the module doc).

    ``scope`` is the session's cancel scope (dial to teardown);
    ``setup_scope`` the connector/subscriber child's, while it runs.
    ``last_rx`` is the clock time of the last complete frame (liveness);
    ``live_since`` when the session went live (a long enough one resets the
    reconnect attempt count).
    """

    __slots__ = ("scope", "setup_scope", "stream", "proto", "caps", "gate", "last_rx", "live_since", "_end")

    def __init__(self, scope: anyio.CancelScope, end: Callable[[Cause], None]) -> None:
        self.scope = scope
        self.setup_scope: anyio.CancelScope | None = None
        self.stream: ByteStream | None = None
        self.proto: ClientProtocol | None = None
        self.caps: Capabilities = NO_CAPABILITIES
        self.gate = SendGate()
        self.last_rx = 0.0
        self.live_since: float | None = None  # when this session went live
        self._end = end  # ends the session with a cause (the connection's)

    def attach(self, stream: ByteStream, proto: ClientProtocol, now: float) -> None:
        self.stream, self.proto = stream, proto
        self.caps = capabilities_of(stream)
        self.last_rx = now

    def stop_setup(self) -> None:
        """Cancel the connector/subscriber if it is still running."""
        if self.setup_scope is not None:
            self.setup_scope.cancel()

    async def write_control(self, data: bytes) -> None:
        """A frame the protocol itself needs out (pong, close, keepalive ping)."""
        await self._write(data)

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

    async def write_data(self, data: bytes) -> None:
        """A frame the application sends; transport errors become :class:`NotConnected`."""
        try:
            await self._write(data)
        except TRANSPORT_ERRORS as exc:
            raise NotConnected(f"send failed: {describe(exc)}") from None

    async def _write(self, data: bytes) -> None:
        stream = self.stream
        if stream is None:
            raise NotConnected("not connected")
        gate = self.gate
        await gate.acquire()
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
                    gate.close()
                    self._end(TransportError("a send was interrupted mid-frame"))
                raise
        finally:
            gate.release()
