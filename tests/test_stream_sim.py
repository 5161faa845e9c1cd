"""Typed events through bounded streams, against the simulated exchange (memory transport, virtual time).

A slow consumer under each policy: ``block`` loses nothing and the connection
stays live even though the consumer pauses longer than ``traffic_timeout``;
``drop_oldest`` and ``conflate`` count exactly what they did not deliver;
``fail`` ends the stream with an overflow error; a malformed message becomes
an error event with the raw text and the stream goes on; trades and fills
switched off by the setup are never delivered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import pytest

from engine import AuthenticationFailed, Connection, ConnectionSetup, Manager, State, Subscription, WebsocketSetup
from engine.adapters import sim as sim_adapter
from engine.delivery import Stream
from engine.events import Error, ErrorKind, Fill, SubscriptionChanged, Ticker, Trade
from engine.sim import SimExchange
from transports.base import URL

pytestmark = pytest.mark.anyio

BOUND = 600.0  # virtual seconds: every test ends well before this
RATE = 10.0  # data messages per second per (channel, symbol)
PAUSE = 5.0  # the slow consumer's pause per batch: longer than traffic_timeout + pong_timeout
SLOW_FOR = 30.0  # virtual seconds of slow consumption, then it catches up
TRADES = [Subscription("trades", "BTC-USD"), Subscription("trades", "ETH-USD")]
TICKERS = [Subscription("ticker", "BTC-USD"), Subscription("ticker", "ETH-USD")]
DATA = (Trade, Ticker)


def _setup(subs: list[Subscription], **extra: Any) -> ConnectionSetup:
    options: dict[str, Any] = {"traffic_timeout": 1.0, "pong_timeout": 1.0, "batch_handler": sim_adapter.batch_handler}
    options.update(extra)
    return ConnectionSetup(
        "ws://sim.test/ws", subscriber=sim_adapter.subscribe, generate_subscriptions=lambda: subs, **options
    )


class Consumer:
    """Reads a stream in batches; slow (``PAUSE`` per batch) until told to catch up."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.events: list[Any] = []
        self.batches = 0
        self.slow = True

    @property
    def data(self) -> list[Any]:
        return [e for e in self.events if isinstance(e, DATA)]

    async def run(self) -> None:
        async for batch in self.stream:
            assert batch, "a batch is never empty"
            self.batches += 1
            self.events.extend(batch)
            if self.slow:
                await anyio.sleep(PAUSE)


@asynccontextmanager
async def slow_run(
    subs: list[Subscription], open_stream: Callable[[Connection], Stream], **extra: Any
) -> AsyncIterator[tuple[SimExchange, Connection, Consumer]]:
    """A connection to the sim with a slow consumer for ``SLOW_FOR`` s; then the consumer
    catches up, the subscriptions end (so the sim's count is final) and the connection
    closes, which ends the stream once it is read."""
    with anyio.fail_after(BOUND):
        async with SimExchange(rate=RATE, seed=3) as sim:
            async with Connection(_setup(subs, **extra), dialer=sim.dialer()) as conn:
                consumer = Consumer(open_stream(conn))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consumer.run)
                    await conn.wait_for(State.LIVE)
                    await anyio.sleep(SLOW_FOR)
                    consumer.slow = False
                    await sim_adapter.unsubscribe(conn, subs)
                    await anyio.sleep(2.0)  # (a frame the sim had in hand when the unsubscribe came)
                    await conn.close()
                yield sim, conn, consumer


def by_key(events: list[Any]) -> dict[tuple[type, str], list[int]]:
    seqs: dict[tuple[type, str], list[int]] = {}
    for event in events:
        seqs.setdefault((type(event), event.symbol), []).append(event.seq)
    return seqs


def triggers(conn: Connection) -> list[str]:
    return [change.trigger for change in conn.history]


