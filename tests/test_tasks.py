"""The run task is owned by a plain anyio task group (public API only).

Under asyncio's eager task factory (3.12+), a child starts running inside
``start_soon``; ``async with Connection(...)`` must work there too (it crashed
when the engine wrote anyio's private task bookkeeping).
"""

from __future__ import annotations

import asyncio
import sys

import anyio
import pytest

from engine import Connection, ConnectionSetup, State
from engine.sim import SimExchange
from engine.tasks import task_identity

needs_eager = pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.eager_task_factory is 3.12+")


@pytest.mark.anyio
async def test_task_identity_tells_tasks_apart() -> None:
    ident = task_identity()
    seen: list[int] = []

    async def record() -> None:
        seen.append(ident())

    async with anyio.create_task_group() as tg:
        tg.start_soon(record)
        tg.start_soon(record)
    seen.append(ident())
    assert len(set(seen)) == 3 and ident() == ident()


async def _live_then_leave() -> list[str]:
    async with SimExchange() as sim:
        setup = ConnectionSetup(url="ws://sim.test/ws", handler=lambda conn, message: None)
        with anyio.fail_after(10):
            async with Connection(setup, dialer=sim.dialer()) as conn:
                await conn.wait_for(State.LIVE)
    return [e.trigger for e in conn.history]


@needs_eager
@pytest.mark.parametrize("style", ["async-with", "task-group-start"])
def test_connection_under_the_eager_task_factory(style: str) -> None:
    async def main() -> list[str]:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        if style == "async-with":
            return await _live_then_leave()
        async with SimExchange() as sim:
            setup = ConnectionSetup(url="ws://sim.test/ws", handler=lambda conn, message: None)
            conn = Connection(setup, dialer=sim.dialer())
            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    await tg.start(conn.run)
                    await conn.wait_for(State.LIVE)
                    await conn.close()
            return [e.trigger for e in conn.history]

    triggers = asyncio.run(main())
    assert triggers == ["connect", "opened", "subscribed", "close", "closed"]


def test_connection_runs_under_the_default_asyncio_loop() -> None:
    assert asyncio.run(_live_then_leave()) == ["connect", "opened", "subscribed", "close", "closed"]


