"""The simulator as a user runs it in their own tests: an engine Connection, a signed login,
private channels, orders answered out of order, and a scripted fault, all on virtual time."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import anyio
import orjson
import pytest

from engine import Backoff, Connection, ConnectionSetup, State, Subscription
from engine.sim import SimExchange, sign_login

pytestmark = pytest.mark.anyio

KEY, SECRET = "user-key", "user-secret"


async def signed_login(conn: Any) -> None:
    ts, nonce = str(conn.now()), f"n{conn.next_id()}"
    rid = conn.next_id()
    message = {"op": "login", "key": KEY, "timestamp": ts, "nonce": nonce, "signature": sign_login(SECRET, KEY, ts, nonce), "id": rid}
    reply = orjson.loads(await conn.request(message, key=rid))
    assert reply["ok"], reply


async def subscribe(conn: Any, subs: list[Subscription]) -> None:
    for sub in subs:
        rid = conn.next_id()
        reply = orjson.loads(await conn.request({"op": "subscribe", "channel": sub.channel, "symbols": list(sub.symbols), "id": rid}, key=rid))
        assert reply["event"] == "subscribed", reply


#: orders the bot places at once: with answers delayed at random, all of them coming back in the
#: order they were sent (which the test takes as "the exchange did not reorder") has odds 1/12!
ORDERS = 12


async def test_a_trading_bot_against_the_simulated_exchange() -> None:
    private: list[dict[str, Any]] = []
    async with SimExchange(seed=5, credentials={KEY: SECRET}, response_delay=(0.0, 2.0)) as sim:
        setup = ConnectionSetup(
            url="ws://sim.test/private",
            authenticated=True,
            connector=signed_login,
            subscriber=subscribe,
            generate_subscriptions=lambda: [Subscription("orders", "BTC-USD"), Subscription("fills", "BTC-USD")],
            handler=lambda conn, message: private.append(orjson.loads(message)),
            backoff=Backoff(initial=1.0, maximum=1.0, jitter=False),
        )
        with anyio.fail_after(600):
            async with Connection(setup, dialer=sim.dialer()) as conn:
                await conn.wait_for(State.LIVE)
                sent: list[int] = []
                answered: list[int] = []

                async def place(n: int) -> None:
                    rid = conn.next_id()
                    order = {"op": "place_order", "symbol": "BTC-USD", "side": "buy", "price": "49000.00",
                             "size": f"0.{n + 1}", "client_order_id": f"c{n}", "id": rid}  # fmt: skip
                    # (request() sends before its first await: this is the order the exchange
                    # receives them in, whichever order the backend ran the tasks in)
                    sent.append(n)
                    answer = orjson.loads(await conn.request(order, key=rid))
                    assert answer["client_order_id"] == f"c{n}"  # the right answer, whatever the order
                    answered.append(n)

                async with anyio.create_task_group() as tg:
                    for n in range(ORDERS):
                        tg.start_soon(place, n)
                assert sorted(answered) == list(range(ORDERS)) and answered != sent  # answered out of order
                await anyio.sleep(5)  # every order fills within 3 s
                sim.call_later(1.0, sim.drop)  # a scripted reset: the connection comes back by itself
                await anyio.sleep(1.5)
                await conn.wait_for(State.LIVE)
                assert sim.accepted == 2 and sim.accounts == [KEY]
    fills = [m for m in private if m["channel"] == "fills"]
    filled = {m["client_order_id"] for m in private if m["channel"] == "orders" and m["status"] == "filled"}
    assert filled == {f"c{n}" for n in range(ORDERS)}
    assert sum(Decimal(f["size"]) for f in fills) == sum(Decimal(f"0.{n + 1}") for n in range(ORDERS))
    assert [f["seq"] for f in fills] == list(range(1, len(fills) + 1))
    first_login = next(e for e in sim.transcripts[0] if e.direction == "in" and '"login"' in e.data)
    assert "<redacted>" in first_login.data
