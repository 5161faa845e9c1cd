"""Edge cases found in review: close robustness, stalled writes, slow handlers, secrets, config."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import looptime
import pytest
import wsproto
import wsproto.events as wse
import wsproto.utilities

from engine.causes import OpenTimeout
from engine import Backoff, ConfigError, Connection, ConnectionSetup, NotConnected, State
from engine.sim import SimExchange
from transports.base import URL, ByteStream
from transports.memory import memory_pair

pytestmark = pytest.mark.anyio


def setup_for(**overrides: Any) -> ConnectionSetup:
    options: dict[str, Any] = dict(
        url="ws://peer.test/",
        handler=lambda conn, message: None,
        traffic_timeout=10.0,
        pong_timeout=3.0,
        backoff=Backoff(initial=100.0, maximum=100.0, jitter=False),
    )
    options.update(overrides)
    return ConnectionSetup(**options)


def silent_peer(tg: anyio.abc.TaskGroup, pings: list[bytes], *, reads: bool) -> Callable[[URL], Awaitable[ByteStream]]:
    """Accepts the handshake, sends nothing; counts pings, or stops reading at all (``reads=False``)."""

    async def serve(stream: ByteStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        try:
            while True:
                ws.receive_data(await stream.receive())
                for event in ws.events():
                    if isinstance(event, wse.Request):
                        await stream.send(ws.send(wse.AcceptConnection()))
                        if not reads:
                            await anyio.sleep_forever()
                    elif isinstance(event, wse.Ping):
                        pings.append(event.payload)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return

    async def dial(url: URL) -> ByteStream:
        # No buffering at all: a peer that stops reading blocks our next write.
        client, server = memory_pair(0 if not reads else float("inf"))
        tg.start_soon(serve, server)
        return client

    return dial


async def test_invalid_close_arguments_raise_without_wedging() -> None:
    async with SimExchange() as sim:
        with anyio.fail_after(30):
            async with Connection(setup_for(), dialer=sim.dialer()) as conn:
                await conn.wait_for(State.LIVE)
                with pytest.raises(ValueError, match="1006"):
                    await conn.close(1006)
                with pytest.raises(ValueError, match="123"):
                    await conn.close(1000, "x" * 200)
                assert conn.state is State.LIVE  # nothing changed
        assert conn.state is State.DISCONNECTED


async def test_interrupted_close_still_stops_the_connection() -> None:
    async with SimExchange() as sim:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                conn = Connection(setup_for(close_timeout=5.0), dialer=sim.dialer())
                tg.start_soon(conn.run)
                await conn.wait_for(State.LIVE)
                sim.stall()  # the peer won't answer our close frame
                with anyio.move_on_after(0.5):
                    await conn.close()  # the caller gives up early
                await conn.close()  # a later close returns: the connection did stop
            assert conn.state is State.DISCONNECTED


async def test_peer_that_stops_reading_cannot_stall_liveness() -> None:
    pings: list[bytes] = []
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            setup = setup_for(traffic_timeout=10.0, pong_timeout=3.0)
            async with Connection(setup, dialer=silent_peer(tg, pings, reads=False)) as conn:
                await conn.wait_for(State.LIVE)
                started = anyio.current_time()
                await conn.wait_for(State.RECONNECTING)
                # keepalive ping due at 5 s blocks; its write deadline (3 s) ends the session
                assert anyio.current_time() - started <= 10.0
            tg.cancel_scope.cancel()
    lost = [e.reason for e in conn.history if e.trigger == "lost"]
    assert lost and "not written within pong_timeout" in lost[0]


async def test_keepalive_off_sends_one_ping_at_silence() -> None:
    pings: list[bytes] = []
    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            setup = setup_for(keepalive=False)
            async with Connection(setup, dialer=silent_peer(tg, pings, reads=True)) as conn:
                await conn.wait_for(State.STALE)
                await anyio.sleep(1)
                assert len(pings) == 1
            tg.cancel_scope.cancel()


async def test_slow_handler_is_not_silence() -> None:
    """Time spent in the handler is not the peer's silence: no false stale."""

    async def slow(conn: Connection, message: str | bytes) -> None:
        await anyio.sleep(12)  # longer than traffic_timeout

    async with SimExchange(rate=1.0) as sim:
        async def subscribe(conn: Connection, subs: list[Any]) -> None:
            await conn.send({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 1})

        setup = setup_for(
            handler=slow, traffic_timeout=10.0, subscriber=subscribe, generate_subscriptions=lambda: ["ticker"]
        )
        with anyio.fail_after(200):
            async with Connection(setup, dialer=sim.dialer()) as conn:
                await conn.wait_for(State.LIVE)
                await anyio.sleep(60)
    assert "silence" not in [e.trigger for e in conn.history]


