"""Per-subscription staleness (issue 16): a quiet symbol on a busy connection is resubscribed alone."""

from __future__ import annotations

from typing import Any

import anyio
import orjson
import pytest

from engine import Backoff, ConfigError, ConnectionSetup
from engine.config import WebsocketSetup
from engine.manager import Manager
from engine.sim import SimExchange
from engine.subscriptions import Subscription
from machines.subscription import SubState
from tests.test_manager import sent, subscriber, unsubscriber

pytestmark = pytest.mark.anyio


def stream_of(message: str | bytes) -> tuple[str, str] | None:
    data = orjson.loads(message)
    if "channel" in data and "symbol" in data:
        return data["channel"], data["symbol"]
    return None


async def test_a_symbol_the_exchange_silently_dropped_is_resubscribed_alone() -> None:
    """The exchange stops sending ETH (here: an unsubscribe behind the manager's back) while BTC
    streams on: after ETH's stale_after it alone is resubscribed, on the same connection."""
    heard: list[tuple[float, str]] = []

    def handler(conn: Any, message: str | bytes) -> None:
        key = stream_of(message)
        if key is not None:
            heard.append((anyio.current_time(), key[1]))

    async with SimExchange(rate=5.0) as sim:
        manager = Manager(WebsocketSetup(exchange="sim", traffic_timeout=10.0), dialer=sim.dialer())
        manager.add_connection(
            ConnectionSetup(
                url="ws://sim.test/ws",
                handler=handler,
                subscriber=subscriber,
                unsubscriber=unsubscriber,
                stream_of=stream_of,
                backoff=Backoff(initial=1.0, maximum=1.0, jitter=False),
            ),
            name="spot",
        )
        with anyio.fail_after(120):
            async with manager:
                await manager.subscribe(
                    [Subscription("ticker", "BTC-USD", stale_after=5.0), Subscription("ticker", "ETH-USD", stale_after=5.0)]
                )
                conn = manager.connection("spot#1")
                await anyio.sleep(3)
                dropped_at = anyio.current_time()
                await conn.request({"op": "unsubscribe", "channel": "ticker", "symbols": ["ETH-USD"], "id": "x"}, key="x")
                for info in manager.subscriptions():
                    assert info.state is SubState.SUBSCRIBED
                await anyio.sleep(10)
                assert sim.accepted == 1  # the connection itself was never touched
                states = {str(info.subscription): info.state for info in manager.subscriptions()}
                assert states == {"ticker:BTC-USD": SubState.SUBSCRIBED, "ticker:ETH-USD": SubState.SUBSCRIBED}
    # on the wire: ETH subscribed twice (first, and again after going quiet), BTC once
    assert sorted(sent(sim)[0]) == ["ticker:BTC-USD", "ticker:ETH-USD", "ticker:ETH-USD"]
    eth = [t for t, s in heard if s == "ETH-USD" and t > dropped_at]
    btc = [t for t, s in heard if s == "BTC-USD" and t > dropped_at]
    assert eth and eth[0] - dropped_at == pytest.approx(5.0, abs=5.0 / 4 + 1.0)  # noticed within a quarter of its limit
    assert len(btc) >= 40  # BTC never paused (5 per second for 10 s)
    assert max(b - a for a, b in zip(btc, btc[1:])) < 1.0


async def test_stale_after_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="stale_after"):
        Subscription("ticker", "BTC-USD", stale_after=-1)
