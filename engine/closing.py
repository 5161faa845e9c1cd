"""Closing a connection: the user's close request, and leaving ``async with``.

Closing is a state (``closing``), never a flag: :func:`begin_close` fires it
and sends our close frame; the run task sees the handshake through (the
reader reads the peer's reply, the session ends, the supervisor sees the
state and stops) and fires ``closed``. Every wait is bounded by
``close_timeout``; past it, :func:`stop` cancels what still runs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.lowlevel

from engine.causes import UserClose
from engine.wire import WRITE_FAILED
from transports.websocket import ProtocolState

if TYPE_CHECKING:
    from engine.host import SessionHost

__all__ = ["begin_close", "leave_block", "stop"]

log = logging.getLogger("wirestate.connection")


async def begin_close(conn: SessionHost, code: int, reason: str) -> bool:
    """Fire ``close`` (if the connection runs and is not closing yet) and send our close frame.

    True when the reader will see the close handshake through (the caller
    then only waits); False when there is nothing to wait for. Never raises
    for a connection that is going away.
    """
    if not conn._model.may_fire("close"):
        return False  # never started, already stopped, or already closing
    conn._fire("close", UserClose(code, reason))
    if conn._pause is not None:
        conn._pause.cancel()
    wire = conn._wire
    if wire is None:
        return False
    wire.stop_setup()  # nothing more to set up on a connection that is going away
    proto = wire.proto
    if proto is None or proto.state is not ProtocolState.OPEN:
        return False
    try:
        await wire.write_control(proto.send_close(code, reason))
    except WRITE_FAILED:
        return False
    conn.last_close_sent = proto.close_sent
    return True


def stop(conn: SessionHost) -> None:
    """Stop the run task's current work now; the state (closing) keeps it from starting more."""
    wire = conn._wire
    if wire is not None:
        wire.scope.cancel()
    if conn._pause is not None:
        conn._pause.cancel()


async def leave_block(conn: SessionHost, tg: anyio.abc.TaskGroup, exc_info: Any) -> bool | None:
    """``__aexit__``: close politely (bounded, shielded), then join the run task's group."""
    failure: Exception | None = None
    try:
        # Shielded: leaving the block by cancellation still says goodbye, within close_timeout.
        with anyio.CancelScope(shield=True, deadline=conn._clock() + conn.setup.close_timeout) as scope:
            if await begin_close(conn, 1000, ""):
                # The run task sees the close handshake through; the session's
                # deadline bounds it if the peer never answers.
                wire = conn._wire
                if wire is not None:
                    wire.scope.deadline = conn._clock() + conn.setup.close_timeout
            else:
                stop(conn)
        if scope.cancelled_caught:  # our close frame could not be written in time
            stop(conn)
    except Exception as exc:  # the run task must still be stopped and joined
        stop(conn)
        failure = exc
    try:
        result = await tg.__aexit__(*exc_info)
    except BaseExceptionGroup as group:
        # The task group wraps the body's own exception (on trio, beside the
        # Cancelled of an outer scope that fired meanwhile): let it through as
        # it was; an error wins over a cancellation.
        body_exc, cancelled = exc_info[1], anyio.get_cancelled_exc_class()
        if any(e is body_exc for e in group.exceptions) and all(
            e is body_exc or isinstance(e, cancelled) for e in group.exceptions
        ):
            if failure is not None:  # the body's error goes on; ours is not lost silently
                log.warning("%s: closing on the way out failed", conn.id, exc_info=failure)
            return False
        raise
    if failure is not None:
        raise failure
    # A scope around the block cancelled while nothing here had to wait
    # (the run task was already done) is seen now, as at any checkpoint.
    await anyio.lowlevel.checkpoint_if_cancelled()
    return result
