"""Transport faults (transports/faults.py) against a Connection and the in-process sim, on virtual time.

Each test names the state transitions the fault must cause and checks that
nothing is lost without a count: per session, each subscription's ``seq``
runs 1, 2, 3... with no gap and no repeat, and what a fault swallowed is in
its :class:`~transports.faults.FaultStats`.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import anyio
import orjson
import pytest

from engine import Backoff, Connection, ConnectionSetup, State
from engine.causes import Silence, TransportError
from engine.sim import SimExchange
from transports.base import capabilities_of, parse_url
from transports.faults import (
    AfterBytes,
    AfterFrames,
    At,
    FaultyStream,
    HalfOpen,
    PartialWrites,
    Reset,
    Scripted,
    Seeded,
    SlowReader,
    Split,
    Stall,
    Step,
    wrap,
)
from transports.memory import memory_pair

pytestmark = pytest.mark.anyio

SUBS = [("ticker", ["BTC-USD"]), ("trades", ["ETH-USD"])]
BOUND = 600.0  # virtual seconds


async def subscribe(conn: Connection, subs: list[Any]) -> None:
    for channel, symbols in subs:
        rid = conn.next_id()
        await conn.request({"op": "subscribe", "channel": channel, "symbols": symbols, "id": rid}, key=rid, timeout=5)


def setup(sink: list[tuple[int, Any]], **overrides: Any) -> ConnectionSetup:
    options: dict[str, Any] = dict(
        url="ws://sim.test/ws",
        handler=lambda conn, message: sink.append((conn.sessions, orjson.loads(message))),
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


def path(conn: Connection) -> list[str]:
    """The transitions as ``source>dest``, without the final close."""
    return [f"{e.source.value}>{e.dest.value}" for e in conn.history if e.trigger not in ("close", "closed")]


def check_sequences(received: list[tuple[int, Any]]) -> dict[tuple[int, str, str], int]:
    """Per (session, channel, symbol): seq runs on by 1 (nothing lost in the middle, nothing twice)."""
    seqs: dict[tuple[int, str, str], list[int]] = defaultdict(list)
    for session, message in received:
        seqs[(session, message["channel"], message["symbol"])].append(message["seq"])
    for key, values in seqs.items():
        assert values == list(range(values[0], values[0] + len(values))), (key, values)
    return {key: len(values) for key, values in seqs.items()}


HEALTHY = ["disconnected>connecting", "connecting>subscribing", "subscribing>live"]
RECONNECT = ["live>reconnecting", "reconnecting>connecting", "connecting>subscribing", "subscribing>live"]


async def test_reset_is_lost_then_reconnecting_then_live(sim: SimExchange) -> None:
    received: list[tuple[int, Any]] = []
    schedule = Scripted([Step(At(2.0), Reset())])
    t0 = anyio.current_time()  # (trio's mock clock runs on from the previous test)
    with anyio.fail_after(BOUND):
        async with Connection(setup(received), dialer=wrap(sim.dialer(), schedule)) as conn:
            await conn.wait_for(State.LIVE)
            await conn.wait_for(State.RECONNECTING)
            assert anyio.current_time() - t0 == pytest.approx(2.0)  # a waiting receive is woken on time
            await conn.wait_for(State.LIVE)
            await sim.wait_connections(1)  # the sim saw the reset: its side is gone
            await anyio.sleep(2)
    assert path(conn) == HEALTHY + RECONNECT
    lost = next(e for e in conn.history if e.trigger == "lost")
    assert lost.cause == TransportError("BrokenResourceError: connection reset (injected fault)")
    assert [(f.dial, f.at - t0, f.fault) for f in schedule.fired] == [(0, pytest.approx(2.0), Reset())]
    counts = check_sequences(received)
    assert {s for s, _, _ in counts} == {1, 2}
    assert 9 <= counts[(1, "ticker", "BTC-USD")] <= 11  # 5/s for 2 s
    assert schedule.stats[0].swallowed_bytes == 0  # the reader was waiting: nothing fetched was dropped


async def test_reset_after_frames_cuts_exactly_there(sim: SimExchange) -> None:
    received: list[tuple[int, Any]] = []
    # frames of dial 0: ack ticker, ticker seq 1, ack trades, trades seq 1, ...; reset after the 5th
    schedule = Scripted([Step(AfterFrames(5), Reset())])
    with anyio.fail_after(BOUND):
        async with Connection(setup(received), dialer=wrap(sim.dialer(), schedule)) as conn:
            await conn.wait_for(State.RECONNECTING)
            await conn.wait_for(State.LIVE)
    stats = schedule.stats[0]
    assert stats.delivered_frames == 5
    assert [m for s, m in received if s == 1] == [m for s, m in received[:3]]  # 5 frames: 2 acks + 3 data
    assert sum(1 for s, _ in received if s == 1) == 3
    check_sequences(received)
    assert path(conn)[:4] == ["disconnected>connecting", "connecting>subscribing", "subscribing>live", "live>reconnecting"]


async def test_half_open_goes_stale_by_the_traffic_monitor_then_reconnects(sim: SimExchange) -> None:
    received: list[tuple[int, Any]] = []
    schedule = Scripted([Step(At(2.0), HalfOpen())])
    t0 = anyio.current_time()
    with anyio.fail_after(BOUND):
        async with Connection(setup(received), dialer=wrap(sim.dialer(), schedule)) as conn:
            await conn.wait_for(State.STALE)
            stale_at = anyio.current_time() - t0
            await conn.wait_for(State.RECONNECTING)
            lost_at = anyio.current_time()
            sent_in_session_1 = sim.stats().data_messages
            await conn.wait_for(State.LIVE)
    # the last frame came just before 2.0: stale 10 s later, lost after the 3 s grace
    assert 11.7 <= stale_at <= 12.0, stale_at
    assert lost_at - t0 - stale_at == pytest.approx(3.0)
    assert path(conn) == HEALTHY + ["live>stale", "stale>reconnecting"] + RECONNECT[1:]
    lost = next(e for e in conn.history if e.trigger == "lost")
    assert isinstance(lost.cause, Silence)
    stats = schedule.stats[0]
    assert stats.vanished_sends == 2  # the keepalive ping at +5 s and the stale probe: both into the void
    counts = check_sequences(received)
    delivered_1 = sum(n for (s, _, _), n in counts.items() if s == 1)
    # every data message the sim wrote in session 1 was either delivered or swallowed (and counted)
    assert delivered_1 + stats.swallowed_frames == sent_in_session_1
    assert stats.swallowed_frames > 80  # ~10 s at 2 x 5/s


async def test_short_stall_changes_nothing_and_loses_nothing(sim: SimExchange) -> None:
    received: list[tuple[int, Any]] = []
    times: list[float] = []
    schedule = Scripted([Step(At(2.0), Stall(4.0))])
    base = setup(received)
    t0 = anyio.current_time()
    with anyio.fail_after(BOUND):
        s = setup(received, handler=lambda conn, m: (times.append(anyio.current_time() - t0), base.handler(conn, m)))  # type: ignore[misc]
        async with Connection(s, dialer=wrap(sim.dialer(), schedule)) as conn:
            await conn.wait_for(State.LIVE)
            await anyio.sleep(10)
    assert path(conn) == HEALTHY
    counts = check_sequences(received)
    assert counts[(1, "ticker", "BTC-USD")] >= 45  # 10 s at 5/s, none lost in the stall
    assert not [t for t in times if 2.0 < t < 6.0]  # nothing delivered while stalled
    assert sum(1 for t in times if t == pytest.approx(6.0)) >= 35  # then the backlog at once


async def test_long_stall_goes_stale_then_live_on_the_backlog(sim: SimExchange) -> None:
    received: list[tuple[int, Any]] = []
    schedule = Scripted([Step(At(2.0), Stall(11.0))])
    t0 = anyio.current_time()
    with anyio.fail_after(BOUND):
        async with Connection(setup(received), dialer=wrap(sim.dialer(), schedule)) as conn:
            await conn.wait_for(State.STALE)
            await conn.wait_for(State.LIVE)
            assert anyio.current_time() - t0 == pytest.approx(13.0)
            await anyio.sleep(1)
    assert path(conn) == HEALTHY + ["live>stale", "stale>live"]
    check_sequences(received)
    assert conn.sessions == 1


async def test_slow_reader_stays_live_and_delivers_everything_once(sim: SimExchange) -> None:
    received: list[tuple[int, Any]] = []
    schedule = Scripted([Step(AfterBytes(0), SlowReader(max_bytes=16, delay=0.002))])
    with anyio.fail_after(BOUND):
        async with Connection(setup(received), dialer=wrap(sim.dialer(), schedule)) as conn:
            await conn.wait_for(State.LIVE)
            await anyio.sleep(20)
    assert path(conn) == HEALTHY
    counts = check_sequences(received)
    assert counts[(1, "ticker", "BTC-USD")] >= 95
    stats = schedule.stats[0]
    assert stats.delivered_frames >= 190 and stats.swallowed_bytes == 0


@pytest.mark.parametrize("randomly", [False, True], ids=["every-byte", "random-cuts"])
async def test_split_reads_stay_live_and_deliver_every_message_once(sim: SimExchange, randomly: bool) -> None:
    received: list[tuple[int, Any]] = []
    reads: list[int] = []
    schedule = Scripted([Step(AfterBytes(0), Split(random=randomly), dial=None)])  # from the handshake on
    dialer = wrap(sim.dialer(), schedule)

    async def counting_dialer(url: Any) -> Any:
        stream = await dialer(url)
        receive = stream.receive

        async def spy(max_bytes: int = 65536) -> bytes:
            data = await receive(max_bytes)
            reads.append(len(data))
            return data

        stream.receive = spy  # type: ignore[method-assign]
        return stream

    with anyio.fail_after(BOUND):
        async with Connection(setup(received), dialer=counting_dialer) as conn:
            await conn.wait_for(State.LIVE)
            await anyio.sleep(10)
    assert path(conn) == HEALTHY
    counts = check_sequences(received)
    assert counts[(1, "ticker", "BTC-USD")] >= 45 and counts[(1, "trades", "ETH-USD")] >= 45
    if randomly:
        assert max(reads) > 1 and sum(reads) / len(reads) < 100
    else:
        assert set(reads) == {1}
    assert sum(reads) == schedule.stats[0].delivered_bytes


async def test_partial_writes_reach_the_sim_whole(sim: SimExchange) -> None:
    received: list[tuple[int, Any]] = []
    schedule = Scripted([Step(AfterBytes(0), PartialWrites(max_bytes=3, delay=0.01))])
    with anyio.fail_after(BOUND):
        async with Connection(setup(received), dialer=wrap(sim.dialer(), schedule)) as conn:
            await conn.wait_for(State.LIVE)
            await anyio.sleep(2)
            assert sim.subscriptions == [frozenset({("ticker", "BTC-USD"), ("trades", "ETH-USD")})]
    assert path(conn) == HEALTHY
    assert schedule.stats[0].split_sends >= 3  # handshake and two subscribes, in 3-byte pieces
    assert [orjson.loads(text)["op"] for _, text in sim.log[0]] == ["subscribe", "subscribe"]
    check_sequences(received)


async def test_a_send_cut_mid_frame_ends_the_session(sim: SimExchange) -> None:
    """Partial writes make the stream non-atomic: a send cancelled halfway must not be spliced into."""
    received: list[tuple[int, Any]] = []
    schedule = Scripted([Step(At(1.0), PartialWrites(max_bytes=1, delay=0.1))])
    with anyio.fail_after(BOUND):
        async with Connection(setup(received), dialer=wrap(sim.dialer(), schedule)) as conn:
            await conn.wait_for(State.LIVE)
            await anyio.sleep(2)
            with anyio.move_on_after(0.55):
                await conn.send({"op": "ping", "id": 99})  # ~25 bytes at 10/s: cut after ~6
            await conn.wait_for(State.RECONNECTING)
            await conn.wait_for(State.LIVE)
    assert path(conn) == HEALTHY + RECONNECT
    lost = next(e for e in conn.history if e.trigger == "lost")
    assert lost.cause == TransportError("a send was interrupted mid-frame")


async def test_capabilities_follow_the_schedule() -> None:
    a, b = memory_pair()
    plain = FaultyStream(a, Scripted([Step(At(1.0), Reset())]), clock=anyio.current_time)
    splitting = FaultyStream(b, Scripted([Step(At(1.0), PartialWrites())]), clock=anyio.current_time)
    assert capabilities_of(plain).atomic_send and capabilities_of(plain).instant_close
    assert not capabilities_of(splitting).atomic_send and capabilities_of(splitting).instant_close
    await plain.aclose()
    await splitting.aclose()


async def run_seeded(seed: int) -> tuple[list[Any], list[str], list[tuple[int, Any]]]:
    received: list[tuple[int, Any]] = []
    schedule = Seeded(random.Random(seed), [Reset(), HalfOpen(), Stall(12.0), Split(random=True)], mean_gap=30.0, per_dial=2)
    async with SimExchange(rate=5.0, seed=seed) as sim:
        async with Connection(setup(received), dialer=wrap(sim.dialer(), schedule)) as conn:
            await anyio.sleep(300)
    fired = [(f.dial, f.at - 0.0, f.fault) for f in schedule.fired]
    return fired, [str(e) for e in conn.history], received


async def test_a_seeded_schedule_replays_exactly() -> None:
    with anyio.fail_after(BOUND * 4):
        start_1 = anyio.current_time()
        first = await run_seeded(11)
        start_2 = anyio.current_time()
        second = await run_seeded(11)
    assert first[0] and len({type(f) for _, _, f in first[0]}) >= 2
    # same faults on the same dials at the same offsets from the start; same transitions and messages
    assert [(d, f) for d, _, f in second[0]] == [(d, f) for d, _, f in first[0]]
    offsets_1 = [round(at - start_1, 6) for _, at, _ in first[0]]
    assert [round(at - start_2, 6) for _, at, _ in second[0]] == offsets_1
    assert len(first[1]) == len(second[1]) and len(first[2]) == len(second[2])
    check_sequences(first[2])


async def test_bad_schedules_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="Stall.duration must be > 0"):
        Stall(0)
    with pytest.raises(TypeError, match="Step.fault must be a fault"):
        Step(At(1.0), "reset")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty menu"):
        Seeded(random.Random(1), [], mean_gap=1.0)
    with pytest.raises(TypeError, match="needs a Schedule"):
        wrap(lambda url: None, [Step(At(1.0), Reset())])  # type: ignore[arg-type, return-value]
    assert parse_url("ws://x/").host == "x"
