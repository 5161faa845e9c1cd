"""The simulated exchange, driven by a minimal wsproto client, on virtual time (asyncio and trio).

One test at the end uses a real 127.0.0.1 socket and therefore the real clock.
"""

from __future__ import annotations

import logging
import random
import re
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import orjson
import pytest
import wsproto.events as wse
from anyio.abc import ByteStream
from wsproto import ConnectionType, WSConnection

from engine.sim import SimExchange
from engine.sim.dialect import BAD_REQUEST, NOT_FOUND, Invalid, Subscribe, parse_request
from engine.sim.market import Market
from engine.sim.schedule import Schedule
from transports.base import parse_url

pytestmark = pytest.mark.anyio

PRICE = re.compile(r"^\d+\.\d{2}$")
SIZE = re.compile(r"^\d+\.\d{4}$")
BOUND = 120.0  # virtual seconds: every test ends well before this


class Client:
    """Just enough of a WebSocket client (wsproto) to drive the sim."""

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: deque[wse.Event] = deque()

    async def handshake(self, target: str = "/ws") -> wse.Event:
        await self.stream.send(self.ws.send(wse.Request(host="sim.test", target=target)))
        return await self.next_event()

    async def next_event(self) -> wse.Event:
        while not self.pending:
            self.ws.receive_data(await self.stream.receive())
            self.pending.extend(self.ws.events())
        return self.pending.popleft()

    async def send(self, event: wse.Event) -> None:
        await self.stream.send(self.ws.send(event))

    async def send_json(self, message: Any) -> None:
        await self.send(wse.TextMessage(data=orjson.dumps(message).decode()))

    async def recv_json(self) -> dict[str, Any]:
        event = await self.next_event()
        assert isinstance(event, wse.TextMessage), event
        assert event.message_finished
        data = orjson.loads(event.data)
        assert isinstance(data, dict)
        return data

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send, then return the first reply that is not a data message."""
        await self.send_json(message)
        for _ in range(1000):
            reply = await self.recv_json()
            if "event" in reply:
                return reply
        raise AssertionError("no reply among 1000 messages")

    async def collect(self, seconds: float) -> list[wse.Event]:
        """Everything received during ``seconds``."""
        events: list[wse.Event] = []
        with anyio.move_on_after(seconds):
            while True:
                events.append(await self.next_event())
        return events


def jsons(events: list[wse.Event]) -> list[dict[str, Any]]:
    return [orjson.loads(e.data) for e in events if isinstance(e, wse.TextMessage)]


_DIALED: dict[SimExchange, list[Client]] = {}


async def dial(sim: SimExchange) -> Client:
    client = Client(await sim.dialer()(parse_url("ws://sim.test/ws")))
    _DIALED.setdefault(sim, []).append(client)
    return client


async def connect(sim: SimExchange) -> Client:
    client = await dial(sim)
    assert isinstance(await client.handshake(), wse.AcceptConnection)
    return client


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[SimExchange]:
    """A running sim; the client ends dialed from it are closed afterwards."""
    exchange = SimExchange(**options)
    try:
        async with exchange:
            yield exchange
    finally:
        for client in _DIALED.pop(exchange, []):
            await client.stream.aclose()


@pytest.fixture
async def sim() -> AsyncIterator[SimExchange]:
    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as exchange:
            yield exchange


# -- data --------------------------------------------------------------------------------------


async def test_subscribe_acks_then_data_at_rate(sim: SimExchange) -> None:
    client = await connect(sim)
    ack = await client.request({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 7})
    assert ack == {"event": "subscribed", "channel": "ticker", "symbols": ["BTC-USD"], "id": 7}
    start = anyio.current_time()
    data = jsons(await client.collect(2.05))
    assert 20 <= len(data) <= 22  # 10/s for ~2 s, the first right after the ack
    assert [m["seq"] for m in data] == list(range(1, len(data) + 1))
    for m in data:
        assert m["channel"] == "ticker" and m["symbol"] == "BTC-USD"
        assert PRICE.match(m["bid"]) and PRICE.match(m["ask"])
        assert float(m["bid"]) < float(m["ask"])
    stamps = [m["ts"] for m in data]
    assert stamps[0] == pytest.approx(start, abs=1e-3)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert all(g == pytest.approx(0.1, abs=1e-3) for g in gaps)
    assert sim.subscriptions == [frozenset({("ticker", "BTC-USD")})]
    assert sim.stats().data_messages >= len(data)


async def test_trades_for_two_symbols_each_at_rate(sim: SimExchange) -> None:
    client = await connect(sim)
    ack = await client.request({"op": "subscribe", "channel": "trades", "symbols": ["BTC-USD", "ETH-USD"], "id": "a"})
    assert ack["event"] == "subscribed" and ack["symbols"] == ["BTC-USD", "ETH-USD"] and ack["id"] == "a"
    data = jsons(await client.collect(0.95))
    by_symbol = {s: [m for m in data if m["symbol"] == s] for s in ("BTC-USD", "ETH-USD")}
    for symbol, messages in by_symbol.items():
        assert len(messages) == 10, symbol
        assert [m["seq"] for m in messages] == list(range(1, 11))
        for m in messages:
            assert m["channel"] == "trades"
            assert PRICE.match(m["price"]) and SIZE.match(m["size"]) and m["side"] in ("buy", "sell")
    assert 40_000 < float(by_symbol["BTC-USD"][0]["price"]) < 60_000
    assert 2_000 < float(by_symbol["ETH-USD"][0]["price"]) < 4_000


async def test_unsubscribe_stops_data_after_the_ack(sim: SimExchange) -> None:
    client = await connect(sim)
    await client.request({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD", "ETH-USD"], "id": 1})
    await client.collect(0.5)
    ack = await client.request({"op": "unsubscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 2})
    assert ack == {"event": "unsubscribed", "channel": "ticker", "symbols": ["BTC-USD"], "id": 2}
    later = jsons(await client.collect(1.0))
    assert later and {m["symbol"] for m in later} == {"ETH-USD"}
    assert sim.subscriptions == [frozenset({("ticker", "ETH-USD")})]


async def test_no_data_without_subscription(sim: SimExchange) -> None:
    client = await connect(sim)
    assert await client.collect(5.0) == []


async def test_same_seed_same_prices() -> None:
    async def first_prices(seed: int) -> list[str]:
        async with running(rate=10.0, seed=seed) as sim:
            client = await connect(sim)
            await client.request({"op": "subscribe", "channel": "ticker", "symbols": ["ETH-USD"], "id": 1})
            return [m["bid"] for m in jsons(await client.collect(0.45))]

    with anyio.fail_after(BOUND):
        a, b, c = await first_prices(3), await first_prices(3), await first_prices(4)
    assert len(a) == 5 and a == b and a != c


# -- requests -----------------------------------------------------------------------------------


async def test_app_ping_and_protocol_ping_answered(sim: SimExchange) -> None:
    client = await connect(sim)
    assert await client.request({"op": "ping", "id": 42}) == {"event": "pong", "id": 42}
    await client.send(wse.Ping(payload=b"abc"))
    pong = await client.next_event()
    assert isinstance(pong, wse.Pong) and pong.payload == b"abc"


async def test_login_ok_and_refused(sim: SimExchange) -> None:
    client = await connect(sim)
    assert await client.request({"op": "login", "key": "k", "signature": "s", "id": 1}) == {
        "event": "login",
        "ok": True,
        "id": 1,
    }
    assert sim.authenticated == [True]
    other = await connect(sim)
    refused = await other.request({"op": "login", "key": "", "signature": "s", "id": 2})
    assert refused["event"] == "login" and refused["ok"] is False and refused["id"] == 2
    assert sim.authenticated == [True, False]


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ({"op": "subscribe", "channel": "candles", "symbols": ["BTC-USD"], "id": 1}, NOT_FOUND),
        ({"op": "subscribe", "channel": "ticker", "symbols": ["DOGE-USD"], "id": 1}, NOT_FOUND),
        ({"op": "subscribe", "channel": "ticker", "symbols": [], "id": 1}, BAD_REQUEST),
        ({"op": "subscribe", "channel": "ticker", "id": 1}, BAD_REQUEST),
        ({"op": "dance", "id": 1}, BAD_REQUEST),
    ],
)
async def test_invalid_requests_get_error_events(sim: SimExchange, message: dict[str, Any], code: int) -> None:
    client = await connect(sim)
    reply = await client.request(message)
    assert reply["event"] == "error" and reply["code"] == code and reply["id"] == 1 and reply["message"]
    assert sim.subscriptions == [frozenset()]


async def test_bad_json_and_binary_keep_the_connection_open(sim: SimExchange) -> None:
    client = await connect(sim)
    await client.send(wse.TextMessage(data="{not json"))
    reply = await client.recv_json()
    assert reply["event"] == "error" and reply["code"] == BAD_REQUEST and reply["id"] is None
    await client.send(wse.BytesMessage(data=b"\x00\x01"))
    assert (await client.recv_json())["code"] == BAD_REQUEST
    assert await client.request({"op": "ping", "id": 5}) == {"event": "pong", "id": 5}
    assert sim.connections == 1


async def test_fragmented_request_is_reassembled(sim: SimExchange) -> None:
    client = await connect(sim)
    text = orjson.dumps({"op": "ping", "id": 9}).decode()
    await client.send(wse.TextMessage(data=text[:5], message_finished=False))
    await client.send(wse.Ping(payload=b"mid"))
    await client.send(wse.TextMessage(data=text[5:], message_finished=True))
    pong = await client.next_event()
    assert isinstance(pong, wse.Pong)
    assert await client.recv_json() == {"event": "pong", "id": 9}


# -- faults -------------------------------------------------------------------------------------


async def test_stall_sends_nothing_then_resume(sim: SimExchange) -> None:
    client = await connect(sim)
    await client.request({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 1})
    await client.collect(0.55)
    sim.stall()
    stalled_at = anyio.current_time()
    await client.send_json({"op": "ping", "id": 2})
    await client.send(wse.Ping(payload=b"p"))
    await client.send_json({"op": "subscribe", "channel": "trades", "symbols": ["ETH-USD"], "id": 3})
    during = await client.collect(5.0)
    assert during == []  # no data, no pong, no ack
    assert sim.connections == 1
    assert sim.subscriptions == [frozenset({("ticker", "BTC-USD"), ("trades", "ETH-USD")})]

    sim.resume()
    resumed_at = anyio.current_time()
    after = await client.collect(1.0)
    assert not any(isinstance(e, wse.Pong) for e in after)  # pings sent during a stall stay unanswered
    messages = jsons(after)
    assert messages[0] == {"event": "subscribed", "channel": "trades", "symbols": ["ETH-USD"], "id": 3}
    data = messages[1:]
    assert all("event" not in m for m in data) and len(data) >= 18
    assert all(m["ts"] >= resumed_at > stalled_at + 4.9 for m in data)  # missed messages skipped, not burst
    assert await client.request({"op": "ping", "id": 4}) == {"event": "pong", "id": 4}


async def test_stall_applies_to_current_connections_only(sim: SimExchange) -> None:
    old = await connect(sim)
    sim.stall()
    new = await connect(sim)
    assert await new.request({"op": "ping", "id": 1}) == {"event": "pong", "id": 1}
    await old.send_json({"op": "ping", "id": 1})
    assert await old.collect(3.0) == []


async def test_drop_resets_every_connection(sim: SimExchange) -> None:
    clients = [await connect(sim), await connect(sim)]
    await clients[0].request({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 1})
    assert sim.connections == 2
    sim.drop()
    assert sim.connections == 0
    for client in clients:
        with pytest.raises(anyio.BrokenResourceError):
            for _ in range(1000):  # data sent before the drop may come first
                await client.next_event()
    assert sim.accepted == 2
    again = await connect(sim)
    assert await again.request({"op": "ping", "id": 1}) == {"event": "pong", "id": 1}
    assert (sim.connections, sim.accepted) == (1, 3)


async def test_close_all_sends_code_and_waits_for_reply(sim: SimExchange) -> None:
    client = await connect(sim)
    await client.request({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 1})

    async def answer_close() -> wse.CloseConnection:
        for _ in range(1000):
            event = await client.next_event()
            if isinstance(event, wse.CloseConnection):
                await client.send(event.response())
                return event
        raise AssertionError("no close frame")

    async with anyio.create_task_group() as tg:
        tg.start_soon(sim.close_all, 4000, "maintenance")
        close = await answer_close()
    assert (close.code, close.reason) == (4000, "maintenance")
    with pytest.raises(anyio.EndOfStream):
        await client.stream.receive()
    assert sim.connections == 0


async def test_close_all_gives_up_on_a_silent_client(sim: SimExchange) -> None:
    silent = await connect(sim)
    stalled = await connect(sim)
    sim.stall()  # close_all still sends its close frame to a stalled connection
    start = anyio.current_time()
    await sim.close_all(4001)
    assert anyio.current_time() - start == pytest.approx(sim.close_timeout, abs=1e-3)
    assert sim.connections == 0
    for client in (silent, stalled):
        close = await client.next_event()
        assert isinstance(close, wse.CloseConnection) and close.code == 4001


async def test_client_close_is_echoed_then_stream_closed(sim: SimExchange) -> None:
    client = await connect(sim)
    await client.send(wse.CloseConnection(code=4321, reason="bye"))
    echo = await client.next_event()
    assert isinstance(echo, wse.CloseConnection) and echo.code == 4321
    with pytest.raises(anyio.EndOfStream):
        await client.stream.receive()
    with anyio.fail_after(1):
        await sim.wait_connections(0)


async def test_reject_next_answers_with_status_and_headers(sim: SimExchange) -> None:
    sim.reject_next(429, [("Retry-After", "2")], b"slow down")
    client = await dial(sim)
    rejection = await client.handshake()
    assert isinstance(rejection, wse.RejectConnection) and rejection.status_code == 429
    assert (b"retry-after", b"2") in [(k.lower(), v) for k, v in rejection.headers]
    body = b""
    for _ in range(100):
        part = await client.next_event()
        assert isinstance(part, wse.RejectData)
        body += part.data
        if part.body_finished:
            break
    assert body == b"slow down"
    assert (sim.rejected, sim.accepted, sim.connections) == (1, 0, 0)
    await connect(sim)  # only the next handshake was rejected
    assert sim.accepted == 1


async def test_send_raw_next_follows_the_101(sim: SimExchange) -> None:
    sim.send_raw_next(b"\x81\x02hi")  # an unmasked text frame "hi"
    client = await connect(sim)
    message = await client.next_event()
    assert isinstance(message, wse.TextMessage) and message.data == "hi"


async def test_protocol_violation_closes_with_1002(sim: SimExchange) -> None:
    client = await connect(sim)
    await client.stream.send(b"\x81\x02hi")  # clients must mask their frames
    close = await client.next_event()
    assert isinstance(close, wse.CloseConnection) and close.code == 1002
    await sim.wait_connections(0)


async def test_not_a_websocket_request_gets_400(sim: SimExchange) -> None:
    client = await dial(sim)
    await client.stream.send(b"GET / HTTP/1.1\r\nHost: sim.test\r\n\r\n")
    answer = b""
    with pytest.raises(anyio.EndOfStream):
        for _ in range(100):
            answer += await client.stream.receive()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert sim.accepted == 0


async def test_clients_that_vanish_are_removed(sim: SimExchange, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="wirestate.sim")
    polite, rude, silent = await connect(sim), await connect(sim), await dial(sim)
    await polite.request({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 1})
    await rude.request({"op": "subscribe", "channel": "trades", "symbols": ["BTC-USD"], "id": 1})
    assert sim.connections == 2
    await polite.stream.aclose()
    rude.stream.abort()  # type: ignore[attr-defined]
    await sim.wait_connections(0)
    await anyio.sleep(1)
    await silent.stream.aclose()  # never sent a handshake
    await anyio.sleep(1)
    sim.drop()  # nothing left to drop
    assert sim.accepted == 2
    assert caplog.records and all(r.levelno < logging.WARNING for r in caplog.records)


async def test_leaving_the_sim_closes_client_streams() -> None:
    with anyio.fail_after(BOUND):
        async with SimExchange() as sim:
            client = Client(await sim.dialer()(parse_url("ws://sim.test/ws")))
            assert isinstance(await client.handshake(), wse.AcceptConnection)
            await client.request({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 1})
        with pytest.raises(anyio.EndOfStream):
            for _ in range(1000):
                await client.next_event()
        await client.stream.aclose()
        with pytest.raises(RuntimeError):
            await sim.dialer()(parse_url("ws://sim.test/"))


async def test_argument_checks() -> None:
    with pytest.raises(ValueError):
        SimExchange(rate=-1)
    with pytest.raises(ValueError):
        SimExchange(symbols=())
    sim = SimExchange()
    with pytest.raises(ValueError):
        sim.reject_next(101)
    with pytest.raises(ValueError):
        await sim.close_all(1006)


# -- pure pieces ---------------------------------------------------------------------------------


def test_schedule_skips_instead_of_bursting() -> None:
    schedule = Schedule(rate=2.0)
    assert schedule.next_due() is None
    schedule.add("ticker", "BTC-USD", now=10.0)
    assert [d.seq for d in schedule.pop_due(10.0)] == [1]
    assert schedule.next_due() == 10.5
    assert schedule.pop_due(10.4) == []
    assert [d.seq for d in schedule.pop_due(20.0)] == [2]  # one message, not twenty
    assert schedule.next_due() == 20.5
    assert Schedule(rate=0.0).next_due() is None


def test_parse_request_shapes() -> None:
    symbols = ("BTC-USD",)
    assert parse_request('{"op":"subscribe","channel":"ticker","symbols":["BTC-USD","BTC-USD"],"id":1}', symbols) == (
        Subscribe("ticker", ("BTC-USD",), 1)
    )
    assert parse_request("[1]", symbols) == Invalid(BAD_REQUEST, "a request must be a JSON object, not list")


def test_market_is_deterministic_and_positive() -> None:
    a = Market(["BTC-USD", "XYZ"], random.Random(1))
    b = Market(["BTC-USD", "XYZ"], random.Random(1))
    quotes = [a.quote("XYZ") for _ in range(1000)]
    assert quotes == [b.quote("XYZ") for _ in range(1000)]
    assert all(0 < float(q.bid) < float(q.ask) for q in quotes)


# -- a real socket (real clock) --------------------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_listen_tcp_on_loopback(anyio_backend: str) -> None:
    with anyio.fail_after(10):
        async with SimExchange(rate=50.0) as sim:
            port = await sim.listen_tcp()
            assert port > 0
            client = Client(await anyio.connect_tcp("127.0.0.1", port))
            assert isinstance(await client.handshake(), wse.AcceptConnection)
            await client.request({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 1})
            data = await client.recv_json()
            assert data["channel"] == "ticker" and data["seq"] == 1
            assert sim.connections == 1
            sim.drop()
            with pytest.raises(anyio.BrokenResourceError):
                for _ in range(10_000):
                    await client.next_event()
            await client.stream.aclose()
