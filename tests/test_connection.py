"""Connection behaviour against the in-process simulator, on virtual time, asyncio and trio."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import orjson
import pytest

from engine import (
    Backoff,
    ConfigError,
    Connection,
    ConnectionSetup,
    GaveUp,
    NotConnected,
    RequestTimeout,
    State,
    StateChanged,
)
from engine.sim import SimExchange
from transports.base import URL, ByteStream

pytestmark = pytest.mark.anyio

URL_ = "ws://sim.test/ws"
SUBS = [("ticker", ["BTC-USD"])]


async def subscribe(conn: Connection, subs: list[Any]) -> None:
    for channel, symbols in subs:
        rid = conn.next_id()
        await conn.request(
            {"op": "subscribe", "channel": channel, "symbols": symbols, "id": rid},
            key=rid,
            timeout=5,
        )


def make_setup(received: list[Any] | None = None, **overrides: Any) -> ConnectionSetup:
    sink = received if received is not None else []
    options: dict[str, Any] = dict(
        url=URL_,
        handler=lambda conn, message: sink.append(message),
        subscriber=subscribe,
        generate_subscriptions=lambda: list(SUBS),
        traffic_timeout=10.0,
        pong_timeout=3.0,
        backoff=Backoff(initial=1.0, maximum=8.0, jitter=False),
    )
    options.update(overrides)
    return ConnectionSetup(**options)


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    async with SimExchange(rate=5.0) as exchange:
        yield exchange


def transitions(conn: Connection) -> list[tuple[str, str, str]]:
    return [(e.source.value, e.dest.value, e.trigger) for e in conn.history]


async def test_connects_subscribes_and_streams(sim: SimExchange) -> None:
    received: list[Any] = []
    seen: list[StateChanged] = []
    with anyio.fail_after(60):
        async with Connection(make_setup(received), dialer=sim.dialer(), id="slot-1") as conn:
            conn.on_state_change(seen.append)
            await conn.wait_for(State.LIVE)
            await anyio.sleep(10)
            assert conn.state is State.LIVE
    assert transitions(conn)[:3] == [
        ("disconnected", "connecting", "connect"),
        ("connecting", "subscribing", "opened"),
        ("subscribing", "live", "subscribed"),
    ]
    assert transitions(conn)[-2:] == [("live", "closing", "close"), ("closing", "disconnected", "closed")]
    assert all(e.connection == "slot-1" for e in conn.history)
    assert [e.dest for e in seen][-2:] == [State.CLOSING, State.DISCONNECTED]
    tickers = [orjson.loads(m) for m in received]
    assert all(isinstance(m, str) for m in received)
    assert {t["channel"] for t in tickers} == {"ticker"}
    # ~5 messages per second for 10 virtual seconds
    assert 40 <= len(tickers) <= 60, len(tickers)
    assert conn.last_close_sent == (1000, "")
    assert conn.state is State.DISCONNECTED


async def test_batch_handler_gets_lists(sim: SimExchange) -> None:
    batches: list[list[Any]] = []
    setup = make_setup(handler=None, batch_handler=lambda conn, batch: batches.append(batch))
    with anyio.fail_after(60):
        async with Connection(setup, dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            await anyio.sleep(5)
    assert batches and all(isinstance(b, list) and b for b in batches)
    assert sum(len(b) for b in batches) >= 20


async def test_silence_goes_stale_then_pong_within_grace_goes_live(sim: SimExchange) -> None:
    with anyio.fail_after(120):
        async with Connection(make_setup(), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            await anyio.sleep(1)
            sim.stall()
            stalled_at = anyio.current_time()
            await conn.wait_for(State.STALE)
            silent = anyio.current_time() - stalled_at
            # exact deadline: traffic_timeout after the last frame (which came < 0.2 s before the stall)
            assert 9.7 <= silent <= 10.01, silent
            await anyio.sleep(1.0)  # within the 3 s grace
            sim.resume()
            await conn.wait_for(State.LIVE)
            assert conn.sessions == 1
    triggers = [t for _, _, t in transitions(conn)]
    assert "silence" in triggers and "traffic" in triggers and "lost" not in triggers


async def test_no_pong_reconnects_and_goes_live_again(sim: SimExchange) -> None:
    with anyio.fail_after(120):
        async with Connection(make_setup(), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            sim.stall()
            await conn.wait_for(State.STALE)
            stale_at = anyio.current_time()
            await conn.wait_for(State.RECONNECTING)
            assert 2.99 <= anyio.current_time() - stale_at <= 3.01  # pong_timeout
            sim.resume()
            await conn.wait_for(State.LIVE)
            assert conn.sessions == 2
    lost = [e for e in conn.history if e.trigger == "lost"]
    assert lost and "pong_timeout" in lost[0].reason


async def test_drop_reconnects_with_backoff_and_resubscribes(sim: SimExchange) -> None:
    received: list[Any] = []
    with anyio.fail_after(120):
        async with Connection(make_setup(received), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            sim.drop()
            await conn.wait_for(State.RECONNECTING)
            lost_at = anyio.current_time()
            await conn.wait_for(State.CONNECTING)
            assert anyio.current_time() - lost_at == pytest.approx(1.0, abs=0.01)  # Backoff.initial, no jitter
            await conn.wait_for(State.LIVE)
            before = len(received)
            await anyio.sleep(4)
            assert len(received) > before  # resubscribed: data flows again
    assert sim.accepted == 2


async def test_server_close_code_is_surfaced(sim: SimExchange) -> None:
    with anyio.fail_after(60):
        async with Connection(make_setup(), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            await sim.close_all(4000, "maintenance")
            await conn.wait_for(State.RECONNECTING)
            assert conn.last_close_received == (4000, "maintenance")
            assert conn.last_close_sent is not None and conn.last_close_sent[0] == 4000  # echoed
            lost = [e for e in conn.history if e.trigger == "lost"][-1]
            assert "4000" in lost.reason
            await conn.wait_for(State.LIVE)


async def test_rejected_429_waits_retry_after(sim: SimExchange) -> None:
    sim.reject_next(429, [("Retry-After", "6")])
    with anyio.fail_after(60):
        async with Connection(make_setup(), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.RECONNECTING)
            assert conn.last_rejection is not None
            assert conn.last_rejection.status == 429 and conn.last_rejection.retry_after == 6.0
            t = anyio.current_time()
            await conn.wait_for(State.CONNECTING)
            assert anyio.current_time() - t == pytest.approx(6.0, abs=0.01)  # Retry-After beats the 1 s backoff
            await conn.wait_for(State.LIVE)


async def test_fatal_rejection_gives_up(sim: SimExchange) -> None:
    sim.reject_next(401)
    with anyio.fail_after(60):
        async with Connection(make_setup(), dialer=sim.dialer()) as conn:
            with pytest.raises(GaveUp, match="401"):
                await conn.wait_for(State.LIVE)
            assert conn.state is State.DISCONNECTED
    assert transitions(conn)[-1] == ("reconnecting", "disconnected", "give_up")


async def test_refused_first_dial_is_retried_not_raised() -> None:
    attempts = 0

    async with SimExchange() as sim:
        real = sim.dialer()

        async def flaky(url: URL) -> ByteStream:
            nonlocal attempts
            attempts += 1
            if attempts < 3:
                raise ConnectionRefusedError(111, "Connection refused")
            return await real(url)

        with anyio.fail_after(60):
            async with Connection(make_setup(), dialer=flaky) as conn:
                await conn.wait_for(State.LIVE)
    assert attempts == 3
    reasons = [e.reason for e in conn.history if e.trigger == "lost"]
    assert len(reasons) == 2 and all("refused" in r for r in reasons)


async def test_retry_budget_exhausted_gives_up() -> None:
    async def refuse(url: URL) -> ByteStream:
        raise ConnectionRefusedError(111, "Connection refused")

    setup = make_setup(backoff=Backoff(initial=1, maximum=2, jitter=True, max_attempts=3))
    with anyio.fail_after(60):
        async with Connection(setup, dialer=refuse, rng=random.Random(1)) as conn:
            with pytest.raises(GaveUp, match="3 attempts"):
                await conn.wait_for(State.LIVE)
    assert [t for _, _, t in transitions(conn)].count("retry") == 3


async def test_authenticated_connector_logs_in_before_subscribing(sim: SimExchange) -> None:
    order: list[str] = []

    async def login(conn: Connection) -> None:
        order.append(conn.state.value)
        rid = conn.next_id()
        reply = await conn.request({"op": "login", "key": "k", "signature": "s", "id": rid}, key=rid)
        assert orjson.loads(reply)["ok"] is True

    async def subscriber(conn: Connection, subs: list[Any]) -> None:
        order.append(conn.state.value)
        await subscribe(conn, subs)

    setup = make_setup(authenticated=True, connector=login, subscriber=subscriber)
    with anyio.fail_after(60):
        async with Connection(setup, dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
    assert order == ["authenticating", "subscribing"]
    assert transitions(conn)[1:3] == [
        ("connecting", "authenticating", "opened"),
        ("authenticating", "subscribing", "authenticated"),
    ]


async def test_request_timeout_and_lost_request(sim: SimExchange) -> None:
    with anyio.fail_after(60):
        async with Connection(make_setup(), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            with pytest.raises(RequestTimeout):
                await conn.request({"op": "nothing-answers-this"}, key="never", timeout=2)


async def test_quiet_but_healthy_connection_stays_live_for_an_hour(sim: SimExchange) -> None:
    """No subscriptions, no data: keepalive pings are answered; never stale, never reconnects."""
    setup = make_setup(generate_subscriptions=None, subscriber=None, traffic_timeout=30.0)
    with anyio.fail_after(4000):
        async with Connection(setup, dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            await anyio.sleep(3600)
            assert conn.state is State.LIVE
            assert conn.sessions == 1
    assert [t for _, _, t in transitions(conn)] == ["connect", "opened", "subscribed", "close", "closed"]


async def test_send_while_reconnecting_raises_not_connected(sim: SimExchange) -> None:
    with anyio.fail_after(60):
        async with Connection(make_setup(), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            sim.drop()
            await conn.wait_for(State.RECONNECTING)
            with pytest.raises(NotConnected):
                await conn.send({"op": "ping"})


async def test_a_send_on_a_closing_websocket_raises_not_connected_naming_the_state(sim: SimExchange) -> None:
    """The protocol refuses to frame once it has sent its close (InvalidState): every send form
    says NotConnected, with the connection and its state, and nothing is registered or queued."""
    with anyio.fail_after(60):
        async with Connection(make_setup(), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            wire = conn._wire
            assert wire is not None and wire.proto is not None
            wire.proto.send_close()  # (as close() begins: the protocol is CLOSING, the wire still there)
            for send in (
                lambda: conn.send({"op": "ping"}),
                lambda: conn.send(["ping"]),
                lambda: conn.send("ping"),
                lambda: conn.send(b"ping"),
                lambda: conn.send_text("ping"),
                lambda: conn.send_bytes(b"ping"),
                lambda: conn.request({"id": 1}, key=1),
            ):
                with pytest.raises(NotConnected, match=f"{conn.id}: cannot send while live"):
                    await send()
            assert conn.pending_requests == [] and wire.gate.free


# -- close() from every state ends every task ---------------------------------


async def _never_returns(*args: Any) -> Any:
    await anyio.sleep_forever()


async def _refuse(url: URL) -> ByteStream:
    raise ConnectionRefusedError(111, "Connection refused")


CLOSE_CASES: dict[str, tuple[dict[str, Any], Callable[[SimExchange], Any] | None, State]] = {
    "connecting": ({"dialer": "hang"}, None, State.CONNECTING),
    "authenticating": ({"authenticated": True, "connector": _never_returns}, None, State.AUTHENTICATING),
    "subscribing": ({"subscriber": _never_returns}, None, State.SUBSCRIBING),
    "live": ({}, None, State.LIVE),
    "stale": ({}, SimExchange.stall, State.STALE),
    "reconnecting": ({"dialer": "refuse"}, None, State.RECONNECTING),
}


@pytest.mark.parametrize("case", list(CLOSE_CASES))
async def test_close_from_every_state_ends_all_tasks(sim: SimExchange, case: str) -> None:
    overrides, fault, target = CLOSE_CASES[case]
    overrides = dict(overrides)
    dialer_kind = overrides.pop("dialer", "sim")
    dialer = {"sim": sim.dialer(), "hang": _never_returns, "refuse": _refuse}[dialer_kind]
    setup = make_setup(**overrides, setup_timeout=1000.0, open_timeout=1000.0)
    with anyio.fail_after(100):
        async with anyio.create_task_group() as tg:
            conn = Connection(setup, dialer=dialer)
            tg.start_soon(conn.run)
            if fault is not None:
                await conn.wait_for(State.LIVE)
                fault(sim)
            await conn.wait_for(target)
            closed_at = anyio.current_time()
            await conn.close()
            await conn.close()  # idempotent
            # close_timeout bounds the close handshake, even against a stalled peer
            assert anyio.current_time() - closed_at <= setup.close_timeout + 0.01
        # the task group exited: every task the connection started has ended
    assert conn.state is State.DISCONNECTED
    assert transitions(conn)[-2:] == [(target.value, "closing", "close"), ("closing", "disconnected", "closed")]
    await anyio.sleep(1)
    assert sim.connections == 0


class _Boom(BaseException):
    """Not an Exception: must come out of the block as it went in."""


def _asyncio_tasks() -> set[Any]:
    try:
        return {t for t in asyncio.all_tasks() if "sim" not in repr(t)}
    except RuntimeError:  # trio: the task group around the test catches leaks
        return set()


@pytest.mark.parametrize("how", ["normal", "error", "base-exception", "outer-cancel", "close-then-exit"])
@pytest.mark.parametrize("case", list(CLOSE_CASES))
async def test_every_way_out_of_the_block_from_every_state(sim: SimExchange, case: str, how: str) -> None:
    """No hang, no leaked task, DISCONNECTED, within close_timeout; the block's own exception comes out."""
    overrides, fault, target = CLOSE_CASES[case]
    overrides = dict(overrides)
    dialer_kind = overrides.pop("dialer", "sim")
    dialer = {"sim": sim.dialer(), "hang": _never_returns, "refuse": _refuse}[dialer_kind]
    setup = make_setup(**overrides, setup_timeout=1000.0, open_timeout=1000.0)
    before = _asyncio_tasks()
    raised: BaseException | None = None
    left_at = 0.0
    with anyio.fail_after(100):
        try:
            with anyio.CancelScope() as outer:
                async with Connection(setup, dialer=dialer) as conn:
                    if fault is not None:
                        await conn.wait_for(State.LIVE)
                        fault(sim)
                    await conn.wait_for(target)
                    left_at = anyio.current_time()
                    if how == "error":
                        raise KeyError("body")
                    if how == "base-exception":
                        raise _Boom()
                    if how == "close-then-exit":
                        await conn.close()
                    if how == "outer-cancel":
                        outer.cancel()
                        await anyio.sleep_forever()
        except BaseException as exc:  # noqa: BLE001 - what comes out is the subject
            raised = exc
    expected = {"error": KeyError, "base-exception": _Boom}.get(how)
    if expected is None:
        assert raised is None, repr(raised)
    else:
        assert isinstance(raised, expected), repr(raised)
    assert conn.state is State.DISCONNECTED
    assert anyio.current_time() - left_at <= setup.close_timeout + 0.01
    assert not (_asyncio_tasks() - before)