async def test_block_loses_nothing_and_the_connection_stays_live() -> None:
    async with slow_run(TRADES + TICKERS, lambda conn: conn.stream(policy="block", capacity=20)) as (sim, conn, consumer):
        stats = consumer.stream.stats()
        sent = sim.stats().data_messages
        assert sent > 4 * RATE * SLOW_FOR * 0.9  # the feed ran the whole time
        # every message the sim sent was consumed, once, in order (seq 1..n per channel and symbol)
        assert len(consumer.data) == sent
        for key, seqs in by_key(consumer.data).items():
            assert seqs == list(range(1, len(seqs) + 1)), key
        assert stats.produced == stats.delivered == sent
        assert stats.dropped == stats.conflated == stats.queued == 0
        # backpressure reached the socket: the reader waited, longer than the silence deadline
        assert stats.blocked >= SLOW_FOR / PAUSE - 1
        assert stats.blocked_for > SLOW_FOR * 0.8
        # a paused reader is not a silent peer: never stale, never lost, one session
        assert triggers(conn) == ["connect", "opened", "subscribed", "close", "closed"]
        assert conn.sessions == 1
        assert not [e for e in consumer.events if isinstance(e, Error)]


async def test_block_overshoots_by_at_most_one_read() -> None:
    sizes: list[int] = []

    class Measuring(Consumer):
        async def run(self) -> None:
            async for batch in self.stream:
                sizes.append(sum(1 for e in batch if isinstance(e, DATA)))
                self.events.extend(batch)
                if self.slow:
                    await anyio.sleep(PAUSE)

    with anyio.fail_after(BOUND):
        async with SimExchange(rate=RATE, seed=3) as sim:
            async with Connection(_setup(TRADES), dialer=sim.dialer()) as conn:
                consumer = Measuring(conn.stream(policy="block", capacity=7))
                async with anyio.create_task_group() as tg:
                    tg.start_soon(consumer.run)
                    await anyio.sleep(SLOW_FOR)
                    tg.cancel_scope.cancel()
    # The sim writes what is due at one instant in one chunk (here: at most one message
    # per subscription), and the reader stops after the read that filled the stream.
    assert max(sizes) <= 7 + len(TRADES)
    assert sizes.count(max(sizes)) > 1  # (it did fill up, again and again)


async def test_drop_oldest_counts_exactly_what_it_dropped() -> None:
    async with slow_run(TRADES + TICKERS, lambda conn: conn.stream(policy="drop_oldest", capacity=15)) as (
        sim,
        conn,
        consumer,
    ):
        stats = consumer.stream.stats()
        sent = sim.stats().data_messages
        assert stats.produced == sent
        assert stats.dropped > 0
        assert stats.delivered == len(consumer.data)
        assert stats.delivered + stats.dropped == stats.produced
        assert stats.queued == stats.conflated == 0
        # what was kept is the newest, still in order per channel and symbol
        for key, seqs in by_key(consumer.data).items():
            assert seqs == sorted(seqs), key
        # the loss was told in the stream, with the counts
        from engine.events import Backlog

        backlogs = [e for e in consumer.events if isinstance(e, Backlog)]
        assert backlogs and backlogs[-1].dropped == stats.dropped
        assert "lost" not in triggers(conn) and "silence" not in triggers(conn)


async def test_conflate_keeps_the_latest_ticker_per_symbol_and_counts_the_rest() -> None:
    async with slow_run(TICKERS, lambda conn: conn.stream(Ticker, policy="conflate", capacity=10)) as (
        sim,
        conn,
        consumer,
    ):
        stats = consumer.stream.stats()
        sent = sim.stats().data_messages
        assert stats.produced == sent
        assert stats.conflated > 0 and stats.dropped == 0
        assert stats.delivered == len(consumer.data)
        assert stats.delivered + stats.conflated == stats.produced
        # at most one ticker per symbol in a batch while slow, and the last one of each symbol arrives
        seqs = by_key(consumer.data)
        assert {symbol for (_, symbol) in seqs} == {"BTC-USD", "ETH-USD"}
        for values in seqs.values():
            assert values == sorted(values)
        # seq runs 1..n without gaps per symbol, so the last ones delivered sum to all that was sent
        # only if each symbol's latest ticker was delivered
        assert sum(values[-1] for values in seqs.values()) == sent


