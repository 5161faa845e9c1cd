"""A scripted WebSocket server peer over in-memory streams, for tests on virtual time.

``peer = Peer(tg, script)`` gives a dialer; each dial runs ``script(conn)`` as
the server side of that connection, where ``conn`` is a :class:`ServerSide`
with small verbs (accept, send text, close, abort, read the next event).
Everything the server received is logged per connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import wsproto
import wsproto.events as wse

from transports.base import URL, ByteStream
from transports.memory import MemoryByteStream, memory_pair

Script = Callable[["ServerSide"], Awaitable[None]]
_GONE = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


class ServerSide:
    """The server end of one connection."""

    def __init__(self, stream: MemoryByteStream) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self.received: list[Any] = []  # wsproto events, in order
        self.pending: list[Any] = []
        self.eof = False

    async def accept(self) -> None:
        while True:
            event = await self.next_event()
            if isinstance(event, wse.Request):
                await self.stream.send(self.ws.send(wse.AcceptConnection()))
                return

    async def next_event(self) -> Any:
        """The next wsproto event from the client (pings are answered); None at end of stream."""
        while not self.pending:
            try:
                data = await self.stream.receive()
            except _GONE:
                self.eof = True
                return None
            self.ws.receive_data(data)
            for event in self.ws.events():
                self.received.append(event)
                if isinstance(event, wse.Ping) and self.ws.state is wsproto.ConnectionState.OPEN:
                    await self.send_raw(self.ws.send(event.response()))
                self.pending.append(event)
        return self.pending.pop(0)

    async def next_message(self) -> str | bytes | None:
        while True:
            event = await self.next_event()
            if event is None or isinstance(event, wse.CloseConnection):
                return None
            if isinstance(event, wse.Message):
                return event.data  # type: ignore[no-any-return]

    def text_frame(self, text: str) -> bytes:
        """The bytes of one (unmasked, server) text frame, not sent."""
        return self.ws.send(wse.TextMessage(data=text))  # type: ignore[no-any-return]

    async def send_text(self, text: str) -> None:
        await self.send_raw(self.ws.send(wse.TextMessage(data=text)))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send(data)

    async def close(self, code: int, reason: str = "") -> None:
        await self.send_raw(self.ws.send(wse.CloseConnection(code=code, reason=reason)))

    def close_codes(self) -> list[int]:
        return [int(e.code) for e in self.received if isinstance(e, wse.CloseConnection)]


class Peer:
    """A dialer whose every connection runs ``script`` on the server side."""

    def __init__(self, tg: anyio.abc.TaskGroup, script: Script, *, buffered: float = float("inf")) -> None:
        self.tg = tg
        self.script = script
        self.buffered = buffered
        self.sides: list[ServerSide] = []
        self.dials: list[float] = []

    async def __call__(self, url: URL) -> ByteStream:
        self.dials.append(anyio.current_time())
        client, server = memory_pair(self.buffered)
        side = ServerSide(server)
        self.sides.append(side)
        self.tg.start_soon(self._run, side)
        return client

    async def _run(self, side: ServerSide) -> None:
        try:
            await self.script(side)
        except _GONE:
            pass
        finally:
            await side.stream.aclose()  # the server drops TCP when its script ends
