"""The benchmark clients, one per library, and the per-process entry point.

Every measurement runs in a fresh process (``python -m benchmarks.clients``)
so no client inherits another's warm caches or heap, and prints one JSON
object on stdout. A watchdog thread ends the process if it overruns its
``--timeout`` (a stuck client must never hang the whole run).

Each client offers the same three things:

``throughput(port, n, decode)``
    connect to the blast server, count N text messages (optionally decoding
    each), return the seconds from just before connect until the N-th message
    (``time.perf_counter`` inside this process).
``idle(port)``
    an async context manager that opens one connection, waits for the hold
    server's ``hello`` message (so "open" means the same for everyone), keeps
    it open, and closes it (client-initiated close handshake) on exit. Used
    for the handshake latency (enter + exit, timed) and idle memory (enter
    1,000 times, measure RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

__all__ = ["CLIENTS", "DECODERS", "Client", "main", "rss_bytes"]

Decode = Callable[[Any], Any]
READ_SIZE = 256 * 1024  # socket read size for the hand-driven clients


# -- decoders ---------------------------------------------------------------


def _typed_decoder() -> Decode:
    """Fastest JSON -> typed event we found: ``msgspec.json.Decoder(Trade)``.

    Measured on the benchmark message: msgspec typed decode ~0.19 µs,
    ``orjson.loads`` alone ~0.41 µs, ``orjson.loads`` + a slotted class built
    from the dict ~0.76 µs. Unknown fields (``pad``) are skipped.
    """
    import msgspec

    class Trade(msgspec.Struct, gc=False):
        channel: str
        symbol: str
        price: str
        size: str
        side: str
        seq: int
        ts: float

    return msgspec.json.Decoder(Trade).decode


def _orjson_decoder() -> Decode:
    import orjson

    return orjson.loads


#: decode mode -> factory of a callable taking str / bytes / memoryview.
DECODERS: dict[str, Callable[[], Decode | None]] = {
    "none": lambda: None,
    "orjson": _orjson_decoder,
    "typed": _typed_decoder,
}


def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- clients -------------------------------------------------------------------


class Client:
    """Base: a library under test. Subclasses implement the two verbs."""

    #: how to run the coroutine: plain asyncio or anyio (on asyncio)
    runner = "asyncio"

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def throughput(self, port: int, n: int, decode: Decode | None) -> float:
        raise NotImplementedError

    def idle(self, port: int) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError

    async def roundtrips(self, port: int, n: int, inflight: int) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) for the ``n`` timed round trips."""
        raise NotImplementedError(f"{type(self).__name__} has no round-trip benchmark")

    async def e2e(self, port: int, n: int, capacity: int) -> dict[str, Any]:
        """Socket -> typed events -> bounded buffer -> batch consumer (``benchmarks.e2e``); ``elapsed`` in it."""
        raise NotImplementedError(f"{type(self).__name__} has no end-to-end benchmark")


