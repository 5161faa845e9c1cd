"""In-memory duplex byte streams: the transport for fake clocks and the simulator.

No sockets, so virtual time (looptime, trio's MockClock) runs undisturbed.
"""

from __future__ import annotations

import math

import anyio
from anyio.abc import ByteStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from transports.base import Capabilities

__all__ = ["MemoryByteStream", "memory_pair"]


class MemoryByteStream(ByteStream):
    """One end of an in-memory duplex pipe.

    ``aclose()`` is an orderly close (the peer sees end-of-stream);
    ``abort()`` is a reset (the peer's next receive raises
    :class:`anyio.BrokenResourceError`).
    """

    #: writes never split under cancellation; closing never waits; a send that
    #: fits goes without suspending (try_send: the engine's fast path, on every backend)
    capabilities = Capabilities(atomic_send=True, instant_close=True, try_send=True)

    def __init__(
        self,
        outgoing: MemoryObjectSendStream[bytes | BaseException],
        incoming: MemoryObjectReceiveStream[bytes | BaseException],
    ) -> None:
        self._out = outgoing
        self._in = incoming
        self._leftover = b""
        self._closed = False

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if item:
            try:
                await self._out.send(bytes(item))
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise anyio.BrokenResourceError from None

    def try_send(self, item: bytes) -> bool:
        """:meth:`send` without suspending: False, nothing sent, while the pipe is full."""
        if self._closed:
            raise anyio.ClosedResourceError
        if item:
            try:
                self._out.send_nowait(bytes(item))
            except anyio.WouldBlock:
                return False
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise anyio.BrokenResourceError from None
        return True

    async def send_eof(self) -> None:
        await self._out.aclose()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        data = self._leftover
        if not data:
            item = await self._in.receive()  # EndOfStream when the peer closed
            if isinstance(item, BaseException):
                raise item
            data = item
        if len(data) > max_bytes:
            self._leftover = data[max_bytes:]
            return data[:max_bytes]
        self._leftover = b""
        return data

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._out.aclose()
        await self._in.aclose()

    def abort(self) -> None:
        """Reset the pipe: the peer's pending and next receives fail as broken."""
        if self._closed:
            return
        self._closed = True
        try:
            self._out.send_nowait(anyio.BrokenResourceError("connection reset by peer (memory)"))
        except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass
        self._out.close()
        self._in.close()


def memory_pair(max_buffered_chunks: float = math.inf) -> tuple[MemoryByteStream, MemoryByteStream]:
    """Return two connected streams ``(a, b)``: bytes sent on one arrive on the other.

    ``max_buffered_chunks`` bounds each direction's queue (``inf`` by default, so a
    sender never blocks on a reader that is stalled on purpose in a test).
    """
    a_out, b_in = anyio.create_memory_object_stream[bytes | BaseException](max_buffered_chunks)
    b_out, a_in = anyio.create_memory_object_stream[bytes | BaseException](max_buffered_chunks)
    return MemoryByteStream(a_out, a_in), MemoryByteStream(b_out, b_in)
