"""Every fault of issue 19, at the engine level: a Manager against the simulator, on virtual time.

Each test names the fault, asserts the exact state changes of the managed
connection it hits (source, dest, trigger, typed cause), and after healing
that nothing was lost unaccounted: every ledger subscription SUBSCRIBED and
the exchange's open sessions subscribed to exactly the desired set, with no
subscribe frame sent twice on one session; books equal to the exchange's at
the same seq; every queued send either reached the exchange or raised
ConnectionLost. (The transport-level faults against one Connection are in
tests/test_faults.py; the simulator's controls alone in tests/test_sim_faults.py.)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
import pytest

from engine import Backoff, ConnectionSetup, GaveUp, State
from engine.adapters import sim as adapter
from engine.books import BookConfig
from engine.books.checksum import okx_checksum
from engine.books.sequence import Linked
from engine.causes import (
    ClosedByPeer,
    GiveUp,
    HandshakeRejection,
    ProtocolError,
    SetupFailure,
    TransportError,
    UserClose,
)
from engine.config import WebsocketSetup
from engine.errors import ConnectionLost, HandshakeRejected, NotConnected, SubscriptionFailed
from engine.events import BookResynced, Error, ErrorKind, Gap, StateChanged
from engine.manager import Manager
from engine.ratelimit import RateLimit
from engine.sim import SimExchange
from engine.subscriptions import Subscription
from machines.subscription import SubState
from tests.test_books_manager import exact

pytestmark = pytest.mark.anyio

URL = "ws://sim.test/ws"
SUBS = [Subscription("ticker", "BTC-USD"), Subscription("trades", "ETH-USD")]
SLOT = "spot#1"
LOG = 20_000  # transcript entries kept per connection: every test's whole run

# the state changes of a connection coming up (public) and after a lost session
READY = [("connecting", "subscribing", "opened"), ("subscribing", "live", "subscribed")]
UP = [("disconnected", "connecting", "connect"), *READY]
AGAIN = [("reconnecting", "connecting", "retry"), *READY]


class Watch:
    """What one test observes: the slot's state changes and the data the handler saw."""

    def __init__(self) -> None:
        self.changes: list[StateChanged] = []
        self.seqs: dict[tuple[str, str], list[int]] = {}
        self.other: list[dict[str, Any]] = []  # non-data messages that reached the handler

    def handle(self, conn: Any, message: str | bytes) -> None:
        data = orjson.loads(message)
        if "seq" in data and "channel" in data:
            self.seqs.setdefault((data["channel"], data["symbol"]), []).append(data["seq"])
        else:
            self.other.append(data)

    def steps(self, since: int = 0) -> list[tuple[str, str, str]]:
        return [(e.source.value, e.dest.value, e.trigger) for e in self.changes[since:]]

    def causes(self, since: int = 0) -> list[Any]:
        return [e.cause for e in self.changes[since:] if e.cause is not None]


def managed(
    sim: SimExchange,
    watch: Watch,
    *,
    subs: list[Subscription] = SUBS,
    orderbook: Any = None,
    monitor: float = 2.0,
    **overrides: Any,
) -> Manager:
    manager = Manager(
        WebsocketSetup(exchange="sim", traffic_timeout=10.0, orderbook=orderbook, connection_monitor_interval=monitor),
        dialer=sim.dialer(),
    )
    options: dict[str, Any] = dict(
        url=URL,
        handler=watch.handle,
        subscriber=adapter.subscribe,
        unsubscriber=adapter.unsubscribe,
        generate_subscriptions=lambda: list(subs),
        backoff=Backoff(initial=1.0, maximum=1.0, jitter=False),
    )
    options.update(overrides)
    manager.add_connection(ConnectionSetup(**options), name="spot")
    manager.on_state_change(lambda e: watch.changes.append(e) if e.connection == SLOT else None)
    return manager


def subscribes(sim: SimExchange) -> list[list[tuple[str, str]]]:
    """Per accepted session: the (channel, symbol) of every subscribe frame it received."""
    out = []
    for received in sim.log:
        pairs: list[tuple[str, str]] = []
        for _, text in received:
            message = orjson.loads(text)
            if message.get("op") == "subscribe":
                pairs.extend((message["channel"], s) for s in message["symbols"])
        out.append(pairs)
    return out


