"""Connection against a scripted peer: exact bytes on the wire, both frame paths, both backends."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest
import wsproto
import wsproto.events as wse

from engine import Backoff, Connection, ConnectionSetup, State
from transports.base import URL, ByteStream
from transports.frames import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, encode_frame
from transports.memory import MemoryByteStream, memory_pair

pytestmark = pytest.mark.anyio


class ScriptedPeer:
    """A server that accepts the handshake, writes scripted raw bytes, and records what the client sends."""

    def __init__(self, script: bytes, *, answer_close: bool = True) -> None:
        self.script = script
        self.answer_close = answer_close
        self.received: list[wse.Event] = []
        self.got_close = anyio.Event()
        self.streams: list[MemoryByteStream] = []

    def dialer(self, tg: anyio.abc.TaskGroup) -> Callable[[URL], Awaitable[ByteStream]]:
        async def dial(url: URL) -> ByteStream:
            client, server = memory_pair()
            self.streams.append(server)
            tg.start_soon(self._serve, server)
            return client

        return dial

    async def _serve(self, stream: MemoryByteStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        try:
            while True:
                data = await stream.receive()
                ws.receive_data(data)
                for event in ws.events():
                    if isinstance(event, wse.Request):
                        await stream.send(ws.send(wse.AcceptConnection()) + self.script)
                    else:
                        self.received.append(event)
                    if isinstance(event, wse.CloseConnection):
                        self.got_close.set()
                        if self.answer_close:
                            await stream.aclose()
                            return
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return


def frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    return encode_frame(opcode, payload, fin=fin, mask=False)


@pytest.fixture(params=["fast", "wsproto"])
def frame_path(request: pytest.FixtureRequest) -> str:
    return request.param


def setup_for(received: list[Any], frame_path: str, **overrides: Any) -> ConnectionSetup:
    options: dict[str, Any] = dict(
        url="ws://peer.test/",
        handler=lambda conn, message: received.append(message),
        frame_path=frame_path,
        traffic_timeout=10.0,
        backoff=Backoff(initial=100.0, maximum=100.0, jitter=False),
    )
    options.update(overrides)
    return ConnectionSetup(**options)


async def test_fragmented_message_reassembled_and_ping_answered(frame_path: str) -> None:
    script = (
        frame(OP_TEXT, b"hel", fin=False)
        + frame(OP_PING, b"are-you-there")
        + frame(OP_CONT, "lo wörld".encode(), fin=False)
        + frame(OP_CONT, b"!")
        + frame(OP_BINARY, b"\x00\xff")
    )
    peer = ScriptedPeer(script)
    received: list[Any] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            async with Connection(setup_for(received, frame_path), dialer=peer.dialer(tg)) as conn:
                await conn.wait_for(State.LIVE)
                await anyio.sleep(1)
            tg.cancel_scope.cancel()
    assert received == ["hello wörld!", b"\x00\xff"]
    pongs = [e for e in peer.received if isinstance(e, wse.Pong)]
    assert [p.payload for p in pongs] == [b"are-you-there"]
    closes = [e for e in peer.received if isinstance(e, wse.CloseConnection)]
    assert closes and closes[0].code == 1000


async def test_oversized_message_closes_with_1009(frame_path: str) -> None:
    peer = ScriptedPeer(frame(OP_TEXT, b"x" * 600, fin=False) + frame(OP_CONT, b"y" * 600))
    received: list[Any] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            setup = setup_for(received, frame_path, max_message_size=1000)
            async with Connection(setup, dialer=peer.dialer(tg)) as conn:
                await conn.wait_for(State.RECONNECTING)
                await peer.got_close.wait()
            tg.cancel_scope.cancel()
    assert received == []
    closes = [e for e in peer.received if isinstance(e, wse.CloseConnection)]
    assert [c.code for c in closes] == [1009]
    assert conn.last_close_sent is not None and conn.last_close_sent[0] == 1009
    lost = [e for e in conn.history if e.trigger == "lost"][0]
    assert "1009" in lost.reason


async def test_invalid_utf8_closes_with_1007(frame_path: str) -> None:
    peer = ScriptedPeer(frame(OP_TEXT, b"ok") + frame(OP_TEXT, b"\xc3\x28"))
    received: list[Any] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            async with Connection(setup_for(received, frame_path), dialer=peer.dialer(tg)) as conn:
                await conn.wait_for(State.RECONNECTING)
                await peer.got_close.wait()
            tg.cancel_scope.cancel()
    assert received == ["ok"]  # what came before the violation is delivered
    assert [e.code for e in peer.received if isinstance(e, wse.CloseConnection)] == [1007]


async def test_unanswered_close_is_bounded_by_close_timeout(frame_path: str) -> None:
    """A peer that swallows our close frame cannot make close() hang."""
    peer = ScriptedPeer(b"", answer_close=False)
    received: list[Any] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            async with Connection(setup_for(received, frame_path, close_timeout=2.0), dialer=peer.dialer(tg)) as conn:
                await conn.wait_for(State.LIVE)
                start = anyio.current_time()
            assert 1.99 <= anyio.current_time() - start <= 2.01
            assert peer.got_close.is_set()
            tg.cancel_scope.cancel()
    assert conn.state is State.DISCONNECTED


async def test_pong_goes_out_before_the_handlers_reply(frame_path: str) -> None:
    """A ping that arrived before a message is answered before the handler's reply to it."""
    peer = ScriptedPeer(frame(OP_PING, b"first") + frame(OP_TEXT, b"echo me"))

    async def echo(conn: Connection, message: str | bytes) -> None:
        await conn.send(message)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            setup = setup_for([], frame_path, handler=echo)
            async with Connection(setup, dialer=peer.dialer(tg)) as conn:
                await conn.wait_for(State.LIVE)
                await anyio.sleep(1)
            tg.cancel_scope.cancel()
    kinds = [type(e).__name__ for e in peer.received if not isinstance(e, wse.CloseConnection)]
    assert kinds == ["Pong", "TextMessage"]
