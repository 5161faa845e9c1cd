"""engine.books against the simulated exchange's ``book`` channel, over the memory transport.

The client is the test's own small WebSocket client (tests/test_sim.py); its
loop decodes each book message into the engine's :class:`BookUpdate` / :class:`BookSnapshot`
and hands it to :class:`Books` (OKX-style: ``prev_seq`` links, signed CRC32 of
25 levels); REST snapshots come from ``SimExchange.book_snapshot`` after a
virtual round trip. One BTC delta is lost and a later one corrupted; ETH must
stream on without a pause, and each book must equal the simulator's at full
depth whenever both are at the same ``seq``.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from engine.books import BookConfig, Books, BookState
from engine.books.checksum import okx_checksum
from engine.books.sequence import Linked
from engine.events import BookResynced, BookSnapshot, BookUpdate, Error, Gap
from tests.test_sim import BOUND, connect, running
from tests.test_sim_feed import subscribe


def _snapshot(message: dict[str, Any], now: float) -> BookSnapshot:
    return BookSnapshot(symbol=message["symbol"], bids=message["bids"], asks=message["asks"], seq=message["seq"],
                        ts=message["ts"], received=now, checksum=message["checksum"])  # fmt: skip


def _delta(message: dict[str, Any], now: float) -> BookUpdate:
    return BookUpdate(symbol=message["symbol"], bids=message["bids"], asks=message["asks"], seq=message["seq"],
                      prev_seq=message["prev_seq"], ts=message["ts"], received=now,
                      checksum=message["checksum"])  # fmt: skip


@pytest.mark.anyio
async def test_against_the_simulator_btc_resyncs_alone_and_every_book_equals_the_exchanges() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=20.0, book_depth=120) as sim:

            async def fetch(symbol: str) -> BookSnapshot:
                await anyio.sleep(0.05)  # a REST round trip; the stream goes on meanwhile
                return _snapshot(sim.book_snapshot(symbol), anyio.current_time())

            books = Books(BookConfig(sequence=Linked(), checksum=okx_checksum, fetch_snapshot=fetch, buffer_limit=20))
            events: list[Gap | Error | BookResynced] = []

            async def resync(symbol: str) -> None:
                events.extend((await books.fetch(symbol)).events)

            client = await connect(sim)
            await subscribe(client, "book", "BTC-USD", "ETH-USD")
            compared = {"BTC-USD": 0, "ETH-USD": 0}
            compared_after_resync = 0
            eth_while_btc_resyncs = 0
            btc_updates = 0
            async with anyio.create_task_group() as tg:
                for _ in range(400):  # 20 messages/s per symbol: ~10 virtual seconds
                    message = await client.recv_json()
                    now = anyio.current_time()
                    symbol = message["symbol"]
                    if message["type"] == "snapshot":
                        result = books.snapshot(_snapshot(message, now))
                    else:
                        if symbol == "BTC-USD":
                            btc_updates += 1
                            if btc_updates == 40:
                                continue  # lost on the way: the next BTC delta is a gap
                            if btc_updates == 120:  # corrupted on the way: the checksum disagrees
                                message = {**message, "asks": [*message["asks"], [message["asks"][0][0], "9.9999"]]}
                        result = books.apply(_delta(message, now))
                    events.extend(result.events)
                    if result.need_snapshot:
                        assert symbol == "BTC-USD"
                        tg.start_soon(resync, symbol)
                    if books.state("BTC-USD") is not BookState.SYNCED and symbol == "ETH-USD":
                        assert books.state("ETH-USD") is BookState.SYNCED and result.events == ()
                        eth_while_btc_resyncs += 1
                    if books.state(symbol) is BookState.SYNCED:
                        truth = sim.book_snapshot(symbol)
                        view = books(symbol)
                        if truth["seq"] == view.seq:  # the exchange is not already ahead of us
                            assert [[lv[2], lv[3]] for lv in view.bids] == truth["bids"]
                            assert [[lv[2], lv[3]] for lv in view.asks] == truth["asks"]
                            compared[symbol] += 1
                            if symbol == "BTC-USD" and books.stats(symbol).resyncs:
                                compared_after_resync += 1
    assert [(type(e).__name__, e.symbol, getattr(e, "reason", "")) for e in events] == [
        ("Gap", "BTC-USD", ""),
        ("BookResynced", "BTC-USD", "sequence"),
        ("Error", "BTC-USD", ""),  # kind RESYNC: the checksum mismatch
        ("BookResynced", "BTC-USD", "checksum"),
    ]
    assert "checksum mismatch" in events[2].message  # type: ignore[union-attr]
    assert eth_while_btc_resyncs >= 1 and compared_after_resync >= 50
    assert min(compared.values()) >= 100
    eth, btc = books.stats("ETH-USD"), books.stats("BTC-USD")
    assert (eth.gaps, eth.checksum_failures, eth.snapshots, eth.fetches) == (0, 0, 1, 0)
    assert (btc.gaps, btc.checksum_failures, btc.resyncs, btc.fetches) == (1, 1, 2, 2)