async def assert_healed(manager: Manager, sim: SimExchange, desired: list[Subscription] = SUBS) -> None:
    """Nothing lost: the ledger all SUBSCRIBED to ``desired``; the exchange's open sessions exactly that."""
    with anyio.fail_after(30):  # (virtual seconds) the reconnect may still be under way
        while manager.connection(SLOT).state is not State.LIVE or len(sim.subscriptions) != 1:
            await anyio.sleep(0.05)
    infos = manager.subscriptions()
    assert sorted(str(i.subscription) for i in infos) == sorted(str(s) for s in desired)
    assert {i.state for i in infos} == {SubState.SUBSCRIBED}
    assert sim.subscriptions == [frozenset((s.channel, s.symbols[0]) for s in desired)]
    subscribed_once(sim)


def subscribed_once(sim: SimExchange) -> None:
    """No session was subscribed to a (channel, symbol) it already had (a refused subscribe, or one
    after an unsubscribe, may be sent again); read from the exchange's transcripts."""
    for transcript in sim.transcripts:
        assert transcript.forgotten == 0
        active: set[tuple[str, str]] = set()
        for entry in transcript:
            wanted = '"op":"unsubscribe"' in entry.data or '"event":"subscribed"' in entry.data
            if entry.kind != "text" or not wanted:
                continue
            message = orjson.loads(entry.data)
            pairs = {(message["channel"], s) for s in message["symbols"]}
            if entry.direction == "in":
                active -= pairs
            else:
                assert not active & pairs, f"subscribed twice: {active & pairs}"
                active |= pairs


def no_gaps(watch: Watch) -> None:
    """Each stream the handler saw ran without a hole or a repeat in the exchange-wide seq."""
    assert watch.seqs
    for stream, seqs in watch.seqs.items():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{stream}: lost or duplicated"


class Sends:
    """Sends queued behind the rate limit when a fault hits: each reached the exchange or raised ConnectionLost."""

    def __init__(self) -> None:
        self.made = self.returned = self.lost = self.refused = 0
        self.lost_at: list[float] = []  # when each ConnectionLost was raised (virtual clock)

    async def one(self, conn: Any, i: int) -> None:
        self.made += 1
        try:
            await conn.send({"op": "ping", "id": f"send-{i}"})
        except ConnectionLost:
            self.lost += 1
            self.lost_at.append(anyio.current_time())
        except NotConnected:
            self.refused += 1  # never queued: refused at once (counted, and asserted to be zero)
        else:
            self.returned += 1

    def reached(self, sim: SimExchange) -> int:
        ids = [orjson.loads(t).get("id") for received in sim.log for _, t in received]
        return sum(1 for i in ids if isinstance(i, str) and i.startswith("send-"))

    def check(self, sim: SimExchange, *, session_lost: bool = True) -> None:
        reached = self.reached(sim)
        assert self.refused == 0
        assert reached + self.lost == self.made, (reached, self.lost, self.made)
        if session_lost:
            assert reached >= 1 and self.lost >= 1  # the fault really hit a queue mid-way
        else:
            assert reached == self.returned == self.made  # the session lived on: every send went out


async def queued_sends_through(
    manager: Manager, sends: Sends, fault: Callable[[], Awaitable[None]], count: int = 10
) -> None:
    """Queue ``count`` sends on the live connection (2/s rate limit), then the fault a second later."""
    conn = manager.connection(SLOT)
    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(sends.one, conn, i)
        await anyio.sleep(1.2)
        await fault()


