"""Every way a session ends reaches StateChanged as a typed cause; the policy decides.

Issue 14: a test per cause; the default policy gives up on the fatal ones with
a reason a user can read; a custom policy in the setup is used. Virtual time,
asyncio and trio, against the in-process simulator or a scripted peer.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import pytest

from engine import (
    AuthenticationFailed,
    Backoff,
    ConnectionClosed,
    Connection,
    ConnectionSetup,
    GaveUp,
    HandshakeRejected,
    State,
    StateChanged,
)
from engine.causes import (
    Cancelled,
    Cause,
    ClosedByPeer,
    GiveUp,
    HandshakeRejection,
    InvalidHandshake,
    OpenTimeout,
    ProtocolError,
    SetupFailure,
    Silence,
    TransportError,
    UserClose,
)
from engine.policy import DefaultPolicy, Retry
from engine.sim import SimExchange
from transports.base import URL, ByteStream
from transports.frames import encode_frame
from transports.memory import memory_pair

pytestmark = pytest.mark.anyio


def setup_for(**overrides: Any) -> ConnectionSetup:
    options: dict[str, Any] = dict(
        url="ws://sim.test/ws",
        handler=lambda conn, message: None,
        traffic_timeout=10.0,
        pong_timeout=3.0,
        backoff=Backoff(initial=1.0, maximum=1.0, jitter=False),
    )
    options.update(overrides)
    return ConnectionSetup(**options)


def lost(conn: Connection) -> list[StateChanged]:
    return [e for e in conn.history if e.trigger == "lost"]


async def first_lost(conn: Connection) -> StateChanged:
    await conn.wait_for(State.RECONNECTING, State.DISCONNECTED)
    return lost(conn)[0]


@pytest.fixture
async def sim() -> Any:
    async with SimExchange(rate=5.0) as exchange:
        yield exchange


def scripted(tg: anyio.abc.TaskGroup, answer: bytes) -> Callable[[URL], Awaitable[ByteStream]]:
    """A peer that reads the upgrade request, writes ``answer`` as is, then closes."""

    async def serve(stream: ByteStream) -> None:
        await stream.receive()
        await stream.send(answer)
        await stream.aclose()

    async def dial(url: URL) -> ByteStream:
        client, server = memory_pair()
        tg.start_soon(serve, server)
        return client

    return dial


async def test_handshake_rejection_carries_status_and_retry_after(sim: SimExchange) -> None:
    sim.reject_next(503, [("Retry-After", "4")])
    with anyio.fail_after(60):
        async with Connection(setup_for(), dialer=sim.dialer()) as conn:
            event = await first_lost(conn)
            assert event.cause == HandshakeRejection(503, 4.0)
            assert event.delay == 4.0  # Retry-After beats the 1 s backoff
            await conn.wait_for(State.LIVE)


async def test_fatal_rejection_gives_up_and_raises_handshake_rejected(sim: SimExchange) -> None:
    sim.reject_next(401)
    with anyio.fail_after(60):
        async with Connection(setup_for(), dialer=sim.dialer()) as conn:
            with pytest.raises(HandshakeRejected) as info:
                await conn.wait_for(State.LIVE)
    assert info.value.status == 401
    assert isinstance(info.value, GaveUp)
    assert conn.state is State.DISCONNECTED
    assert conn.cause == GiveUp(
        "the server refused the handshake with HTTP 401; retrying will not change that", HandshakeRejection(401)
    )
    assert "gave up: the server refused the handshake with HTTP 401" in str(info.value)
    assert [e.trigger for e in conn.history][-2:] == ["lost", "give_up"]


async def test_invalid_handshake_answer() -> None:
    async with anyio.create_task_group() as tg:
        bad = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: nope\r\n\r\n"
        with anyio.fail_after(60):
            async with Connection(setup_for(), dialer=scripted(tg, bad)) as conn:
                event = await first_lost(conn)
        tg.cancel_scope.cancel()
    assert event.cause == InvalidHandshake("101 response with a wrong Sec-WebSocket-Accept")
    assert event.delay == 1.0


async def test_our_unbuildable_request_gives_up_at_once(sim: SimExchange) -> None:
    setup = setup_for(extra_headers={"X-Key": "caf\u00e9"})  # not ASCII: h11 cannot send it
    with anyio.fail_after(60):
        async with Connection(setup, dialer=sim.dialer()) as conn:
            with pytest.raises(GaveUp, match="our handshake request cannot be built"):
                await conn.wait_for(State.LIVE)
    cause = lost(conn)[0].cause
    assert isinstance(cause, InvalidHandshake) and cause.ours
    assert "caf" not in str(cause)  # the value may be a secret


@pytest.mark.parametrize(("code", "fatal"), [(1001, False), (1011, False), (4000, False), (1008, True)])
async def test_closed_by_peer_with_code(sim: SimExchange, code: int, fatal: bool) -> None:
    with anyio.fail_after(60):
        async with Connection(setup_for(), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            await sim.close_all(code, "bye")
            await conn.wait_for(State.RECONNECTING, State.DISCONNECTED)
            assert conn.last_close_received == (code, "bye")
            if fatal:
                with pytest.raises(GaveUp, match="policy violation"):
                    await conn.wait_for(State.CONNECTING)
            else:
                await conn.wait_for(State.LIVE)
    assert lost(conn)[0].cause == ClosedByPeer(code, "bye")


async def test_peer_reset_is_a_transport_error(sim: SimExchange) -> None:
    with anyio.fail_after(60):
        async with Connection(setup_for(), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            sim.drop()
            event = await first_lost(conn)
    assert isinstance(event.cause, TransportError) and event.cause.during == "session"


async def test_eof_without_close_frame_is_1006() -> None:
    async def serve(stream: ByteStream, tg: anyio.abc.TaskGroup) -> None:
        import wsproto
        import wsproto.events as wse

        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        ws.receive_data(await stream.receive())
        for event in ws.events():
            if isinstance(event, wse.Request):
                await stream.send(ws.send(wse.AcceptConnection()))
        await anyio.sleep(1)
        await stream.aclose()

    async with anyio.create_task_group() as tg:

        async def dial(url: URL) -> ByteStream:
            client, server = memory_pair()
            tg.start_soon(serve, server, tg)
            return client

        with anyio.fail_after(60):
            async with Connection(setup_for(), dialer=dial) as conn:
                event = await first_lost(conn)
        tg.cancel_scope.cancel()
    assert event.cause == ClosedByPeer(1006)
    assert event.cause.abrupt


async def test_protocol_error_names_the_close_code_we_sent(sim: SimExchange) -> None:
    sim.send_raw_next(encode_frame(0x3, b"reserved opcode"))
    with anyio.fail_after(60):
        async with Connection(setup_for(), dialer=sim.dialer()) as conn:
            event = await first_lost(conn)
    assert isinstance(event.cause, ProtocolError) and event.cause.code == 1002
    assert conn.last_close_sent is not None and conn.last_close_sent[0] == 1002


async def test_refused_dial_is_a_transport_error_retried_by_policy() -> None:
    async def refuse(url: URL) -> ByteStream:
        raise ConnectionRefusedError(111, "Connection refused")

    with anyio.fail_after(60):
        async with Connection(setup_for(), dialer=refuse) as conn:
            event = await first_lost(conn)
            await conn.wait_for(State.CONNECTING)  # retried, not raised
    assert isinstance(event.cause, TransportError) and event.cause.during == "dial"
    assert "refused" in str(event.cause)


async def test_open_timeout() -> None:
    async def hang(url: URL) -> ByteStream:
        await anyio.sleep_forever()
        raise AssertionError

    with anyio.fail_after(60):
        async with Connection(setup_for(open_timeout=2.0), dialer=hang) as conn:
            event = await first_lost(conn)
    assert event.cause == OpenTimeout(2.0)


async def test_silence(sim: SimExchange) -> None:
    with anyio.fail_after(60):
        async with Connection(setup_for(), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            sim.stall()
            event = await first_lost(conn)
    assert event.cause == Silence(3.0)
    assert str(event.cause) == "no traffic within pong_timeout=3 s after a ping"


async def test_setup_failure_raised_and_timed_out(sim: SimExchange) -> None:
    async def broken(conn: Connection, subs: list[Any]) -> None:
        raise KeyError("no such channel")

    async def slow(conn: Connection, subs: list[Any]) -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(60):
        async with Connection(setup_for(subscriber=broken), dialer=sim.dialer()) as conn:
            event = await first_lost(conn)
        assert event.cause == SetupFailure("subscribing", "KeyError: 'no such channel'")
        async with Connection(setup_for(subscriber=slow, setup_timeout=5.0), dialer=sim.dialer()) as conn:
            event = await first_lost(conn)
        assert event.cause == SetupFailure("subscribing", timed_out=True)


async def test_rejected_login_gives_up_and_never_subscribes(sim: SimExchange) -> None:
    subscribed: list[int] = []

    async def login(conn: Connection) -> None:
        raise AuthenticationFailed("bad key")

    async def subscriber(conn: Connection, subs: list[Any]) -> None:
        subscribed.append(1)

    setup = setup_for(authenticated=True, connector=login, subscriber=subscriber)
    with anyio.fail_after(60):
        async with Connection(setup, dialer=sim.dialer()) as conn:
            with pytest.raises(GaveUp, match="authentication was rejected"):
                await conn.wait_for(State.LIVE)
    assert subscribed == []
    assert lost(conn)[0].cause == SetupFailure("authenticating", "AuthenticationFailed: bad key", rejected=True)


async def test_user_close_is_the_stop_cause(sim: SimExchange) -> None:
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            conn = Connection(setup_for(), dialer=sim.dialer())
            assert conn.cause is None  # never started
            await tg.start(conn.run)
            await conn.wait_for(State.LIVE)
            await conn.close(4001, "done")
    assert conn.state is State.DISCONNECTED
    assert conn.cause == UserClose(4001, "done")
    assert [(e.trigger, e.cause) for e in conn.history][-2:] == [
        ("close", UserClose(4001, "done")),
        ("closed", UserClose(4001, "done")),
    ]
    with pytest.raises(ConnectionClosed) as info:
        await conn.wait_for(State.LIVE)
    assert not isinstance(info.value, GaveUp) and info.value.cause == UserClose(4001, "done")


async def test_cancellation_from_outside_is_its_own_cause(sim: SimExchange) -> None:
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            conn = Connection(setup_for(), dialer=sim.dialer())
            await tg.start(conn.run)
            await conn.wait_for(State.LIVE)
            tg.cancel_scope.cancel()
    assert conn.cause == Cancelled()
    assert [e.trigger for e in conn.history][-2:] == ["close", "closed"]


class _Recording:
    """A custom policy: retries once after 2 s, then gives up."""

    def __init__(self) -> None:
        self.seen: list[tuple[Cause, int]] = []

    def decide(self, cause: Cause, attempt: int) -> Retry | GiveUp:
        self.seen.append((cause, attempt))
        return Retry(2.0, "custom") if attempt == 0 else GiveUp("custom policy had enough")


async def test_custom_policy_in_the_setup_is_used() -> None:
    async def refuse(url: URL) -> ByteStream:
        raise ConnectionRefusedError(111, "Connection refused")

    policy = _Recording()
    with anyio.fail_after(60):
        async with Connection(setup_for(policy=policy), dialer=refuse) as conn:
            with pytest.raises(GaveUp, match="custom policy had enough"):
                await conn.wait_for(State.LIVE)
    assert [attempt for _, attempt in policy.seen] == [0, 1]
    retry = lost(conn)[0]
    assert retry.delay == 2.0 and "custom" in retry.reason
    assert conn.cause == GiveUp("custom policy had enough", policy.seen[-1][0])


async def test_a_policy_that_raises_gives_up_instead_of_crashing() -> None:
    class Broken:
        def decide(self, cause: Cause, attempt: int) -> Retry:
            raise ZeroDivisionError

    async def refuse(url: URL) -> ByteStream:
        raise ConnectionRefusedError(111, "refused")

    with anyio.fail_after(60):
        async with Connection(setup_for(policy=Broken()), dialer=refuse) as conn:
            with pytest.raises(GaveUp, match="the reconnect policy raised ZeroDivisionError"):
                await conn.wait_for(State.LIVE)


def test_default_policy_reasons_are_readable() -> None:
    policy = DefaultPolicy(Backoff(initial=1, maximum=4, jitter=False, max_attempts=2), rng=random.Random(0))
    assert policy.decide(HandshakeRejection(403), 0) == GiveUp(
        "the server refused the handshake with HTTP 403; retrying will not change that", HandshakeRejection(403)
    )
    assert policy.decide(TransportError("reset"), 0) == Retry(1.0)
    assert policy.decide(TransportError("reset"), 1) == Retry(2.0)
    assert policy.decide(TransportError("reset"), 2) == GiveUp("2 attempts failed", TransportError("reset"))
    assert policy.decide(ClosedByPeer(1008, "banned"), 0).reason == (  # type: ignore[union-attr]
        "the server closed with 1008 (policy violation): 'banned'; not coming back like this"
    )