async def test_plain_handler_returning_an_awaitable_is_awaited(caplog: pytest.LogCaptureFixture) -> None:
    got: list[Any] = []

    async def record(message: str | bytes) -> None:
        got.append(message)

    async with SimExchange(rate=5.0) as sim:
        async def subscribe(conn: Connection, subs: list[Any]) -> None:
            await conn.send({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 1})

        setup = setup_for(
            handler=lambda conn, m: record(m), subscriber=subscribe, generate_subscriptions=lambda: ["ticker"]
        )
        with anyio.fail_after(60):
            async with Connection(setup, dialer=sim.dialer()) as conn:
                await conn.wait_for(State.LIVE)
                await anyio.sleep(3)
    assert conn.messages_received >= 10
    assert len(got) == conn.messages_received  # none lost
    assert "declare it async def" in caplog.text


@pytest.mark.parametrize("style", ["async def", "plain returning a coroutine"])
async def test_close_from_inside_the_handler_is_prompt(style: str) -> None:
    """close() awaited in the handler (which runs in the reader) does not wait out close_timeout."""

    async def close_it(conn: Connection, message: str | bytes) -> None:
        await conn.close()

    handler = close_it if style == "async def" else (lambda conn, m: close_it(conn, m))
    async with SimExchange(rate=5.0) as sim:

        async def subscribe(conn: Connection, subs: list[Any]) -> None:
            await conn.send({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 1})

        setup = setup_for(handler=handler, subscriber=subscribe, generate_subscriptions=lambda: ["t"], close_timeout=5.0)
        with anyio.fail_after(60):
            async with Connection(setup, dialer=sim.dialer()) as conn:
                await conn.wait_for(State.CLOSING)
                started = anyio.current_time()
                await conn.wait_for(State.DISCONNECTED)
                assert anyio.current_time() - started < 1.0
    assert conn.last_close_sent == (1000, "")


def test_secrets_stay_out_of_ids_reprs_and_errors() -> None:
    setup = setup_for(url="wss://stream.test:9443/ws/LISTENKEY123?token=SECRET")
    assert "LISTENKEY123" not in repr(setup) and "SECRET" not in repr(setup)
    conn = Connection(setup)
    assert conn.id == "wss://stream.test:9443"
    assert "SECRET" not in repr(conn)
    with pytest.raises(ConfigError) as info:
        setup_for(extra_headers={"X-API-KEY": "sk_live_SECRET\n"})
    assert "SECRET" not in str(info.value) and "X-API-KEY" in str(info.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"extra_headers": {"Bad Name": "v"}}, "not a valid header name"),
        ({"extra_headers": {"Sec-WebSocket-Key": "v"}}, "set by the WebSocket handshake"),
        ({"read_size": 1.5}, "positive integer"),
        ({"max_message_size": 0}, "positive integer"),
        ({"backoff": "fast"}, "Backoff"),
    ],
)
def test_more_config_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        setup_for(**overrides)


def test_unlimited_message_size_is_allowed() -> None:
    assert setup_for(max_message_size=None).max_message_size is None


async def test_looping_sender_does_not_starve_the_readers_pongs() -> None:
    """The send gate is first come, first served: pongs get through a busy sender."""
    stats = {"pongs": 0}

    async def serve(stream: ByteStream, tg: anyio.abc.TaskGroup) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)

        async def pinger() -> None:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, wsproto.utilities.LocalProtocolError):
                for _ in range(100):  # bounded
                    await anyio.sleep(1.0)
                    await stream.send(ws.send(wse.Ping(b"hb")))

        try:
            while True:
                ws.receive_data(await stream.receive())
                for event in ws.events():
                    if isinstance(event, wse.Request):
                        await stream.send(ws.send(wse.AcceptConnection()))
                        tg.start_soon(pinger)
                    elif isinstance(event, wse.Pong):
                        stats["pongs"] += 1
                await anyio.sleep(0.05)  # healthy but rate-limited reader: 20 chunks/s
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, wsproto.utilities.LocalProtocolError):
            return

    with anyio.fail_after(200):
        async with anyio.create_task_group() as tg:

            async def dial(url: URL) -> ByteStream:
                client, server = memory_pair(0)  # every send waits for the peer to take it
                tg.start_soon(serve, server, tg)
                return client

            setup = setup_for(keepalive=False, close_timeout=2.0)
            async with Connection(setup, dialer=dial) as conn:
                await conn.wait_for(State.LIVE)

                async def bulk() -> None:
                    with contextlib.suppress(NotConnected):
                        for _ in range(100_000):  # bounded
                            await conn.send("x" * 100)

                tg.start_soon(bulk)
                await anyio.sleep(20)
                assert conn.state is State.LIVE
            tg.cancel_scope.cancel()
    assert stats["pongs"] >= 15
    assert "lost" not in [e.trigger for e in conn.history]