# -- handshake refused ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 503])
async def test_handshake_refused_with_retry_after_waits_that_long_then_comes_up(status: int) -> None:
    watch = Watch()
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        sim.reject_next(status, retry_after=7)
        manager = managed(sim, watch)
        with anyio.fail_after(120):
            start = anyio.current_time()
            async with manager:
                await assert_healed(manager, sim)
                assert sim.rejected == 1 and sim.accepted == 1
                assert watch.steps() == [
                    ("disconnected", "connecting", "connect"),
                    ("connecting", "reconnecting", "lost"),
                    *AGAIN,
                ]
                lost, retry = watch.changes[1], watch.changes[2]
                assert lost.cause == HandshakeRejection(status, retry_after=7.0)
                assert lost.delay is not None and lost.delay >= 7.0
                assert retry.at - lost.at >= 7.0 - 1e-6  # Retry-After beat the 1 s backoff, on the virtual clock
                assert retry.at - start >= 7.0 - 1e-6
                assert subscribes(sim) == [[("ticker", "BTC-USD"), ("trades", "ETH-USD")]]


async def test_handshake_refused_401_gives_up_with_a_reason_and_subscribes_nothing() -> None:
    watch = Watch()
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        sim.reject_next(401)
        manager = managed(sim, watch, monitor=5.0)
        with anyio.fail_after(120):
            async with manager:
                conn = manager.connection(SLOT)
                with pytest.raises(HandshakeRejected) as info:
                    await conn.wait_for(State.LIVE)
                assert info.value.status == 401
                await anyio.sleep(30)  # the monitor does not redial a refusal for good
                assert watch.steps() == [
                    ("disconnected", "connecting", "connect"),
                    ("connecting", "reconnecting", "lost"),
                    ("reconnecting", "disconnected", "give_up"),
                ]
                assert watch.changes[1].cause == HandshakeRejection(401)
                gave_up = watch.changes[2].cause
                assert isinstance(gave_up, GiveUp) and gave_up.last == HandshakeRejection(401) and gave_up.reason
                assert conn.state is State.DISCONNECTED
                assert [i.state for i in manager.subscriptions()] == [SubState.INACTIVE] * 2
    assert sim.accepted == 0 and sim.rejected == 1 and subscribes(sim) == []


# -- close codes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1001, 1011, 4000, 4999, 1006])
async def test_a_close_reconnects_and_resubscribes_exactly_once_with_queued_sends_accounted(code: int) -> None:
    """1001 (going away), 1011 (server error), the 4000 range (the exchange's own), 1006 (a reset, no close frame)."""
    watch = Watch()
    sends = Sends()
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        manager = managed(sim, watch, rate_limit=RateLimit.per(1.0, 2))
        with anyio.fail_after(120):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                first = manager.connection(SLOT)
                mark = len(watch.changes)

                async def fault() -> None:
                    if code == 1006:
                        sim.drop_one(0)
                    else:
                        await sim.close_one(0, code, "bye")

                await queued_sends_through(manager, sends, fault)
                await assert_healed(manager, sim)
                await anyio.sleep(2)
                assert manager.connection(SLOT) is first and first.sessions == 2
                assert watch.steps(mark) == [("live", "reconnecting", "lost"), *AGAIN]
                lost = watch.changes[mark]
                if code == 1006:  # a reset: no close frame, the stream broke
                    assert isinstance(lost.cause, TransportError) and "reset" in lost.cause.error
                else:
                    assert lost.cause == ClosedByPeer(code, "bye")
                assert lost.delay is not None and lost.delay > 0
                assert watch.changes[mark + 1].at - lost.at == pytest.approx(lost.delay)  # backed off that long
                assert subscribes(sim) == [[("ticker", "BTC-USD"), ("trades", "ETH-USD")]] * 2
    sends.check(sim)


async def test_close_1008_gives_up_with_a_reason_and_the_monitor_does_not_redial() -> None:
    watch = Watch()
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        manager = managed(sim, watch, monitor=2.0)
        with anyio.fail_after(120):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                conn = manager.connection(SLOT)
                mark = len(watch.changes)
                await sim.close_one(0, 1008, "policy")
                with pytest.raises(GaveUp) as info:
                    await conn.wait_for(State.LIVE)
                await anyio.sleep(30)
                assert watch.steps(mark) == [
                    ("live", "reconnecting", "lost"),
                    ("reconnecting", "disconnected", "give_up"),
                ]
                assert watch.changes[mark].cause == ClosedByPeer(1008, "policy")
                gave_up = watch.changes[mark + 1].cause
                assert isinstance(gave_up, GiveUp) and gave_up.last == ClosedByPeer(1008, "policy") and gave_up.reason
                assert info.value.cause == gave_up
                assert conn.state is State.DISCONNECTED and sim.accepted == 1 and sim.connections == 0


