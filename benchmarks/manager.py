"""Manager costs (issue 16): memory per managed connection, and flush() per subscription.

Run: ``.venv/bin/python -m benchmarks.manager [--connections 1000] [--subscriptions 10000]``.
Both run in one process on the in-process simulator over memory streams (no
sockets), compared in the same run:

- memory: RSS and tracemalloc growth per idle connection, for 1,000 plain
  ``Connection`` objects and for 1,000 connections run by a ``Manager``
  (``max_subscriptions_per_connection=1``, one subscription each). These
  include the simulator's server side of each connection (its session,
  wsproto state, a market per subscription), so they are not comparable with
  the client-only socket numbers of ``python -m benchmarks``; the difference
  between the two rows is what a managed connection with a subscription adds;
- flush: ``Manager.flush()`` placing N new subscriptions on live connections
  whose subscriber acks at once (no network round trip), in µs per subscription:
  the ledger, placement and the subscription machines' transitions.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from typing import Any

import anyio

from engine import Connection, ConnectionSetup, Manager, Subscription, WebsocketSetup
from engine.sim import SimExchange
from machines.connection import State


def _rss_kib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4.0  # resident pages, 4 KiB each


async def _acking(conn: Any, subs: list[Subscription]) -> None:
    pass  # "acked" at once: measures the manager, not the exchange


async def _memory(n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    async with SimExchange(rate=0.001, symbols=[f"S{i}" for i in range(n)]) as sim:
        setup = ConnectionSetup(url="ws://sim.test/ws", handler=lambda c, m: None)
        gc.collect()
        rss0, (mem0, _) = _rss_kib(), tracemalloc.get_traced_memory()
        async with anyio.create_task_group() as tg:
            conns = [Connection(setup, dialer=sim.dialer()) for _ in range(n)]
            for conn in conns:
                await tg.start(conn.run)
            for conn in conns:
                await conn.wait_for(State.LIVE)
            gc.collect()
            out["connection KiB (RSS)"] = (_rss_kib() - rss0) / n
            out["connection KiB (traced)"] = (tracemalloc.get_traced_memory()[0] - mem0) / n / 1024
            for conn in conns:
                await conn.close()
        del conns
        gc.collect()
        rss0, (mem0, _) = _rss_kib(), tracemalloc.get_traced_memory()
        manager = Manager(
            WebsocketSetup(exchange="sim", use_multi_connection_management=True, max_subscriptions_per_connection=1),
            dialer=sim.dialer(),
        )
        manager.add_connection(
            ConnectionSetup(
                url="ws://sim.test/ws",
                handler=lambda c, m: None,
                subscriber=_acking,
                generate_subscriptions=lambda: [Subscription("trades", f"S{i}") for i in range(n)],
            )
        )
        async with manager:
            gc.collect()
            out["managed connection KiB (RSS)"] = (_rss_kib() - rss0) / n
            out["managed connection KiB (traced)"] = (tracemalloc.get_traced_memory()[0] - mem0) / n / 1024
    return out


async def _flush(n: int) -> float:
    subs: list[Subscription] = []
    async with SimExchange(rate=0.001) as sim:
        manager = Manager(WebsocketSetup(exchange="sim", use_multi_connection_management=True), dialer=sim.dialer())
        manager.add_connection(
            ConnectionSetup(url="ws://sim.test/ws", handler=lambda c, m: None, subscriber=_acking, generate_subscriptions=lambda: subs)
        )
        async with manager:
            subs.extend(Subscription("trades", f"S{i}") for i in range(n))
            t0 = time.perf_counter()
            await manager.flush()
            took = time.perf_counter() - t0
            assert len(manager.subscriptions()) == n
    return took / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.manager")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--subscriptions", type=int, default=10_000)
    args = parser.parse_args()
    tracemalloc.start()
    memory = anyio.run(_memory, args.connections)
    tracemalloc.stop()
    flushes = [anyio.run(_flush, args.subscriptions) for _ in range(3)]
    print(f"| what ({args.connections} connections, {args.subscriptions} subscriptions) | result |")
    print("|---|---|")
    for name, value in memory.items():
        print(f"| {name} | {value:.1f} |")
    print(f"| flush() µs per subscription (3 runs) | {', '.join(f'{f:.1f}' for f in flushes)} |")


if __name__ == "__main__":
    main()