@pytest.mark.parametrize("action", ["send", "close"])
async def test_handler_stuck_while_the_session_ends_is_bounded(action: str) -> None:
    """Messages of a read whose pong write ended the session are delivered within close_timeout."""
    script_sent = anyio.Event()

    async def serve(stream: ByteStream) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            ws.receive_data(await stream.receive())
            next(ws.events())
            await stream.send(ws.send(wse.AcceptConnection()))
            await stream.send(ws.send(wse.Ping(b"p")) + ws.send(wse.TextMessage("hi")))
            script_sent.set()
            await anyio.sleep_forever()  # and never read again

    async def handler(conn: Connection, message: str | bytes) -> None:
        if action == "send":
            await conn.send("reply")
        else:
            await conn.close()

    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:

            async def dial(url: URL) -> ByteStream:
                client, server = memory_pair(0)
                tg.start_soon(serve, server)
                return client

            setup = setup_for(handler=handler, pong_timeout=3.0, close_timeout=2.0)
            async with Connection(setup, dialer=dial) as conn:
                await script_sent.wait()
                start = anyio.current_time()
                await conn.wait_for(State.RECONNECTING, State.DISCONNECTED)
                assert anyio.current_time() - start <= 3.0 + 2.0 + 0.01
            tg.cancel_scope.cancel()
    assert conn.state is State.DISCONNECTED


def _mute_peer(stage: str, dials: list[float]) -> Callable[[URL], Awaitable[ByteStream]]:
    """A dialer whose peer never completes the handshake: the dial itself hangs
    (``stage="dial"``) or the peer takes the request and never answers (``"answer"``)."""
    keep: list[ByteStream] = []

    async def dial(url: URL) -> ByteStream:
        dials.append(anyio.current_time())
        if stage == "dial":
            await anyio.sleep_forever()
        client, server = memory_pair()
        keep.append(server)  # held open, never read
        return client

    return dial


@pytest.mark.parametrize("stage", ["dial", "answer"])
async def test_open_timeout_ends_the_attempt_and_retries(stage: str) -> None:
    dials: list[float] = []
    setup = setup_for(open_timeout=4.0, backoff=Backoff(initial=1.0, maximum=1.0, jitter=False))
    start = anyio.current_time()
    with anyio.fail_after(60):
        async with Connection(setup, dialer=_mute_peer(stage, dials)) as conn:
            while len(dials) < 3:
                await conn.wait_for(State.CONNECTING)
                await conn.wait_for(State.RECONNECTING)
    lost = [e for e in conn.history if e.trigger == "lost"]
    assert lost[0].cause == OpenTimeout(4.0)
    assert lost[0].reason.startswith("no handshake within open_timeout=4 s; retry in 1.000 s")
    assert lost[0].at - start == pytest.approx(4.0)
    # each attempt: 4 s open timeout + 1 s backoff
    assert [d - start for d in dials[:3]] == pytest.approx([0.0, 5.0, 10.0])
    assert conn.state is State.DISCONNECTED


@pytest.mark.parametrize("stage", ["dial", "answer"])
async def test_close_while_opening_returns_at_once(stage: str) -> None:
    dials: list[float] = []
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            conn = Connection(setup_for(open_timeout=1000.0), dialer=_mute_peer(stage, dials))
            await tg.start(conn.run)
            await anyio.sleep(2)
            assert conn.state is State.CONNECTING
            closed_at = anyio.current_time()
            await conn.close()
            assert anyio.current_time() == pytest.approx(closed_at)
    assert conn.state is State.DISCONNECTED
    assert len(dials) == 1 and conn.sessions == 1
    assert [e.trigger for e in conn.history][-2:] == ["close", "closed"]


@pytest.mark.parametrize("how", ["async-with", "close"])
async def test_close_frame_that_cannot_be_written_is_bounded(how: str) -> None:
    """A peer that stops reading blocks our close frame: leaving still takes close_timeout at most."""
    pings: list[bytes] = []
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            setup = setup_for(close_timeout=2.0)
            conn = Connection(setup, dialer=silent_peer(tg, pings, reads=False))
            if how == "async-with":
                async with conn:
                    await conn.wait_for(State.LIVE)
                    start = anyio.current_time()
            else:
                tg.start_soon(conn.run)
                await conn.wait_for(State.LIVE)
                start = anyio.current_time()
                await conn.close()
            assert anyio.current_time() - start == pytest.approx(2.0, abs=0.01)
            tg.cancel_scope.cancel()
    assert conn.state is State.DISCONNECTED
    assert conn.last_close_sent is None  # it never went out