# -- subscribe and login rejected ------------------------------------------------------------------------


async def test_a_rejected_subscribe_names_the_key_the_connection_stays_live_and_a_retry_succeeds() -> None:
    watch = Watch()
    extra = Subscription("ticker", "ETH-USD")
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        manager = managed(sim, watch)
        with anyio.fail_after(120):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                mark = len(watch.changes)
                sim.reject_subscribes(1)
                with pytest.raises(SubscriptionFailed, match="ticker:ETH-USD") as info:
                    await manager.subscribe([extra])
                assert info.value.keys == (extra.key,)
                states = {str(i.subscription): i.state for i in manager.subscriptions()}
                assert states["ticker:ETH-USD"] is SubState.FAILED
                assert manager.connection(SLOT).state is State.LIVE and watch.steps(mark) == []
                # asking again goes through (the refusal was one-shot): drop the failed entry, subscribe
                await manager.unsubscribe([extra])
                await manager.subscribe([extra])
                await assert_healed(manager, sim, [*SUBS, extra])
                assert watch.steps(mark) == [] and sim.accepted == 1


async def test_a_rejected_login_gives_up_with_a_reason_and_never_sends_a_subscribe() -> None:
    watch = Watch()
    private = [Subscription("ticker", "BTC-USD", authenticated=True)]
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        sim.reject_logins(1)
        manager = managed(sim, watch, subs=private, authenticated=True, connector=adapter.login, monitor=2.0)
        with anyio.fail_after(120):
            async with manager:
                conn = manager.connection(SLOT)
                with pytest.raises(GaveUp, match="authentication was rejected"):
                    await conn.wait_for(State.LIVE)
                await anyio.sleep(20)
                assert watch.steps() == [
                    ("disconnected", "connecting", "connect"),
                    ("connecting", "authenticating", "opened"),
                    ("authenticating", "reconnecting", "lost"),
                    ("reconnecting", "disconnected", "give_up"),
                ]
                lost = watch.changes[2].cause
                assert isinstance(lost, SetupFailure) and lost.rejected and lost.phase == "authenticating"
                gave_up = watch.changes[3].cause
                assert isinstance(gave_up, GiveUp) and gave_up.last == lost
                assert [i.state for i in manager.subscriptions()] == [SubState.INACTIVE]
    assert sim.accepted == 1
    ins = [orjson.loads(e.data)["op"] for e in sim.transcripts[0] if e.direction == "in" and e.kind == "text"]
    assert ins == ["login"]


# -- books: sequence gap, bad checksum -------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["gap", "checksum"])
async def test_a_book_fault_resyncs_that_symbol_alone_and_every_book_ends_exact(fault: str) -> None:
    watch = Watch()
    symbols = ("BTC-USD", "ETH-USD")
    books = [Subscription("book", s) for s in symbols]
    events: list[Any] = []
    async with SimExchange(log_limit=LOG, rate=20.0, symbols=symbols, book_depth=30) as sim:
        manager = managed(
            sim, watch, subs=books, handler=None, batch_handler=adapter.batch_handler,
            orderbook=BookConfig(sequence=Linked(), checksum=okx_checksum, buffer_limit=50),
        )  # fmt: skip
        with anyio.fail_after(120):
            async with manager:
                stream = manager.stream(Gap, Error, BookResynced)

                async def consume() -> None:
                    async for batch in stream:
                        events.extend(batch)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    await assert_healed(manager, sim, books)
                    await anyio.sleep(1)  # both snapshots applied
                    assert [await exact(manager, sim, s) for s in symbols] == [True, True]
                    mark = len(watch.changes)
                    (sim.skip_book if fault == "gap" else sim.corrupt_book)("BTC-USD")
                    await anyio.sleep(3)
                    assert [await exact(manager, sim, s) for s in symbols] == [True, True]
                    await assert_healed(manager, sim, books)
                    assert watch.steps(mark) == [] and sim.accepted == 1
                    tg.cancel_scope.cancel()
    mine = [e for e in events if getattr(e, "symbol", None) is not None]
    if fault == "gap":
        gaps = [e for e in mine if isinstance(e, Gap)]
        assert [e.symbol for e in gaps] == ["BTC-USD"]
        assert gaps[0].got is not None and gaps[0].got > (gaps[0].expected or 0)
        assert not [e for e in mine if isinstance(e, Error)]
    else:
        assert [(type(e), e.symbol) for e in mine if isinstance(e, (Gap, Error))] == [(Error, "BTC-USD")]
        assert [e.kind for e in mine if isinstance(e, Error)] == [ErrorKind.RESYNC]
    assert [e.symbol for e in mine if isinstance(e, BookResynced)] == ["BTC-USD"]