def _upgrade_request(port: int) -> bytes:
    """The hand-written clients' HTTP upgrade request (a fixed key: the server is ours)."""
    return (
        f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def request_payload(key: int) -> dict[str, Any]:
    """One request of the round-trip benchmark (~60 bytes of JSON); the echo carries its id back."""
    return {"id": key, "op": "order.status", "args": {"symbol": "BTC-USD", "order": 123456789}}


#: sequential requests before timing starts (connection, caches and code paths warm)
ROUNDTRIP_WARMUP = 200


async def _workers(inflight: int, n: int, one: Callable[[int], Any], start: int) -> None:
    """``inflight`` asyncio tasks taking ids ``start .. start+n-1`` in turn, each awaiting ``one(id)``."""
    ids = iter(range(start, start + n))

    async def worker() -> None:
        for key in ids:  # (shared: each id is taken once)
            await one(key)

    await asyncio.gather(*(worker() for _ in range(inflight)))


class WebsocketsClient(Client):
    """python-websockets, new asyncio implementation (the 1.0 reference)."""

    #: extra ``connect()`` arguments for the handshake/memory connections
    connect_options: dict[str, Any] = {}  # noqa: RUF012 - read only

    async def throughput(self, port: int, n: int, decode: Decode | None) -> float:
        from websockets.asyncio.client import connect

        count = 0
        t0 = time.perf_counter()
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None) as ws:
            if decode is None:
                async for _ in ws:
                    count += 1
                    if count == n:
                        break
            else:
                async for message in ws:
                    decode(message)
                    count += 1
                    if count == n:
                        break
            elapsed = time.perf_counter() - t0
        _check(count, n)
        return elapsed

    @contextlib.asynccontextmanager
    async def idle(self, port: int) -> AsyncIterator[Any]:
        from websockets.asyncio.client import connect

        async with connect(f"ws://127.0.0.1:{port}/", **self.connect_options) as ws:
            await ws.recv()  # hello
            yield ws


    async def roundtrips(self, port: int, n: int, inflight: int) -> tuple[float, float]:
        """A dict of futures keyed by id: what a python-websockets user writes by hand."""
        import orjson
        from websockets.asyncio.client import connect

        loop = asyncio.get_running_loop()
        waiting: dict[Any, asyncio.Future[Any]] = {}
        dumps, loads = orjson.dumps, orjson.loads
        async with connect(f"ws://127.0.0.1:{port}/", max_size=None, proxy=None) as ws:

            async def reader() -> None:
                async for message in ws:
                    decoded = loads(message)
                    future = waiting.pop(decoded.get("id") if type(decoded) is dict else None, None)
                    if future is not None and not future.done():
                        future.set_result(message)
                    # (anything else would go to the application's handler)

            async def request(key: int) -> Any:
                future = waiting[key] = loop.create_future()  # registered before the send
                try:
                    async with asyncio.timeout(30):  # (wirestate's requests have deadlines too)
                        await ws.send(dumps(request_payload(key)).decode())
                        return await future
                finally:
                    waiting.pop(key, None)

            task = asyncio.create_task(reader())
            await _workers(1, ROUNDTRIP_WARMUP, request, -ROUNDTRIP_WARMUP)
            t0, c0 = time.perf_counter(), time.process_time()
            await _workers(inflight, n, request, 0)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            task.cancel()
        return elapsed, cpu


class WebsocketsNoProxyClient(WebsocketsClient):
    """python-websockets with ``proxy=None``: no proxy lookup on connect.

    By default every connect reads proxy settings from the environment
    (``urllib.request.getproxies``, twice; its cost grows with the number of
    environment variables), so the default's handshake time depends on the
    shell it runs in. This row is websockets without that cost.
    """

    connect_options = {"proxy": None}  # noqa: RUF012


