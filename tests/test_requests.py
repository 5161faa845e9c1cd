"""Requests by key (issue 17 item 4): out of order, expect=N, is_final, timeouts, late answers, disconnects."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import orjson
import pytest
from wspeer import Peer, ServerSide

from engine import ConnectionLost, ConnectionSetup, Connection, DuplicateRequest, RequestTimeout, State, Backoff

pytestmark = pytest.mark.anyio


def setup_for(**overrides: Any) -> ConnectionSetup:
    options: dict[str, Any] = dict(
        url="ws://peer.test/ws",
        handler=lambda conn, message: None,
        backoff=Backoff(initial=100.0, maximum=100.0, jitter=False),
    )
    options.update(overrides)
    return ConnectionSetup(**options)


def answering(*, batch: int = 1, reverse: bool = False, copies: int = 1, delay: float = 0.0, drop_after: int | None = None):  # type: ignore[no-untyped-def]
    """A peer that answers each request {"id": n} with {"id": n, "part": i} ``copies`` times;
    collects ``batch`` requests first and answers them reversed if asked."""

    async def script(side: ServerSide) -> None:
        await side.accept()
        seen = 0
        while True:
            held = []
            while len(held) < batch:
                message = await side.next_message()
                if message is None:
                    return
                held.append(orjson.loads(message))
                seen += 1
                if drop_after is not None and seen >= drop_after:
                    side.stream.abort()
                    return
            if delay:
                await anyio.sleep(delay)
            for request in reversed(held) if reverse else held:
                for part in range(copies):
                    await side.send_text(orjson.dumps({"id": request["id"], "part": part}).decode())

    return script


async def run_with(script: Any, body: Any, **overrides: Any) -> Connection:
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(120):
            async with Connection(setup_for(**overrides), dialer=Peer(tg, script)) as conn:
                await conn.wait_for(State.LIVE)
                await body(conn)
        tg.cancel_scope.cancel()
    return conn


async def test_out_of_order_responses_resolve_the_right_requests() -> None:
    results: dict[int, Any] = {}

    async def body(conn: Connection) -> None:
        async def one(n: int) -> None:
            results[n] = orjson.loads(await conn.request({"id": n}, key=n))["id"]

        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(one, n)

    await run_with(answering(batch=5, reverse=True), body)
    assert results == {n: n for n in range(5)}


async def test_expect_gathers_and_is_final_ends_early() -> None:
    async def body(conn: Connection) -> None:
        three = await conn.request({"id": 1}, key=1, expect=3)
        assert [orjson.loads(m)["part"] for m in three] == [0, 1, 2]
        early = await conn.request({"id": 2}, key=2, expect=10, is_final=lambda m: orjson.loads(m)["part"] == 1)
        assert [orjson.loads(m)["part"] for m in early] == [0, 1]

    await run_with(answering(copies=3), body)


async def test_timeout_names_the_key_and_a_late_answer_reaches_the_handler(caplog: pytest.LogCaptureFixture) -> None:
    received: list[Any] = []

    async def body(conn: Connection) -> None:
        with pytest.raises(RequestTimeout, match="'slow-1'"):
            await conn.request({"id": "slow-1"}, key="slow-1", timeout=2.0)
        await anyio.sleep(5)

    with caplog.at_level(logging.WARNING):
        conn = await run_with(answering(delay=3.0), body, handler=lambda c, m: received.append(m))
    assert [orjson.loads(m)["id"] for m in received] == ["slow-1"]
    assert conn._requests.late_responses == 1
    assert sum("came after its timeout" in r.getMessage() for r in caplog.records) == 1


async def test_a_duplicate_key_raises_at_once() -> None:
    async def body(conn: Connection) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: conn.request({"id": 7}, key=7))
            await anyio.sleep(0.1)
            with pytest.raises(DuplicateRequest, match="7"):
                await conn.request({"id": 7}, key=7)

    await run_with(answering(delay=1.0), body)


async def test_a_request_pending_at_disconnect_raises_connection_lost() -> None:
    async def body(conn: Connection) -> None:
        with pytest.raises(ConnectionLost, match="outcome is unknown"):
            await conn.request({"id": 1}, key=1, timeout=50)

    await run_with(answering(drop_after=1), body)


async def test_ten_thousand_concurrent_requests_resolve_and_leave_nothing_pending() -> None:
    done: list[int] = []
    latencies: list[float] = []

    async def body(conn: Connection) -> None:
        async def one(n: int) -> None:
            await conn.request({"id": n}, key=n, timeout=60)
            done.append(n)

        async with anyio.create_task_group() as tg:
            for n in range(10_000):
                tg.start_soon(one, n)
        assert len(conn._requests) == 0

    await run_with(answering(), body, latency_observer=lambda conn, key, took: latencies.append(took))
    assert sorted(done) == list(range(10_000))
    assert len(latencies) == 10_000 and all(t >= 0 for t in latencies)


async def test_an_answer_cut_anywhere_between_reads_still_answers_while_data_streams() -> None:
    """With a request pending, reads without ``"id"`` skip the matcher (engine/reader.py); an
    answer whose bytes are cut at any point, across two or three reads, must still be found."""
    data = orjson.dumps({"channel": "trades", "symbol": "BTC-USD", "price": "1.0", "seq": 1}).decode()
    answer_text = orjson.dumps({"result": "ok", "id": 7, "pad": "x" * 20}).decode()
    handled: list[str] = []

    async def script(side: ServerSide) -> None:
        await side.accept()
        frame = side.text_frame(answer_text)
        noise = side.text_frame(data)
        cuts = [(k,) for k in range(1, len(frame))] + [(k, k + 3) for k in range(1, len(frame) - 3, 5)]
        cuts.append(tuple(range(1, len(frame))))  # and one byte per read
        for cut in cuts:
            request = await side.next_message()
            assert request is not None and orjson.loads(request)["id"] == 7
            pieces, start = [], 0
            for end in (*cut, len(frame)):
                pieces.append(frame[start:end])
                start = end
            for i, piece in enumerate(pieces):
                # data before the answer's first piece and after its last, in the same reads
                await side.send_raw((noise if i == 0 else b"") + piece + (noise if i == len(pieces) - 1 else b""))
                await anyio.sleep(0.001)  # one read each
        await side.next_message()

    async def body(conn: Connection) -> None:
        frame_length = len(answer_text) + 2
        for _ in range(frame_length - 1 + len(range(1, frame_length - 3, 5)) + 1):
            assert orjson.loads(await conn.request({"op": "get", "id": 7}, key=7, timeout=5))["id"] == 7

    conn = await run_with(script, body, handler=lambda conn, message: handled.append(message))
    assert conn.sessions == 1
    assert handled and all(m == data for m in handled)  # every answer matched, no answer reached the handler


async def test_pending_requests_lists_each_waiting_key_with_its_deadline() -> None:
    async def body(conn: Connection) -> None:
        assert conn.pending_requests == []
        start = anyio.current_time()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: conn.request({"op": "get", "id": 1}, key=1, timeout=5))
            await anyio.sleep(0.1)
            [(key, deadline)] = conn.pending_requests
            assert key == 1 and deadline == pytest.approx(start + 5, abs=1e-3)
        assert conn.pending_requests == []

    await run_with(answering(delay=1.0), body)


async def test_however_a_wait_ends_its_key_is_free_again() -> None:
    """Answered, timed out or cancelled while waiting (and one that cannot be framed never
    enters): the table keeps nothing, and the same key can be asked again at once."""

    async def body(conn: Connection) -> None:
        assert await conn.request({"id": "k"}, key="k", timeout=5) is not None  # answered
        assert conn.pending_requests == []
        with pytest.raises(RequestTimeout):
            await conn.request({"id": "k", "slow": True}, key="k", timeout=0.5)  # the peer waits 2 s
        assert conn.pending_requests == []
        with anyio.move_on_after(0.5) as scope:
            await conn.request({"id": "k", "slow": True}, key="k", timeout=5)  # cancelled while waiting
        assert scope.cancelled_caught and conn.pending_requests == []
        with pytest.raises(TypeError):
            await conn.request({"id": "k", "bad": object()}, key="k")  # cannot be framed: never registered
        assert conn.pending_requests == []
        assert await conn.request({"id": "k"}, key="k", timeout=5) is not None  # and once more
        assert conn.pending_requests == []

    async def script(side: ServerSide) -> None:
        await side.accept()
        while (message := await side.next_message()) is not None:
            request = orjson.loads(message)
            if request.get("slow"):
                await anyio.sleep(2.0)  # (virtual time) after its requester gave up: goes to the handler
            await side.send_text(orjson.dumps({"id": request["id"]}).decode())

    await run_with(script, body)


async def test_bad_arguments_raise_at_the_call_and_an_unawaited_request_does_nothing() -> None:
    """``request`` checks and frames at the call (it returns the coroutine that registers,
    sends and waits): a bad call raises before any await, and a request never awaited
    registers no key and sends nothing."""
    seen: list[Any] = []

    async def body(conn: Connection) -> None:
        with pytest.raises(ValueError, match="expect must be a positive integer"):
            _ = conn.request({"id": 1}, key=1, expect=0)
        with pytest.raises(TypeError):
            _ = conn.request({"id": 1, "bad": object()}, key=1)
        dropped = conn.request({"id": "dropped"}, key="dropped")
        assert conn.pending_requests == []
        dropped.close()  # (never awaited)
        assert await conn.request({"id": 2}, key=2, timeout=5) is not None
        assert seen == [2] and conn.pending_requests == []

    async def script(side: ServerSide) -> None:
        await side.accept()
        while (message := await side.next_message()) is not None:
            request = orjson.loads(message)
            seen.append(request["id"])
            await side.send_text(orjson.dumps(request).decode())

    await run_with(script, body)


def _req_id(calls: list[str | bytes]) -> Any:
    def response_key(message: str | bytes) -> Any:
        calls.append(message)
        return orjson.loads(message).get("req_id")

    return response_key


@pytest.mark.parametrize("marker", [b'"req_id"', b""])
async def test_a_custom_key_with_a_marker_is_asked_only_of_reads_holding_it(marker: bytes) -> None:
    """``response_marker``: reads without it pass the matcher by, even with a request pending (an
    answer whose marker is cut between two reads still answers); ``b""`` offers every message."""
    data = orjson.dumps({"channel": "trades", "symbol": "BTC-USD", "seq": 1}).decode()
    answer = orjson.dumps({"req_id": "a1", "result": "ok"}).decode()
    calls: list[str | bytes] = []
    handled: list[str] = []

    async def script(side: ServerSide) -> None:
        await side.accept()
        request = await side.next_message()
        assert request is not None and orjson.loads(request)["req_id"] == "a1"
        noise = side.text_frame(data)
        await side.send_raw(noise * 50)  # a read of data alone, the request pending
        await anyio.sleep(0.001)
        frame = side.text_frame(answer)
        split = frame.index(b"req_id") + 3  # the marker cut in two
        await side.send_raw(noise + frame[:split])
        await anyio.sleep(0.001)
        await side.send_raw(frame[split:] + noise)
        await side.next_message()

    async def body(conn: Connection) -> None:
        reply = await conn.request({"op": "get", "req_id": "a1"}, key="a1", timeout=5)
        assert orjson.loads(reply)["req_id"] == "a1"
        with anyio.fail_after(5):
            while len(handled) < 52:  # (bounded by fail_after)
                await anyio.sleep(0.01)

    conn = await run_with(script, body, response_key=_req_id(calls), response_marker=marker,
                          handler=lambda conn, message: handled.append(message))  # fmt: skip
    assert conn.sessions == 1 and handled == [data] * 52
    if marker:  # only the reads around the answer were offered: not the 50 data messages alone
        assert 1 <= len(calls) <= 3 and answer in calls
    else:
        # every message of the reads up to the answer's, that read's last one too (whether a request
        # waits is asked once per read); none of the reads after it
        assert len(calls) == 50 + 1 + 1 + 1


def test_response_marker_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="response_marker must be bytes or None, not str"):
        setup_for(response_marker='"id"')


async def test_each_request_times_out_at_its_own_deadline_whatever_the_order() -> None:
    """Deadlines of one table share a timer on asyncio (engine.waiter.Deadlines): a short timeout
    sent after a long one, and many equal ones, each end exactly at their own deadline."""
    ended: dict[str, float] = {}

    async def body(conn: Connection) -> None:
        start = anyio.current_time()

        async def one(key: str, timeout: float) -> None:
            with pytest.raises(RequestTimeout, match=key):
                await conn.request({"id": key}, key=key, timeout=timeout)
            ended[key] = anyio.current_time() - start

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, "long", 9.0)
            await anyio.sleep(0.5)
            tg.start_soon(one, "short", 1.0)
            await anyio.sleep(0.5)
            for i in range(20):
                tg.start_soon(one, f"same-{i}", 3.0)
        assert conn.pending_requests == []

    await run_with(answering(delay=100.0), body)
    assert ended["long"] == pytest.approx(9.0, abs=0.01)
    assert ended["short"] == pytest.approx(1.5, abs=0.01)
    assert all(ended[f"same-{i}"] == pytest.approx(4.0, abs=0.01) for i in range(20))