# -- malformed and oversize messages ---------------------------------------------------------------------


async def test_malformed_json_is_an_error_event_and_the_connection_stays_live() -> None:
    watch = Watch()
    events: list[Any] = []
    sends = Sends()
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        manager = managed(
            sim, watch, handler=None, batch_handler=adapter.batch_handler, rate_limit=RateLimit.per(1.0, 2)
        )
        with anyio.fail_after(120):
            async with manager:
                stream = manager.stream()

                async def consume() -> None:
                    async for batch in stream:
                        events.extend(batch)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    await manager.wait_for(SLOT, State.LIVE)
                    mark = len(watch.changes)
                    before = len(events)
                    await queued_sends_through(manager, sends, sim.send_malformed)
                    assert len(events) > before + 5  # data kept flowing
                    await assert_healed(manager, sim)
                    assert watch.steps(mark) == [] and sim.accepted == 1
                    tg.cancel_scope.cancel()
    errors = [e for e in events if isinstance(e, Error)]
    assert [e.kind for e in errors] == [ErrorKind.DECODE]
    assert errors[0].raw == '{"channel":"ticker","symbol":' and errors[0].connection == SLOT
    sends.check(sim, session_lost=False)


async def test_an_oversize_message_is_closed_1009_by_us_then_reconnects_and_resubscribes() -> None:
    watch = Watch()
    sends = Sends()
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        manager = managed(sim, watch, max_message_size=4096, rate_limit=RateLimit.per(1.0, 2))
        with anyio.fail_after(120):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                conn = manager.connection(SLOT)
                mark = len(watch.changes)

                async def fault() -> None:
                    await sim.send_oversize(10_000)
                    await manager.wait_for(SLOT, State.RECONNECTING)

                await queued_sends_through(manager, sends, fault)
                await assert_healed(manager, sim)
                assert watch.steps(mark) == [("live", "reconnecting", "lost"), *AGAIN]
                cause = watch.changes[mark].cause
                assert isinstance(cause, ProtocolError) and cause.code == 1009
                assert conn.last_close_sent is not None and conn.last_close_sent[0] == 1009
                assert subscribes(sim) == [[("ticker", "BTC-USD"), ("trades", "ETH-USD")]] * 2
    closes = [e.data for e in sim.transcripts[0] if e.direction == "in" and e.kind == "close"]
    assert [c.split()[0] for c in closes] == ["1009"]
    sends.check(sim)


# -- duplicate and out-of-order answers ------------------------------------------------------------------


