"""Each fault control of the simulated exchange, on virtual time, and the server-side transcript."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest
import wsproto.events as wse

from engine.sim import SimExchange
from tests.test_sim import BOUND, Client, connect, dial, jsons, running
from tests.test_sim_book import Mirror
from tests.test_sim_feed import subscribe, texts

pytestmark = pytest.mark.anyio


async def until(client: Client, kind: type[wse.Event], limit: int = 10_000) -> wse.Event:
    for _ in range(limit):
        event = await client.next_event()
        if isinstance(event, kind):
            return event
    raise AssertionError(f"no {kind.__name__}")


# -- handshake ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "retry_after"), [(429, 2.0), (503, 30.0), (401, None)])
async def test_handshake_refused_with_status_and_retry_after(status: int, retry_after: float | None) -> None:
    with anyio.fail_after(BOUND):
        async with running() as sim:
            sim.reject_next(status, retry_after=retry_after)
            refused = await (await dial(sim)).handshake()
            assert isinstance(refused, wse.RejectConnection) and refused.status_code == status
            headers = {k.lower(): v for k, v in refused.headers}
            assert headers.get(b"retry-after") == (None if retry_after is None else f"{retry_after:g}".encode())
            await connect(sim)
            assert (sim.rejected, sim.accepted) == (1, 1)


# -- closes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1001, 1008, 1011, 4000, 4999])
async def test_close_one_sends_the_code_to_that_connection_only(code: int) -> None:
    with anyio.fail_after(BOUND):
        async with running() as sim:
            closing, other = await connect(sim), await connect(sim)
            async with anyio.create_task_group() as tg:
                tg.start_soon(sim.close_one, 0, code, "bye")
                close = await until(closing, wse.CloseConnection)
                await closing.send(close.response())  # type: ignore[attr-defined]
            assert (close.code, close.reason) == (code, "bye")  # type: ignore[attr-defined]
            assert sim.connections == 1
            assert await other.request({"op": "ping", "id": 1}) == {"event": "pong", "id": 1}
            assert [(e.direction, e.kind, e.data) for e in sim.transcripts[0] if e.kind == "close"] == [
                ("out", "close", f"{code} bye"),
                ("in", "close", f"{code} bye"),
            ]


async def test_abrupt_drop_is_a_reset_without_close_frame() -> None:
    with anyio.fail_after(BOUND):
        async with running() as sim:
            client = await connect(sim)
            sim.drop_one(0)
            with pytest.raises(anyio.BrokenResourceError):
                await until(client, wse.CloseConnection)
            assert [e.kind for e in sim.transcripts[0]][-1] == "reset"
            assert not [e for e in sim.transcripts[0] if e.kind == "close"]


async def test_server_imposed_lifetime_closes_each_connection_after_its_age() -> None:
    with anyio.fail_after(5 * BOUND):
        async with running(lifetime=60.0) as sim:
            first = await connect(sim)
            opened = anyio.current_time()
            await anyio.sleep(20)
            second = await connect(sim)
            close = await until(first, wse.CloseConnection)
            assert anyio.current_time() - opened == pytest.approx(60.0, abs=1e-3)
            assert (close.code, close.reason) == (1001, "lifetime")  # type: ignore[attr-defined]
            await first.send(close.response())  # type: ignore[attr-defined]
            await sim.wait_connections(1)
            sim.set_lifetime(None)
            third = await connect(sim)  # accepted after the change: no lifetime
            close = await until(second, wse.CloseConnection)
            assert anyio.current_time() - opened == pytest.approx(80.0, abs=1e-3)
            await second.send(close.response())  # type: ignore[attr-defined]
            await anyio.sleep(100)
            assert sim.connections == 1
            assert await third.request({"op": "ping", "id": 1}) == {"event": "pong", "id": 1}


async def test_lifetime_without_an_answer_ends_after_the_close_timeout() -> None:
    with anyio.fail_after(BOUND):
        async with running() as sim:
            sim.set_lifetime(10.0, code=4001)
            start = anyio.current_time()
            client = await connect(sim)
            close = await until(client, wse.CloseConnection)
            assert close.code == 4001  # type: ignore[attr-defined]
            await sim.wait_connections(0)
            assert anyio.current_time() - start == pytest.approx(10.0 + sim.close_timeout, abs=1e-3)


# -- half-open and stalls ------------------------------------------------------------------------


async def test_half_open_nothing_flows_either_way_until_resume() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as sim:
            client = await connect(sim)
            await subscribe(client, "ticker", "BTC-USD")
            sim.half_open(0)
            went_quiet = anyio.current_time()
            await client.send_json({"op": "ping", "id": 7})
            await client.send(wse.Ping(payload=b"x"))
            await client.send(wse.CloseConnection(code=1000))
            assert await client.collect(30.0) == []
            assert sim.connections == 1  # the server still counts it open
            assert not [e for e in sim.transcripts[0] if e.time > went_quiet and e.direction != "note"]
            sim.resume()
            events: list[wse.Event] = []
            with pytest.raises(anyio.EndOfStream):  # now it reads the ping, the ping frame and the close
                for _ in range(1000):
                    events.append(await client.next_event())
            assert any(isinstance(e, wse.Pong) for e in events)
            assert isinstance(events[-1], wse.CloseConnection)
            await sim.wait_connections(0)


async def test_subscribe_rejected_once_then_accepted() -> None:
    with anyio.fail_after(BOUND):
        async with running() as sim:
            client = await connect(sim)
            sim.reject_subscribes(1, code=429, message="too many subscriptions")
            message = {"op": "subscribe", "channel": "trades", "symbols": ["BTC-USD"], "id": 1}
            assert await client.request(message) == {"event": "error", "id": 1, "code": 429, "message": "too many subscriptions"}
            assert sim.subscriptions == [frozenset()]
            assert (await client.request(message))["event"] == "subscribed"


# -- books -------------------------------------------------------------------------------------


async def book_messages(client: Client, seconds: float) -> list[dict[str, Any]]:
    return [orjson.loads(t) for t in texts(await client.collect(seconds))]


async def test_skip_book_makes_a_sequence_gap_on_one_connection() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as sim:
            hit, spared = await connect(sim), await connect(sim)
            for client in (hit, spared):
                await subscribe(client, "book", "BTC-USD")
            await anyio.sleep(0.35)
            sim.skip_book("BTC-USD", index=0)
            hit_updates = [m for m in await book_messages(hit, 1.0) if m["type"] == "update"]
            spared_updates = [m for m in await book_messages(spared, 1e-3) if m["type"] == "update"]
            gaps = [b["prev_seq"] for a, b in zip(hit_updates, hit_updates[1:]) if b["prev_seq"] != a["seq"]]
            assert len(gaps) == 1  # exactly one delta missing, and the client can tell from prev_seq
            assert gaps[0] in [m["seq"] for m in spared_updates] and gaps[0] not in [m["seq"] for m in hit_updates]
            assert {m["seq"] for m in spared_updates} - {m["seq"] for m in hit_updates} == {gaps[0]}


async def test_corrupt_book_sends_one_wrong_checksum() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=10.0) as sim:
            client = await connect(sim)
            await subscribe(client, "book", "ETH-USD")
            snapshot, *updates = await book_messages(client, 0.25)
            mirror = Mirror(snapshot)
            sim.corrupt_book()
            updates += await book_messages(client, 1.0)
            bad = []
            for update in updates:
                mirror.apply(update)  # the levels are right: only the checksum lies
                if mirror.checksum() != update["checksum"]:
                    bad.append(update["seq"])
            assert len(bad) == 1 and bad[0] > 3
            assert sim.stats().faults == 1


# -- bad frames, pings ---------------------------------------------------------------------------


async def test_malformed_json_and_oversize_messages() -> None:
    with anyio.fail_after(BOUND):
        async with running() as sim:
            client = await connect(sim)
            await sim.send_malformed()
            event = await client.next_event()
            assert isinstance(event, wse.TextMessage)
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(event.data)
            await sim.send_oversize(3 * 1024 * 1024, index=0)
            text = ""
            while True:
                part = await client.next_event()
                assert isinstance(part, wse.TextMessage)
                text += part.data
                if part.message_finished:
                    break
            assert len(text) == 3 * 1024 * 1024 and orjson.loads(text)["channel"] == "padding"
            await sim.send_raw(b"\x88\x02\x03")  # a broken close frame, as is
            assert sim.transcripts[0][-1].kind == "raw"


async def test_server_ping_storm_at_exact_times() -> None:
    with anyio.fail_after(BOUND):
        async with running() as sim:
            client = await connect(sim)
            start = anyio.current_time()
            sim.ping_storm(20, 0.05)
            events = await client.collect(2.0)
            assert sum(isinstance(e, wse.Ping) for e in events) == 20
            times = [e.time - start for e in sim.transcripts[0] if e.kind == "ping" and e.direction == "out"]
            assert times == pytest.approx([i * 0.05 for i in range(20)], abs=1e-6)


async def test_a_scripted_schedule_runs_controls_at_their_virtual_times() -> None:
    with anyio.fail_after(BOUND):
        async with running() as sim:
            client = await connect(sim)
            start = anyio.current_time()
            sim.call_later(10.0, sim.stall)
            sim.call_at(start + 20.0, sim.close_all, 1011, "restart")
            await client.send_json({"op": "ping", "id": 1})
            assert jsons(await client.collect(1.0)) == [{"event": "pong", "id": 1}]
            await anyio.sleep(10)
            await client.send_json({"op": "ping", "id": 2})
            close = await until(client, wse.CloseConnection)
            assert close.code == 1011 and anyio.current_time() - start == pytest.approx(20.0, abs=1e-3)  # type: ignore[attr-defined]
            notes = [(round(e.time - start, 3), e.kind) for e in sim.transcripts[0] if e.direction == "note"]
            assert notes == [(0.0, "open"), (10.0, "stall")]


# -- the transcript ----------------------------------------------------------------------------


async def test_transcript_records_direction_kind_and_exact_times() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=2.0) as sim:
            client = await connect(sim)
            start = anyio.current_time()
            await subscribe(client, "ticker", "BTC-USD")
            await client.collect(1.2)
            sim.stall()
            await client.send_json({"op": "unsubscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 2})
            await anyio.sleep(3)
            sim.resume()
            await client.collect(0.1)
            log = [(round(e.time - start, 6), e.direction, e.kind, e.data) for e in sim.transcripts[0]]
            assert log[0][1:3] == ("note", "open")
            assert log[1][:3] == (0.0, "in", "text") and '"subscribe"' in log[1][3]
            assert log[2][:3] == (0.0, "out", "text") and '"subscribed"' in log[2][3]
            data = [(t, orjson.loads(d)["seq"]) for t, direction, kind, d in log if direction == "out" and '"seq"' in d]
            assert data == [(0.0, 1), (0.5, 2), (1.0, 3)]
            held = [(t, d) for t, direction, _, d in log if direction == "out" and '"unsubscribed"' in d]
            assert held and held[0][0] == pytest.approx(4.2, abs=1e-6)  # logged when it was written, after the stall
            assert sim.transcripts[0].texts("in")[1].startswith('{"op":"unsubscribe"')


async def test_transcripts_are_bounded() -> None:
    with anyio.fail_after(BOUND):
        async with running(rate=50.0, log_limit=10) as sim:
            client = await connect(sim)
            await subscribe(client, "trades", "ETH-USD")
            await client.collect(1.0)
            transcript = sim.transcripts[0]
            assert len(transcript) == 10 and transcript.forgotten > 40
            sim.transcript_connections = 2
            await connect(sim)
            await connect(sim)  # the third connection: the first one's transcript is emptied
            assert [len(t) for t in sim.transcripts] == [0, 1, 1] and transcript.forgotten > 50


def test_control_argument_checks() -> None:
    sim = SimExchange()
    for bad in (lambda: sim.reject_subscribes(0), lambda: sim.set_lifetime(0), lambda: sim.set_lifetime(5, code=1006),
                lambda: sim.set_response_delay(2, 1), lambda: SimExchange(log_limit=0), lambda: SimExchange(book_depth=1),
                lambda: SimExchange(credentials={"k": 1})):  # type: ignore[dict-item]  # fmt: skip
        with pytest.raises(ValueError):
            bad()
