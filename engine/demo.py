"""``wirestate demo``: a live stream from the embedded simulated exchange, with faults.

Starts the simulator on 127.0.0.1 (a real port, nothing else on the network),
connects, subscribes, prints messages and every state change, then injects a
drop (-> reconnecting -> live) and a stall (-> stale -> reconnecting -> live).
Ends by itself within ``duration`` seconds, or on Ctrl-C, with exit code 0
(on asyncio and trio alike). The whole script takes about 10 s; a shorter
``duration`` just ends it early, before every fault was shown.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import orjson

from engine.config import Backoff, ConnectionSetup
from engine.connection import Connection
from engine.events import StateChanged
from engine.sim import SimExchange
from engine.sim.serve import run_interruptible
from machines.connection import State

__all__ = ["run_demo"]

_SUBSCRIPTIONS = [("ticker", ["BTC-USD"]), ("trades", ["ETH-USD"])]


class _Printer:
    """Prints a readable line per message, at most a few per second so faults stay visible."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.printed = 0
        self.received = 0

    def message(self, conn: Connection, message: str | bytes) -> None:
        self.received += 1
        if self.received % 3:
            return
        data = orjson.loads(message)
        t = anyio.current_time() - self.start
        if data.get("channel") == "ticker":
            line = f"{data['symbol']} bid {data['bid']} ask {data['ask']}"
        elif data.get("channel") == "trades":
            line = f"{data['symbol']} {data['side']} {data['size']} @ {data['price']}"
        else:
            line = message if isinstance(message, str) else repr(message)
        print(f"  [{t:6.2f}s] msg #{self.received:<4} {data.get('channel', '?'):7} {line}")

    def state(self, event: StateChanged) -> None:
        t = event.at - self.start
        why = f" ({event.reason})" if event.reason else ""
        print(f"* [{t:6.2f}s] {event.source.value} -> {event.dest.value} on {event.trigger}{why}")


async def _subscribe(conn: Connection, subs: list[Any]) -> None:
    """Subscribe to each channel and wait for its ack (a reply matched by id)."""
    for channel, symbols in subs:
        request_id = conn.next_id()
        await conn.request(
            {"op": "subscribe", "channel": channel, "symbols": symbols, "id": request_id},
            key=request_id,
            timeout=5.0,
        )


async def _step(conn: Connection, title: str, *states: State, timeout: float = 6.0) -> None:
    print(f"--- {title}")
    with anyio.fail_after(timeout):
        await conn.wait_for(*states)


async def _demo(duration: float) -> None:
    start = anyio.current_time()
    printer = _Printer(start)
    conn: Connection | None = None
    with anyio.move_on_after(duration) as deadline:
        async with SimExchange(rate=4.0) as sim:
            port = await sim.listen_tcp()
            url = f"ws://127.0.0.1:{port}/ws"
            print(f"simulated exchange listening on {url}")
            setup = ConnectionSetup(
                url=url,
                handler=printer.message,
                subscriber=_subscribe,
                generate_subscriptions=lambda: list(_SUBSCRIPTIONS),
                traffic_timeout=1.5,
                pong_timeout=1.0,
                backoff=Backoff(initial=0.3, maximum=2.0),
                name="sim-1",
            )
            conn = Connection(setup)
            conn.on_state_change(printer.state)
            async with conn:
                await _step(conn, "connecting and subscribing", State.LIVE)
                await anyio.sleep(2.0)
                print("--- injecting a drop (connection reset, no close frame)")
                sim.drop()
                await _step(conn, "waiting for reconnect", State.RECONNECTING)
                await _step(conn, "waiting for live again", State.LIVE)
                await anyio.sleep(2.0)
                print("--- injecting a stall (socket open, nothing sent, pings ignored)")
                sim.stall()
                await _step(conn, "waiting for the traffic deadline", State.STALE)
                await _step(conn, "waiting for the grace to run out", State.RECONNECTING, State.LIVE)
                sim.resume()
                await _step(conn, "waiting for live again", State.LIVE)
                await anyio.sleep(1.5)
                print("--- closing")
    if deadline.cancelled_caught:
        print(f"--- demo stopped after its {duration:g} s bound")
    if conn is None:
        print(f"done: {printer.received} messages, no connection made")
    else:
        print(f"done: {printer.received} messages, {len(conn.history)} state changes, {conn.sessions} sessions")


def run_demo(duration: float = 20.0, backend: str = "asyncio") -> int:
    """Run the demo; returns the exit code (0, also on Ctrl-C, on either backend)."""
    try:
        run_interruptible(_demo, duration, backend=backend)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
    return 0