class _AnswerOnCue(ByteStream):
    """A peer whose 101 is handed over exactly when the test says (by a loop callback)."""

    def __init__(self) -> None:
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self.response = b""
        self.pending: Any = None

    async def send(self, item: bytes) -> None:
        self.ws.receive_data(item)
        for event in self.ws.events():
            if isinstance(event, wse.Request):
                self.response = self.ws.send(wse.AcceptConnection())

    async def receive(self, max_bytes: int = 65536) -> bytes:
        self.pending = asyncio.get_running_loop().create_future()
        return await self.pending  # type: ignore[no-any-return]

    def answer(self) -> None:
        self.pending.set_result(self.response)

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"loop_factory": lambda: looptime.new_event_loop(start=0)})])
async def test_answer_in_the_open_deadline_iteration_is_a_timeout_not_a_dropped_session() -> None:
    """The 101 lands in the loop iteration where open_timeout fires: the attempt is a timeout;
    it must not open, go live and then be dropped as 'closed' (asyncio: the race needs the loop)."""
    peer = _AnswerOnCue()

    async def dial(url: URL) -> ByteStream:
        return peer

    loop = asyncio.get_running_loop()
    loop.call_at(loop.time() + 10.0, peer.answer)  # queued ahead of the deadline timer
    setup = setup_for(open_timeout=10.0, backoff=Backoff(initial=1.0, maximum=1.0, jitter=False))
    with anyio.fail_after(60):
        async with Connection(setup, dialer=dial) as conn:
            await conn.wait_for(State.RECONNECTING)
    trail = [(e.trigger, e.cause) for e in conn.history]
    assert trail[:2] == [("connect", None), ("lost", OpenTimeout(10.0))]
    assert "opened" not in [t for t, _ in trail]


async def test_outer_cancel_reaches_the_run_task_at_once() -> None:
    """As with a task group's child: cancelling a scope around the block stops the connection
    at once, even while the block's body sits in a shielded section."""
    async with SimExchange() as sim:
        seen = None
        with anyio.fail_after(60):
            with anyio.CancelScope() as outer:
                async with Connection(setup_for(), dialer=sim.dialer()) as conn:
                    await conn.wait_for(State.LIVE)
                    outer.cancel()
                    with anyio.CancelScope(shield=True):
                        await anyio.sleep(3)
                        seen = conn.state
        assert seen is State.DISCONNECTED
        assert outer.cancelled_caught


@pytest.mark.parametrize("peer_resets_at", [None, 2.0])
async def test_outer_deadline_during_a_blocked_close_is_caught_by_its_scope(peer_resets_at: float | None) -> None:
    """The peer stops reading, so our close frame cannot be written; a deadline around the block
    fires meanwhile. The block ends at that deadline (the run task is cancelled with it, which
    also ends the write) and the scope reports it caught its own cancellation."""
    pings: list[bytes] = []
    streams: list[ByteStream] = []
    async with anyio.create_task_group() as tg:
        dial_silent = silent_peer(tg, pings, reads=False)

        async def dial(url: URL) -> ByteStream:
            streams.append(await dial_silent(url))
            return streams[-1]

        async def reset_later(delay: float) -> None:
            await anyio.sleep(delay)
            streams[0].abort()  # type: ignore[attr-defined]

        with anyio.fail_after(60):
            with anyio.CancelScope() as outer:
                async with Connection(setup_for(close_timeout=5.0), dialer=dial) as conn:
                    await conn.wait_for(State.LIVE)
                    left = anyio.current_time()
                    outer.deadline = left + 1
                    if peer_resets_at is not None:
                        tg.start_soon(reset_later, peer_resets_at)
            took = anyio.current_time() - left
        tg.cancel_scope.cancel()
    assert outer.cancelled_caught
    assert took == pytest.approx(1.0, abs=0.01)
    assert conn.state is State.DISCONNECTED


async def test_a_second_close_waits_for_the_first_instead_of_cutting_it_short() -> None:
    async with SimExchange() as sim:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                conn = Connection(setup_for(), dialer=sim.dialer())
                await tg.start(conn.run)
                await conn.wait_for(State.LIVE)
                tg.start_soon(conn.close, 4000, "first")
                await conn.wait_for(State.CLOSING)
                await conn.close(4001, "second")
                assert conn.state is State.DISCONNECTED
    assert conn.last_close_sent == (4000, "first")
    assert conn.last_close_received == (4000, "first")  # the handshake completed
    assert [e.trigger for e in conn.history].count("close") == 1
