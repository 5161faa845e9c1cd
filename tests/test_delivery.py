"""Streams on their own (engine.delivery): routing, each policy's accounting, alerts, backpressure waits."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.delivery import Outlet, Policy, Stream, Streams
from engine.errors import ConfigError
from engine.events import Backlog, Error, ErrorKind, Fill, Kline, OrderUpdate, Ticker, Trade

BOUND = 60.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def trade(n: int, symbol: str = "BTC-USD") -> Trade:
    return Trade(symbol=symbol, price="1.5", size="2", seq=n, connection="c", received=float(n))


def ticker(n: int, symbol: str = "BTC-USD") -> Ticker:
    return Ticker(symbol=symbol, bid=f"{n}.0", ask=f"{n}.5", seq=n, connection="c", received=float(n))


def data(batch: list[Any]) -> list[Any]:
    return [e for e in batch if not isinstance(e, (Error, Backlog))]


def drain(stream: Stream) -> list[Any]:
    """Everything queued, synchronously (the consumer side without awaiting)."""
    return stream.take_nowait()


# -- routing ------------------------------------------------------------------------------


def test_routes_by_type_and_symbol_fan_out_and_counts_unrouted() -> None:
    hub = Streams(Clock())
    everything = hub.stream()
    tickers = hub.stream(Ticker)
    btc_trades = hub.stream(Trade, symbols=["BTC-USD"])
    eth = hub.stream(symbols="ETH-USD")  # a string is one symbol
    hub.publish(trade(1))
    hub.publish(trade(2, "ETH-USD"))
    hub.publish(ticker(3))
    hub.publish(Kline(symbol="SOL-USD", interval="1m", start=0, open="1", high="1", low="1", close="1", volume="0"))
    assert [e.seq for e in drain(everything)] == [1, 2, 3, None]
    assert [e.seq for e in drain(tickers)] == [3]
    assert [e.seq for e in drain(btc_trades)] == [1]
    assert [e.seq for e in drain(eth)] == [2]
    assert hub.unrouted == 0
    for stream in (everything, eth):
        stream.close()
    hub.publish(trade(4, "ETH-USD"))  # nobody wants it now: counted
    assert hub.unrouted == 1
    assert drain(btc_trades) == [] and drain(tickers) == []


def test_muted_trades_and_fills_are_counted_as_filtered_never_delivered() -> None:
    hub = Streams(Clock(), trades=False, fills=False)
    stream = hub.stream()
    hub.publish(trade(1))
    hub.publish(Fill(symbol="BTC-USD", order_id="1", price="1", size="1", side="buy"))
    hub.publish(OrderUpdate(symbol="BTC-USD", order_id="1", status="new"))
    hub.publish(ticker(2))
    assert [type(e) for e in drain(stream)] == [Ticker]
    assert hub.filtered == 3 and hub.unrouted == 0
    assert stream.stats().produced == 1


def test_engine_events_reach_every_stream_in_order_outside_the_capacity() -> None:
    hub = Streams(Clock())
    btc = hub.stream(Trade, symbols=["BTC-USD"], policy="drop_oldest", capacity=2, alert_at=10)
    other = hub.stream(Ticker)
    hub.publish(trade(1))
    hub.publish(Error(kind=ErrorKind.DECODE, message="bad", raw="{"))  # no symbol: every stream
    hub.publish(Error(kind=ErrorKind.RESYNC, message="gap", symbol="ETH-USD"))  # only streams about ETH (or all symbols)
    hub.publish(trade(2))
    hub.publish(trade(3))  # full: drops trade 1, never the error
    batch = drain(btc)
    assert [type(e) for e in batch][:3] == [Error, Trade, Trade]
    assert [e.seq for e in data(batch)] == [2, 3]
    assert isinstance(batch[-1], Backlog) and batch[-1].dropped == 1  # the loss, told at the end
    assert [(type(e), e.kind) for e in drain(other)] == [(Error, ErrorKind.DECODE), (Error, ErrorKind.RESYNC)]


# -- policies -------------------------------------------------------------------------------


def test_drop_oldest_keeps_the_newest() -> None:
    stream = Streams(Clock()).stream(policy=Policy.DROP_OLDEST, capacity=3, alert_at=10)
    for n in range(1, 11):
        assert not stream.offer(trade(n))
    assert [e.seq for e in data(drain(stream))] == [8, 9, 10]
    stats = stream.stats()
    assert (stats.produced, stats.delivered, stats.dropped, stats.queued) == (10, 3, 7, 0)


def test_conflate_replaces_in_place_and_falls_back_to_dropping_the_oldest() -> None:
    stream = Streams(Clock()).stream(policy="conflate", capacity=3, alert_at=10)
    stream.offer(ticker(1, "BTC-USD"))
    stream.offer(ticker(2, "ETH-USD"))
    stream.offer(ticker(3, "BTC-USD"))  # replaces 1, keeps BTC's place (first)
    stream.offer(trade(4))  # a trade is never conflated
    stream.offer(trade(5))  # full of distinct keys: the oldest (BTC ticker 3) goes
    assert [e.seq for e in data(drain(stream))] == [2, 4, 5]
    stats = stream.stats()
    assert (stats.produced, stats.delivered, stats.conflated, stats.dropped) == (5, 3, 1, 1)


def test_conflate_with_a_custom_key() -> None:
    stream = Streams(Clock()).stream(policy="conflate", key=lambda e: e.symbol)
    for n in range(6):
        stream.offer(trade(n, "BTC-USD" if n % 2 else "ETH-USD"))
    assert [e.seq for e in drain(stream)] == [4, 5]
    assert stream.conflated == 4


def test_fail_queues_an_overflow_error_then_ends_and_counts_the_rest() -> None:
    stream = Streams(Clock()).stream(policy="fail", capacity=2, alert_at=5)
    for n in range(5):
        stream.offer(trade(n))
    assert stream.ended
    batch = drain(stream)
    assert [e.seq for e in data(batch)] == [0, 1]
    assert isinstance(batch[-1], Error) and batch[-1].kind is ErrorKind.OVERFLOW
    stats = stream.stats()
    assert (stats.produced, stats.delivered, stats.dropped) == (5, 2, 3)


def test_block_never_drops_and_reports_full() -> None:
    stream = Streams(Clock()).stream(policy="block", capacity=2, alert_at=10)
    assert [stream.offer(trade(n)) for n in range(4)] == [False, True, True, True]
    assert [e.seq for e in drain(stream)] == [0, 1, 2, 3]
    assert not stream.full and stream.dropped == 0


def test_backlog_alert_fires_once_per_crossing() -> None:
    clock = Clock()
    stream = Streams(clock).stream(policy="block", capacity=10, alert_at=0.5)
    for n in range(9):
        clock.now = n
        stream.offer(trade(n))
    alerts = [e for e in drain(stream) if isinstance(e, Backlog)]
    assert len(alerts) == 1
    assert (alerts[0].queued, alerts[0].capacity, alerts[0].lag) == (5, 10, 4.0)
    for n in range(5):  # re-armed once drained: the next crossing alerts again
        stream.offer(trade(n))
    assert len([e for e in drain(stream) if isinstance(e, Backlog)]) == 1


def test_close_counts_what_it_discards_and_takes_no_more() -> None:
    hub = Streams(Clock())
    stream = hub.stream(capacity=5)
    for n in range(3):
        hub.publish(trade(n))
    stream.close()
    hub.publish(trade(9))
    stats = stream.stats()
    assert (stats.produced, stats.delivered, stats.dropped, stats.queued, stats.ended) == (3, 0, 3, 0, True)
    assert hub.unrouted == 1 and hub.streams == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"policy": "newest"}, "policy must be one of"),
        ({"capacity": 0}, "capacity must be a positive integer"),
        ({"capacity": True}, "capacity must be a positive integer"),
        ({"max_batch": 0}, "max_batch"),
        ({"key": 3}, "key must be a callable"),
        ({"alert_at": -1}, "alert_at"),
    ],
)
def test_bad_stream_options_are_config_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Streams(Clock()).stream(**options)


def test_a_type_that_is_not_a_class_is_refused() -> None:
    with pytest.raises(ConfigError, match="event classes"):
        Streams(Clock()).stream("trades")  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(list(Policy)),
    capacity=st.integers(1, 6),
    ops=st.lists(st.one_of(st.tuples(st.just("put"), st.integers(0, 3)), st.just(("take", 0))), max_size=60),
)
def test_nothing_is_lost_uncounted(policy: Policy, capacity: int, ops: list[tuple[str, int]]) -> None:
    """Whatever the policy and the interleaving: produced == delivered + dropped + conflated + queued,
    delivered data keeps its order, and ``block`` never drops."""
    hub = Streams(Clock())
    stream = hub.stream(policy=policy, capacity=capacity, max_batch=4 if capacity % 2 else None)
    delivered: list[Any] = []
    n = 0
    for op, symbol in ops:
        if op == "put":
            n += 1
            event = ticker(n, f"S{symbol}") if symbol % 2 else trade(n, f"S{symbol}")
            hub.publish(event)
        else:
            delivered += data(drain(stream))
    while stream.queued:
        delivered += data(drain(stream))
    stats = stream.stats()
    assert stats.produced == n
    assert stats.delivered == len(delivered)
    assert stats.produced == stats.delivered + stats.dropped + stats.conflated + stats.queued
    assert stats.queued == 0
    seqs = [e.seq for e in delivered]
    if policy is not Policy.CONFLATE:  # (conflation keeps a key's place with a newer event)
        assert seqs == sorted(seqs)
    if policy is Policy.BLOCK:
        assert seqs == list(range(1, n + 1))


# -- the async side -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_consumer_waits_for_a_batch_and_a_blocked_reader_for_space() -> None:
    hub = Streams()
    stream = hub.stream(policy="block", capacity=3)
    outlet = Outlet(hub)
    got: list[list[Any]] = []
    waited: list[float] = []

    async def produce() -> None:
        for n in range(10):
            outlet.emit(trade(n))
            if outlet.full:  # what the reader does after each read
                started = anyio.current_time()
                await outlet.relieve()
                waited.append(anyio.current_time() - started)

    async def consume() -> None:
        async for batch in stream:
            got.append(batch)
            await anyio.sleep(1.0)

    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await produce()
            await anyio.sleep(5)
            hub.end()
    assert [e.seq for b in got for e in data(b)] == list(range(10))
    assert max(len(data(b)) for b in got) == 3
    assert len(waited) >= 2 and sum(waited) >= 1.0  # (the first wait ends as soon as the consumer starts)
    stats = stream.stats()
    assert stats.blocked == len(waited) and stats.blocked_for == pytest.approx(sum(waited))
    assert stats.max_lag > 0


@pytest.mark.anyio
async def test_closing_a_stream_releases_a_blocked_reader() -> None:
    hub = Streams()
    stream = hub.stream(policy="block", capacity=1)
    outlet = Outlet(hub)
    outlet.emit(trade(1))
    assert outlet.full
    with anyio.fail_after(BOUND):
        async with anyio.create_task_group() as tg:
            tg.start_soon(outlet.relieve)
            await anyio.sleep(3)
            stream.close()
    assert outlet.full == () and stream.stats().dropped == 1
    with pytest.raises(anyio.EndOfStream):
        await stream.receive()


@pytest.mark.anyio
async def test_max_batch_bounds_a_batch() -> None:
    hub = Streams()
    async with hub.stream(max_batch=4) as stream:
        for n in range(10):
            hub.publish(trade(n))
        sizes = [len(await stream.receive()) for _ in range(3)]
    assert sizes == [4, 4, 2]
    assert stream.ended and stream.stats().delivered == 10


def test_book_gap_and_resync_events_are_engine_events() -> None:
    from engine.events import BookResynced, Gap

    hub = Streams(Clock())
    btc = hub.stream(Trade, symbols=["BTC-USD"], policy="drop_oldest", capacity=1, alert_at=10)
    eth = hub.stream(Trade, symbols=["ETH-USD"])
    hub.publish(trade(1))
    hub.publish(Gap(symbol="BTC-USD", expected=5, got=7, received=1.0))
    hub.publish(trade(2))  # full: trade 1 goes, the gap stays
    hub.publish(BookResynced(symbol="BTC-USD", reason="sequence", seq=9, received=2.0))
    assert [type(e) for e in data(drain(btc))] == [Gap, Trade, BookResynced]
    assert drain(eth) == []  # about another symbol


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(list(Policy)),
    capacity=st.integers(1, 8),
    symbols=st.lists(st.integers(0, 3), max_size=40),
    cuts=st.lists(st.integers(1, 6), max_size=20),
)
def test_publish_many_is_publish_one_by_one(policy: Policy, capacity: int, symbols: list[int], cuts: list[int]) -> None:
    """A list of events through publish_many (in chunks) leaves every stream exactly as publishing
    each in turn would: the same queues, counts, alerts and full streams."""

    def events() -> list[Any]:
        return [ticker(n, f"S{s}") if s % 2 else trade(n, f"S{s}") for n, s in enumerate(symbols, 1)]

    def streams(hub: Streams) -> list[Stream]:
        return [
            hub.stream(policy=policy, capacity=capacity, alert_at=max(1, capacity - 1)),
            hub.stream(Trade, policy=policy, capacity=capacity + 1),
            hub.stream(Ticker, symbols=["S1"], policy=Policy.DROP_OLDEST, capacity=2),
        ]

    one, many = Streams(Clock()), Streams(Clock())
    ours, theirs = streams(one), streams(many)
    full_one: list[int] = []
    for event in events():
        stream = one.publish(event)
        if stream is not None and ours.index(stream) not in full_one:
            full_one.append(ours.index(stream))
    full_many: list[int] = []
    pending, start = events(), 0
    for cut in [*cuts, len(symbols)]:
        for stream in many.publish_many(pending[start : start + cut]):
            if theirs.index(stream) not in full_many:
                full_many.append(theirs.index(stream))
        start += cut
    assert sorted(full_one) == sorted(full_many)
    assert one.unrouted == many.unrouted
    for a, b in zip(ours, theirs):
        assert a.stats() == b.stats()
        assert [repr(e) for e in drain(a)] == [repr(e) for e in drain(b)]
