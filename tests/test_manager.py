"""Manager against the simulated exchange, on virtual time, asyncio and trio (issue 16)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
import pytest

from engine import AuthenticationFailed, Backoff, ConfigError, ConnectionSetup, GaveUp, State
from engine.config import WebsocketSetup
from engine.errors import DuplicateSubscription, SubscriptionFailed, SubscriptionNotFound
from engine.manager import Manager
from engine.sim import SimExchange
from engine.subscriptions import Subscription
from machines.manager import ManagerState
from machines.subscription import SubState

pytestmark = pytest.mark.anyio

SYMBOLS = [f"S{i}" for i in range(8)]


async def subscriber(conn: Any, subs: list[Subscription]) -> None:
    for sub in subs:
        rid = conn.next_id()
        message = {"op": "subscribe", "channel": sub.channel, "symbols": list(sub.symbols), "id": rid}
        reply = orjson.loads(await conn.request(message, key=rid, timeout=5))
        if reply.get("event") == "error":
            raise RuntimeError(reply.get("message", "rejected"))


async def unsubscriber(conn: Any, subs: list[Subscription]) -> None:
    for sub in subs:
        rid = conn.next_id()
        await conn.request({"op": "unsubscribe", "channel": sub.channel, "symbols": list(sub.symbols), "id": rid}, key=rid)


async def login(conn: Any) -> None:
    rid = conn.next_id()
    key = "" if "reject" in conn.url.resource else "k"
    reply = orjson.loads(await conn.request({"op": "login", "key": key, "signature": "s", "id": rid}, key=rid))
    if not reply["ok"]:
        raise AuthenticationFailed("login rejected")


def trades(*symbols: str) -> list[Subscription]:
    return [Subscription("trades", s) for s in symbols]


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    async with SimExchange(rate=2.0, symbols=SYMBOLS) as exchange:
        yield exchange


def sent(sim: SimExchange, op: str = "subscribe") -> list[list[str]]:
    """What each accepted connection sent for ``op``, as "channel:symbol" strings."""
    out = []
    for received in sim.log:
        symbols = []
        for _, text in received:
            message = orjson.loads(text)
            if message.get("op") == op:
                symbols.extend(f"{message['channel']}:{s}" for s in message["symbols"])
        out.append(symbols)
    return out


def multi(n: int | None = 2, **options: Any) -> WebsocketSetup:
    return WebsocketSetup(exchange="sim", use_multi_connection_management=True, max_subscriptions_per_connection=n, traffic_timeout=10.0, **options)


def public(generate: Any = None, **overrides: Any) -> ConnectionSetup:
    options: dict[str, Any] = dict(
        url="ws://sim.test/spot",
        handler=lambda conn, m: None,
        subscriber=subscriber,
        unsubscriber=unsubscriber,
        generate_subscriptions=generate,
        backoff=Backoff(initial=1.0, maximum=1.0, jitter=False),
    )
    options.update(overrides)
    return ConnectionSetup(**options)


async def test_five_subscriptions_at_two_per_connection_make_three_and_unsubscribe_retires(sim: SimExchange) -> None:
    manager = Manager(multi(2), dialer=sim.dialer())
    manager.add_connection(public(lambda: trades(*SYMBOLS[:5])), name="spot")
    with anyio.fail_after(120):
        async with manager:
            assert manager.state is ManagerState.RUNNING
            rows = manager.connections()
            assert [(r.id, r.state, r.subscriptions) for r in rows] == [
                ("spot#1", State.LIVE, 2),
                ("spot#2", State.LIVE, 2),
                ("spot#3", State.LIVE, 1),
            ]
            assert all(info.state is SubState.SUBSCRIBED for info in manager.subscriptions())
            assert sorted(map(sorted, sent(sim))) == [["trades:S0", "trades:S1"], ["trades:S2", "trades:S3"], ["trades:S4"]]
            # the third connection is emptied: closed with 1000 and not redialled
            third = manager.connection("spot#3")
            await manager.unsubscribe(trades("S4"))
            assert third.state is State.DISCONNECTED and third.last_close_sent == (1000, "no subscriptions left")
            assert [r.id for r in manager.connections()] == ["spot#1", "spot#2"]
            await manager.unsubscribe(trades("S0"))  # not emptied: an unsubscribe goes out
            assert sorted(sent(sim, "unsubscribe")) == [[], [], ["trades:S0"]]
            # spare capacity first: the next one fills spot#1 again, no new connection
            await manager.subscribe(trades("S5"))
            assert [(r.id, r.subscriptions) for r in manager.connections()] == [("spot#1", 2), ("spot#2", 2)]
            await anyio.sleep(30)
            assert sim.accepted == 3  # nothing was redialled
    assert manager.state is ManagerState.STOPPED


async def test_duplicate_and_missing_subscriptions_are_errors(sim: SimExchange) -> None:
    manager = Manager(multi(None), dialer=sim.dialer())
    manager.add_connection(public(lambda: trades("S0")))
    with anyio.fail_after(60):
        async with manager:
            with pytest.raises(DuplicateSubscription, match="trades:S0") as dup:
                await manager.subscribe(trades("S1", "S0"))
            assert dup.value.keys == (Subscription("trades", "S0").key,)
            assert len(manager.subscriptions()) == 1  # nothing of the batch was added
            with pytest.raises(DuplicateSubscription):
                await manager.subscribe(trades("S2", "S2"))
            with pytest.raises(SubscriptionNotFound, match="trades:S7"):
                await manager.unsubscribe(trades("S0", "S7"))
            assert len(manager.subscriptions()) == 1  # nothing was removed


async def test_a_rejected_subscribe_names_the_key_and_leaves_the_connection_up(sim: SimExchange) -> None:
    manager = Manager(multi(None), dialer=sim.dialer())
    manager.add_connection(public(lambda: trades("S0")))
    with anyio.fail_after(60):
        async with manager:
            with pytest.raises(SubscriptionFailed, match="trades:NOPE") as info:
                await manager.subscribe(trades("NOPE"))
            assert info.value.keys == (Subscription("trades", "NOPE").key,)
            states = {str(i.subscription): i.state for i in manager.subscriptions()}
            assert states == {"trades:S0": SubState.SUBSCRIBED, "trades:NOPE": SubState.FAILED}
            assert manager.connections()[0].state is State.LIVE


async def test_after_a_drop_only_that_connection_reconnects_with_exactly_its_subscriptions(sim: SimExchange) -> None:
    manager = Manager(multi(2), dialer=sim.dialer())
    manager.add_connection(public(lambda: trades(*SYMBOLS[:4])), name="spot")
    with anyio.fail_after(120):
        async with manager:
            first, second = manager.connection("spot#1"), manager.connection("spot#2")
            sim.drop()  # every live socket resets...
            await manager.wait_for("spot#1", State.RECONNECTING)
            await manager.wait_for("spot#1", State.LIVE)
            await manager.wait_for("spot#2", State.LIVE)
            assert first.sessions == 2 and second.sessions == 2
            await anyio.sleep(5)
    log = sent(sim)
    assert len(log) == 4
    by_connection = sorted(map(sorted, log))
    assert by_connection == sorted([["trades:S0", "trades:S1"]] * 2 + [["trades:S2", "trades:S3"]] * 2)


async def test_one_connection_dropped_the_other_untouched(sim: SimExchange) -> None:
    manager = Manager(multi(1), dialer=sim.dialer())
    manager.add_connection(public(lambda: trades("S0", "S1")), name="spot")
    lost: list[str] = []
    manager.on_state_change(lambda e: lost.append(e.connection) if e.trigger == "lost" else None)
    with anyio.fail_after(120):
        async with manager:
            sim.drop_one(0)  # reset one connection's socket, from the server side
            while not lost:
                await anyio.sleep(0.1)
            victim = manager.connection(lost[0])
            bystander = manager.connection("spot#2" if lost[0] == "spot#1" else "spot#1")
            await victim.wait_for(State.LIVE)
            assert victim.sessions == 2
            assert bystander.sessions == 1 and bystander.state is State.LIVE
    assert lost == [victim.id]
    assert sorted(map(sorted, sent(sim))) == [["trades:S0"], ["trades:S0"], ["trades:S1"]] or sorted(
        map(sorted, sent(sim))
    ) == [["trades:S0"], ["trades:S1"], ["trades:S1"]]
    victim_subs = [info.subscription for info in manager.subscriptions() if info.connection == victim.id]
    assert len(victim_subs) == 1


async def test_single_style_public_and_private_share_the_global_callbacks(sim: SimExchange) -> None:
    order: list[str] = []

    async def logged_in(conn: Any) -> None:
        order.append(f"login {conn.id}")
        await login(conn)

    async def recorded_subscriber(conn: Any, subs: list[Subscription]) -> None:
        order.append(f"subscribe {conn.id}")
        await subscriber(conn, subs)

    setup = WebsocketSetup(
        exchange="sim",
        subscriber=recorded_subscriber,
        unsubscriber=unsubscriber,
        handler=lambda conn, m: None,
        generate_subscriptions=lambda: [Subscription("trades", "S0"), Subscription("ticker", "S1", authenticated=True)],
    )
    manager = Manager(setup, dialer=sim.dialer())
    manager.add_connection(ConnectionSetup(url="ws://sim.test/public"), name="public")
    manager.add_connection(ConnectionSetup(url="ws://sim.test/private", authenticated=True, connector=logged_in), name="private")
    with anyio.fail_after(60):
        async with manager:
            placed = {str(i.subscription): i.connection for i in manager.subscriptions()}
            assert placed == {"trades:S0": "public#1", "ticker:S1": "private#1"}
            private = manager.connection("private#1")
            assert [e.trigger for e in private.history][:4] == ["connect", "opened", "authenticated", "subscribed"]
            sim.drop()
            await manager.wait_for("private#1", State.RECONNECTING)
            await manager.wait_for("private#1", State.LIVE)
    private_log = [o for o in order if "private" in o]
    assert private_log == ["login private#1", "subscribe private#1"] * 2  # login first, also after the reconnect
    for received in sim.log:
        ops = [orjson.loads(t)["op"] for _, t in received]
        if "login" in ops:
            assert ops.index("login") < ops.index("subscribe")


async def test_a_rejected_login_gives_up_and_never_subscribes(sim: SimExchange) -> None:
    manager = Manager(multi(None), dialer=sim.dialer())
    manager.add_connection(
        public(lambda: [Subscription("trades", "S0", authenticated=True)], url="ws://sim.test/reject", authenticated=True, connector=login),
        name="private",
    )
    with anyio.fail_after(60):
        async with manager:
            private = manager.connection("private#1")
            with pytest.raises(GaveUp, match="authentication was rejected"):
                await private.wait_for(State.LIVE)
    assert sent(sim) == [[]]
    assert [i.state for i in manager.subscriptions()] == [SubState.INACTIVE]


async def test_multi_style_setups_bring_their_own_callbacks(sim: SimExchange) -> None:
    spot_seen: list[Any] = []
    futures_seen: list[Any] = []
    manager = Manager(multi(None), dialer=sim.dialer())
    manager.add_connection(public(lambda: trades("S0"), handler=lambda c, m: spot_seen.append(m)), name="spot")
    manager.add_connection(
        public(lambda: [Subscription("ticker", "S1")], url="ws://sim.test/futures", handler=lambda c, m: futures_seen.append(m)),
        name="futures",
    )
    with anyio.fail_after(60):
        async with manager:
            await anyio.sleep(3)
    assert spot_seen and all(b'"trades"' in m.encode() for m in spot_seen)
    assert futures_seen and all(b'"ticker"' in m.encode() for m in futures_seen)


def test_setup_mistakes_are_clear() -> None:
    manager = Manager(multi(None))
    with pytest.raises(ConfigError, match="missing callback: subscriber"):
        manager.add_connection(ConnectionSetup(url="ws://x/", handler=print))
    with pytest.raises(ConfigError, match="missing callback: handler"):
        manager.add_connection(ConnectionSetup(url="ws://x/", subscriber=subscriber))
    with pytest.raises(ConfigError, match="WebsocketSetup"):
        Manager(public())  # type: ignore[arg-type]


async def test_disable_enable_and_a_new_url_at_runtime_keep_the_subscriptions(sim: SimExchange) -> None:
    manager = Manager(multi(None), dialer=sim.dialer())
    manager.add_connection(public(lambda: trades("S0", "S1")), name="spot")
    with anyio.fail_after(120):
        async with manager:
            conn = manager.connection("spot#1")
            await manager.disable("spot")
            assert conn.state is State.DISCONNECTED
            await anyio.sleep(30)
            assert sim.accepted == 1  # disabled: not redialled
            assert {i.state for i in manager.subscriptions()} == {SubState.RESUBSCRIBING}
            await manager.enable("spot")
            await conn.wait_for(State.LIVE)
            await manager.set_url("spot", "ws://sim.test/elsewhere")
            moved = manager.connection("spot#1")
            assert moved is not conn and moved.url.resource == "/elsewhere"
            await moved.wait_for(State.LIVE)
            assert {i.state for i in manager.subscriptions()} == {SubState.SUBSCRIBED}
    assert [sorted(x) for x in sent(sim)] == [["trades:S0", "trades:S1"]] * 3


async def test_the_monitor_starts_again_a_connection_that_spent_its_retry_budget(sim: SimExchange) -> None:
    dials: list[float] = []
    real = sim.dialer()

    async def flaky(url: Any) -> Any:
        dials.append(anyio.current_time())
        if len(dials) <= 3:
            raise ConnectionRefusedError(111, "refused")
        return await real(url)

    setup = WebsocketSetup(exchange="sim", use_multi_connection_management=True, connection_monitor_interval=20.0)
    manager = Manager(setup, dialer=flaky)
    manager.add_connection(public(lambda: trades("S0"), backoff=Backoff(initial=1.0, maximum=1.0, jitter=False, max_attempts=2)), name="spot")
    with anyio.fail_after(120):
        async with manager:
            conn = manager.connection("spot#1")
            with pytest.raises(GaveUp, match="2 attempts failed"):
                await conn.wait_for(State.LIVE)
            await manager.wait_for("spot#1", State.LIVE)  # healed by the monitor
            assert [i.state for i in manager.subscriptions()] == [SubState.SUBSCRIBED]
    # two retries, give-up, then the monitor's first round (20 s after start)
    assert [d - dials[0] for d in dials] == pytest.approx([0.0, 1.0, 2.0, 20.0])


async def test_a_connection_refused_for_good_is_not_healed(sim: SimExchange) -> None:
    sim.reject_next(401)
    setup = WebsocketSetup(exchange="sim", use_multi_connection_management=True, connection_monitor_interval=5.0)
    manager = Manager(setup, dialer=sim.dialer())
    manager.add_connection(public(lambda: trades("S0")), name="spot")
    with anyio.fail_after(120):
        async with manager:
            await anyio.sleep(60)
            assert manager.connection("spot#1").state is State.DISCONNECTED
    assert sim.accepted == 0 and sim.rejected == 1


async def test_fifty_connections_dropped_at_once_reconnect_within_the_host_budget() -> None:
    from engine import Governor

    symbols = [f"S{i}" for i in range(50)]
    dials: list[float] = []
    async with SimExchange(rate=0.5, symbols=symbols) as exchange:
        real = exchange.dialer()

        async def counted(url: Any) -> Any:
            dials.append(anyio.current_time())
            return await real(url)

        governor = Governor(base=0.5, cap=5.0, attempts_per_window=5, window=10.0)
        manager = Manager(multi(1), dialer=counted, governor=governor)
        manager.add_connection(public(lambda: trades(*symbols)), name="spot")
        with anyio.fail_after(600):
            async with manager:
                assert len(manager.connections()) == 50
                first_round = len(dials)
                exchange.drop()
                for row in manager.connections():
                    await manager.wait_for(row.id, State.RECONNECTING)
                for row in manager.connections():
                    await manager.wait_for(row.id, State.LIVE)
    again = sorted(dials[first_round:])
    assert len(again) == 50
    most_in_a_window = max(sum(1 for t in again if start <= t < start + 10.0 - 1e-6) for start in again)
    assert most_in_a_window <= 5
    assert again[-1] - again[0] >= 90.0 - 1e-3  # ten windows of five


async def test_a_refused_subscription_is_asked_again_by_flush_and_by_subscribe(sim: SimExchange) -> None:
    wanted = trades("S0", "S1")
    manager = Manager(multi(4), dialer=sim.dialer())
    manager.add_connection(public(lambda: list(wanted)), name="spot")
    with anyio.fail_after(120):
        async with manager:
            sim.reject_subscribes(1)
            wanted.append(Subscription("trades", "S2"))
            with pytest.raises(SubscriptionFailed, match="S2"):
                await manager.flush()
            assert {str(i.subscription): i.state for i in manager.subscriptions()}["trades:S2"] is SubState.FAILED
            await manager.flush()  # the failed one is sent again, nothing else
            assert all(i.state is SubState.SUBSCRIBED for i in manager.subscriptions())
            sim.reject_subscribes(1)
            with pytest.raises(SubscriptionFailed):
                await manager.subscribe(trades("S3"))
            with pytest.raises(DuplicateSubscription):
                await manager.subscribe(trades("S0"))  # a live one is still a duplicate
            await manager.subscribe(trades("S3"))  # asked again: retried, not a duplicate
            assert all(i.state is SubState.SUBSCRIBED for i in manager.subscriptions())
    assert sorted(sent(sim)[0]) == ["trades:S0", "trades:S1", "trades:S2", "trades:S2", "trades:S3", "trades:S3"]


async def test_at_most_max_dialing_connections_dial_at_once(sim: SimExchange) -> None:
    inner = sim.dialer()
    dialing, most = 0, 0

    async def slow_dial(url: Any) -> Any:
        nonlocal dialing, most
        dialing += 1
        most = max(most, dialing)
        try:
            await anyio.sleep(1.0)  # a slow connect (TLS across the world)
            return await inner(url)
        finally:
            dialing -= 1

    manager = Manager(multi(1, max_dialing=3), dialer=slow_dial)
    manager.add_connection(public(lambda: trades(*SYMBOLS)), name="spot")
    start = anyio.current_time()
    with anyio.fail_after(120):
        async with manager:
            assert len(manager.connections()) == 8 and all(r.state is State.LIVE for r in manager.connections())
            took = anyio.current_time() - start
    assert most == 3
    assert took >= 3.0  # 8 connections, 3 at a time, 1 s each: three rounds
    with pytest.raises(ConfigError, match="max_dialing"):
        WebsocketSetup(exchange="sim", max_dialing=0)
