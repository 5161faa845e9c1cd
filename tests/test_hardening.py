"""Issue 15: the defects an adversarial trial found, each pinned by a test (virtual time, both backends)."""

from __future__ import annotations

import email.utils
import logging
from typing import Any

import anyio
import orjson
import pytest
import wsproto.events as wse
from wspeer import Peer, ServerSide

from engine import Backoff, Connection, ConnectionSetup, GaveUp, State, StateChanged
from engine.causes import ClosedByPeer, ProtocolError, Silence
from engine.sim import SimExchange

pytestmark = pytest.mark.anyio


def setup_for(**overrides: Any) -> ConnectionSetup:
    options: dict[str, Any] = dict(
        url="ws://peer.test/ws",
        handler=lambda conn, message: None,
        traffic_timeout=10.0,
        pong_timeout=3.0,
        backoff=Backoff(initial=1.0, maximum=60.0, jitter=False),
    )
    options.update(overrides)
    return ConnectionSetup(**options)


async def accept_then_close_1011(side: ServerSide) -> None:
    await side.accept()
    await side.close(1011, "try again later")
    await side.next_event()


# 1. reconnect storm ---------------------------------------------------------


async def test_a_peer_that_closes_right_after_the_handshake_backs_off_and_gives_up() -> None:
    async with anyio.create_task_group() as tg:
        peer = Peer(tg, accept_then_close_1011)
        setup = setup_for(backoff=Backoff(initial=1.0, maximum=60.0, jitter=False, max_attempts=3))
        with anyio.fail_after(600):
            async with Connection(setup, dialer=peer) as conn:
                await conn.wait_for(State.DISCONNECTED)
                with pytest.raises(GaveUp, match="3 attempts failed"):
                    await conn.wait_for(State.LIVE)
        tg.cancel_scope.cancel()
    lost = [e for e in conn.history if e.trigger == "lost"]
    assert [e.delay for e in lost] == [1.0, 2.0, 4.0, None]  # growing, then the budget holds
    assert all(e.cause == ClosedByPeer(1011, "try again later") for e in lost)
    assert len(peer.dials) == 4
    assert [d - peer.dials[0] for d in peer.dials] == pytest.approx([0.0, 1.0, 3.0, 7.0])


async def test_a_session_counts_as_healthy_only_after_healthy_after() -> None:
    async def live_for_a_while(side: ServerSide) -> None:
        await side.accept()
        with anyio.move_on_after(20.0):  # reading: keepalive pings are answered meanwhile
            while await side.next_event() is not None:
                pass
        await side.close(1001)
        await side.next_event()

    async with anyio.create_task_group() as tg:
        peer = Peer(tg, live_for_a_while)
        with anyio.fail_after(600):
            async with Connection(setup_for(healthy_after=15.0), dialer=peer) as conn:
                for _ in range(3):
                    await conn.wait_for(State.RECONNECTING)
                    await conn.wait_for(State.LIVE)
        tg.cancel_scope.cancel()
    assert [e.delay for e in conn.history if e.trigger == "lost"] == [1.0, 1.0, 1.0]


# 2. unbounded Retry-After -------------------------------------------------


@pytest.mark.parametrize("value", ["inf", "1e12"])
async def test_retry_after_is_capped_and_the_capped_wait_is_shown(value: str) -> None:
    async with SimExchange() as sim:
        sim.reject_next(429, [("Retry-After", value)])
        with anyio.fail_after(600):
            async with Connection(setup_for(retry_after_cap=120.0), dialer=sim.dialer()) as conn:
                await conn.wait_for(State.RECONNECTING)
                lost_at = anyio.current_time()
                event = conn.history[-1]
                await conn.wait_for(State.CONNECTING)
                assert anyio.current_time() - lost_at == pytest.approx(120.0)
                await conn.wait_for(State.LIVE)
    assert event.delay == 120.0
    assert "capped to 120 s" in event.reason


