"""The simulator's exchange-wide market feed: one stream per (channel, symbol), the same bytes for everyone."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest
import wsproto.events as wse

from tests.test_sim import BOUND, Client, connect, jsons, running

pytestmark = pytest.mark.anyio


def texts(events: list[wse.Event]) -> list[str]:
    return [e.data for e in events if isinstance(e, wse.TextMessage) and "event" not in orjson.loads(e.data)]


async def drain(client: Client) -> list[wse.Event]:
    """What has arrived by now (a virtual millisecond: data comes at most every 20 ms here)."""
    return await client.collect(1e-3)


async def subscribe(client: Client, channel: str, *symbols: str, id: Any = 1) -> None:
    ack = await client.request({"op": "subscribe", "channel": channel, "symbols": list(symbols), "id": id})
    assert ack["event"] == "subscribed", ack


async def test_two_connections_receive_byte_identical_messages_with_exchange_wide_seq() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as sim:
            a, b = await connect(sim), await connect(sim)
            await subscribe(a, "trades", "BTC-USD")
            await subscribe(b, "trades", "BTC-USD")  # same virtual instant: both see every message
            got_a, got_b = texts(await a.collect(0.95)), texts(await drain(b))
            assert len(got_b) >= 9 and got_a[-len(got_b) :] == got_b  # b may join after seq 1 was made
            seqs = [orjson.loads(t)["seq"] for t in got_a]
            assert seqs == list(range(1, len(seqs) + 1))
            assert sim.stream_seq("trades", "BTC-USD") == seqs[-1]
            assert sim.stats().made == len(seqs)  # made once, written twice
            assert sim.stats().data_messages == len(got_a) + len(got_b)


async def test_a_late_subscriber_joins_the_running_stream_without_a_restart() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as sim:
            early = await connect(sim)
            await subscribe(early, "trades", "ETH-USD")
            await anyio.sleep(0.55)  # seq 1..6 made
            late = await connect(sim)
            await subscribe(late, "trades", "ETH-USD")
            early_seen = [orjson.loads(t) for t in texts(await early.collect(1.0))]
            late_seen = [orjson.loads(t) for t in texts(await drain(late))]
            assert late_seen[0]["seq"] == 7  # the next trade, no copy of an old one
            assert late_seen == [m for m in early_seen if m["seq"] >= 7]


async def test_a_ticker_subscription_starts_with_a_copy_of_the_latest_ticker() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=1.0) as sim:
            early = await connect(sim)
            await subscribe(early, "ticker", "BTC-USD")
            first = texts(await early.collect(0.5))
            assert [orjson.loads(t)["seq"] for t in first] == [1]
            late = await connect(sim)
            await subscribe(late, "ticker", "BTC-USD")
            copy = texts(await late.collect(0.1))
            assert copy == first  # the same bytes, the same seq: a client deduplicates it
            await anyio.sleep(1.0)
            assert texts(await drain(late)) == texts(await drain(early))


async def test_a_stalled_connection_misses_messages_and_sees_the_gap() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as sim:
            stalled, steady = await connect(sim), await connect(sim)
            for client in (stalled, steady):
                await subscribe(client, "trades", "BTC-USD")
            await anyio.sleep(0.25)  # seq 1..3
            sim.stall_one(0)
            await anyio.sleep(1.0)  # seq 4..13 made while stalled
            sim.resume()
            after = [orjson.loads(t)["seq"] for t in texts(await stalled.collect(0.33))]
            everything = [orjson.loads(t)["seq"] for t in texts(await drain(steady))]
            assert everything == list(range(everything[0], everything[-1] + 1)) and everything[-1] == 16
            assert after == [*range(after[0], 4), *range(14, 17)]  # a gap: 4..13 never re-sent
            assert sim.stats().missed == 10


async def test_resubscribing_continues_the_sequence() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as sim:
            client = await connect(sim)
            await subscribe(client, "trades", "BTC-USD")
            await anyio.sleep(0.25)
            ack = await client.request({"op": "unsubscribe", "channel": "trades", "symbols": ["BTC-USD"], "id": 2})
            assert ack["event"] == "unsubscribed"
            await anyio.sleep(5.0)  # nobody subscribed: the stream is idle, nothing is made
            assert sim.stream_seq("trades", "BTC-USD") == 3
            await subscribe(client, "trades", "BTC-USD", id=3)
            seqs = [orjson.loads(t)["seq"] for t in texts(await client.collect(0.25))]
            assert seqs[-3:] == [4, 5, 6]


async def test_many_connections_one_stream() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=5.0) as sim:
            clients = [await connect(sim) for _ in range(50)]
            for client in clients:
                await subscribe(client, "ticker", "ETH-USD")
            await anyio.sleep(2.0)
            seen = [texts(await drain(c)) for c in clients]
            last = seen[0][-1]
            assert all(s[-1] == last for s in seen)
            assert sim.stats().made == orjson.loads(last)["seq"]


# -- a real socket (real clock) --------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_many_tcp_connections_on_loopback_get_the_same_frames(anyio_backend: str) -> None:
    with anyio.fail_after(10):
        async with running(rate=100.0) as sim:
            port = await sim.listen_tcp()
            clients = [Client(await anyio.connect_tcp("127.0.0.1", port)) for _ in range(20)]
            for client in clients:
                assert isinstance(await client.handshake(), wse.AcceptConnection)
                await subscribe(client, "trades", "ETH-USD")
            await anyio.sleep(0.3)
            seen = [texts(await client.collect(0.01)) for client in clients]
            last = min(orjson.loads(s[-1])["seq"] for s in seen)
            first = max(orjson.loads(s[0])["seq"] for s in seen)
            assert last - first >= 5
            window = [[t for t in s if first <= orjson.loads(t)["seq"] <= last] for s in seen]
            assert all(w == window[0] for w in window)  # byte-identical across 20 sockets
            for client in clients:
                await client.stream.aclose()
