"""Keeps a connection's sessions coming: run one, ask the policy, wait, run the next.

The decision was taken when the session was lost (the ``lost`` transition
carries it: delay or give-up); this loop carries it out. Between sessions it
waits in a cancel scope that ``close()`` cancels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from engine.causes import GiveUp
from engine.session import run_session
from machines.connection import State

if TYPE_CHECKING:
    from engine.host import SessionHost

__all__ = ["supervise"]


async def supervise(conn: SessionHost) -> None:
    """Run sessions until the connection is closing or the policy gives up."""
    while conn.state is State.CONNECTING:
        await run_session(conn)
        if conn.state is not State.RECONNECTING:
            return  # closing
        decision = conn._decision
        if isinstance(decision, GiveUp):
            conn._fire("give_up", decision, note=decision.reason)
            return
        assert decision is not None
        with anyio.CancelScope(deadline=conn._decided_at + decision.delay) as pause:
            conn._pause = pause
            await anyio.sleep_forever()
        conn._pause = None
        if conn.state is not State.RECONNECTING:
            return  # closed while waiting
        conn._fire("retry", note=f"retry {conn.failures} after {decision.delay:.3f} s")
