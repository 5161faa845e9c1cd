"""The simulator's signed login, private channels, orders and fills, and out-of-order answers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio
import orjson
import pytest

from engine.sim import SimExchange
from engine.sim.auth import login_payload, sign_login
from engine.sim.dialect import UNAUTHORIZED, Login
from tests.test_sim import BOUND, Client, connect, jsons, running

pytestmark = pytest.mark.anyio

KEY, SECRET = "test-key", "s3cret"


def signed_login(key: str = KEY, secret: str = SECRET, nonce: str = "n-1", id: Any = 1) -> dict[str, Any]:
    ts = anyio.current_time()
    return {"op": "login", "key": key, "timestamp": ts, "nonce": nonce, "signature": sign_login(secret, key, ts, nonce), "id": id}


async def logged_in(sim: SimExchange, nonce: str = "n-1") -> Client:
    client = await connect(sim)
    reply = await client.request(signed_login(nonce=nonce))
    assert reply == {"event": "login", "ok": True, "id": 1}
    return client


def test_the_signature_covers_a_documented_string() -> None:
    assert login_payload("k", 12.5, "n") == "login\nk\n12.5\nn"
    # an independent HMAC-SHA256 of that string (RFC 2104 construction by hand)
    import hashlib

    block = b"secret".ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block) + b"login\nk\n12.5\nn").digest()
    assert sign_login("secret", "k", 12.5, "n") == hashlib.sha256(bytes(b ^ 0x5C for b in block) + inner).hexdigest()
    assert "sig" not in repr(Login("k", 1, 12.5, "n", "deadbeef")) and "deadbeef" not in repr(Login("k", signature="deadbeef"))


async def test_signed_login_ok_wrong_signature_unknown_key_and_reused_nonce() -> None:
    with anyio.fail_after(BOUND):
        async with running(credentials={KEY: SECRET}) as sim:
            good = await logged_in(sim)
            assert sim.accounts == [KEY]
            for message, why in [
                (signed_login(secret="wrong", nonce="n-2"), "invalid signature"),
                (signed_login(key="other", nonce="n-3"), "unknown API key"),
                (signed_login(nonce="n-1"), "nonce already used"),
                ({"op": "login", "key": KEY, "signature": "x", "id": 1}, "'timestamp' must be a number or a string"),
            ]:
                client = await connect(sim)
                reply = await client.request(message)
                assert reply["ok"] is False and reply["code"] == UNAUTHORIZED and reply["message"] == why
            assert sim.authenticated == [True, False, False, False, False]
            # the server-side logs never hold the signature
            logged = [text for t in sim.transcripts for e in t if e.direction == "in" for text in [e.data]]
            assert all(sign_login(SECRET, KEY, 0.0, "n-1") not in text for text in logged)
            assert all('"signature":"<redacted>"' in text for text in logged if '"login"' in text)
            assert all("<redacted>" in text for log in sim.log for _, text in log)
            await good.send_json({"op": "ping", "id": 2})


async def test_login_window_uses_the_exchange_clock() -> None:
    with anyio.fail_after(BOUND):
        async with running(credentials={KEY: SECRET}, login_window=5.0) as sim:
            await anyio.sleep(100)
            client = await connect(sim)
            stale = {**signed_login(nonce="a")}
            stale["timestamp"] = anyio.current_time() - 10
            stale["signature"] = sign_login(SECRET, KEY, stale["timestamp"], "a")
            assert (await client.request(stale))["message"] == "timestamp outside the 5 s window"
            assert (await client.request(signed_login(nonce="b")))["ok"] is True


async def test_reject_logins_fault_refuses_a_good_login_once() -> None:
    with anyio.fail_after(BOUND):
        async with running(credentials={KEY: SECRET}) as sim:
            sim.reject_logins()
            client = await connect(sim)
            assert (await client.request(signed_login(nonce="a")))["ok"] is False
            assert (await client.request(signed_login(nonce="b")))["ok"] is True
            assert sim.stats().faults == 1


async def test_private_channels_and_orders_need_a_login() -> None:
    with anyio.fail_after(BOUND):
        async with running() as sim:
            client = await connect(sim)
            refused = await client.request({"op": "subscribe", "channel": "fills", "symbols": ["BTC-USD"], "id": 1})
            assert refused["event"] == "error" and refused["code"] == UNAUTHORIZED
            order = {"op": "place_order", "symbol": "BTC-USD", "side": "buy", "price": "50000.00", "size": "0.5", "id": 2}
            assert (await client.request(order))["code"] == UNAUTHORIZED
            assert sim.private_subscriptions == [frozenset()]


async def test_orders_and_fills_flow_on_the_private_channels_of_every_connection_of_the_account() -> None:
    with anyio.fail_after(BOUND):
        async with running(credentials={KEY: SECRET}) as sim:
            a, b = await logged_in(sim, "a"), await logged_in(sim, "b")
            for client in (a, b):
                for channel in ("orders", "fills"):
                    ack = await client.request({"op": "subscribe", "channel": channel, "symbols": ["BTC-USD"], "id": 5})
                    assert ack["event"] == "subscribed"
            assert sim.private_subscriptions == [frozenset({("orders", "BTC-USD"), ("fills", "BTC-USD")})] * 2
            order = {"op": "place_order", "symbol": "BTC-USD", "side": "sell", "price": "50100.50", "size": "1.0001",
                     "client_order_id": "c1", "id": 9}  # fmt: skip
            await a.send_json(order)
            seen_a, seen_b = jsons(await a.collect(5.0)), jsons(await b.collect(1e-3))
            answers = [m for m in seen_a if m.get("event") == "order"]
            assert answers == [{"event": "order", "ok": True, "id": 9, "order_id": 1, "client_order_id": "c1", "status": "accepted"}]
            private_a = [m for m in seen_a if "channel" in m]
            assert private_a == [m for m in seen_b if "channel" in m]  # the same on both connections
            updates = [m for m in private_a if m["channel"] == "orders"]
            fills = [m for m in private_a if m["channel"] == "fills"]
            assert updates[0]["status"] == "open" and updates[-1]["status"] == "filled"
            assert updates[-1]["filled"] == "1.0001" and 1 <= len(fills) <= 3
            assert sum(Decimal(f["size"]) for f in fills) == Decimal("1.0001")
            assert all(f["price"] == "50100.50" and f["order_id"] == 1 for f in fills)
            assert [u["seq"] for u in updates] == list(range(1, len(updates) + 1))
            assert [f["seq"] for f in fills] == list(range(1, len(fills) + 1))
            assert sim.stats().orders == 1 and sim.stats().fills == len(fills)


async def test_seeded_response_delay_answers_orders_out_of_order_and_reproducibly() -> None:
    async def answer_order(seed: int) -> list[int]:
        async with running(credentials={KEY: SECRET}, seed=seed, response_delay=(0.0, 1.0)) as sim:
            client = await logged_in(sim)
            for i in range(8):
                await client.send_json({"op": "place_order", "symbol": "ETH-USD", "side": "buy", "price": "3000",
                                        "size": "1", "id": i})  # fmt: skip
            return [m["id"] for m in jsons(await client.collect(2.0)) if m.get("event") == "order"]

    with anyio.fail_after(BOUND):
        first, again, other = await answer_order(1), await answer_order(1), await answer_order(2)
    assert sorted(first) == list(range(8)) and first != list(range(8))  # every answer, not in request order
    assert first == again and first != other


async def test_duplicate_responses_fault() -> None:
    with anyio.fail_after(BOUND):
        async with running() as sim:
            client = await connect(sim)
            sim.duplicate_responses(2)
            await client.send_json({"op": "ping", "id": 1})
            await client.send_json({"op": "subscribe", "channel": "trades", "symbols": ["BTC-USD"], "id": 2})
            await client.send_json({"op": "ping", "id": 3})
            replies = [m for m in jsons(await client.collect(0.5)) if "event" in m]
            assert [(m["event"], m["id"]) for m in replies] == [
                ("pong", 1), ("pong", 1), ("subscribed", 2), ("subscribed", 2), ("pong", 3),
            ]  # fmt: skip
            assert sim.stats().faults == 2


async def test_place_order_validation() -> None:
    with anyio.fail_after(BOUND):
        async with running(credentials={KEY: SECRET}) as sim:
            client = await logged_in(sim)
            base = {"op": "place_order", "symbol": "BTC-USD", "side": "buy", "price": "1.00", "size": "1", "id": 1}
            for bad in [{"side": "hold"}, {"price": "1.001"}, {"size": "0"}, {"symbol": "DOGE-USD"}, {"price": 1.5}]:
                reply = await client.request({**base, **bad})
                assert reply["event"] == "error" and reply["code"] in (400, 404), bad
            assert sim.stats().orders == 0