class AiohttpClient(Client):
    """aiohttp ``ClientSession.ws_connect`` with a ``receive()`` loop; one session per process."""

    session: Any = None

    async def __aenter__(self) -> Client:
        import aiohttp

        # limit=0: idle-memory opens 1,000 WebSockets through this one session.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def throughput(self, port: int, n: int, decode: Decode | None) -> float:
        from aiohttp import WSMsgType

        text, closing = WSMsgType.TEXT, (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
        count = 0
        t0 = time.perf_counter()
        async with self.session.ws_connect(f"ws://127.0.0.1:{port}/", max_msg_size=0) as ws:
            receive = ws.receive
            while count < n:
                msg = await receive()
                if msg.type is text:
                    if decode is not None:
                        decode(msg.data)
                    count += 1
                elif msg.type in closing:
                    break
            elapsed = time.perf_counter() - t0
        _check(count, n)
        return elapsed

    @contextlib.asynccontextmanager
    async def idle(self, port: int) -> AsyncIterator[Any]:
        async with self.session.ws_connect(f"ws://127.0.0.1:{port}/") as ws:
            await ws.receive()  # hello
            yield ws


class PicowsClient(Client):
    """picows with its listener callback API; messages counted in ``on_ws_frame``."""

    @staticmethod
    def _listener(n: int, decode: Decode | None, done: asyncio.Future[None]) -> Any:
        from picows import WSListener, WSMsgType

        text, close = WSMsgType.TEXT, WSMsgType.CLOSE

        class Listener(WSListener):  # type: ignore[misc]
            count = 0

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                kind = frame.msg_type
                if kind == text:
                    if decode is not None:
                        decode(frame.get_payload_as_memoryview())
                    self.count += 1
                    if self.count == n and not done.done():
                        done.set_result(None)
                elif kind == close:
                    if not transport.is_close_frame_sent:
                        transport.send_close(frame.get_close_code())
                    transport.disconnect()
                    if not done.done():
                        done.set_result(None)

        return Listener

    async def throughput(self, port: int, n: int, decode: Decode | None) -> float:
        from picows import ws_connect

        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        listener_cls = self._listener(n, decode, done)
        t0 = time.perf_counter()
        transport, listener = await ws_connect(listener_cls, f"ws://127.0.0.1:{port}/", max_frame_size=1 << 30)
        await done
        elapsed = time.perf_counter() - t0
        _check(listener.count, n)
        transport.send_close()
        transport.disconnect()
        await asyncio.wait_for(transport.wait_disconnected(), 5)
        return elapsed

    @contextlib.asynccontextmanager
    async def idle(self, port: int) -> AsyncIterator[Any]:
        from picows import ws_connect

        hello: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        transport, _ = await ws_connect(self._listener(1, None, hello), f"ws://127.0.0.1:{port}/")
        await hello
        try:
            yield transport
        finally:
            transport.send_close()  # the server echoes it and hangs up
            await asyncio.wait_for(transport.wait_disconnected(), 5)


class WsprotoAnyioClient(Client):
    """Plain wsproto driven by ``anyio.connect_tcp``; partial TextMessages reassembled."""

    runner = "anyio"

    async def throughput(self, port: int, n: int, decode: Decode | None) -> float:
        import anyio
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import CloseConnection, Request, TextMessage

        count = 0
        parts: list[str] = []
        t0 = time.perf_counter()
        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send(ws.send(Request(host=f"127.0.0.1:{port}", target="/")))
            while count < n:
                ws.receive_data(await stream.receive(READ_SIZE))
                for event in ws.events():
                    if type(event) is TextMessage:
                        if not event.message_finished:
                            parts.append(event.data)
                            continue
                        message = "".join([*parts, event.data]) if parts else event.data
                        parts.clear()
                        if decode is not None:
                            decode(message)
                        count += 1
                    elif isinstance(event, CloseConnection):
                        if count < n:
                            raise RuntimeError(f"server closed after {count} of {n} messages")
                        await stream.send(ws.send(event.response()))
            elapsed = time.perf_counter() - t0
            await _wsproto_close(ws, stream)
        _check(count, n)
        return elapsed

    @contextlib.asynccontextmanager
    async def idle(self, port: int) -> AsyncIterator[Any]:
        import anyio
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import CloseConnection, Ping, Request, TextMessage

        async with await anyio.connect_tcp("127.0.0.1", port) as stream:
            ws = WSConnection(ConnectionType.CLIENT)
            await stream.send(ws.send(Request(host=f"127.0.0.1:{port}", target="/")))
            hello = anyio.Event()
            stop = anyio.Event()

            async def reader() -> None:
                # What a real client keeps per connection: a task reading frames.
                with anyio.CancelScope() as scope:
                    scope_box.append(scope)
                    while True:
                        ws.receive_data(await stream.receive(READ_SIZE))
                        for event in ws.events():
                            if isinstance(event, TextMessage):
                                hello.set()
                            elif isinstance(event, Ping):
                                await stream.send(ws.send(event.response()))
                            elif isinstance(event, CloseConnection):
                                stop.set()
                                return

            scope_box: list[anyio.CancelScope] = []
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await hello.wait()
                try:
                    yield stream
                finally:
                    scope_box[0].cancel()
            await _wsproto_close(ws, stream)


async def _wsproto_close(ws: Any, stream: Any) -> None:
    """Client-initiated close handshake for the wsproto client, bounded."""
    import anyio
    from wsproto.connection import ConnectionState
    from wsproto.events import CloseConnection

    if ws.state is not ConnectionState.OPEN:
        return
    await stream.send(ws.send(CloseConnection(code=1000)))
    with anyio.move_on_after(5):
        while True:
            try:
                data = await stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                return
            ws.receive_data(data)
            if any(isinstance(e, CloseConnection) for e in ws.events()):
                return


class RawSocketClient(Client):
    """Ceiling: hand-made handshake, then count raw bytes in ``data_received`` (no parsing)."""

    async def throughput(self, port: int, n: int, decode: Decode | None) -> float:
        from benchmarks.blast import build_stream

        if decode is not None:
            raise ValueError("the raw-socket ceiling does not parse, so it cannot decode")
        expected = len(build_stream(n))  # exact byte count of N frames (built before timing)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        class Counter(asyncio.Protocol):
            received = 0
            upgraded = False
            transport: Any = None

            def connection_made(self, transport: Any) -> None:
                self.transport = transport
                transport.write(_upgrade_request(port))

            def data_received(self, data: bytes) -> None:
                if not self.upgraded:
                    end = data.find(b"\r\n\r\n")
                    self.upgraded = True
                    data = data[end + 4 :]
                self.received += len(data)
                if self.received >= expected and not done.done():
                    done.set_result(None)

            def connection_lost(self, exc: Exception | None) -> None:
                if not done.done():
                    done.set_exception(ConnectionError("closed before all bytes arrived"))

        t0 = time.perf_counter()
        transport, _ = await loop.create_connection(Counter, "127.0.0.1", port)
        await done
        elapsed = time.perf_counter() - t0
        transport.close()
        return elapsed


    async def roundtrips(self, port: int, n: int, inflight: int) -> tuple[float, float]:
        """Floor: an ``asyncio.Protocol`` with a hand-made handshake, a minimal parser of the
        server's small unmasked frames, masked writes and a dict of futures by id (no timeouts,
        no limits, no checks): what any Python client's round trip costs at the least."""
        import orjson

        from benchmarks.blast import unmask

        loop = asyncio.get_running_loop()
        waiting: dict[Any, asyncio.Future[Any]] = {}
        opened: asyncio.Future[None] = loop.create_future()
        dumps, loads = orjson.dumps, orjson.loads

        class Client(asyncio.Protocol):
            transport: Any = None
            upgraded = False
            buffer = b""

            def connection_made(self, transport: Any) -> None:
                self.transport = transport
                transport.write(_upgrade_request(port))

            def data_received(self, data: bytes) -> None:
                buf = self.buffer + data if self.buffer else data
                if not self.upgraded:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        self.buffer = buf
                        return
                    self.upgraded = True
                    buf = buf[end + 4 :]
                    opened.set_result(None)
                pos, size = 0, len(buf)
                while size - pos >= 2:
                    length, head = buf[pos + 1] & 0x7F, 2
                    if length == 126:
                        if size - pos < 4:
                            break
                        length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
                    end = pos + head + length
                    if end > size:
                        break
                    decoded = loads(buf[pos + head : end])
                    pos = end
                    future = waiting.pop(decoded.get("id") if type(decoded) is dict else None, None)
                    if future is not None and not future.done():
                        future.set_result(decoded)
                self.buffer = buf[pos:]

            def send_text(self, payload: bytes) -> None:
                mask = os.urandom(4)
                n = len(payload)
                head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
                self.transport.write(head + mask + unmask(payload, mask))

        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
        await opened

        async def request(key: int) -> Any:
            future = waiting[key] = loop.create_future()
            client.send_text(dumps(request_payload(key)))
            return await future

        await _workers(1, ROUNDTRIP_WARMUP, request, -ROUNDTRIP_WARMUP)
        t0, c0 = time.perf_counter(), time.process_time()
        await _workers(inflight, n, request, 0)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        transport.close()
        return elapsed, cpu


class WirestateClient(Client):
    """wirestate's Connection, on asyncio via anyio."""

    runner = "anyio"

    def __init__(self, frame_path: str, batch: bool, pending: bool = False, prefilter: bool = False) -> None:
        self.frame_path = frame_path
        self.batch = batch
        # pending: one request waits, never answered, while the N messages arrive
        # (every message is then offered to the matcher first)
        self.pending = pending
        # prefilter: the user's own response_key (a JSON parse) with setup.response_marker
        # (the default key's prefilter, for a custom key)
        self.prefilter = prefilter
        self.extra: dict[str, Any] = {}

    async def throughput(self, port: int, n: int, decode: Decode | None) -> float:
        import anyio
        import attrs
        from engine import Connection, ConnectionSetup

        done = anyio.Event()
        count = 0

        # Plain (sync) handlers: the cheapest shape the engine accepts.
        if self.batch:
            if decode is None:

                def on_batch(conn: Any, messages: list[Any]) -> None:
                    nonlocal count
                    count += len(messages)
                    if count >= n:
                        done.set()

            else:

                def on_batch(conn: Any, messages: list[Any]) -> None:
                    nonlocal count
                    for message in messages:
                        decode(message)
                    count += len(messages)
                    if count >= n:
                        done.set()

            setup = ConnectionSetup(url=f"ws://127.0.0.1:{port}/", batch_handler=on_batch, frame_path=self.frame_path)
        else:
            if decode is None:

                def on_message(conn: Any, message: Any) -> None:
                    nonlocal count
                    count += 1
                    if count >= n:
                        done.set()

            else:

                def on_message(conn: Any, message: Any) -> None:
                    nonlocal count
                    decode(message)
                    count += 1
                    if count >= n:
                        done.set()

            setup = ConnectionSetup(url=f"ws://127.0.0.1:{port}/", handler=on_message, frame_path=self.frame_path)

        from engine import ConnectionClosed

        held: dict[str, Any] = {"registered_after": -1, "outcome": "still pending"}

        async def hold(conn: Any) -> None:
            held["registered_after"] = count  # request() registers before its first await
            try:
                await conn.request({"id": "never"}, key="never-answered", timeout=3600)
                held["outcome"] = "answered"
            except ConnectionClosed:  # (ConnectionLost too) when the run ends: expected
                pass
            except Exception as exc:
                held["outcome"] = f"{type(exc).__name__}: {exc}"

        async def connector(conn: Any) -> None:
            # The wire is open here, before the connection counts as live: start the request
            # that stays pending, and go on once it is registered.
            tg.start_soon(hold, conn)
            for _ in range(100):
                if held["registered_after"] >= 0:
                    return
                await anyio.sleep(0)
            raise RuntimeError("the pending request did not start")

        if self.pending:
            setup = attrs.evolve(setup, connector=connector)
        if self.prefilter:
            setup = attrs.evolve(setup, response_key=_own_json_id(), response_marker=b'"id"')
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            async with Connection(setup) as conn:
                await done.wait()
                elapsed = time.perf_counter() - t0
                # The engine reconnects on its own: N messages over two sessions is no valid run.
                # (The server closes right after the N-th message, often in the same read, so a
                # "lost" after the last message is the normal end; a second session is not.)
                sessions = conn.sessions
        if sessions != 1:
            raise RuntimeError(f"the N messages came over {sessions} sessions: the connection was lost during the run")
        _check(count, n)
        if self.pending:
            if held["outcome"] != "still pending" or held["registered_after"] < 0:
                raise RuntimeError(f"the request was not pending during the run: {held}")
            self.extra["messages_before_pending"] = held["registered_after"]
        return elapsed

    async def roundtrips(self, port: int, n: int, inflight: int) -> tuple[float, float]:
        """``Connection.request`` with the default ``response_key`` (the JSON ``"id"``)."""
        from engine import Connection, ConnectionSetup, State

        setup = ConnectionSetup(url=f"ws://127.0.0.1:{port}/", handler=lambda conn, message: None,
                                frame_path=self.frame_path)  # fmt: skip
        async with Connection(setup) as conn:
            await conn.wait_for(State.LIVE)
            request = conn.request

            def one(key: int) -> Awaitable[Any]:
                # (returns the request's coroutine for the worker to await: no
                # wrapper frame, as the other clients' request functions)
                return request(request_payload(key), key=key, timeout=30)

            # the same asyncio workers as every other client (an anyio task group
            # would add its own coroutine frame to every resume, see _workers)
            await _workers(1, ROUNDTRIP_WARMUP, one, -ROUNDTRIP_WARMUP)
            t0, c0 = time.perf_counter(), time.process_time()
            await _workers(inflight, n, one, 0)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            if conn.sessions != 1:
                raise RuntimeError("the connection was lost during the run")
        return elapsed, cpu

    @contextlib.asynccontextmanager
    async def idle(self, port: int) -> AsyncIterator[Any]:
        import anyio
        from engine import Connection, ConnectionSetup

        hello = anyio.Event()

        def on_message(conn: Any, message: Any) -> None:
            hello.set()

        setup = ConnectionSetup(url=f"ws://127.0.0.1:{port}/", handler=on_message, frame_path=self.frame_path)
        async with Connection(setup) as conn:
            await hello.wait()
            yield conn


def _own_json_id() -> Callable[[str | bytes], Any]:
    """A user's own key function (not ``engine.json_id`` itself, so no default marker)."""
    from engine import json_id

    def response_key(message: str | bytes) -> Any:
        return json_id(message)

    return response_key


def _check(count: int, n: int) -> None:
    if count != n:
        raise RuntimeError(f"received {count} messages, expected {n}")


def _e2e_client(name: str) -> Client:
    from benchmarks.e2e import E2E_CLIENTS

    client: Client = E2E_CLIENTS[name]()
    return client


#: client id -> factory. The ids are what the command line and results use.
CLIENTS: dict[str, Callable[[], Client]] = {
    "raw-socket": RawSocketClient,
    "websockets": WebsocketsClient,
    "websockets-noproxy": WebsocketsNoProxyClient,
    "aiohttp": AiohttpClient,
    "picows": PicowsClient,
    "wsproto-anyio": WsprotoAnyioClient,
    "wirestate-fast": lambda: WirestateClient("fast", batch=False),
    "wirestate-fast-batch": lambda: WirestateClient("fast", batch=True),
    "wirestate-wsproto": lambda: WirestateClient("wsproto", batch=False),
    "wirestate-fast-pending": lambda: WirestateClient("fast", batch=False, pending=True),
    "wirestate-fast-batch-pending": lambda: WirestateClient("fast", batch=True, pending=True),
    "wirestate-fast-pending-prefilter": lambda: WirestateClient("fast", batch=False, pending=True, prefilter=True),
    # the end-to-end clients (benchmarks/e2e.py; imported when used: that module imports this one)
    **{name: functools.partial(_e2e_client, name) for name in
       ("e2e-picows-msgspec", "e2e-websockets-orjson", "e2e-wirestate-adapter", "e2e-wirestate-msgspec")},
}


# -- tasks run inside the client process ---------------------------------------


async def task_throughput(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """One throughput measurement: N messages from the blast server."""
    decode = DECODERS[args.decode]()
    async with client:
        elapsed = await client.throughput(args.port, args.messages, decode)
    return {"elapsed": elapsed, "messages": args.messages, "rate": args.messages / elapsed,
            **getattr(client, "extra", {})}  # fmt: skip


async def task_roundtrip(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """N request/response round trips against the echo server, ``--inflight`` at a time."""
    async with client:
        elapsed, cpu = await client.roundtrips(args.port, args.messages, args.inflight)
    return {"elapsed": elapsed, "requests": args.messages, "inflight": args.inflight, "rate": args.messages / elapsed,
            "cpu_us": cpu / args.messages * 1e6}  # fmt: skip


async def task_e2e(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """N messages end to end: decoded to typed events, through a bounded buffer, consumed in batches."""
    async with client:
        out = await client.e2e(args.port, args.messages, args.capacity)
    return {**out, "messages": args.messages, "capacity": args.capacity, "rate": args.messages / out["elapsed"]}


async def task_handshake(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """Sequential connect + upgrade + hello + close, timed one by one."""
    samples: list[float] = []
    async with client:
        for i in range(args.warmup + args.connects):
            t0 = time.perf_counter()
            async with client.idle(args.port):
                pass
            if i >= args.warmup:
                samples.append(time.perf_counter() - t0)
    return {"median": statistics.median(samples), "samples": samples}


async def task_memory(client: Client, args: argparse.Namespace) -> dict[str, Any]:
    """Open ``--connections`` idle connections; report the RSS growth per connection."""
    from benchmarks.blast import raise_nofile_limit

    limit = raise_nofile_limit()
    k = min(args.connections, max(1, limit - 100))
    async with client, contextlib.AsyncExitStack() as stack:
        # Warm up: the first connection pays for imports and lazy caches.
        for _ in range(5):
            await stack.enter_async_context(client.idle(args.port))
        gc.collect()
        before = rss_bytes()
        t0 = time.perf_counter()
        for _ in range(k):
            await stack.enter_async_context(client.idle(args.port))
        open_seconds = time.perf_counter() - t0
        gc.collect()
        after = rss_bytes()
        result = {
            "connections": k,
            "kib_per_connection": (after - before) / k / 1024,
            "rss_before_mib": before / 2**20,
            "rss_after_mib": after / 2**20,
            "open_seconds": open_seconds,
        }
        # Report now: closing 1,000 connections is not part of the measurement.
        print(json.dumps(result), flush=True)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing else may reach stdout
    return result


TASKS = {"throughput": task_throughput, "handshake": task_handshake, "memory": task_memory, "roundtrip": task_roundtrip,
         "e2e": task_e2e}


def _watchdog(seconds: float) -> None:
    """End the process hard if it overruns: every benchmark process stops by itself."""

    def fire() -> None:
        print(json.dumps({"error": f"timed out after {seconds:.0f} s"}), flush=True)
        os._exit(3)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()


def main(argv: list[str] | None = None) -> None:
    """Run one task for one client and print its JSON result."""
    parser = argparse.ArgumentParser(description="one benchmark measurement in this process")
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("client", choices=sorted(CLIENTS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--decode", choices=sorted(DECODERS), default="none")
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--connects", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--inflight", type=int, default=1, help="round trips in flight at once (roundtrip task)")
    parser.add_argument("--capacity", type=int, default=10_000, help="bounded buffer of the e2e task, in events")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    _watchdog(args.timeout)

    client = CLIENTS[args.client]()
    coro_fn = TASKS[args.task]
    try:
        if client.runner == "anyio":
            import anyio

            result = anyio.run(coro_fn, client, args, backend="asyncio")
        else:
            result = asyncio.run(coro_fn(client, args))
    except Exception as exc:  # reported to the parent, which shows it in the table
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        os._exit(1)
    if args.task != "memory":
        print(json.dumps(result), flush=True)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: nothing left to measure


if __name__ == "__main__":
    main()