async def test_out_of_order_and_duplicate_answers_each_reach_their_request_and_extras_the_handler() -> None:
    watch = Watch()
    private = [Subscription("orders", "BTC-USD", authenticated=True)]
    async with SimExchange(log_limit=LOG, rate=5.0, response_delay=(0.0, 2.0), seed=3) as sim:
        manager = managed(sim, watch, subs=private, authenticated=True, connector=adapter.login)
        with anyio.fail_after(120):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                conn = manager.connection(SLOT)
                mark = len(watch.changes)
                answers: dict[str, dict[str, Any]] = {}
                order_of_answers: list[str] = []
                order_sent: list[str] = []

                async def place(n: int) -> None:
                    rid = conn.next_id()
                    cid = f"c{n}"
                    order = {
                        "op": "place_order", "symbol": "BTC-USD", "side": "buy", "price": "1.00", "size": "1",
                        "client_order_id": cid, "id": rid,
                    }  # fmt: skip
                    order_sent.append(cid)  # (request() sends before its first await: the exchange's order)
                    answers[cid] = orjson.loads(await conn.request(order, key=rid))
                    order_of_answers.append(cid)

                sim.duplicate_responses(2)
                async with anyio.create_task_group() as tg:
                    for n in range(6):
                        tg.start_soon(place, n)
                await anyio.sleep(3)  # any late duplicate arrives
                assert sorted(answers) == [f"c{n}" for n in range(6)]
                assert all(a["client_order_id"] == cid and a["ok"] for cid, a in answers.items())
                assert order_of_answers != order_sent  # they did overtake each other
                extras = [m for m in watch.other if m.get("event") == "order"]
                assert len(extras) == 2 and all(answers[m["client_order_id"]] == m for m in extras)
                assert conn.state is State.LIVE and watch.steps(mark) == []


# -- server ping storm -----------------------------------------------------------------------------------


async def test_a_ping_storm_is_answered_ping_for_ping_and_data_keeps_flowing() -> None:
    watch = Watch()
    async with SimExchange(log_limit=LOG, rate=10.0) as sim:
        manager = managed(sim, watch)
        with anyio.fail_after(120):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                mark = len(watch.changes)
                before = sum(map(len, watch.seqs.values()))
                sim.ping_storm(500, 0.01)
                await anyio.sleep(6)
                await assert_healed(manager, sim)
                assert watch.steps(mark) == [] and sim.accepted == 1
                assert sum(map(len, watch.seqs.values())) - before >= 6 * 10  # both streams, 6 s at 5+/s each
    transcript = list(sim.transcripts[0])
    pings = [e.data for e in transcript if e.direction == "out" and e.kind == "ping"]
    pongs = [e.data for e in transcript if e.direction == "in" and e.kind == "pong"]
    assert len(pings) == 500 and Counter(pongs) == Counter(pings)
    no_gaps(watch)


# -- server-imposed connection lifetime ------------------------------------------------------------------


async def test_a_lifetime_close_reconnects_and_resubscribes() -> None:
    watch = Watch()
    sends = Sends()
    async with SimExchange(log_limit=LOG, rate=5.0, lifetime=30.0) as sim:
        start = anyio.current_time()
        manager = managed(sim, watch, rate_limit=RateLimit.per(1.0, 2))
        with anyio.fail_after(120):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                mark = len(watch.changes)
                await anyio.sleep(start + 28.8 - anyio.current_time())

                async def fault() -> None:  # the lifetime ends 30 s after the handshake
                    await manager.wait_for(SLOT, State.RECONNECTING)

                await queued_sends_through(manager, sends, fault)
                await assert_healed(manager, sim)
                # the close came 30 s after the handshake; our reply waits for a token (counted, 2/s)
                assert 30.0 - 1e-6 <= watch.changes[mark].at - start <= 31.0 + 1e-6
                assert watch.steps(mark) == [("live", "reconnecting", "lost"), *AGAIN]
                assert watch.changes[mark].cause == ClosedByPeer(1001, "lifetime")
                assert subscribes(sim) == [[("ticker", "BTC-USD"), ("trades", "ETH-USD")]] * 2
    sends.check(sim)


def identity(message: str | bytes) -> Any:
    data = orjson.loads(message)
    return (data["channel"], data["symbol"], data["seq"]) if "seq" in data else None