async def test_body_error_beats_an_outer_deadline_that_fires_during_the_exit(sim: SimExchange) -> None:
    """The handler is in a bounded shielded section (say, persisting a fill) when the block
    raises; an outer deadline fires while the exit waits for it. The block's own error comes
    out, unwrapped, on both backends; the shielded section runs to its end."""
    in_handler = anyio.Event()
    finished: list[float] = []

    async def handler(conn: Connection, message: str | bytes) -> None:
        in_handler.set()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(2)
            finished.append(anyio.current_time())

    with anyio.fail_after(60), pytest.raises(KeyError, match="order book corrupt"):
        with anyio.CancelScope() as outer:
            async with Connection(make_setup(handler=handler), dialer=sim.dialer()) as conn:
                await conn.wait_for(State.LIVE)
                await in_handler.wait()
                raised_at = anyio.current_time()
                outer.deadline = raised_at + 1
                raise KeyError("order book corrupt")
    assert finished and finished[0] == pytest.approx(raised_at + 2, abs=0.3)
    assert conn.state is State.DISCONNECTED


async def test_close_while_closing_and_before_start(sim: SimExchange) -> None:
    conn = Connection(make_setup(), dialer=sim.dialer())
    await conn.close()  # never started: returns at once
    assert conn.state is State.DISCONNECTED
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            conn2 = Connection(make_setup(), dialer=sim.dialer())
            tg.start_soon(conn2.run)
            await conn2.wait_for(State.LIVE)
            sim.stall()  # the peer will not answer our close frame
            tg.start_soon(conn2.close)
            await conn2.wait_for(State.CLOSING)
            await conn2.close()  # second caller waits for the same end
            assert conn2.state is State.DISCONNECTED


