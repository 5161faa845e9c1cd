"""Receive with a deadline: the reader's liveness wait, native on asyncio TCP and generic elsewhere.

Runs on virtual time (looptime on asyncio, MockClock on trio). The native
asyncio stream is exercised over a real ``socketpair`` (looptime jumps time
while the loop is idle, and a socketpair's bytes are readable at once).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from transports.base import ByteStream, deadline_receiver
from transports.memory import memory_pair
from transports.tcp import AsyncioByteStream, _StreamProtocol

pytestmark = pytest.mark.anyio


async def _socketpair_streams() -> tuple[AsyncioByteStream, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(_StreamProtocol, sock=ours)
    return AsyncioByteStream(transport, protocol), theirs  # type: ignore[arg-type]


class _Peer:
    """The far end, whichever transport: send bytes, or close."""

    def __init__(self, stream: ByteStream | None = None, sock: socket.socket | None = None) -> None:
        self.stream, self.sock = stream, sock

    async def send(self, data: bytes) -> None:
        if self.sock is not None:
            self.sock.send(data)
        else:
            assert self.stream is not None
            await self.stream.send(data)

    async def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        else:
            assert self.stream is not None
            await self.stream.aclose()


@pytest.fixture(params=["native", "generic"])
async def pair(request: pytest.FixtureRequest, anyio_backend: Any) -> AsyncIterator[tuple[ByteStream, _Peer]]:
    if request.param == "native":
        if anyio_backend[0] != "asyncio":
            pytest.skip("the native deadline receive is the asyncio TCP stream's")
        stream, sock = await _socketpair_streams()
        yield stream, _Peer(sock=sock)
        await stream.aclose()
        sock.close()
    else:
        a, b = memory_pair()
        yield a, _Peer(stream=b)
        await a.aclose()


def test_native_stream_offers_its_own_deadline_receive() -> None:
    assert deadline_receiver.__doc__
    assert hasattr(AsyncioByteStream, "receive_before")
    a, _ = memory_pair()
    assert not hasattr(a, "receive_before")  # memory streams get the cancel-scope version


async def test_nothing_arrives_none_exactly_at_the_deadline(pair: tuple[ByteStream, _Peer]) -> None:
    stream, _ = pair
    receive_before = deadline_receiver(stream)
    start = anyio.current_time()
    with anyio.fail_after(60):
        assert await receive_before(start + 7.5, 1024) is None
    assert anyio.current_time() - start == pytest.approx(7.5, abs=1e-6)
    # The stream still works afterwards: a late timer must not wake a later wait.
    assert await receive_before(anyio.current_time() + 1, 1024) is None
    assert anyio.current_time() - start == pytest.approx(8.5, abs=1e-6)


async def test_data_in_time_is_returned_when_it_arrives(pair: tuple[ByteStream, _Peer]) -> None:
    stream, peer = pair
    receive_before = deadline_receiver(stream)
    start = anyio.current_time()

    async def later() -> None:
        await anyio.sleep(2)
        await peer.send(b"hello")

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(later)
            assert await receive_before(start + 5, 1024) == b"hello"
    assert anyio.current_time() - start == pytest.approx(2, abs=1e-6)
    # max_bytes splits a chunk; the rest comes on the next call at once
    await peer.send(b"abcdef")
    with anyio.fail_after(60):
        assert await receive_before(anyio.current_time() + 1, 4) == b"abcd"
        assert await receive_before(anyio.current_time() - 1, 4) == b"ef"  # buffered beats a passed deadline


async def test_end_of_stream_raises_even_before_the_deadline(pair: tuple[ByteStream, _Peer]) -> None:
    stream, peer = pair
    receive_before = deadline_receiver(stream)
    await peer.send(b"last")
    await peer.close()
    with anyio.fail_after(60):
        assert await receive_before(anyio.current_time() + 5, 1024) == b"last"
        with pytest.raises(anyio.EndOfStream):
            await receive_before(anyio.current_time() + 5, 1024)


async def test_cancelled_while_waiting_leaves_the_stream_usable(pair: tuple[ByteStream, _Peer]) -> None:
    stream, peer = pair
    receive_before = deadline_receiver(stream)
    with anyio.move_on_after(1) as scope:
        await receive_before(anyio.current_time() + 100, 1024)
    assert scope.cancelled_caught
    if isinstance(stream, AsyncioByteStream):
        assert stream._protocol.reader is None  # no waiter left behind
    await peer.send(b"after")
    with anyio.fail_after(60):
        assert await receive_before(anyio.current_time() + 5, 1024) == b"after"


async def test_closed_stream_raises_closed(pair: tuple[ByteStream, _Peer]) -> None:
    stream, _ = pair
    await stream.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await deadline_receiver(stream)(anyio.current_time() + 1, 1024)
