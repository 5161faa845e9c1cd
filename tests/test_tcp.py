"""Real 127.0.0.1 sockets (real clock, short bounded waits): the TCP transports and a full connection.

Virtual clocks and real sockets don't mix, so this module runs on plain asyncio and trio.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import select
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import anyio
import anyio.abc
import orjson
import pytest

from engine import Backoff, Connection, ConnectionSetup, State
from engine.sim import SimExchange
from transports.base import ByteStream, InvalidURL, parse_url
from transports.tcp import _FLUSH_AT, _HIGH_WATER, _LOW_WATER, AsyncioByteStream, dial_tcp

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


# --- the native asyncio stream coalesces one loop iteration's sends ---
#
# The first send of an iteration is written at once, the rest of that
# iteration's sends in one write at the loop's next turn, or sooner, each time
# they fill a TCP segment (``_FLUSH_AT``). Asyncio only by
# nature (the native stream is asyncio's), so these tests pin
# ``anyio_backend``. A plain 127.0.0.1 socket plays the peer, read by hand; a
# spy on the transport's ``write`` records the writes. "One iteration" is
# stepped with ``asyncio.sleep(0)``: a flush scheduled by a send runs before
# the task that yielded resumes.

asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])


@contextlib.asynccontextmanager
async def native_stream(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[AsyncioByteStream, socket.socket, list[bytes]]]:
    """A native stream dialed to a plain socket, the peer socket, and the bytes of every
    ``transport.write`` (bounded: 10 s)."""
    loop = asyncio.get_running_loop()
    with anyio.fail_after(10), socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        stream = await dial_tcp(parse_url(f"ws://127.0.0.1:{listener.getsockname()[1]}/"))
        assert isinstance(stream, AsyncioByteStream)
        peer, _ = await loop.sock_accept(listener)
        writes: list[bytes] = []
        write = stream._transport.write

        def spy(data: bytes | bytearray | memoryview) -> None:
            writes.append(bytes(data))
            write(data)

        monkeypatch.setattr(stream._transport, "write", spy)
        with peer:
            yield stream, peer, writes
            await stream.aclose()


async def read_exactly(peer: socket.socket, size: int) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < size:
        chunk = await loop.sock_recv(peer, 65536)
        assert chunk, f"EOF after {len(got)} of {size} bytes"
        got += chunk
    return bytes(got)


async def read_to_eof(peer: socket.socket) -> bytes:
    """Everything until EOF; fails on a reset (ConnectionResetError)."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    while chunk := await loop.sock_recv(peer, 65536):
        got += chunk
    return bytes(got)


@contextlib.contextmanager
def loop_errors() -> Iterator[list[dict[str, Any]]]:
    """What reaches the loop's exception handler meanwhile."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        yield errors
    finally:
        loop.set_exception_handler(previous)


def frames(count: int, tag: str = "f") -> list[bytes]:
    return [f"<{tag}{i}:{'x' * (i % 7)}>".encode() for i in range(count)]


@asyncio_only
async def test_fifty_sends_in_one_tick_are_two_writes(anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with native_stream(monkeypatch) as (stream, peer, writes):
        sent = frames(50)
        for frame in sent:
            await stream.send(frame)
        assert writes == [sent[0]]  # the first at once; the rest queued until the loop turns
        await asyncio.sleep(0)
        assert writes == [sent[0], b"".join(sent[1:])]
        assert await read_exactly(peer, len(b"".join(sent))) == b"".join(sent)


@asyncio_only
async def test_fifty_tasks_woken_together_share_two_writes(anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The request/response case: one read wakes many tasks, each sends one frame."""
    async with native_stream(monkeypatch) as (stream, peer, writes):
        go = anyio.Event()
        order: list[bytes] = []

        async def request(frame: bytes) -> None:
            await go.wait()
            order.append(frame)
            await stream.send(frame)

        async with anyio.create_task_group() as tg:
            for frame in frames(50):
                tg.start_soon(request, frame)
            for _ in range(10):  # let every task reach its wait
                await asyncio.sleep(0)
            assert writes == []
            go.set()
        assert len(order) == 50
        assert writes == [order[0], b"".join(order[1:])]
        assert await read_exactly(peer, len(b"".join(order))) == b"".join(order)


