"""The simulator's order books: snapshot on subscribe, sequenced deltas, OKX-style CRC32, REST snapshot."""

from __future__ import annotations

import random
import re
from decimal import Decimal
from typing import Any

import anyio
import orjson
import pytest

from engine.sim.book import SimBook, checksum, checksum_text
from engine.sim import SimExchange
from tests.test_sim import BOUND, Client, connect, dial, running
from tests.test_sim_feed import drain, subscribe, texts

PRICE = re.compile(r"^\d+\.\d{2}$")
SIZE = re.compile(r"^\d+\.\d{4}$")


class Mirror:
    """A client's copy of one book, built from the exchange's messages (raw strings kept)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        assert snapshot["type"] == "snapshot"
        self.bids = {p: s for p, s in snapshot["bids"]}
        self.asks = {p: s for p, s in snapshot["asks"]}
        self.seq: int = snapshot["seq"]
        assert self.checksum() == snapshot["checksum"]

    def apply(self, update: dict[str, Any]) -> None:
        assert update["type"] == "update" and update["prev_seq"] == self.seq, (update["prev_seq"], self.seq)
        for side, levels in ((self.bids, update["bids"]), (self.asks, update["asks"])):
            for price, size in levels:
                assert PRICE.match(price) and SIZE.match(size)
                if Decimal(size) == 0:
                    del side[price]  # a removed level was there
                else:
                    side[price] = size
        self.seq = update["seq"]

    def top(self) -> tuple[list[list[str]], list[list[str]]]:
        bids = sorted(self.bids.items(), key=lambda kv: Decimal(kv[0]), reverse=True)
        asks = sorted(self.asks.items(), key=lambda kv: Decimal(kv[0]))
        return [list(kv) for kv in bids], [list(kv) for kv in asks]

    def checksum(self) -> int:
        bids, asks = self.top()
        return checksum(bids, asks)


# -- pure pieces -------------------------------------------------------------------------------


def test_checksum_matches_okx_documented_examples() -> None:
    bids, asks = [["3366.1", "7"], ["3366", "6"]], [["3366.8", "9"], ["3368", "8"]]
    assert checksum_text(bids, asks) == "3366.1:7:3366.8:9:3366:6:3368:8"
    assert checksum(bids, asks) == -1881014294
    assert checksum([["3366.1", "7"]], [["3366.8", "9"], ["3368", "8"], ["3372", "8"]]) == 831078360


def test_checksum_covers_only_the_best_25_levels() -> None:
    bids = [[f"{100 - i}.00", "1.0000"] for i in range(30)]
    asks = [[f"{200 + i}.00", "1.0000"] for i in range(30)]
    changed = [*bids[:25], ["1.00", "9.0000"], *bids[26:]]
    assert checksum(bids, asks) == checksum(changed, asks)
    assert checksum(bids, asks) != checksum([["100.00", "1.0001"], *bids[1:]], asks)


def test_sim_book_deltas_rebuild_the_book_and_stay_near_the_top() -> None:
    book = SimBook(5_000_000, random.Random(7), depth=100)
    bids, asks = book.levels()
    mirror = Mirror({"type": "snapshot", "bids": bids, "asks": asks, "seq": 0, "checksum": book.checksum()})
    near_top = total = 0
    for seq in range(1, 1001):
        top_bid, top_ask = mirror.top()
        best10 = {p for p, _ in top_bid[:10]} | {p for p, _ in top_ask[:10]}
        delta_bids, delta_asks = book.step()
        assert delta_bids or delta_asks
        for price, _ in (*delta_bids, *delta_asks):
            total += 1
            near_top += price in best10 or (Decimal(top_bid[0][0]) < Decimal(price) < Decimal(top_ask[0][0]))
        mirror.apply({"type": "update", "bids": delta_bids, "asks": delta_asks, "prev_seq": seq - 1, "seq": seq})
        assert mirror.checksum() == book.checksum()
        best_bid, best_ask = book.best()
        assert 0 < best_bid < best_ask
        assert 50 <= len(mirror.bids) <= 120 and 50 <= len(mirror.asks) <= 120
    assert mirror.top() == book.levels()
    assert near_top / total > 0.6  # deltas concentrate near the top
    again = SimBook(5_000_000, random.Random(7), depth=100)
    for _ in range(1000):
        again.step()
    assert again.levels() == book.levels()  # seeded: the same draws, the same book


# -- over the wire -----------------------------------------------------------------------------

pytestmark_anyio = pytest.mark.anyio


@pytestmark_anyio
async def test_snapshot_then_sequenced_deltas_with_valid_checksums_on_two_connections() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=20.0, book_depth=150) as sim:
            a, b = await connect(sim), await connect(sim)
            await subscribe(a, "book", "BTC-USD")
            await anyio.sleep(0.5)
            await subscribe(b, "book", "BTC-USD")
            messages = {name: [orjson.loads(t) for t in texts(await c.collect(0.99 if name == "a" else 1e-3))]
                        for name, c in (("a", a), ("b", b))}  # fmt: skip
            for name, received in messages.items():
                snapshot, *updates = received
                assert snapshot["type"] == "snapshot" and min(len(snapshot["bids"]), len(snapshot["asks"])) >= 100
                mirror = Mirror(snapshot)
                for update in updates:
                    mirror.apply(update)
                    assert mirror.checksum() == update["checksum"], name
                assert mirror.seq == sim.stream_seq("book", "BTC-USD")
                rest = sim.book_snapshot("BTC-USD")
                assert rest["seq"] == mirror.seq and mirror.top() == (rest["bids"], rest["asks"])
            later_a = [m for m in messages["a"] if m["type"] == "update" and m["seq"] > messages["b"][0]["seq"]]
            assert later_a == messages["b"][1:]  # the deltas are exchange-wide: the same on both


@pytestmark_anyio
async def test_rest_snapshot_with_buffered_deltas_binance_style() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as sim:
            client = await connect(sim)
            await subscribe(client, "book", "ETH-USD")
            await client.collect(0.35)  # the websocket snapshot is ignored in this flow
            rest = sim.book_snapshot("ETH-USD", depth=100)
            buffered = [orjson.loads(t) for t in texts(await client.collect(1.0))]
            mirror = Mirror(rest)
            for update in buffered:
                if update["seq"] > mirror.seq:
                    mirror.apply(update)
                    assert mirror.checksum() == update["checksum"]
            assert mirror.seq == buffered[-1]["seq"]
            assert sim.book_snapshot("ETH-USD", depth=3)["bids"] == mirror.top()[0][:3]
            with pytest.raises(KeyError):
                sim.book_snapshot("DOGE-USD")


@pytestmark_anyio
async def test_an_idle_book_stream_does_not_move() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as sim:
            first = sim.book_snapshot("BTC-USD")
            await anyio.sleep(10)
            later = sim.book_snapshot("BTC-USD")
            assert (later["bids"], later["asks"], later["seq"]) == (first["bids"], first["asks"], 0)
            client: Client = await connect(sim)
            await subscribe(client, "book", "BTC-USD")
            snapshot = orjson.loads(texts(await drain(client))[0])
            assert snapshot["seq"] == 0 and snapshot["bids"] == first["bids"]


@pytestmark_anyio
async def test_rest_snapshot_over_http_on_the_websocket_port() -> None:
    async def get(sim: SimExchange, target: str) -> tuple[int, dict[str, Any]]:
        client = await dial(sim)
        await client.stream.send(f"GET {target} HTTP/1.1\r\nHost: sim.test\r\n\r\n".encode())
        answer = b""
        with pytest.raises(anyio.EndOfStream):
            for _ in range(1000):
                answer += await client.stream.receive()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head
        return int(head.split(b" ")[1]), orjson.loads(body)

    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as sim:
            client = await connect(sim)
            await subscribe(client, "book", "BTC-USD")
            await anyio.sleep(1.0)
            status, body = await get(sim, "/book?symbol=BTC-USD&depth=5")
            assert status == 200 and body == sim.book_snapshot("BTC-USD", depth=5) | {"ts": body["ts"]}
            assert body["seq"] == sim.stream_seq("book", "BTC-USD") and len(body["bids"]) == 5
            assert (await get(sim, "/book?symbol=DOGE-USD"))[0] == 404
            assert (await get(sim, "/book?symbol=BTC-USD&depth=x"))[0] == 400
            assert sim.accepted == 1  # REST requests are not connections