async def test_close_from_inside_the_handler(sim: SimExchange) -> None:
    async def handler(conn: Connection, message: str | bytes) -> None:
        await conn.close()

    with anyio.fail_after(60):
        async with Connection(make_setup(handler=handler), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.DISCONNECTED, State.CLOSING)
    assert conn.state is State.DISCONNECTED


async def test_handler_errors_are_counted_not_fatal(sim: SimExchange, caplog: pytest.LogCaptureFixture) -> None:
    def handler(conn: Connection, message: str | bytes) -> None:
        raise ValueError("bug in user code")

    with anyio.fail_after(60):
        async with Connection(make_setup(handler=handler), dialer=sim.dialer()) as conn:
            await conn.wait_for(State.LIVE)
            await anyio.sleep(2)
            assert conn.state is State.LIVE
    assert conn.handler_errors >= 5
    assert "bug in user code" in caplog.text


# -- configuration errors are clear and early ------------------------------------


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"url": "http://x/ws"}, "scheme must be ws or wss"),
        ({"url": "ws://"}, "no host"),
        ({"url": "wss://user:pw@host/"}, "credentials"),
        ({"url": "ws://host:99999/"}, "url"),
        ({"traffic_timeout": 0}, "traffic_timeout must be a positive number"),
        ({"batch_handler": lambda c, b: None}, "one of handler= or batch_handler=, not both"),
        ({"connector": lambda c: None}, "async function"),
        ({"frame_path": "turbo"}, "frame_path"),
        ({"subscriber": None}, "needs a subscriber"),
        ({"backoff": Backoff()}, None),
    ],
)
def test_config_errors_are_readable(overrides: dict[str, Any], message: str | None) -> None:
    if message is None:
        make_setup(**overrides)
        return
    with pytest.raises(ConfigError, match=message):
        make_setup(**overrides)