async def test_rotation_shorter_than_the_lifetime_replaces_the_connection_first_and_loses_no_seq() -> None:
    watch = Watch()
    async with SimExchange(log_limit=LOG, rate=20.0) as sim:
        sim.set_lifetime(30.0)
        manager = managed(sim, watch, rotate_after=20.0, rotate_overlap=2.0, message_identity=identity)
        with anyio.fail_after(300):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                mark = len(watch.changes)
                await anyio.sleep(100)
                await assert_healed(manager, sim)
                assert sim.accepted >= 4
                # no session of the slot was ever lost: each was replaced, then closed by us with 1000
                rotations = sim.accepted - 1
                replaced = [("live", "closing", "close"), ("closing", "disconnected", "closed")]
                assert watch.steps(mark)[: 5 * rotations] == [*UP, *replaced] * rotations
                closes = {e.cause for e in watch.changes[mark:] if e.trigger in ("close", "closed")}
                assert closes == {UserClose(1000, "rotated")}
                assert "lost" not in [t for _, _, t in watch.steps()]
    closes_from_server = [
        e for t in sim.transcripts for e in t if e.direction == "out" and e.kind == "close" and "lifetime" in e.data
    ]
    assert closes_from_server == []
    no_gaps(watch)


# -- what a demanding user expects and the engine does not do yet (design questions) ---------------------


async def test_a_close_frame_is_answered_ahead_of_sends_queued_behind_the_rate_limit() -> None:
    watch = Watch()
    sends = Sends()
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        manager = managed(sim, watch, rate_limit=RateLimit.per(1.0, 2))
        with anyio.fail_after(120):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                mark = len(watch.changes)
                closed_at: list[float] = []

                async def fault() -> None:
                    closed_at.append(anyio.current_time())
                    await sim.close_one(0, 1011, "restart")
                    closed_at.append(anyio.current_time())

                await queued_sends_through(manager, sends, fault)
                await assert_healed(manager, sim)
                lost = watch.changes[mark]
                assert lost.cause == ClosedByPeer(1011, "restart")
                # answered behind at most the send already waiting for the next token: two tokens at 2/s
                assert closed_at[1] - closed_at[0] <= 1.0 + 1e-6
                assert lost.at - closed_at[0] <= 1.0 + 1e-6
    sends.check(sim)


async def test_sends_queued_when_the_session_ends_fail_at_once_and_do_not_delay_the_resubscribe() -> None:
    watch = Watch()
    sends = Sends()
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        manager = managed(sim, watch, rate_limit=RateLimit.per(1.0, 2, count_control=False))
        with anyio.fail_after(120):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                mark = len(watch.changes)

                async def fault() -> None:
                    sim.drop_one(0)

                await queued_sends_through(manager, sends, fault, count=20)
                await assert_healed(manager, sim)
                lost, retry, live = watch.changes[mark], watch.changes[mark + 1], watch.changes[mark + 3]
                assert (lost.trigger, retry.trigger, live.trigger) == ("lost", "retry", "subscribed")
                assert sends.lost_at and max(sends.lost_at) <= lost.at + 1e-6  # failed when the session ended
                assert live.at - retry.at <= 1.0  # two subscribes at 2/s, nothing ahead of them
    sends.check(sim)


async def test_subscribing_again_to_a_refused_subscription_retries_it() -> None:
    watch = Watch()
    extra = Subscription("ticker", "ETH-USD")
    async with SimExchange(log_limit=LOG, rate=5.0) as sim:
        manager = managed(sim, watch)
        with anyio.fail_after(120):
            async with manager:
                await manager.wait_for(SLOT, State.LIVE)
                sim.reject_subscribes(1)
                with pytest.raises(SubscriptionFailed):
                    await manager.subscribe([extra])
                await manager.subscribe([extra])
                await assert_healed(manager, sim, [*SUBS, extra])


async def test_a_first_acquire_goes_ahead_of_queued_ones_behind_the_head_and_earlier_firsts() -> None:
    from engine.ratelimit import Limiter

    limiter = Limiter(RateLimit.per(1.0, 2))
    order: list[str] = []

    async def take(name: str, first: bool = False) -> None:
        await limiter.acquire(first=first)
        order.append(name)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            for name in ("n0", "n1", "n2", "n3"):
                tg.start_soon(take, name)
                await anyio.sleep(0)
            await anyio.sleep(0.1)
            tg.start_soon(take, "c1", True)
            await anyio.sleep(0)
            tg.start_soon(take, "c2", True)
    assert order == ["n0", "n1", "c1", "c2", "n2", "n3"]