async def test_fail_surfaces_an_overflow_error_and_the_stream_ends() -> None:
    with anyio.fail_after(BOUND):
        async with SimExchange(rate=RATE, seed=3) as sim:
            async with Connection(_setup(TRADES), dialer=sim.dialer()) as conn:
                stream = conn.stream(policy="fail", capacity=5)
                events: list[Any] = []
                await conn.wait_for(State.LIVE)
                async for batch in stream:
                    events.extend(batch)
                    await anyio.sleep(PAUSE)  # too slow: 5 fit, the 6th fails the stream
                # the loop ended by itself, the last event being the overflow error
                assert isinstance(events[-1], Error) and events[-1].kind is ErrorKind.OVERFLOW
                assert stream.ended
                stats = stream.stats()
                assert stats.delivered == len([e for e in events if isinstance(e, DATA)])
                assert stats.delivered + stats.dropped == stats.produced
                # the connection is not the stream: it stays live
                assert conn.state is State.LIVE
                assert "lost" not in triggers(conn)


class Injecting(anyio.abc.ByteStream):
    """Hands ``frame`` to the reader as its ``at``-th read, between two of the sim's chunks."""

    def __init__(self, inner: anyio.abc.ByteStream, at: int, frame: bytes) -> None:
        self.inner = inner
        self.at = at
        self.frame = frame
        self.reads = 0

    async def receive(self, max_bytes: int = 65536) -> bytes:
        self.reads += 1
        if self.reads == self.at:
            return self.frame
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def injecting(dial: Callable[[URL], Awaitable[anyio.abc.ByteStream]], at: int, text: bytes) -> Any:
    assert len(text) < 126
    frame = bytes([0x81, len(text)]) + text  # a server's text frame (unmasked, final)

    async def dialer(url: URL) -> anyio.abc.ByteStream:
        return Injecting(await dial(url), at, frame)

    return dialer


async def test_a_malformed_message_becomes_an_error_event_and_the_stream_goes_on() -> None:
    garbage = b'{"channel":"trades","symbol":"BTC-USD","price":'
    with anyio.fail_after(BOUND):
        async with SimExchange(rate=RATE, seed=3) as sim:
            async with Connection(_setup(TRADES), dialer=injecting(sim.dialer(), 20, garbage)) as conn:
                stream = conn.stream()
                events: list[Any] = []
                await conn.wait_for(State.LIVE)
                with anyio.move_on_after(10.0):
                    async for batch in stream:
                        events.extend(batch)
                errors = [e for e in events if isinstance(e, Error)]
                assert len(errors) == 1
                assert errors[0].kind is ErrorKind.DECODE and errors[0].raw == garbage.decode()
                assert errors[0].connection == conn.id
                where = events.index(errors[0])
                after = [e for e in events[where:] if isinstance(e, Trade)]
                assert len(after) > RATE * 5  # the stream went on
                for key, seqs in by_key([e for e in events if isinstance(e, Trade)]).items():
                    assert seqs == list(range(1, len(seqs) + 1)), key  # and nothing else was lost
                assert conn.state is State.LIVE


def _manager(sim: SimExchange, *, trades: bool, fills: bool) -> Manager:
    def handle(conn: Any, messages: list[str | bytes]) -> None:
        # a stand-in private feed: every trade also reported as one of our fills
        sim_adapter.batch_handler(conn, messages)
        for message in messages:
            event = sim_adapter.decode(message, conn.id, conn.now())
            if isinstance(event, Trade):
                conn.emit(Fill(symbol=event.symbol, order_id="o1", price=event.price, size=event.size,
                               side="buy", seq=event.seq, connection=conn.id, received=event.received))  # fmt: skip

    setup = WebsocketSetup(
        exchange="sim",
        trade_feed=trades,
        fills_feed=fills,
        batch_handler=handle,
        subscriber=sim_adapter.subscribe,
        generate_subscriptions=lambda: TRADES + TICKERS[:1],
    )
    manager = Manager(setup, dialer=sim.dialer())
    manager.add_connection(ConnectionSetup("ws://sim.test/ws"))
    return manager