@asyncio_only
async def test_sends_that_fill_a_segment_go_out_before_the_tick_ends(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A burst of 100 request-sized frames: the first ones are on the wire while the rest are made."""
    async with native_stream(monkeypatch) as (stream, peer, writes):
        sent = [b"%03d" % i + b"r" * 82 for i in range(100)]  # 85 bytes, a masked ~80-byte request
        written_when_sent = []
        for frame in sent:
            await stream.send(frame)
            written_when_sent.append(sum(map(len, writes)))
        # every segment's worth was written as soon as it was queued: no more
        # than one segment is held back at any point (the rest waits for the turn)
        sent_so_far = 0
        for frame, written in zip(sent, written_when_sent):
            sent_so_far += len(frame)
            assert sent_so_far - _FLUSH_AT < written <= sent_so_far
        assert writes[0] == sent[0]
        assert all(_FLUSH_AT <= len(w) < _FLUSH_AT + 85 for w in writes[1:])
        assert _FLUSH_AT == 1448  # one TCP segment: 18 of these frames fill it
        assert len(writes) == 1 + 5  # the first, and five segments' worth; 9 frames wait
        held = len(writes)
        await asyncio.sleep(0)
        assert len(writes) == held + 1  # the tail at the turn
        assert b"".join(writes) == b"".join(sent)
        assert await read_exactly(peer, len(b"".join(sent))) == b"".join(sent)


@asyncio_only
async def test_a_lone_send_per_tick_is_written_at_once(anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with native_stream(monkeypatch) as (stream, peer, writes):
        sent = frames(5)
        for count, frame in enumerate(sent, 1):
            await stream.send(frame)
            assert len(writes) == count  # no wait for the loop to turn
            await asyncio.sleep(0)
        assert writes == sent
        assert await read_exactly(peer, len(b"".join(sent))) == b"".join(sent)


@asyncio_only
async def test_sends_across_ticks_keep_their_order(anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    async with native_stream(monkeypatch) as (stream, peer, writes):
        sent: list[bytes] = []
        expected_writes = 0
        for tick in range(20):
            batch = frames(tick % 4 + 1, tag=f"t{tick}-")
            for frame in batch:
                sent.append(frame)
                await stream.send(frame)
            expected_writes += min(len(batch), 2)
            await asyncio.sleep(0)
        assert len(writes) == expected_writes
        big = bytes(range(256)) * 320  # 80 KiB: over the threshold, written at once
        await stream.send(b"<first>")
        await stream.send(b"<before big>")
        await stream.send(big)
        assert writes[-1] == b"<before big>" + big  # synchronously, queued bytes first
        await stream.send(b"<after big>")
        sent += [b"<first>", b"<before big>", big, b"<after big>"]
        await asyncio.sleep(0)
        assert writes[-1] == b"<after big>"
        assert b"".join(writes) == b"".join(sent)
        assert await read_exactly(peer, len(b"".join(sent))) == b"".join(sent)


@asyncio_only
async def test_a_queued_buffer_is_copied_and_a_non_buffer_fails_at_once(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with native_stream(monkeypatch) as (stream, peer, writes):
        await stream.send(b"<first>")
        buffer = bytearray(b"queued")
        await stream.send(buffer)  # type: ignore[arg-type]  # (bytes-like, as transport.write took)
        buffer[:] = b"reused"  # the caller's to reuse once send() returned
        with pytest.raises(TypeError):
            await stream.send("text")  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert writes == [b"<first>", b"queued"]
        assert await read_exactly(peer, 13) == b"<first>queued"


@asyncio_only
async def test_send_then_aclose_delivers_every_byte_then_eof(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with native_stream(monkeypatch) as (stream, peer, writes):
        sent = [*frames(10), b"<close frame>"]
        for frame in sent:
            await stream.send(frame)
        await stream.aclose()  # same tick: the queued frames go first, then FIN (not a reset)
        assert writes == [sent[0], b"".join(sent[1:])]
        assert await read_to_eof(peer) == b"".join(sent)
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"x")


@asyncio_only
async def test_send_then_send_eof_delivers_bytes_then_eof(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with native_stream(monkeypatch) as (stream, peer, writes):
        sent = frames(10)
        for frame in sent:
            await stream.send(frame)
        await stream.send_eof()
        assert writes == [sent[0], b"".join(sent[1:])]
        assert await read_to_eof(peer) == b"".join(sent)
        with pytest.raises(anyio.ClosedResourceError):
            await stream.send(b"x")  # our half is closed
        await asyncio.get_running_loop().sock_sendall(peer, b"still open")
        assert await stream.receive() == b"still open"  # the other half is


@asyncio_only
async def test_abort_drops_queued_sends_quietly(anyio_backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with loop_errors() as errors:
        async with native_stream(monkeypatch) as (stream, peer, writes):
            sent = frames(10)
            for frame in sent:
                await stream.send(frame)
            stream.abort()
            for _ in range(5):  # the scheduled flush runs, and does nothing
                await asyncio.sleep(0)
            assert writes == [sent[0]]
            assert await read_to_eof(peer) == sent[0]  # (written before the abort)
            with pytest.raises(anyio.ClosedResourceError):
                await stream.send(b"x")
    assert errors == []


@asyncio_only
async def test_bytes_sent_before_the_peers_eof_is_read_still_go_out(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop reads the peer's EOF in the same iteration as, after, our sends: the
    transport closes itself on EOF, so the queued bytes must be written first."""
    async with native_stream(monkeypatch) as (stream, peer, writes):
        peer.shutdown(socket.SHUT_WR)
        ours = stream._transport.get_extra_info("socket")
        # Wait for the FIN without letting the loop run (it would read the EOF first).
        assert select.select([ours], [], [], 5)[0]
        await asyncio.sleep(0)  # resume in the iteration that reads the EOF, just before it does
        await stream.send(b"<first>")
        await stream.send(b"<reply>")
        assert writes == [b"<first>"]
        assert await read_to_eof(peer) == b"<first><reply>"
        assert stream._protocol.eof


@asyncio_only
async def test_a_failing_deferred_write_breaks_the_stream_not_the_loop(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    boom = RuntimeError("boom")
    with loop_errors() as errors:
        async with native_stream(monkeypatch) as (stream, peer, writes):
            await stream.send(b"<first>")

            def fail(data: bytes) -> None:
                raise boom

            monkeypatch.setattr(stream._transport, "write", fail)
            await stream.send(b"lost")  # queued
            await asyncio.sleep(0)  # the flush fails
            with pytest.raises(anyio.BrokenResourceError) as caught:
                await stream.receive()
            assert caught.value.__cause__ is boom
            with pytest.raises(anyio.BrokenResourceError):
                await stream.send(b"x")
    assert errors == []


@asyncio_only
async def test_a_paused_transport_still_blocks_the_sender_until_it_drains(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with native_stream(monkeypatch) as (stream, peer, writes):
        protocol = stream._protocol
        chunk = b"c" * 16384
        sent: list[bytes] = []
        stop = False

        async def flood() -> None:
            for i in range(10_000):  # 160 MiB at most: the kernel buffers fill long before
                if stop:
                    return
                frame = i.to_bytes(2, "big") + chunk
                sent.append(frame)  # (in send order: a send hands its bytes over before it can block)
                await stream.send(frame)

        async with anyio.create_task_group() as tg:
            tg.start_soon(flood)
            while protocol.drain is None:  # until the sender waits for the transport to drain
                await asyncio.sleep(0)
            assert protocol.write_paused
            assert stream._pending == []  # nothing piles up while paused
            blocked_at = len(sent)
            for _ in range(50):
                await asyncio.sleep(0)
            assert len(sent) == blocked_at and protocol.drain is not None  # still blocked
            assert b"".join(writes) == b"".join(sent)  # the blocked send's bytes are with the transport
            stop = True
            got = await read_exactly(peer, sum(map(len, sent)))  # reading resumes the sender, which stops
        assert got == b"".join(sent)


@asyncio_only
async def test_send_after_the_peer_closed_raises_broken(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with native_stream(monkeypatch) as (stream, peer, writes):
        peer.close()
        with pytest.raises(anyio.EndOfStream):
            await stream.receive()
        while not stream._protocol.closed:
            await asyncio.sleep(0)
        with pytest.raises(anyio.BrokenResourceError):
            await stream.send(b"x")
        assert writes == []


# -- reading -----------------------------------------------------------------
# What the native stream's reader promises, however the transport hands it the
# bytes (a fresh object per read, or one buffer reused across reads and
# connections): every byte, in order, each returned chunk keeping its contents
# after later reads; at most ``max_bytes`` per receive; the socket paused above
# the high-water mark and resumed below the low one; buffered bytes before EOF.


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes with no short period (a shifted or repeated slice would not match)."""
    out = bytearray()
    counter = seed
    while len(out) < size:
        out += hashlib.sha256(counter.to_bytes(8, "big")).digest()
        counter += 1
    return bytes(out[:size])


async def receive_exactly(stream: ByteStream, size: int, max_bytes: int = 65536) -> list[bytes]:
    """The chunks of ``size`` bytes as received (each at most ``max_bytes``)."""
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = await stream.receive(max_bytes)
        assert type(chunk) is bytes and 0 < len(chunk) <= max_bytes
        chunks.append(chunk)
        got += len(chunk)
    assert got == size
    return chunks


@asyncio_only
async def test_many_reads_arrive_intact_in_order_and_stay_intact(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each piece is its own socket read; chunks already returned never change afterwards."""
    loop = asyncio.get_running_loop()
    async with native_stream(monkeypatch) as (stream, peer, writes):
        pieces = [pattern(1 + (i * 37) % 3000, seed=i * 1000) for i in range(200)]
        kept: list[tuple[bytes, bytes]] = []  # (the object received, a copy made at once)
        for piece in pieces:
            await loop.sock_sendall(peer, piece)
            for chunk in await receive_exactly(stream, len(piece)):
                kept.append((chunk, bytes(bytearray(chunk))))
        assert b"".join(chunk for chunk, _ in kept) == b"".join(pieces)
        assert all(chunk == copy for chunk, copy in kept)


@asyncio_only
async def test_two_connections_read_at_once_keep_their_own_bytes(anyio_backend: str) -> None:
    """Reads on two connections of one loop, interleaved, never mix their bytes."""
    loop = asyncio.get_running_loop()
    with anyio.fail_after(10), socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        url = parse_url(f"ws://127.0.0.1:{listener.getsockname()[1]}/")
        streams, peers = [], []
        for _ in range(2):
            streams.append(await dial_tcp(url))
            peers.append((await loop.sock_accept(listener))[0])
        payloads = [pattern(300_000, seed=1), pattern(300_000, seed=2)]
        received: list[list[bytes]] = [[], []]

        async def read(index: int) -> None:
            received[index] = await receive_exactly(streams[index], len(payloads[index]), 7919)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(read, 0)
                tg.start_soon(read, 1)
                for offset in range(0, 300_000, 10_000):
                    for peer, payload in zip(peers, payloads):
                        await loop.sock_sendall(peer, payload[offset : offset + 10_000])
                    await asyncio.sleep(0)
        finally:
            for stream in streams:
                await stream.aclose()
            for peer in peers:
                peer.close()
        assert [b"".join(chunks) for chunks in received] == payloads


@asyncio_only
@pytest.mark.parametrize("max_bytes", [1 << 20, 65536, 4093])
async def test_a_payload_larger_than_one_read_arrives_whole(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch, max_bytes: int
) -> None:
    """3 MiB + 7 bytes sent at once (many reads of up to 256 KiB), received whole and in order."""
    loop = asyncio.get_running_loop()
    payload = pattern(3 * 1024 * 1024 + 7)
    async with native_stream(monkeypatch) as (stream, peer, writes):
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop.sock_sendall, peer, payload)
            chunks = await receive_exactly(stream, len(payload), max_bytes)
        assert b"".join(chunks) == payload
        assert stream._protocol.buffered == 0 and not stream._protocol.chunks


@asyncio_only
async def test_a_slow_reader_pauses_the_socket_then_resumes_it_below_the_low_mark(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    payload = pattern(12 * 1024 * 1024)
    async with native_stream(monkeypatch) as (stream, peer, writes):
        protocol = stream._protocol
        transport = stream._transport
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop.sock_sendall, peer, payload)  # blocks once every buffer is full
            while not protocol.read_paused:
                await asyncio.sleep(0.001)
            assert not transport.is_reading()
            assert _HIGH_WATER < protocol.buffered <= _HIGH_WATER + 256 * 1024
            buffered = protocol.buffered
            await asyncio.sleep(0.05)
            assert protocol.buffered == buffered  # nothing read while paused
            got = bytearray()
            # Read slowly, 64 KiB at a time: paused until the low mark, and no longer.
            while True:
                assert protocol.read_paused and not transport.is_reading()
                assert protocol.buffered >= _LOW_WATER
                got += await stream.receive(65536)
                if not protocol.read_paused:
                    break
                await asyncio.sleep(0)
            assert protocol.buffered < _LOW_WATER and transport.is_reading()
            assert len(got) >= buffered - _LOW_WATER
            got += b"".join(await receive_exactly(stream, len(payload) - len(got), 1 << 20))
        assert bytes(got) == payload


@asyncio_only
async def test_a_reader_that_fell_behind_takes_many_small_chunks_per_read_in_order(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small reads queued while nobody read come out joined, up to the read's size, in order."""
    async with native_stream(monkeypatch) as (stream, peer, writes):
        protocol = stream._protocol
        pieces = [pattern(100 + i % 50, seed=i) for i in range(3000)]  # ~370 KB in 3,000 chunks
        for piece in pieces:
            protocol.data_received(piece)  # (as the transport would, with the reader busy elsewhere)
        got: list[bytes] = []
        for _ in range(100):  # (bounded)
            if not protocol.chunks:
                break
            got.append(await stream.receive(65536))
        assert b"".join(got) == b"".join(pieces) and protocol.buffered == 0
        assert all(len(data) <= 65536 for data in got)
        assert len(got) <= 8  # joined: ~370 KB in 64 KiB reads, not 3,000 reads
        protocol.data_received(pattern(200_000, seed=7))  # one chunk larger than a read: cut
        assert await stream.receive(65536) == pattern(200_000, seed=7)[:65536]


@asyncio_only
@pytest.mark.parametrize("close", ["shutdown", "close"])
async def test_bytes_buffered_before_the_peers_eof_are_read_first(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch, close: str
) -> None:
    loop = asyncio.get_running_loop()
    payload = pattern(500_000)
    async with native_stream(monkeypatch) as (stream, peer, writes):
        await loop.sock_sendall(peer, payload)
        if close == "shutdown":
            peer.shutdown(socket.SHUT_WR)
        else:
            peer.close()
        while not stream._protocol.eof:  # the loop reads everything, then the EOF
            await asyncio.sleep(0.001)
        assert b"".join(await receive_exactly(stream, len(payload), 100_000)) == payload
        for _ in range(2):
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