def test_a_connection_needs_a_handler_but_a_template_does_not() -> None:
    template = make_setup(handler=None)  # a manager completes it with its global handler
    with pytest.raises(ConfigError, match="needs one of handler= or batch_handler="):
        Connection(template)


def test_backoff_validation_and_secrets_not_in_repr() -> None:
    with pytest.raises(ConfigError, match="maximum"):
        Backoff(initial=5, maximum=1)
    setup = make_setup(extra_headers={"X-API-KEY": "s3cret"})
    assert "s3cret" not in repr(setup)
    assert dict(setup.extra_headers) == {"X-API-KEY": "s3cret"}


async def test_backoff_resets_after_a_healthy_session_without_callbacks(sim: SimExchange) -> None:
    """Each drop after a session that stayed live for healthy_after waits the initial backoff again."""
    setup = make_setup(generate_subscriptions=None, subscriber=None, healthy_after=5.0)
    with anyio.fail_after(120):
        async with Connection(setup, dialer=sim.dialer()) as conn:
            for _ in range(3):
                await conn.wait_for(State.LIVE)
                await anyio.sleep(5.0)
                sim.drop()
                await conn.wait_for(State.RECONNECTING)
                lost_at = anyio.current_time()
                await conn.wait_for(State.CONNECTING)
                assert anyio.current_time() - lost_at == pytest.approx(1.0, abs=0.01)


async def test_exception_in_the_body_comes_out_unwrapped(sim: SimExchange) -> None:
    with anyio.fail_after(60):
        with pytest.raises(KeyError, match="boom"):
            async with Connection(make_setup(), dialer=sim.dialer()) as conn:
                await conn.wait_for(State.LIVE)
                raise KeyError("boom")
    assert conn.state is State.DISCONNECTED
