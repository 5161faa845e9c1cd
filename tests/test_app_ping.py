"""Application pings (issue 17 item 5): the exchange's own ping text keeps a quiet connection live."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from wspeer import Peer, ServerSide

from engine import Backoff, ConfigError, Connection, ConnectionSetup, State
from engine.causes import Silence
from engine.liveness import AppPing

pytestmark = pytest.mark.anyio


def okx_like(answer: bool) -> Any:
    pings: list[float] = []

    async def script(side: ServerSide) -> None:
        await side.accept()
        while (message := await side.next_message()) is not None:
            if message == "ping":
                pings.append(anyio.current_time())
                if answer:
                    await side.send_text("pong")

    script.pings = pings  # type: ignore[attr-defined]
    return script


def setup_for(**overrides: Any) -> ConnectionSetup:
    options: dict[str, Any] = dict(
        url="ws://okx.test/ws",
        traffic_timeout=30.0,
        pong_timeout=5.0,
        app_ping=AppPing("ping", interval=25.0, reply="pong"),
        backoff=Backoff(initial=100.0, maximum=100.0, jitter=False),
    )
    options.update(overrides)
    return ConnectionSetup(**options)


async def test_app_pings_keep_a_quiet_connection_live_and_their_replies_stay_out_of_the_handler() -> None:
    received: list[Any] = []
    script = okx_like(answer=True)
    async with anyio.create_task_group() as tg:
        peer = Peer(tg, script)
        with anyio.fail_after(4000):
            async with Connection(setup_for(handler=lambda c, m: received.append(m)), dialer=peer) as conn:
                await conn.wait_for(State.LIVE)
                await anyio.sleep(3600)
                assert conn.state is State.LIVE and conn.sessions == 1
        tg.cancel_scope.cancel()
    assert received == []
    gaps = [b - a for a, b in zip(script.pings, script.pings[1:])]
    assert len(script.pings) >= 140 and all(g == pytest.approx(25.0, abs=1e-3) for g in gaps)
    assert not any(e.trigger == "silence" for e in conn.history)
    assert not [e for e in peer.sides[0].received if type(e).__name__ == "Ping"]  # no protocol pings


async def test_unanswered_app_pings_end_in_silence() -> None:
    async with anyio.create_task_group() as tg:
        with anyio.fail_after(600):
            async with Connection(setup_for(handler=lambda c, m: None), dialer=Peer(tg, okx_like(answer=False))) as conn:
                await conn.wait_for(State.RECONNECTING)
        tg.cancel_scope.cancel()
    lost = [e for e in conn.history if e.trigger == "lost"]
    assert lost[0].cause == Silence(5.0)
    assert [e.trigger for e in conn.history][:5] == ["connect", "opened", "subscribed", "silence", "lost"]


def test_app_ping_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="AppPing.message"):
        AppPing("")
    with pytest.raises(ConfigError, match="AppPing.interval"):
        AppPing("ping", interval=-1)
    with pytest.raises(ConfigError, match="app_ping must be an AppPing"):
        setup_for(handler=print, app_ping="ping")
