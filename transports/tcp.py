"""TCP and TLS byte streams (real sockets).

On asyncio, plain TCP uses a small native :class:`asyncio.Protocol` stream:
anyio's socket stream pauses and resumes reading around every ``receive()``
(two ``epoll_ctl`` calls per read) and adds checkpoints to every send, which
measurably slows both the data path and the handshake. TLS, and every trio
connection, go through anyio (``tls_standard_compatible=False``: WebSocket
servers often drop TCP without a TLS close_notify).
"""

from __future__ import annotations

import asyncio
import collections
import ssl

import anyio
from anyio.abc import ByteStream

from transports.base import URL, Capabilities, Dialer, running_asyncio_loop

__all__ = ["AsyncioByteStream", "dial_tcp", "tcp_dialer"]

# Pause the socket when this much is buffered and unread (backpressure for a
# slow handler); resume below the low mark.
_HIGH_WATER = 4 * 1024 * 1024
_LOW_WATER = 1024 * 1024


class _StreamProtocol(asyncio.Protocol):
    """Collects received chunks; wakes the one reader; tracks flow control."""

    __slots__ = ("transport", "chunks", "buffered", "read_paused", "eof", "lost", "closed", "reader", "drain", "write_paused")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.read_paused = False
        self.eof = False
        self.lost: BaseException | None = None
        self.closed = False
        self.reader: asyncio.Future[bool] | None = None  # True: woken by the network
        self.drain: asyncio.Future[None] | None = None
        self.write_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is not None:
            self.lost = exc
        else:
            self.eof = True
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()

    def _wake_reader(self) -> None:
        waiter = self.reader
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _wake_writer(self) -> None:
        waiter = self.drain
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class AsyncioByteStream(ByteStream):
    """An anyio :class:`ByteStream` over a native asyncio TCP transport."""

    #: writes never split under cancellation; closing never waits
    capabilities = Capabilities(atomic_send=True, instant_close=True)

    __slots__ = ("_transport", "_protocol", "_closing")

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._closing = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._readable():
            await self._wait_readable(None)
        return self._take(max_bytes)

    async def receive_before(self, deadline: float, max_bytes: int = 65536) -> bytes | None:
        """Like :meth:`receive`, but ``None`` when nothing arrived by ``deadline`` (event-loop time).

        One timer handle, and only while it actually waits: the reader's
        liveness deadline without a cancel scope per read. Buffered data is
        returned even when the deadline has passed (as a cancel scope would:
        no checkpoint, no cancellation).
        """
        while not self._readable():
            if not await self._wait_readable(deadline):
                return None
        return self._take(max_bytes)

    def _readable(self) -> bool:
        """True when data is buffered; raises if none can come any more."""
        if self._closing:
            raise anyio.ClosedResourceError
        protocol = self._protocol
        if protocol.chunks:
            return True
        if protocol.lost is not None:
            raise anyio.BrokenResourceError(str(protocol.lost)) from protocol.lost
        if protocol.eof:
            raise anyio.EndOfStream
        return False

    async def _wait_readable(self, deadline: float | None) -> bool:
        """Wait for the protocol to wake us; False when ``deadline`` came first."""
        loop = asyncio.get_running_loop()
        protocol = self._protocol
        waiter = protocol.reader = loop.create_future()
        timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
        try:
            await waiter
        finally:
            protocol.reader = None
            if timer is not None:
                timer.cancel()
        return waiter.result()  # type: ignore[no-any-return]

    def _take(self, max_bytes: int) -> bytes:
        protocol = self._protocol
        chunks = protocol.chunks
        data = chunks.popleft()
        if len(data) > max_bytes:
            chunks.appendleft(data[max_bytes:])
            data = data[:max_bytes]
        protocol.buffered -= len(data)
        if protocol.read_paused and protocol.buffered < _LOW_WATER:
            protocol.read_paused = False
            self._transport.resume_reading()
        return data

    async def send(self, item: bytes) -> None:
        protocol = self._protocol
        if self._closing:
            raise anyio.ClosedResourceError
        if protocol.closed or self._transport.is_closing():
            raise anyio.BrokenResourceError("connection closed")
        self._transport.write(item)
        while protocol.write_paused and not protocol.closed:
            waiter = protocol.drain = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                protocol.drain = None
            if self._closing:
                raise anyio.ClosedResourceError

    async def send_eof(self) -> None:
        if self._transport.can_write_eof():
            self._transport.write_eof()

    async def aclose(self) -> None:
        if not self._closing:
            self._closing = True
            if self._transport.get_write_buffer_size():
                # close() would wait to flush to a peer that may never read:
                # the socket (and a blocked writer) would outlive us.
                self._transport.abort()
            else:
                self._transport.close()
            self._protocol._wake_reader()
            self._protocol._wake_writer()

    def abort(self) -> None:
        """Reset the connection (no FIN): for tests and fault injection."""
        self._closing = True
        self._transport.abort()
        self._protocol._wake_reader()
        self._protocol._wake_writer()


async def dial_tcp(url: URL, *, ssl_context: ssl.SSLContext | None = None) -> ByteStream:
    """Open a TCP connection to ``url``; TLS for ``wss://``.

    Certificates are verified by default (``ssl.create_default_context()``);
    pass your own context to pin a CA or (knowingly) relax checks.
    """
    if not url.secure:
        loop = running_asyncio_loop()
        if loop is not None:
            transport, protocol = await loop.create_connection(_StreamProtocol, url.host, url.port)
            return AsyncioByteStream(transport, protocol)  # type: ignore[arg-type]
        return await anyio.connect_tcp(url.host, url.port)
    context = ssl_context if ssl_context is not None else ssl.create_default_context()
    return await anyio.connect_tcp(
        url.host,
        url.port,
        tls=True,
        ssl_context=context,
        tls_hostname=url.host,
        tls_standard_compatible=False,
    )


def tcp_dialer(ssl_context: ssl.SSLContext | None = None) -> Dialer:
    """A :data:`~transports.base.Dialer` for real sockets."""

    async def dial(url: URL) -> ByteStream:
        return await dial_tcp(url, ssl_context=ssl_context)

    return dial