async def test_retry_after_as_an_http_date_uses_the_wall_clock() -> None:
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    async with SimExchange() as sim:
        sim.reject_next(503, [("Retry-After", date)])
        with anyio.fail_after(600):
            async with Connection(setup_for(), dialer=sim.dialer(), wall_clock=lambda: now) as conn:
                await conn.wait_for(State.RECONNECTING)
                event = conn.history[-1]
                await conn.wait_for(State.LIVE)
    assert event.delay == pytest.approx(42.0)


# 3. close() never raises --------------------------------------------------


async def stop_reading_then_reset(side: ServerSide) -> None:
    await side.accept()
    await anyio.sleep(3.0)  # not reading: our writes pile up
    side.stream.abort()


@pytest.mark.parametrize("how", ["close", "async-with"])
async def test_close_with_a_send_stuck_on_a_peer_that_stopped_reading(how: str) -> None:
    send_errors: list[BaseException] = []

    async def flood(conn: Connection) -> None:
        try:
            while True:
                await conn.send_text("x" * 1000)
        except Exception as exc:
            send_errors.append(exc)

    async with anyio.create_task_group() as tg:
        peer = Peer(tg, stop_reading_then_reset, buffered=0)  # unbuffered: the first unread write blocks
        with anyio.fail_after(60):
            # The close frame waits behind the stuck send; then the peer resets,
            # so the session ends under the waiting close.
            async with Connection(setup_for(close_timeout=10.0), dialer=peer) as conn:
                await conn.wait_for(State.LIVE)
                tg.start_soon(flood, conn)
                await anyio.sleep(0.5)
                start = anyio.current_time()
                if how == "close":
                    await conn.close()  # must not raise
            assert anyio.current_time() - start == pytest.approx(2.5, abs=0.01)  # at the reset
        tg.cancel_scope.cancel()
    assert conn.state is State.DISCONNECTED
    assert send_errors and all(type(e).__name__ == "NotConnected" for e in send_errors)


# 7. slow drip -------------------------------------------------------------


async def test_a_frame_dripped_a_byte_a_second_does_not_keep_the_connection_live() -> None:
    async def drip(side: ServerSide) -> None:
        await side.accept()
        for byte in side.text_frame("x" * 500):
            await side.send_raw(bytes([byte]))
            await anyio.sleep(1.0)

    received: list[Any] = []
    async with anyio.create_task_group() as tg:
        peer = Peer(tg, drip)
        with anyio.fail_after(600):
            async with Connection(setup_for(handler=lambda c, m: received.append(m)), dialer=peer) as conn:
                await conn.wait_for(State.LIVE)
                live_at = anyio.current_time()
                await conn.wait_for(State.RECONNECTING)
                took = anyio.current_time() - live_at
        tg.cancel_scope.cancel()
    assert took == pytest.approx(10.0 + 3.0, abs=0.01)  # traffic_timeout + pong_timeout
    stale = [e for e in conn.history if e.trigger == "silence"]
    assert stale and [e for e in conn.history if e.trigger == "lost"][0].cause == Silence(3.0)
    assert received == []


# 8. the close frame on cancellation, on both backends ---------------------


async def serve_until_closed(side: ServerSide) -> None:
    await side.accept()
    while await side.next_message() is not None:
        pass
    if not side.eof:
        await side.close(1000)


@pytest.mark.parametrize("style", ["cancel-around-async-with", "cancel-group-with-run"])
async def test_cancelling_says_goodbye_with_1000(style: str) -> None:
    async with anyio.create_task_group() as tg:
        peer = Peer(tg, serve_until_closed)
        with anyio.fail_after(60):
            async with anyio.create_task_group() as inner:
                conn = Connection(setup_for(), dialer=peer)
                if style == "cancel-around-async-with":

                    async def body() -> None:
                        async with conn:
                            await anyio.sleep_forever()

                    inner.start_soon(body)
                else:
                    await inner.start(conn.run)
                await conn.wait_for(State.LIVE)
                inner.cancel_scope.cancel()
            await anyio.sleep(1)
        tg.cancel_scope.cancel()
    assert peer.sides[0].close_codes() == [1000]
    assert conn.last_close_sent == (1000, "")
    assert [e.trigger for e in conn.history][-2:] == ["close", "closed"]