@pytest.mark.parametrize(("trades", "fills"), [(False, False), (True, False), (False, True), (True, True)])
async def test_trades_and_fills_switched_off_are_never_delivered(trades: bool, fills: bool) -> None:
    with anyio.fail_after(BOUND):
        async with SimExchange(rate=RATE, seed=3) as sim:
            manager = _manager(sim, trades=trades, fills=fills)
            stream = manager.stream()
            events: list[Any] = []
            async with manager:
                with anyio.move_on_after(10.0):
                    async for batch in stream:
                        events.extend(batch)
            async for batch in stream:  # (ended by the shutdown: what was queued)
                events.extend(batch)
            sent_trades = sum(1 for e in events if isinstance(e, Trade)) if trades else None
            kinds = {type(e) for e in events}
            assert Ticker in kinds
            assert (Trade in kinds) is trades
            assert (Fill in kinds) is fills
            hub = stream.hub
            # muted events are counted as filtered, not lost and not dropped
            muted_per_trade = (0 if trades else 1) + (0 if fills else 1)
            if muted_per_trade:
                assert hub.filtered > 0
            if sent_trades is not None and fills:
                assert sum(1 for e in events if isinstance(e, Fill)) == sent_trades
            assert stream.stats().dropped == 0
            # the subscriptions' changes came in the same stream
            changes = [e for e in events if isinstance(e, SubscriptionChanged)]
            assert {c.dest for c in changes} >= {"subscribing", "subscribed"}


async def test_a_close_code_reaches_the_stream_which_goes_on_after_the_reconnect_and_ends_with_the_connection() -> None:
    with anyio.fail_after(BOUND):
        async with SimExchange(rate=RATE, seed=3) as sim:
            async with Connection(_setup(TRADES[:1]), dialer=sim.dialer()) as conn:
                stream = conn.stream()
                events: list[Any] = []

                async def consume() -> None:
                    async for batch in stream:
                        events.extend(batch)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    await conn.wait_for(State.LIVE)
                    await anyio.sleep(3.0)
                    await sim.close_all(4001, "maintenance")
                    await conn.wait_for(State.RECONNECTING)
                    await conn.wait_for(State.LIVE)
                    await anyio.sleep(3.0)
                    await conn.close()
                    # (the consumer's loop ends by itself: the connection stopped)
    errors = [e for e in events if isinstance(e, Error)]
    assert [(e.kind, e.code) for e in errors] == [(ErrorKind.CLOSED, 4001)]
    assert "maintenance" in errors[0].message and errors[0].connection == conn.id
    where = events.index(errors[0])
    assert any(isinstance(e, Trade) for e in events[:where]) and any(isinstance(e, Trade) for e in events[where:])
    assert stream.ended


async def test_a_rejected_login_is_an_auth_error_then_the_stream_ends() -> None:
    async def bad_login(conn: Any) -> None:
        # what a connector does when the exchange refuses the login
        raise AuthenticationFailed("login rejected: invalid key")

    with anyio.fail_after(BOUND):
        async with SimExchange(rate=RATE, seed=3) as sim:
            setup = _setup(TRADES[:1], authenticated=True, connector=bad_login)
            async with Connection(setup, dialer=sim.dialer()) as conn:
                stream = conn.stream()
                events = [e async for batch in stream for e in batch]
    assert [e.kind for e in events] == [ErrorKind.AUTH, ErrorKind.GAVE_UP]
    assert "login rejected" in events[0].message
