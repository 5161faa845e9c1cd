"""Order books on a Manager's data path (issue 18): the simulator's book channel, decoded by the
reference adapter, kept exact by WebsocketSetup(orderbook=BookConfig(...)), one symbol resyncing alone."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio
import pytest

from engine import Backoff, ConfigError, ConnectionSetup
from engine.adapters import sim as adapter
from engine.books import BookConfig, BookState
from engine.books.checksum import okx_checksum
from engine.books.sequence import Linked
from engine.config import WebsocketSetup
from engine.events import Book, BookResynced, BookSnapshot, BookUpdate, Error, ErrorKind, Gap
from engine.manager import Manager
from engine.sim import SimExchange
from engine.subscriptions import Subscription
from machines.subscription import SubState

pytestmark = pytest.mark.anyio

SYMBOLS = ("BTC-USD", "ETH-USD")


def manager_for(sim: SimExchange, **config: Any) -> Manager:
    manager = Manager(
        WebsocketSetup(
            exchange="sim",
            traffic_timeout=10.0,
            orderbook=BookConfig(sequence=Linked(), checksum=okx_checksum, buffer_limit=50, **config),
        ),
        dialer=sim.dialer(),
    )
    manager.add_connection(
        ConnectionSetup(
            url="ws://sim.test/ws",
            batch_handler=adapter.batch_handler,
            subscriber=adapter.subscribe,
            unsubscriber=adapter.unsubscribe,
            backoff=Backoff(initial=1.0, maximum=1.0, jitter=False),
        ),
        name="spot",
    )
    return manager


async def exact(manager: Manager, sim: SimExchange, symbol: str) -> bool:
    """Compare once both sides are at the same update (a message may be on its way right now)."""
    for _ in range(100):
        if manager.book(symbol).seq == sim.book_snapshot(symbol)["seq"]:
            return same_book(manager, sim, symbol)
        await anyio.sleep(0.005)
    return False


def same_book(manager: Manager, sim: SimExchange, symbol: str) -> bool:
    """The kept book equals the exchange's at full depth, price and size as the exchange's text."""
    ours = manager.book(symbol)
    theirs = sim.book_snapshot(symbol)
    if ours.seq != theirs["seq"]:
        return False
    for side in ("bids", "asks"):
        kept = [(level[2], level[3]) for level in getattr(ours, side)]
        if kept != [tuple(level) for level in theirs[side]]:
            return False
        if [level[:2] for level in getattr(ours, side)] != [(Decimal(p), Decimal(q)) for p, q in kept]:
            return False
    return True


@pytest.mark.parametrize("snapshots", ["stream", "rest"])
async def test_a_gap_and_a_bad_checksum_resync_btc_alone_while_eth_streams_on(snapshots: str) -> None:
    async with SimExchange(rate=20.0, symbols=SYMBOLS, book_depth=60) as sim:

        async def fetch(symbol: str) -> BookSnapshot:
            await anyio.sleep(0.05)  # a REST round trip: the stream goes on meanwhile
            message = sim.book_snapshot(symbol)
            return adapter.decode(adapter_json(message), "rest", anyio.current_time())  # type: ignore[return-value]

        manager = manager_for(sim, **({"fetch_snapshot": fetch} if snapshots == "rest" else {}))
        events: list[Any] = []
        with anyio.fail_after(120):
            async with manager:
                stream = manager.stream(BookUpdate, Book)

                async def consume() -> None:
                    async for batch in stream:
                        events.extend(batch)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(consume)
                    await manager.subscribe([Subscription("book", s) for s in SYMBOLS])
                    await anyio.sleep(2)
                    assert [await exact(manager, sim, s) for s in SYMBOLS] == [True, True]
                    sim.skip_book("BTC-USD")  # a lost delta: a sequence gap
                    await anyio.sleep(3)
                    sim.corrupt_book("BTC-USD")  # a wrong checksum
                    await anyio.sleep(3)
                    # both books exact again, at full depth, and the connection never dropped
                    assert [await exact(manager, sim, s) for s in SYMBOLS] == [True, True]
                    assert sim.accepted == 1
                    assert all(i.state is SubState.SUBSCRIBED for i in manager.subscriptions())
                    tg.cancel_scope.cancel()
    gaps = [e for e in events if isinstance(e, Gap)]
    resyncs = [e for e in events if isinstance(e, Error) and e.kind is ErrorKind.RESYNC]
    healed = [e for e in events if isinstance(e, BookResynced)]
    assert [e.symbol for e in gaps] == ["BTC-USD"] and [e.symbol for e in resyncs] == ["BTC-USD"]
    assert [e.symbol for e in healed] == ["BTC-USD", "BTC-USD"]
    # ETH never paused: its updates kept coming at 20/s the whole time, in order
    eth = [e.seq for e in events if isinstance(e, BookUpdate) and e.symbol == "ETH-USD"]
    assert len(eth) >= 7 * 20 and eth == sorted(eth) and len(set(eth)) == len(eth)
    # only updates the kept book accepted reached the stream; each is followed by the maintained view
    btc_views = [e for e in events if isinstance(e, Book) and e.symbol == "BTC-USD"]
    assert btc_views and all(len(v.bids) > 0 for v in btc_views)


def adapter_json(message: dict[str, Any]) -> bytes:
    import orjson

    return orjson.dumps(message)


async def test_book_needs_a_book_config() -> None:
    async with SimExchange(rate=0.0) as sim:
        manager = Manager(WebsocketSetup(exchange="sim"), dialer=sim.dialer())
        with pytest.raises(ConfigError, match="orderbook"):
            manager.book("BTC-USD")
        with pytest.raises(ConfigError, match="BookConfig"):
            Manager(WebsocketSetup(exchange="sim", orderbook={"depth": 5}))
    assert BookState.SYNCED.value == "synced"
