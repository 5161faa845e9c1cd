"""Make-before-break rotation (issue 16): a replacement beside the old connection, then a clean cut."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest

from engine import Backoff, ConfigError, ConnectionSetup, State, WirestateError
from engine.config import WebsocketSetup
from engine.events import StateChanged
from engine.manager import Manager
from engine.rotation import Rotation, Twins
from engine.sim import SimExchange
from engine.subscriptions import Subscription
from machines.rotation import RotationState
from machines.subscription import SubState
from tests.test_manager import login, sent, subscriber, unsubscriber

A, B = object(), object()  # two connections, as Twins sees them


def test_twins_deliver_each_message_once_across_two_connections() -> None:
    twins = Twins(None)
    assert [twins.admit(A, m) for m in ["1", "2", "3"]] == [True, True, True]
    assert [twins.admit(B, m) for m in ["2", "3", "4"]] == [False, False, True]
    assert twins.admit(A, "4") is False
    assert twins.duplicates == 3


def test_twins_match_copies_not_values() -> None:
    """A message sent twice on one connection is delivered twice; each copy on the other matches one."""
    twins = Twins(None)
    assert [twins.admit(A, "x"), twins.admit(A, "x")] == [True, True]
    assert [twins.admit(B, "x"), twins.admit(B, "x"), twins.admit(B, "x")] == [False, False, True]


def test_twins_identity_none_is_never_a_duplicate_and_the_bound_forgets_oldest() -> None:
    twins = Twins(lambda m: None if m.startswith("ack") else m, limit=2)
    assert [twins.admit(A, "ack"), twins.admit(B, "ack")] == [True, True]
    for m in ["a", "b", "c"]:
        twins.admit(A, m)
    assert twins.forgotten == 1
    assert [twins.admit(B, "a"), twins.admit(B, "b"), twins.admit(B, "c")] == [True, False, False]


def test_rotation_machine_gates_only_while_rotating() -> None:
    rotation = Rotation("spot#1", None)
    assert rotation.admit(A, "m") and rotation.admit(B, "m")  # steady: no matching at all
    rotation.fire("begin")
    assert rotation.admit(A, "m") is True and rotation.admit(B, "m") is False
    rotation.fire("joined")
    rotation.fire("cut")
    rotation.fire("settled")
    assert rotation.state == RotationState.STEADY.value and rotation.completed == 1 and rotation.duplicates == 1
    with pytest.raises(Exception, match="settled"):
        rotation.fire("settled")  # an illegal trigger raises


def identity(message: str | bytes) -> Any:
    data = orjson.loads(message)
    return (data["channel"], data["symbol"], data["seq"]) if "seq" in data else None


def rotating(**overrides: Any) -> ConnectionSetup:
    options: dict[str, Any] = dict(
        url="ws://sim.test/ws",
        handler=lambda conn, m: None,
        subscriber=subscriber,
        unsubscriber=unsubscriber,
        backoff=Backoff(initial=1.0, maximum=1.0, jitter=False),
        rotate_after=60.0,
        rotate_overlap=2.0,
    )
    options.update(overrides)
    return ConnectionSetup(**options)


@pytest.mark.anyio
async def test_rotation_opens_logs_in_and_subscribes_a_replacement_then_closes_the_old_with_1000() -> None:
    events: list[StateChanged] = []
    async with SimExchange(rate=2.0) as sim:
        manager = Manager(WebsocketSetup(exchange="sim", traffic_timeout=10.0), dialer=sim.dialer())
        manager.add_connection(rotating(connector=login, authenticated=True), name="private")
        manager.on_state_change(events.append)
        with anyio.fail_after(600):
            async with manager:
                subs = [Subscription("ticker", "BTC-USD", authenticated=True), Subscription("trades", "ETH-USD", authenticated=True)]
                await manager.subscribe(subs)
                first = manager.connection("private#1")
                await anyio.sleep(59)
                assert sim.accepted == 1
                await anyio.sleep(2)  # 60 s after live: the replacement dials, logs in, subscribes
                assert sim.accepted == 2 and manager.connection("private#1") is first
                await anyio.sleep(3)  # overlap of 2 s, then the cut
                second = manager.connection("private#1")
                assert second is not first and second.state is State.LIVE
                assert first.state is State.DISCONNECTED and first.last_close_sent == (1000, "rotated")
                assert [(r.id, r.state, r.subscriptions) for r in manager.connections()] == [("private#1", State.LIVE, 2)]
                assert all(i.state is SubState.SUBSCRIBED for i in manager.subscriptions())
                await anyio.sleep(60)  # and again, 60 s after the replacement went live
                assert sim.accepted == 3
                await anyio.sleep(5)
                third = manager.connection("private#1")
                assert third is not second and second.last_close_sent == (1000, "rotated")
    # every connection logged in before it subscribed, and subscribed exactly once to each
    for received in sim.log:
        ops = [orjson.loads(text)["op"] for _, text in received]
        assert ops[0] == "login" and ops[1:3] == ["subscribe", "subscribe"]
    assert [sorted(s) for s in sent(sim)] == [["ticker:BTC-USD", "trades:ETH-USD"]] * 3
    # the slot kept its id; the old connection's close is visible, with its reason
    assert {e.connection for e in events} == {"private#1"}
    assert [e.reason for e in events if e.trigger == "close"] == ["user close: rotated"] * 2 + ["user close"]


@pytest.mark.anyio
async def test_a_replacement_that_cannot_come_up_leaves_the_old_connection_streaming() -> None:
    async with SimExchange(rate=2.0) as sim:
        manager = Manager(WebsocketSetup(exchange="sim", traffic_timeout=10.0), dialer=sim.dialer())
        manager.add_connection(rotating(open_timeout=2.0, setup_timeout=2.0), name="spot")
        with anyio.fail_after(600):
            async with manager:
                await manager.subscribe([Subscription("ticker", "BTC-USD")])
                first = manager.connection("spot#1")
                await anyio.sleep(59.5)
                sim.reject_next(503)
                await anyio.sleep(10)
                assert manager.connection("spot#1") is first and first.state is State.LIVE
                assert sim.rejected == 1
                # it tries again later (within a minute), and then succeeds
                await anyio.sleep(65)
                assert manager.connection("spot#1") is not first
                assert first.last_close_sent == (1000, "rotated")


@pytest.mark.anyio
@pytest.mark.parametrize("batch", [False, True], ids=["handler", "batch_handler"])
async def test_rotations_under_a_steady_stream_lose_nothing_and_duplicate_nothing(batch: bool) -> None:
    """Three rotations in 100 s at 20 messages a second per stream: the handler sees every
    message of each stream exactly once, in order (the simulator numbers them exchange-wide)."""
    seen: dict[tuple[str, str], list[int]] = {}

    def handle(conn: Any, message: str | bytes) -> None:
        data = orjson.loads(message)
        if "seq" in data:
            seen.setdefault((data["channel"], data["symbol"]), []).append(data["seq"])

    def handle_batch(conn: Any, messages: list[str | bytes]) -> None:
        for message in messages:
            handle(conn, message)

    shape: dict[str, Any] = {"batch_handler": handle_batch, "handler": None} if batch else {"handler": handle}
    async with SimExchange(rate=20.0) as sim:
        manager = Manager(WebsocketSetup(exchange="sim", traffic_timeout=10.0), dialer=sim.dialer())
        manager.add_connection(rotating(rotate_after=30.0, **shape), name="spot")
        with anyio.fail_after(600):
            async with manager:
                await manager.subscribe([Subscription("ticker", "BTC-USD"), Subscription("trades", "ETH-USD")])
                await anyio.sleep(100)
                assert sim.accepted == 4  # three rotations, each a new socket
                assert [r.id for r in manager.connections()] == ["spot#1"]
    assert set(seen) == {("ticker", "BTC-USD"), ("trades", "ETH-USD")}
    for stream, seqs in seen.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{stream}: lost or duplicated"
        assert len(seqs) > 900  # the streams ran throughout (half of 20/s each, ~100 s)


@pytest.mark.anyio
async def test_rotate_on_demand_and_its_errors() -> None:
    async with SimExchange(rate=2.0) as sim:
        manager = Manager(WebsocketSetup(exchange="sim", traffic_timeout=10.0), dialer=sim.dialer())
        manager.add_connection(rotating(rotate_after=3600.0), name="spot")
        manager.add_connection(rotating(url="ws://sim.test/other", rotate_after=None), name="plain")
        with anyio.fail_after(600):
            async with manager:
                await manager.subscribe([Subscription("ticker", "BTC-USD")], group="spot")
                await manager.subscribe([Subscription("ticker", "ETH-USD")], group="plain")
                first = manager.connection("spot#1")
                start = anyio.current_time()
                assert await manager.rotate("spot#1") is True
                assert anyio.current_time() - start == pytest.approx(3 * 2.0, abs=0.1)  # prime, overlap, drain
                assert manager.connection("spot#1") is not first and first.last_close_sent == (1000, "rotated")
                with pytest.raises(ConfigError, match="rotate_after"):
                    await manager.rotate("plain#1")
                with pytest.raises(WirestateError, match="no connection"):
                    await manager.rotate("nope#1")
                async with anyio.create_task_group() as tg:
                    tg.start_soon(manager.rotate, "spot#1")
                    await anyio.sleep(0.5)
                    with pytest.raises(WirestateError, match="already under way"):
                        await manager.rotate("spot#1")
