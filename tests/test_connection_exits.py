"""Every way out of ``async with Connection`` from every state: no hang, no leaked task, the right exception.

A matrix over the states a connection can be in when its block ends and the
ways a block ends (normally, by an error, by a BaseException, by an outer
cancellation, after close()). Both backends, virtual time.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import orjson
import pytest

from engine import Backoff, Connection, ConnectionSetup, State
from engine.sim import SimExchange
from transports.base import URL, ByteStream

pytestmark = pytest.mark.anyio


async def _subscribe(conn: Connection, subs: list[Any]) -> None:
    rid = conn.next_id()
    await conn.request(
        {"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": rid},
        match=lambda m: orjson.loads(m).get("id") == rid,
        timeout=5,
    )


async def _never(*args: Any) -> None:
    await anyio.sleep_forever()


async def _refuse(url: URL) -> ByteStream:
    raise ConnectionRefusedError(111, "refused")


# state -> (setup overrides, fault to inject once live, the state to end the block in)
CASES: dict[str, tuple[dict[str, Any], Any, State]] = {
    "connecting": ({"dialer": "hang"}, None, State.CONNECTING),
    "authenticating": ({"authenticated": True, "connector": _never}, None, State.AUTHENTICATING),
    "subscribing": ({"subscriber": _never}, None, State.SUBSCRIBING),
    "live": ({}, None, State.LIVE),
    "stale": ({}, SimExchange.stall, State.STALE),
    "reconnecting": ({"dialer": "refuse"}, None, State.RECONNECTING),
}


class _Boom(BaseException):
    """Not an Exception: must come out as it went in."""


def _tasks() -> set[Any]:
    try:
        return {t for t in asyncio.all_tasks() if "sim" not in repr(t)}
    except RuntimeError:  # trio: its task group tests cover leaks
        return set()


@pytest.mark.parametrize("how", ["normal", "error", "base-exception", "outer-cancel", "close-then-exit"])
@pytest.mark.parametrize("case", list(CASES))
async def test_leaving_the_block(case: str, how: str) -> None:
    overrides, fault, target = CASES[case]
    overrides = dict(overrides)
    kind = overrides.pop("dialer", "sim")
    async with SimExchange(rate=5.0) as sim:
        dialer = {"sim": sim.dialer(), "hang": _never, "refuse": _refuse}[kind]
        options: dict[str, Any] = dict(
            url="ws://sim.test/ws",
            handler=lambda c, m: None,
            subscriber=_subscribe,
            generate_subscriptions=lambda: [1],
            traffic_timeout=10.0,
            pong_timeout=3.0,
            backoff=Backoff(initial=1.0, maximum=8.0, jitter=False),
            setup_timeout=1000.0,
            open_timeout=1000.0,
            close_timeout=5.0,
        )
        options.update(overrides)
        setup = ConnectionSetup(**options)
        before = _tasks()
        raised: BaseException | None = None
        left_at = 0.0
        with anyio.fail_after(100):
            try:
                with anyio.CancelScope() as outer:
                    async with Connection(setup, dialer=dialer) as conn:
                        if fault is not None:
                            await conn.wait_for(State.LIVE)
                            fault(sim)
                        await conn.wait_for(target)
                        left_at = anyio.current_time()
                        if how == "error":
                            raise KeyError("body")
                        if how == "base-exception":
                            raise _Boom()
                        if how == "close-then-exit":
                            await conn.close()
                        if how == "outer-cancel":
                            outer.cancel()
                            await anyio.sleep_forever()
            except BaseException as exc:  # noqa: BLE001 - what comes out is the subject
                raised = exc
        expected = {"error": KeyError, "base-exception": _Boom}.get(how)
        if expected is None:
            assert raised is None, repr(raised)
        else:
            assert isinstance(raised, expected), repr(raised)
        assert conn.state is State.DISCONNECTED
        assert anyio.current_time() - left_at <= setup.close_timeout + 0.01
        assert not (_tasks() - before)


async def test_body_error_beats_an_outer_deadline_that_fires_during_the_exit() -> None:
    """The handler is in a bounded shielded section (say, persisting a fill) when the block
    raises; an outer deadline fires while the exit waits for it. The block's own error comes
    out, unwrapped, on both backends; the shielded section runs to its end."""
    in_handler = anyio.Event()
    finished: list[float] = []

    async def handler(conn: Connection, message: str | bytes) -> None:
        in_handler.set()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(2)
            finished.append(anyio.current_time())

    async def subscribe(conn: Connection, subs: list[Any]) -> None:
        await conn.send({"op": "subscribe", "channel": "ticker", "symbols": ["BTC-USD"], "id": 1})

    setup = ConnectionSetup(url="ws://sim.test/ws", handler=handler, subscriber=subscribe, generate_subscriptions=lambda: [1])
    async with SimExchange(rate=5.0) as sim:
        with anyio.fail_after(60), pytest.raises(KeyError, match="order book corrupt"):
            with anyio.CancelScope() as outer:
                async with Connection(setup, dialer=sim.dialer()) as conn:
                    await conn.wait_for(State.LIVE)
                    await in_handler.wait()
                    raised_at = anyio.current_time()
                    outer.deadline = raised_at + 1
                    raise KeyError("order book corrupt")
    assert finished and finished[0] == pytest.approx(raised_at + 2, abs=0.3)
    assert conn.state is State.DISCONNECTED
