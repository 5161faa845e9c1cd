"""The send path (issue 17 items 1-2): priority order, bounded queue, nothing lost silently, rate limits."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest
import wsproto.events as wse
from wspeer import Peer, ServerSide

from engine import Backoff, Connection, ConnectionLost, ConnectionSetup, State
from engine.errors import SendQueueFull
from engine.ratelimit import RateLimit
from engine.sendqueue import Priority, SendQueue
from engine.sim import SimExchange

pytestmark = pytest.mark.anyio


async def test_control_goes_before_subscription_before_normal_fifo_within() -> None:
    queue = SendQueue()
    order: list[str] = []
    arrived: list[str] = []
    await queue.acquire()  # someone is writing

    async def sender(name: str, priority: Priority) -> None:
        arrived.append(name)  # (no checkpoint between this and taking a place in the queue)
        await queue.acquire(priority)
        order.append(name)
        queue.release()

    async with anyio.create_task_group() as tg:
        for i in range(100):
            tg.start_soon(sender, f"normal{i}", Priority.NORMAL)
        await anyio.sleep(0.01)
        tg.start_soon(sender, "sub", Priority.SUBSCRIPTION)
        tg.start_soon(sender, "pong", Priority.CONTROL)
        await anyio.sleep(0.01)
        assert queue.waiting == 102
        queue.release()
    assert order[:2] == ["pong", "sub"]
    assert order[2:] == [name for name in arrived if name.startswith("normal")]  # FIFO within a priority


async def test_a_full_queue_says_so_and_a_closed_one_fails_every_waiter() -> None:
    queue = SendQueue(max_queued=3)
    await queue.acquire()
    failures: list[BaseException] = []

    async def sender() -> None:
        try:
            await queue.acquire()
        except ConnectionLost as exc:
            failures.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(sender)
        await anyio.sleep(0.01)
        with pytest.raises(SendQueueFull, match="max_queued=3"):
            await queue.acquire()
        queue.close()
    assert len(failures) == 3 and all("not sent" in str(e) or "before this frame" in str(e) for e in failures)


def setup_for(**overrides: Any) -> ConnectionSetup:
    options: dict[str, Any] = dict(
        url="ws://peer.test/ws",
        handler=lambda conn, message: None,
        backoff=Backoff(initial=100.0, maximum=100.0, jitter=False),
    )
    options.update(overrides)
    return ConnectionSetup(**options)


async def test_a_pong_queued_behind_a_hundred_sends_goes_first() -> None:
    """The peer stops reading while 100 sends pile up, pings, then reads: the pong comes first."""
    frames: list[str] = []

    async def script(side: ServerSide) -> None:
        await side.accept()
        await anyio.sleep(1.0)  # not reading: the client's sends queue up (unbuffered pipe)
        await side.send_raw(side.ws.send(wse.Ping(payload=b"are you there")))
        while (event := await side.next_event()) is not None:
            if isinstance(event, wse.Pong):
                frames.append("pong")
            elif isinstance(event, wse.TextMessage):
                frames.append("text")
            if len(frames) == 101:
                return

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            async with Connection(setup_for(), dialer=Peer(tg, script, buffered=0)) as conn:
                await conn.wait_for(State.LIVE)
                async with anyio.create_task_group() as senders:
                    for i in range(100):
                        senders.start_soon(conn.send_text, f"order {i}")
        tg.cancel_scope.cancel()
    # the first text was already being written when the ping came; everything queued after it waits
    assert frames.index("pong") <= 1 and frames.count("text") == 100


async def test_disconnect_fails_every_queued_send_with_connection_lost() -> None:
    async def script(side: ServerSide) -> None:
        await side.accept()
        await anyio.sleep(1.0)
        side.stream.abort()

    outcomes: list[str] = []

    async def send(conn: Connection, i: int) -> None:
        try:
            await conn.send_text(f"x{i}")
            outcomes.append("sent")
        except ConnectionLost:
            outcomes.append("lost")
        except Exception as exc:  # noqa: BLE001 - recorded: the test says which kind
            outcomes.append(type(exc).__name__)

    async with anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            async with Connection(setup_for(), dialer=Peer(tg, script, buffered=0)) as conn:
                await conn.wait_for(State.LIVE)
                async with anyio.create_task_group() as senders:
                    for i in range(50):
                        senders.start_soon(send, conn, i)
        tg.cancel_scope.cancel()
    assert len(outcomes) == 50  # every send came back with an answer: none vanished
    # queued ones: ConnectionLost (not sent); the one being written when the peer reset
    # fails as a broken stream (NotConnected)
    assert outcomes.count("lost") >= 45 and set(outcomes) <= {"lost", "NotConnected"}


async def test_close_with_sends_queued_behind_the_rate_limit_settles_each_within_close_timeout() -> None:
    """close() while 20 sends wait for a 2-per-second limit: it returns within close_timeout, and
    every send came back either sent (the exchange got exactly those) or with ConnectionLost."""
    outcomes: dict[int, str] = {}

    async def send(conn: Connection, i: int) -> None:
        try:
            await conn.send({"op": "note", "id": i})
            outcomes[i] = "sent"
        except ConnectionLost:
            outcomes[i] = "lost"
        except Exception as exc:  # noqa: BLE001 - recorded: the test says which kind
            outcomes[i] = type(exc).__name__

    async with SimExchange() as sim:
        setup = setup_for(url="ws://sim.test/ws", rate_limit=RateLimit.per(1.0, 2), close_timeout=3.0)
        with anyio.fail_after(60):
            async with Connection(setup, dialer=sim.dialer()) as conn:
                await conn.wait_for(State.LIVE)
                async with anyio.create_task_group() as senders:
                    for i in range(20):
                        senders.start_soon(send, conn, i)
                    await anyio.sleep(1.2)  # three out, the rest queued behind the limit
                    started = anyio.current_time()
                    await conn.close()
                    took = anyio.current_time() - started
                    assert conn.state is State.DISCONNECTED
    assert took <= 3.0 + 0.01
    assert len(outcomes) == 20 and set(outcomes.values()) <= {"sent", "lost"}  # none vanished, none hung
    received = {orjson.loads(text)["id"] for _, text in sim.log[0] if orjson.loads(text).get("op") == "note"}
    assert received == {i for i, outcome in outcomes.items() if outcome == "sent"}
    assert 3 <= len(received) < 20, (took, outcomes)


async def test_two_per_second_the_third_send_of_a_burst_waits_half_a_second() -> None:
    async with SimExchange() as sim:
        setup = setup_for(url="ws://sim.test/ws", rate_limit=RateLimit.per(1.0, 2))
        with anyio.fail_after(60):
            async with Connection(setup, dialer=sim.dialer()) as conn:
                await conn.wait_for(State.LIVE)
                start = anyio.current_time()
                for i in range(3):
                    await conn.send({"op": "ping", "id": i})
                await anyio.sleep(1)
    times = [t - start for t, text in sim.log[0] if orjson.loads(text)["op"] == "ping"]
    assert times == pytest.approx([0.0, 0.5, 1.0], abs=1e-3)


async def test_one_limiter_shared_by_two_connections_holds_the_combined_rate() -> None:
    shared = RateLimit.per(1.0, 4).limiter()
    async with SimExchange() as sim:
        setup = setup_for(url="ws://sim.test/ws", rate_limit=shared)
        with anyio.fail_after(60):
            async with Connection(setup, dialer=sim.dialer()) as a, Connection(setup, dialer=sim.dialer()) as b:
                await a.wait_for(State.LIVE)
                await b.wait_for(State.LIVE)
                start = anyio.current_time()

                async def burst(conn: Connection, tag: str) -> None:
                    for i in range(6):
                        await conn.send({"op": "ping", "id": f"{tag}{i}"})

                async with anyio.create_task_group() as tg:
                    tg.start_soon(burst, a, "a")
                    tg.start_soon(burst, b, "b")
                await anyio.sleep(1)
    times = sorted(t - start for log in sim.log for t, text in log if orjson.loads(text)["op"] == "ping")
    assert len(times) == 12
    for i in range(len(times) - 4):  # never more than 4 in any second, over both connections
        assert times[i + 4] - times[i] >= 1.0 - 1e-6


async def test_strict_mode_never_lets_n_plus_one_into_any_window_the_exchange_sees() -> None:
    """100 concurrent sends at 5 per second (strict sliding window), timed where the exchange
    receives them: no window of one second ever holds 6, and the burst takes no longer than it
    must (5 at once, then 5 more each second)."""
    n = 5
    async with SimExchange() as sim:
        setup = setup_for(url="ws://sim.test/ws", rate_limit=RateLimit.per(1.0, n, algorithm="sliding"))
        with anyio.fail_after(120):
            async with Connection(setup, dialer=sim.dialer()) as conn:
                await conn.wait_for(State.LIVE)
                start = anyio.current_time()
                async with anyio.create_task_group() as tg:
                    for i in range(100):
                        tg.start_soon(conn.send, {"op": "ping", "id": i})
                await anyio.sleep(1)
    times = sorted(t - start for t, text in sim.log[0] if orjson.loads(text)["op"] == "ping")
    assert len(times) == 100
    assert min(times[i + n] - times[i] for i in range(len(times) - n)) >= 1.0 - 1e-6
    assert times[-1] == pytest.approx(19.0, abs=1e-3)


async def test_message_ids_counter_uuid7_or_your_own() -> None:
    import uuid

    from engine import ConfigError

    async with SimExchange() as sim:
        with anyio.fail_after(60):
            async with Connection(setup_for(url="ws://sim.test/ws"), dialer=sim.dialer()) as counted:
                assert [counted.next_id() for _ in range(3)] == [1, 2, 3]
            made = iter(["a", "b"])
            async with Connection(setup_for(url="ws://sim.test/ws", message_id=lambda: next(made)), dialer=sim.dialer()) as own:
                assert [own.next_id(), own.next_id()] == ["a", "b"]
            async with Connection(setup_for(url="ws://sim.test/ws", message_id="uuid7"), dialer=sim.dialer()) as timed:
                ids = [timed.next_id() for _ in range(100)]
                assert sorted(ids) == ids and uuid.UUID(str(ids[0])).version == 7
    with pytest.raises(ConfigError, match="message_id"):
        setup_for(message_id="sequential")


async def test_close_after_a_send_was_cut_mid_frame_does_not_raise() -> None:
    """A stream that may write in pieces (no atomic_send capability): a send cancelled while it
    writes closes the queue and ends the session; close() right after must still just return."""
    from transports.memory import MemoryByteStream

    class Piecewise(MemoryByteStream):
        capabilities = None  # (declares nothing: the engine must assume a send can be cut)

    async def script(side: ServerSide) -> None:
        await side.accept()
        await anyio.sleep_forever()  # never reads again

    async with anyio.create_task_group() as tg:
        peer = Peer(tg, script, buffered=0)

        async def dial(url: Any) -> Any:
            stream = await peer(url)
            stream.__class__ = Piecewise
            return stream

        with anyio.fail_after(60):
            async with Connection(setup_for(close_timeout=2.0), dialer=dial) as conn:
                await conn.wait_for(State.LIVE)
                with anyio.move_on_after(1.0):
                    await conn.send_text("x" * 1000)  # blocks: cut by the deadline mid-frame
                await conn.close()  # must not raise
        tg.cancel_scope.cancel()
    assert conn.state is State.DISCONNECTED
    assert any("interrupted mid-frame" in e.reason for e in conn.history if e.trigger == "lost")


async def test_a_send_that_need_not_wait_goes_out_at_once_and_one_that_must_waits_its_turn() -> None:
    """Wire.write_now (the send fast path): with room in the pipe, free tokens and nobody queued the
    frame is written without suspending; when the pipe is full it returns what finishes the send,
    which goes once the peer reads; while a send holds the queue, the next one queues behind it."""
    from engine.ratelimit import RateLimit
    from engine.wire import Wire
    from transports.memory import memory_pair
    from transports.websocket import ClientProtocol

    client, server = memory_pair(max_buffered_chunks=1)
    ended: list[object] = []
    wire = Wire(anyio.CancelScope(), ended.append, limiter=RateLimit.per(1.0, 2, burst=2).limiter())
    wire.attach(client, ClientProtocol("h"), 0.0)
    assert wire.write_now(b"first") is None  # out, no await: the pipe had room
    rest = wire.write_now(b"second")  # the pipe holds one chunk: this one must wait
    assert rest is not None
    third = wire.write_now(b"third")  # no tokens left (2 a second): waits for them, behind "second"
    assert third is not None
    got: list[bytes] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: rest)  # type: ignore[arg-type,return-value]
            tg.start_soon(lambda: third)  # type: ignore[arg-type,return-value]
            for _ in range(3):
                got.append(await server.receive())
    assert got == [b"first", b"second", b"third"] and not ended
