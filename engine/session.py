"""One session: dial + handshake, connector and subscriber, the reader, teardown.

Per session one cancel scope, from dial to teardown: until the handshake is
done it carries ``open_timeout``; ending the session (any cause) or stopping
the connection cancels it. Setup runs as a short-lived child beside the
reader (it waits for replies the reader delivers); with nothing to set up,
no task group at all. Whatever ends the session, teardown is the same: a
close frame if the WebSocket is still open (so a cancelled connection says
goodbye on every backend), pending requests fail with ``ConnectionLost``,
queued writers fail, the stream closes.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import anyio

from engine.causes import Cancelled, OpenTimeout, SetupFailure, UserClose
from engine.errors import AuthenticationFailed, ConnectionClosed, ConnectionLost, NotConnected
from engine.handshake import HandshakeFailed, close_quietly, open_websocket
from engine.reader import read
from engine.wire import WRITE_FAILED, Wire, describe
from machines.connection import SESSION_STATES, State
from transports.websocket import ProtocolState

if TYPE_CHECKING:
    from engine.host import SessionHost

__all__ = ["run_session"]

log = logging.getLogger("wirestate.connection")


async def run_session(conn: SessionHost) -> None:
    """Run one session; on return the machine is in ``reconnecting`` or ``closing``."""
    setup = conn.setup
    conn.sessions += 1
    with anyio.CancelScope(deadline=conn._clock() + setup.open_timeout) as scope:
        limiter = conn.limiter
        wire = conn._wire = Wire(
            scope,
            conn._end_session,
            limiter=limiter,
            max_queued=setup.max_queued,
            model=conn._model,
        )
        try:
            await _open_and_run(conn, wire)
        finally:
            conn._wire = None
            await _teardown(conn, wire, own_cancel=scope.cancel_called)
    if conn._model.state in _OPENING:
        # The scope's deadline ended the attempt while dialing or upgrading.
        conn._lose(OpenTimeout(setup.open_timeout))


async def _open_and_run(conn: SessionHost, wire: Wire) -> None:
    setup = conn.setup
    try:
        stream, proto, leftovers = await open_websocket(setup, conn._dialer, conn._wall_clock)
    except HandshakeFailed as failed:
        conn.last_rejection = failed.rejection or conn.last_rejection
        conn._lose(failed.cause)
        return
    wire.attach(stream, proto, conn._clock())
    if wire.scope.cancel_called:
        # The deadline (or a stop) fired in the very loop iteration the answer
        # arrived: its cancellation is still on its way, so this attempt ends
        # here, before anything is opened.
        return
    wire.scope.deadline = math.inf
    conn.subprotocol = proto.subprotocol
    conn._fire("opened", note=f"subprotocol {proto.subprotocol}" if proto.subprotocol else "")
    if setup.connector is None and setup.subscriber is None:
        _no_setup(conn)
        await read(conn, wire, leftovers)
    else:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_set_up, conn, wire)
            await read(conn, wire, leftovers)


_OPENING = frozenset({State.CONNECTING.value})
_SETTING_UP = frozenset({State.AUTHENTICATING, State.SUBSCRIBING})


async def _teardown(conn: SessionHost, wire: Wire, *, own_cancel: bool) -> None:
    """Goodbye if still open, fail what waits on this session, close the stream."""
    proto, stream = wire.proto, wire.stream
    try:
        if conn.state in SESSION_STATES and not own_cancel:
            # Torn down from outside (a cancel scope around the connection), with
            # no close() and no lost: that is a close, and it says goodbye.
            # (Our own scope's deadline while opening is reported by the caller.)
            conn._fire("close", Cancelled())
        if proto is not None and proto.state is ProtocolState.OPEN and conn.state is State.CLOSING:
            cause = conn.cause
            code, reason = (cause.code, cause.reason) if isinstance(cause, UserClose) else (1000, "")
            frame = proto.send_close(code, reason)
            conn.last_close_sent = proto.close_sent
            with anyio.CancelScope(shield=True, deadline=conn._clock() + conn.setup.close_timeout):
                try:
                    await wire.write_control(frame)
                except WRITE_FAILED:
                    pass
        # (another task may be writing our close frame right now: let it land)
        await wire.settle()
    finally:
        wire.shut()
        if conn._requests:  # (no exception built for nobody)
            conn._requests.fail_all(
                ConnectionLost(f"{conn.id}: connection lost while a request was pending; its outcome is unknown", conn.cause)
            )
        await close_quietly(stream)


def _no_setup(conn: SessionHost) -> None:
    if conn.state is State.AUTHENTICATING:
        conn._fire("authenticated", note="no connector")
    conn.subscriptions = []
    conn._went_live()


async def _set_up(conn: SessionHost, wire: Wire) -> None:
    """Connector (while authenticating), then subscriber; then live, or end the session."""
    setup = conn.setup
    phase = conn.state.value
    try:
        with anyio.CancelScope(deadline=conn._clock() + setup.setup_timeout) as scope:
            wire.setup_scope = scope
            if setup.connector is not None:
                await setup.connector(conn)
            if conn.state is State.AUTHENTICATING:
                conn._fire("authenticated", note="connector done")
            if conn.state is not State.SUBSCRIBING:
                return  # the session ended (or is closing) while the connector ran
            phase = State.SUBSCRIBING.value
            subs = list(setup.generate_subscriptions()) if setup.generate_subscriptions else []
            conn.subscriptions = subs
            if setup.subscriber is not None:
                await setup.subscriber(conn, subs)
        if scope.cancelled_caught and conn.state in _SETTING_UP:
            # (a stop_setup() leaves the setup states first: only the deadline gets here)
            conn._end_session(SetupFailure(phase, timed_out=True))
    except AuthenticationFailed as exc:
        conn._end_session(SetupFailure(phase, describe(exc), rejected=True))
    except (NotConnected, ConnectionClosed) as exc:
        if conn.state in _SETTING_UP:  # else the reader ends the session with the real cause
            conn._end_session(SetupFailure(phase, f"lost during setup: {describe(exc)}"))
    except Exception as exc:
        log.exception("%s: connector/subscriber failed", conn.id)
        conn._end_session(SetupFailure(phase, describe(exc)))
    finally:
        wire.setup_scope = None
    if conn.state is State.SUBSCRIBING:
        conn._went_live()