# 10. a response_key that raises does not end the session -----------------


async def test_a_raising_response_key_counts_as_no_match() -> None:
    async def heartbeat_then_ack(side: ServerSide) -> None:
        await side.accept()
        while (message := await side.next_message()) is not None:
            request = orjson.loads(message)
            await side.send_text("heartbeat")  # not JSON
            await side.send_text('{"event":"info"}')  # JSON without id
            await side.send_text(orjson.dumps({"id": request["id"], "event": "subscribed"}).decode())

    async def subscribe(conn: Connection, subs: list[Any]) -> None:
        rid = conn.next_id()
        await conn.request({"op": "subscribe", "id": rid}, key=rid, timeout=5)

    received: list[Any] = []
    setup = setup_for(
        subscriber=subscribe,
        generate_subscriptions=lambda: ["ticker"],
        response_key=lambda m: orjson.loads(m)["id"],  # what a user writes first: raises on both
        handler=lambda conn, m: received.append(m),
    )
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(60):
            async with Connection(setup, dialer=Peer(tg, heartbeat_then_ack)) as conn:
                await conn.wait_for(State.LIVE)
                assert conn.sessions == 1
        tg.cancel_scope.cancel()
    assert conn.response_key_errors == 2
    assert received == ["heartbeat", '{"event":"info"}']


# 11. after a protocol failure, drain instead of resetting -----------------


async def test_after_failing_the_connection_the_client_drains_until_the_server_closes() -> None:
    writes_after_close: list[bool] = []

    async def oversize_then_keep_writing(side: ServerSide) -> None:
        await side.accept()
        late = side.text_frame("late")
        await side.send_raw(side.text_frame("y" * 2000))  # over max_message_size
        while True:
            event = await side.next_event()
            if event is None or isinstance(event, wse.CloseConnection):
                break
        for _ in range(10):  # still writing after the client's close frame: it must not be refused
            await anyio.sleep(0.1)
            try:
                await side.send_raw(late)
                writes_after_close.append(True)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                writes_after_close.append(False)
        await side.stream.aclose()

    async with anyio.create_task_group() as tg:
        peer = Peer(tg, oversize_then_keep_writing)
        with anyio.fail_after(60):
            async with Connection(setup_for(max_message_size=1000), dialer=peer) as conn:
                await conn.wait_for(State.RECONNECTING)
                failed_at = anyio.current_time()
                await conn.wait_for(State.CONNECTING)
        tg.cancel_scope.cancel()
    assert peer.sides[0].close_codes() == [1009]
    assert writes_after_close == [True] * 10
    cause = [e for e in conn.history if e.trigger == "lost"][0].cause
    assert isinstance(cause, ProtocolError) and cause.code == 1009
    assert failed_at < peer.dials[1]


# newcomer: listeners in the setup see the first transition; INFO logging ----


async def test_listeners_in_the_setup_hear_the_first_transition(caplog: pytest.LogCaptureFixture) -> None:
    heard: list[StateChanged] = []
    async with SimExchange() as sim:
        with caplog.at_level(logging.INFO):
            with anyio.fail_after(60):
                async with Connection(setup_for(on_state_change=heard.append), dialer=sim.dialer()) as conn:
                    await conn.wait_for(State.LIVE)
    assert [e.trigger for e in heard][:3] == ["connect", "opened", "subscribed"]
    infos = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.name for r in infos if "->" in r.getMessage()][:3] == ["wirestate.connection"] * 3
    assert not [r for r in infos if r.name.startswith("transitions")]
