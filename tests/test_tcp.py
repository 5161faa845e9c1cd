"""Real 127.0.0.1 sockets (real clock, short bounded waits): the TCP transports and a full connection.

Virtual clocks and real sockets don't mix, so this module runs on plain asyncio and trio.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import orjson
import pytest

from engine import Backoff, Connection, ConnectionSetup, State
from engine.sim import SimExchange
from transports.base import ByteStream, InvalidURL, parse_url
from transports.tcp import AsyncioByteStream, dial_tcp

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@contextlib.asynccontextmanager
async def serving(handler: Callable[[anyio.abc.SocketStream], Awaitable[None]]) -> AsyncIterator[ByteStream]:
    """Serve ``handler`` on 127.0.0.1 and yield a client stream dialed to it (bounded: 10 s)."""
    with anyio.fail_after(10):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, handler)
            stream = await dial_tcp(parse_url(f"ws://127.0.0.1:{port}/"))
            yield stream
            await stream.aclose()
            tg.cancel_scope.cancel()


async def test_connection_over_real_loopback(anyio_backend: str) -> None:
    received: list[Any] = []

    async def subscribe(conn: Connection, subs: list[Any]) -> None:
        await conn.request(
            {"op": "subscribe", "channel": "trades", "symbols": ["BTC-USD"], "id": 1},
            key=1,
            timeout=5,
        )

    with anyio.fail_after(15):
        async with SimExchange(rate=200.0) as sim:
            port = await sim.listen_tcp()
            setup = ConnectionSetup(
                url=f"ws://127.0.0.1:{port}/ws",
                handler=lambda conn, m: received.append(m),
                subscriber=subscribe,
                generate_subscriptions=lambda: ["trades"],
                backoff=Backoff(initial=0.05, maximum=0.1),
            )
            async with Connection(setup) as conn:
                await conn.wait_for(State.LIVE)
                while len(received) < 10:
                    await anyio.sleep(0.01)
                sim.drop()
                await conn.wait_for(State.RECONNECTING)
                await conn.wait_for(State.LIVE)
                before = len(received)
                while len(received) < before + 10:
                    await anyio.sleep(0.01)
    assert conn.state is State.DISCONNECTED
    assert conn.last_close_sent == (1000, "")
    assert {orjson.loads(m)["channel"] for m in received} == {"trades"}


async def test_native_asyncio_stream_used_on_asyncio(anyio_backend: str) -> None:
    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.send(await stream.receive())

    async with serving(serve) as stream:
        assert isinstance(stream, AsyncioByteStream) == (anyio_backend == "asyncio")
        await stream.send(b"echo")
        assert await stream.receive() == b"echo"
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        await stream.aclose()
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"x")


async def test_backpressure_pauses_reading_then_delivers_everything(anyio_backend: str) -> None:
    """A reader that stops reading makes the socket pause; nothing is lost when it resumes."""
    payload = bytes(range(256)) * (40 * 1024)  # 10 MiB, above the 4 MiB high-water mark

    async def serve(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.send(payload)

    async with serving(serve) as stream:
        await anyio.sleep(0.3)  # let the kernel and our buffer fill while nobody reads
        if isinstance(stream, AsyncioByteStream):
            assert stream._protocol.read_paused
        got = bytearray()
        try:
            while True:
                got += await stream.receive(1 << 20)
        except anyio.EndOfStream:
            pass
        assert bytes(got) == payload


async def test_refused_dial_raises_oserror(anyio_backend: str) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    await listener.aclose()  # nothing listens there now
    with anyio.fail_after(10), pytest.raises(OSError):
        await dial_tcp(parse_url(f"ws://127.0.0.1:{port}/"))


@pytest.mark.parametrize(
    "url, expected",
    [
        ("ws://Example.COM/path?q=1", ("example.com", 80, "/path?q=1", False)),
        ("wss://h:8443", ("h", 8443, "/", True)),
        ("ws://[::1]:9000/x", ("::1", 9000, "/x", False)),
    ],
)
def test_parse_url(url: str, expected: tuple[str, int, str, bool]) -> None:
    parsed = parse_url(url)
    assert (parsed.host, parsed.port, parsed.resource, parsed.secure) == expected


@pytest.mark.parametrize("url", ["http://h/", "ws://", "wss://u:p@h/", "ws://h/#frag", "ws://h:70000/", 42])
def test_parse_url_rejects(url: Any) -> None:
    with pytest.raises(InvalidURL):
        parse_url(url)


async def test_aclose_wakes_a_writer_blocked_on_a_peer_that_does_not_read(anyio_backend: str) -> None:
    async def never_reads(stream: anyio.abc.SocketStream) -> None:
        await anyio.sleep(30)

    async with serving(never_reads) as stream:
        errors: list[BaseException] = []

        async def flood() -> None:
            try:
                for _ in range(10_000):  # bounded: ~640 MiB at most, blocks long before
                    await stream.send(b"x" * 65536)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            await anyio.sleep(0.5)  # the kernel buffers fill; the writer blocks
            await stream.aclose()
        assert errors, "the blocked writer was not woken by aclose()"
        with pytest.raises(anyio.ClosedResourceError):
            await stream.receive()


async def test_the_server_reads_our_1009_when_it_keeps_writing(anyio_backend: str) -> None:
    """Issue 15 #11 on real sockets: after failing the connection for an oversize message the
    client half-closes and drains, so a server that is still writing reads our close frame
    (closing with unread bytes would reset TCP and could destroy it). 20 sessions, all must see it."""
    import wsproto
    import wsproto.events as wse

    sessions = 20
    codes: list[int | None] = []

    async def serve(stream: anyio.abc.SocketStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        code: int | None = None
        try:
            with anyio.fail_after(5):
                while True:
                    ws.receive_data(await stream.receive())
                    if any(isinstance(e, wse.Request) for e in ws.events()):
                        await stream.send(ws.send(wse.AcceptConnection()))
                        break
                chunk = ws.send(wse.TextMessage(data="z" * 200))
                await stream.send(ws.send(wse.TextMessage(data="x" * 5000)))  # over the client's limit
                while code is None:
                    for _ in range(20):  # keep writing while the client fails the connection
                        await stream.send(chunk)
                    with anyio.move_on_after(0.002):
                        ws.receive_data(await stream.receive())
                        for event in ws.events():
                            if isinstance(event, wse.CloseConnection):
                                code = int(event.code)
        except (anyio.BrokenResourceError, anyio.EndOfStream, anyio.ClosedResourceError, OSError, TimeoutError):
            pass
        finally:
            codes.append(code)
            await stream.aclose()

    with anyio.fail_after(30):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            tg.start_soon(listener.serve, serve)
            setup = ConnectionSetup(
                url=f"ws://127.0.0.1:{port}/",
                handler=lambda conn, m: None,
                max_message_size=1000,
                close_timeout=2.0,
                backoff=Backoff(initial=0.001, maximum=0.001, jitter=False),
            )
            async with Connection(setup) as conn:
                while len(codes) < sessions:
                    await conn.wait_for(State.CONNECTING)
                    await conn.wait_for(State.RECONNECTING)
            tg.cancel_scope.cancel()
    assert codes[:sessions] == [1009] * sessions
