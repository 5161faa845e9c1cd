"""The session that the record and replay tests run: login, subscribe, data, a drop, reconnect, more data.

``run_session(dialer, drop)`` drives one Connection through it and returns the
serialized output: the StateChanged stream, then (after a ``--`` line) the
delivered messages, one line each, times relative to the start
(microseconds). The two are kept apart: which of two tasks runs first within
one instant (the subscriber firing ``subscribed``, the reader delivering the
message that arrived with the ack) is the scheduler's choice, and trio
shuffles it on purpose; each stream on its own is exact. Against the sim it is the
"recorded run"; with a replayer's dialer (and ``drop`` doing nothing: the
recording carries the reset) it must print the same lines.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from engine import AuthenticationFailed, Backoff, Connection, ConnectionSetup, State, StateChanged
from engine.sim import SimExchange, sign_login
from transports.base import Dialer

API_KEY = "AKIA-live-key-5f3e9a"
API_SECRET = "s3cr3t-never-on-disk"
CREDENTIALS = {API_KEY: API_SECRET}


async def login(conn: Connection) -> None:
    rid = conn.next_id()
    stamp = round(anyio.current_time(), 6)
    nonce = f"n-{conn.sessions}-{rid}"
    payload = {
        "op": "login",
        "key": API_KEY,
        "timestamp": stamp,
        "nonce": nonce,
        "signature": sign_login(API_SECRET, API_KEY, stamp, nonce),
        "id": rid,
    }
    reply = await conn.request(payload, key=rid, timeout=5)
    if '"ok":true' not in reply:
        raise AuthenticationFailed("login refused")


async def subscribe(conn: Connection, subs: list[Any]) -> None:
    for channel, symbols in subs:
        rid = conn.next_id()
        await conn.request({"op": "subscribe", "channel": channel, "symbols": symbols, "id": rid}, key=rid, timeout=5)


def serialize_change(event: StateChanged, t0: float) -> str:
    return (
        f"{event.at - t0:.6f} state {event.connection} {event.source.value}->{event.dest.value} "
        f"{event.trigger} | {event.reason} | {event.cause!r} | {event.delay!r}"
    )


async def run_session(dialer: Dialer, drop: Callable[[], None], *, seconds: float = 3.0) -> list[str]:
    """The scripted session; returns its serialized output."""
    t0 = anyio.current_time()
    out: list[str] = []
    changes: list[str] = []

    def handler(conn: Connection, message: str | bytes) -> None:
        kind = "text" if isinstance(message, str) else "binary"
        out.append(f"{anyio.current_time() - t0:.6f} {kind} {message!r}")

    setup = ConnectionSetup(
        url="wss://sim.test/private?listenKey=LK-0123456789abcdef",
        handler=handler,
        connector=login,
        subscriber=subscribe,
        generate_subscriptions=lambda: [("ticker", ["BTC-USD"]), ("trades", ["ETH-USD"])],
        authenticated=True,
        traffic_timeout=10.0,
        pong_timeout=3.0,
        backoff=Backoff(initial=1.0, maximum=8.0, jitter=False),
        extra_headers={"X-MBX-APIKEY": API_KEY},
        on_state_change=lambda event: changes.append(serialize_change(event, t0)),
    )
    async with Connection(setup, dialer=dialer, id="private") as conn:
        await conn.wait_for(State.LIVE)
        await anyio.sleep(seconds)
        drop()
        await conn.wait_for(State.RECONNECTING)
        await conn.wait_for(State.LIVE)
        await anyio.sleep(seconds)
    return [*changes, "--", *out]


def sim() -> SimExchange:
    return SimExchange(rate=5.0, credentials=CREDENTIALS)
