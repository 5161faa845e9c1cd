"""Connection: one logical WebSocket slot that stays alive.

A Connection owns one run task (under ``async with`` through
:mod:`engine.tasks`; or :meth:`Connection.run` in the caller's task group),
drives the connection machine (:mod:`machines.connection`), the sans-IO
protocol (:mod:`transports.websocket`) and a byte transport (a dialer).

Per session (one socket, one cancel scope): dial + handshake under
``open_timeout`` -> ``opened`` -> connector (``authenticating``) -> subscriber
(``subscribing``) -> ``live``. The run task then becomes the *reader* (hot
path: one socket read, every complete message of that read handed to the
handler) and keeps liveness itself: each read waits under a deadline (last
traffic + keepalive / traffic_timeout / pong grace), so silence -> ``stale``
+ ping, any frame within the grace -> ``live``, else ``lost``. Connector and
subscriber run as a short-lived child beside it. A lost session ends its
scope; the run loop backs off and retries.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import orjson

from engine.clock import Clock, loop_clock
from engine.config import ConnectionSetup, is_async
from engine.errors import (
    ConnectionClosed,
    ConnectionLost,
    GaveUp,
    HandshakeRejected,
    NotConnected,
    RequestTimeout,
)
from engine.events import StateChanged
from engine.tasks import TaskOwner, own_task, task_identity
from machines.connection import ConnectionModel, State, state_of
from transports.base import ByteStream, Dialer, deadline_receiver
from transports.frames import is_valid_close_code
from transports.memory import MemoryByteStream
from transports.tcp import AsyncioByteStream, tcp_dialer
from transports.websocket import (
    Accepted,
    ClientProtocol,
    Close,
    Failure,
    InvalidHandshake,
    ProtocolState,
    Rejected,
)

__all__ = ["Connection"]

log = logging.getLogger("wirestate.connection")

Message = str | bytes
StateListener = Callable[[StateChanged], None]

# Streams whose send() hands the whole frame over in one step before it can
# suspend: cancelling it never leaves half a frame on the wire.
_ATOMIC_STREAMS = (AsyncioByteStream, MemoryByteStream)
_TRANSPORT_ERRORS = (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream)
# HTTP answers that will not change by retrying: give up instead of hammering.
_FATAL_STATUS = frozenset({400, 401, 403, 404, 405, 410, 426})
_HISTORY = 256


class _SessionEnd(Exception):
    """Internal: why a session (one socket) ended."""

    def __init__(self, reason: str, *, retry_after: float | None = None, fatal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.fatal = fatal


class _SendGate:
    """Serializes frame writes of one session, first come first served.

    Uncontended it is a flag (no checkpoint, no allocation); a waiter gets
    the gate handed over directly on release, so a sender that loops cannot
    starve the reader's pongs. ``close()`` fails every waiter.
    """

    __slots__ = ("busy", "waiters", "closed")

    def __init__(self) -> None:
        self.busy = False
        self.waiters: list[anyio.Event] = []
        self.closed = False

    async def acquire(self) -> None:
        if self.closed:
            raise NotConnected("the session has ended")
        if not self.busy:
            self.busy = True
            return
        turn = anyio.Event()
        self.waiters.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn in self.waiters:
                self.waiters.remove(turn)
            elif not self.closed:
                self.release()  # it was handed to us as we were cancelled: pass it on
            raise
        if self.closed:
            raise NotConnected("the session has ended")

    def release(self) -> None:
        if self.closed:
            return
        if self.waiters:
            self.waiters.pop(0).set()  # stays busy: ownership moves to the next sender
        else:
            self.busy = False

    def close(self) -> None:
        self.closed = True
        waiters, self.waiters = self.waiters, []
        for turn in waiters:
            turn.set()


class _Waiter:
    """A pending ``request``/``expect``: the first message ``match`` accepts."""

    __slots__ = ("match", "event", "result", "error")

    def __init__(self, match: Callable[[Message], bool]) -> None:
        self.match = match
        self.event = anyio.Event()
        self.result: Message | None = None
        self.error: BaseException | None = None


class Connection:
    """A self-healing WebSocket connection slot.

    Use as ``async with Connection(setup) as conn:`` (runs in a task group the
    block owns; leaving the block closes it), or start :meth:`run` in your own
    task group and call :meth:`close` to stop it.

    Args:
        setup: what to connect to and the callbacks.
        dialer: ``async (URL) -> ByteStream``; TCP/TLS by default. Tests and
            the simulator pass an in-memory dialer.
        clock: seconds as a float; the event loop's own clock by default
            (what ``anyio.current_time`` reads). An injected clock must agree
            with the loop's: sleeps and deadlines use the loop's.
        id: the slot's logical id in every :class:`StateChanged`; stable
            across reconnects. Defaults to ``setup.name`` or the URL.
        rng: random source for backoff jitter (seed it for replayable tests).
    """

    __slots__ = (
        "setup", "url", "id", "history", "subscriptions", "subprotocol",
        "last_close_received", "last_close_sent", "last_rejection",
        "messages_received", "handler_errors", "sessions",
        "_dialer", "_clock", "_rng", "_model", "_listeners", "_changed", "_finished", "_done",
        "_send_gate", "_peer_gone", "_started", "_close_requested", "_pause_scope",
        "_session_scope", "_session_end", "_stream", "_proto", "_waiters",
        "_reader_task", "_owner", "_task_id", "_last_rx", "_attempt", "_ids", "_deliver", "_setting_up",
        "_own_clock", "_delivering",
    )  # fmt: skip

    def __init__(
        self,
        setup: ConnectionSetup,
        *,
        dialer: Dialer | None = None,
        clock: Clock | None = None,
        id: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(setup, ConnectionSetup):
            raise TypeError(f"Connection needs a ConnectionSetup, not {type(setup).__name__}")
        self.setup = setup
        self.url = setup.parsed_url
        # Not the full URL: paths and queries often carry tokens (listen keys).
        self.id = id or setup.name or f"{self.url.scheme}://{self.url.host_header}"
        self._dialer = dialer if dialer is not None else tcp_dialer(setup.ssl_context)
        self._clock: Clock = clock if clock is not None else anyio.current_time  # bound in _begin()
        self._own_clock = clock is None
        self._rng = rng  # made on first use: a Random is 2.5 KiB per idle connection
        self._model = ConnectionModel(needs_auth=setup.authenticated, listener=self._on_transition)
        self._listeners: list[StateListener] = []
        #: the most recent transitions (at most ~2 x 256; a list: an empty deque is 0.6 KiB)
        self.history: list[StateChanged] = []
        # anyio primitives need a running event loop and cost ~0.6 KiB each:
        # each is made when first needed.
        self._changed: anyio.Event | None = None  # set (and dropped) on the next transition
        self._finished: anyio.Event | None = None
        self._done = False  # run() has ended (or close() came before it started)
        self._send_gate: _SendGate | None = None  # per session, made at the first write
        self._peer_gone = False  # this session's stream ended or broke
        self._started = False
        self._close_requested: tuple[int, str] | None = None
        self._pause_scope: anyio.CancelScope | None = None  # the backoff wait between sessions
        self._session_scope: anyio.CancelScope | None = None
        self._session_end: _SessionEnd | None = None
        self._stream: ByteStream | None = None
        self._proto: ClientProtocol | None = None
        self._waiters: list[_Waiter] = []
        self._reader_task: int | None = None
        self._delivering = False  # the reader is inside the handler
        self._setting_up = False
        self._owner: TaskOwner | None = None  # the run task's owner under ``async with``
        self._task_id: Callable[[], int] = _anyio_task_id  # bound to the backend in _begin()
        self._last_rx = 0.0
        self._attempt = 0
        #: (code, reason) of the last close frame received / sent, across sessions
        self.last_close_received: tuple[int, str] | None = None
        self.last_close_sent: tuple[int, str] | None = None
        #: the last handshake rejection (status, retry-after, headers)
        self.last_rejection: Rejected | None = None
        #: the subprotocol the server chose on the current session
        self.subprotocol: str | None = None
        self.messages_received = 0
        self.handler_errors = 0
        self.sessions = 0
        self.subscriptions: list[Any] = []
        self._ids = itertools.count(1)
        self._deliver = self._make_delivery()

    def __repr__(self) -> str:
        return f"<Connection {self.id!r} {self.state.value}>"

    def _finished_event(self) -> anyio.Event:
        if self._finished is None:
            self._finished = anyio.Event()
            if self._done:
                self._finished.set()
        return self._finished

    def _set_done(self) -> None:
        self._done = True
        if self._finished is not None:
            self._finished.set()
        self._wake_state_waiters()

    def _wake_state_waiters(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    # -- observation -----------------------------------------------------

    @property
    def state(self) -> State:
        """The machine's current state."""
        return state_of(self._model.state)

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(StateChanged)`` on every transition; returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    async def wait_for(self, *states: State) -> State:
        """Wait (no polling) until the state is one of ``states``; return it.

        Raises :class:`GaveUp` / :class:`ConnectionClosed` if the connection
        stops for good before reaching them.
        """
        if not states:
            raise ValueError("wait_for needs at least one State")
        while True:
            current = self.state
            if current in states:
                return current
            if self._done:
                self._raise_finished()
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _raise_finished(self) -> None:
        last = self.history[-1] if self.history else None
        if last is not None and last.trigger == "give_up":
            raise GaveUp(f"{self.id}: gave up: {last.reason}")
        raise ConnectionClosed(f"{self.id}: closed")

    def _on_transition(self, source: State, dest: State, trigger: str, reason: str) -> None:
        event = StateChanged(self.id, source, dest, trigger, reason, self._clock())
        history = self.history
        history.append(event)
        if len(history) > 2 * _HISTORY:
            del history[:-_HISTORY]
        self._wake_state_waiters()
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("%s: state listener failed", self.id)

    def _deadline(self, seconds: float) -> anyio.CancelScope:
        """A scope that stops its body ``seconds`` from now (no exception: check ``cancelled_caught``)."""
        return anyio.CancelScope(deadline=self._clock() + seconds)

    def _fire(self, trigger: str, reason: str = "") -> bool:
        return self._model.fire(trigger, reason)

    # -- lifetime --------------------------------------------------------

    async def __aenter__(self) -> Connection:
        self._begin()
        self._owner = own_task()
        await self._owner.start(self._run_begun)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        owner = self._owner
        assert owner is not None
        failure: Exception | None = None
        try:
            # Shielded: leaving the block by cancellation still says goodbye, within close_timeout.
            with anyio.CancelScope(shield=True, deadline=self._clock() + self.setup.close_timeout) as scope:
                if self._close_requested is None:
                    if await self._begin_close(1000, ""):
                        # The run task sees the close handshake through by itself; its
                        # session's deadline is the bound if the peer never answers.
                        self._bound_session(self._clock() + self.setup.close_timeout)
                    else:
                        self._stop_tasks()
            if scope.cancelled_caught:  # our close frame could not be written in time
                self._stop_tasks()
        except Exception as exc:  # the run task must still be stopped and joined
            self._stop_tasks()
            failure = exc
        # One wait for the run task (no second hand-off through close()).
        try:
            result = await owner.join(exc_info, self._stop_tasks)
        except BaseExceptionGroup as group:
            # The task group wraps the body's own exception (on trio, beside the
            # Cancelled of an outer scope that fired meanwhile): let it through as
            # it was, as on asyncio; an error wins over a cancellation.
            body_exc, cancelled = exc_info[1], anyio.get_cancelled_exc_class()
            if any(e is body_exc for e in group.exceptions) and all(
                e is body_exc or isinstance(e, cancelled) for e in group.exceptions
            ):
                if failure is not None:  # the body's error goes on; ours is not lost silently
                    log.warning("%s: closing on the way out failed", self.id, exc_info=failure)
                return False
            raise
        if failure is not None:
            raise failure
        return result

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the connection alive until :meth:`close` or give-up.

        With ``await task_group.start(conn.run)`` it returns once the
        connection has left ``disconnected`` (dialing has begun).
        """
        self._begin()
        task_status.started()
        await self._run_begun()

    def _begin(self) -> None:
        if self._started:
            raise RuntimeError(f"{self.id}: already started")
        if self._done:
            raise RuntimeError(f"{self.id}: closed before it was started")
        self._started = True
        if self._own_clock:
            self._clock = loop_clock()
        self._task_id = task_identity()
        self._fire("connect")

    async def _run_begun(self) -> None:
        self._reader_task = self._task_id()  # the reader always runs in this task
        try:
            if self._close_requested is None:
                await self._keep_alive()
        finally:
            if self._waiters:
                self._fail_waiters(ConnectionClosed(f"{self.id}: closed"))
            if self.state is not State.DISCONNECTED:
                self._fire("close", "cancelled")  # cancelled from outside, without close()
                self._fire("closed", "close complete")
            self._set_done()

    async def _keep_alive(self) -> None:
        while True:
            end = await self._session()
            if self._close_requested is not None:
                return
            self._fire("lost", end.reason)
            retries_left = self.setup.backoff.max_attempts is None or self._attempt < self.setup.backoff.max_attempts
            if end.fatal or not retries_left:
                why = end.reason if end.fatal else f"{self._attempt} attempts failed; last: {end.reason}"
                self._fire("give_up", why)
                return
            if self._rng is None:
                self._rng = random.Random()
            delay = self.setup.backoff.delay(self._attempt, self._rng, end.retry_after)
            self._attempt += 1
            # The pause is what _stop_tasks() cancels between sessions.
            with anyio.CancelScope(deadline=self._clock() + delay) as pause:
                self._pause_scope = pause
                if self._close_requested is None:
                    await anyio.sleep_forever()
            self._pause_scope = None
            if self._close_requested is not None:
                return
            self._fire("retry", f"attempt {self._attempt} after {delay:.3f} s")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (idempotent, bounded by ``close_timeout``); returns when every task has ended.

        Called from inside an async handler it sends the close frame and
        stops without waiting for the peer's reply (the handler runs in the
        reader, which would deliver it).
        """
        if not is_valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent (use 1000, 1001, 1008-1014 or 3000-4999)")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("close reason is limited to 123 UTF-8 bytes")
        if self._close_requested is None:
            if not self._started:
                self._close_requested = (code, reason)
                self._set_done()
                return
            try:
                with self._deadline(self.setup.close_timeout):
                    if await self._begin_close(code, reason):
                        # The reader sees the peer's close reply and TCP close and
                        # ends the session; the run loop stops on the close request.
                        # Nothing to cancel when that happens within close_timeout.
                        await self._finished_event().wait()
            finally:
                # Whatever happened above (timeout, cancellation of the caller), stop.
                self._stop_tasks()
        elif not self._started:
            return
        if not self._done and self._task_id() != self._reader_task:
            # (from inside the handler we are the run task: the cancellation above unwinds it)
            await self._finished_event().wait()

    def _bound_session(self, deadline: float) -> None:
        """End the current session (the close handshake) at ``deadline`` at the latest."""
        if self._session_scope is not None:
            self._session_scope.deadline = deadline

    def _stop_tasks(self) -> None:
        """Stop the run task now. Callers set ``_close_requested`` first: it keeps
        the run loop from starting anything new once the current scope unwinds."""
        if self._session_scope is not None:
            self._session_scope.cancel()
        if self._pause_scope is not None:
            self._pause_scope.cancel()

    async def _begin_close(self, code: int, reason: str) -> bool:
        """Record the close request, move to ``closing`` and send our close frame.

        True when the reader will see the handshake through (the caller then
        only waits); False when there is nothing to wait for. Callers bound
        it (and their wait) with ``close_timeout``.
        """
        self._close_requested = (code, reason)
        return self._fire("close", reason or "user close") and await self._send_close_frame(code, reason)

    async def _send_close_frame(self, code: int, reason: str) -> bool:
        """Start the close handshake; True when the reader will see it through."""
        proto, stream = self._proto, self._stream
        if proto is None or stream is None or proto.state is not ProtocolState.OPEN:
            return False
        try:
            await self._write(proto.send_close(code, reason))
        except _TRANSPORT_ERRORS:
            return False
        self.last_close_sent = proto.close_sent
        # From inside an async handler we are the reader: it can't read the reply.
        return not (self._delivering and self._task_id() == self._reader_task)

    # -- one session -----------------------------------------------------

    async def _session(self) -> _SessionEnd:
        if self._close_requested is not None:
            return _SessionEnd("closed")
        self.sessions += 1
        self._session_end = None
        self._peer_gone = False
        # Per session: a writer stuck on a dead stream must not block the next one.
        if self._send_gate is not None:
            self._send_gate.close()
        self._send_gate = None
        setup = self.setup
        stream: ByteStream | None = None
        # One scope per session, from dial to teardown: what _end_session() and
        # _stop_tasks() cancel. Until the handshake is done it carries open_timeout.
        with anyio.CancelScope(deadline=self._clock() + setup.open_timeout) as scope:
            self._session_scope = scope
            try:
                try:
                    stream, proto, leftovers = await self._open()
                except _SessionEnd as end:
                    return end
                if scope.cancel_called:
                    # The deadline (or a stop) fired in the very loop iteration the
                    # answer arrived: its cancellation is still on its way, so this
                    # attempt ends here, before anything is opened.
                    return self._open_cut_short()
                scope.deadline = math.inf
                self._stream, self._proto = stream, proto
                self._last_rx = self._clock()
                self._fire("opened", f"subprotocol {proto.subprotocol}" if proto.subprotocol else "")
                # Setup runs as a short-lived child beside the reader (it waits for
                # replies the reader delivers); with nothing to run, no task group at
                # all. This task becomes the reader: an idle connection holds one task.
                if setup.connector is None and setup.subscriber is None:
                    await self._set_up()
                    await self._reader(stream, proto, leftovers)
                else:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._set_up)
                        await self._reader(stream, proto, leftovers)
            finally:
                self._session_scope = None
                self._stream = self._proto = None
                if self._waiters:  # (no exception built for nobody)
                    self._fail_waiters(ConnectionLost(f"{self.id}: connection lost while a request was pending"))
                await _close_quietly(stream)
        if stream is None:
            return self._open_cut_short()  # (the scope was cancelled while opening)
        return self._session_end or _SessionEnd("closed")

    def _open_cut_short(self) -> _SessionEnd:
        """Why an attempt whose session scope was cancelled while opening ended."""
        if self._close_requested is not None:
            return _SessionEnd("closed")
        return _SessionEnd(f"no handshake within open_timeout={self.setup.open_timeout:g} s")

    def _end_session(self, reason: str, *, retry_after: float | None = None, fatal: bool = False) -> None:
        """Record why this session ends (first reason wins) and stop its tasks."""
        if self._session_end is None:
            self._session_end = _SessionEnd(reason, retry_after=retry_after, fatal=fatal)
        if self._session_scope is not None:
            self._session_scope.cancel()

    def _reader_done(self, reason: str) -> None:
        """The reader ends the session and returns: cancel only a setup still running."""
        self._peer_gone = True  # nothing more will come from this session
        if self._session_end is None:
            self._session_end = _SessionEnd(reason)
        if self._setting_up and self._session_scope is not None:
            self._session_scope.cancel()

    async def _open(self) -> tuple[ByteStream, ClientProtocol, list[object]]:
        setup = self.setup
        proto = ClientProtocol(
            self.url.host_header,
            self.url.resource,
            subprotocols=setup.subprotocols,
            extra_headers=setup.extra_headers,
            max_message_size=setup.max_message_size,
            frame_path=setup.frame_path,
        )
        stream: ByteStream | None = None
        try:
            # (bounded by the session scope's open_timeout deadline)
            stream = await self._dialer(self.url)
            await stream.send(proto.connect())
            while True:
                try:
                    data = await stream.receive(setup.read_size)
                    events = proto.receive_data(data)
                except anyio.EndOfStream:
                    events = proto.receive_eof()
                if events:
                    first = events[0]
                    if isinstance(first, Accepted):
                        self.subprotocol = first.subprotocol
                        return stream, proto, events[1:]
                    if isinstance(first, Rejected):
                        self.last_rejection = first
                        raise _SessionEnd(
                            str(HandshakeRejected(first.status, first.retry_after)),
                            retry_after=first.retry_after,
                            fatal=first.status in _FATAL_STATUS,
                        )
        except InvalidHandshake as exc:
            reason = f"invalid handshake: {exc}"
        except _TRANSPORT_ERRORS as exc:
            reason = f"dial failed: {_describe(exc)}"
        except ValueError as exc:  # our own request could not be built: retrying won't help
            await _close_quietly(stream)
            raise _SessionEnd(f"cannot build the handshake request: {exc}", fatal=True) from None
        except BaseException:
            await _close_quietly(stream)
            raise
        await _close_quietly(stream)
        raise _SessionEnd(reason)

    async def _set_up(self) -> None:
        """Run connector and subscriber, then go live (or end the session)."""
        if self._session_end is not None:
            return  # the reader already ended this session before setup could start
        setup = self.setup
        if setup.connector is None and setup.subscriber is None:
            self._fire("authenticated", "no connector")
            self.subscriptions = []
            self._attempt = 0
            self._fire("subscribed", "no subscriber")
            return
        self._setting_up = True
        try:
            with self._deadline(setup.setup_timeout) as scope:
                if setup.connector is not None:
                    await setup.connector(self)
                self._fire("authenticated", "connector done")
                subs = list(setup.generate_subscriptions()) if setup.generate_subscriptions else []
                self.subscriptions = subs
                if setup.subscriber is not None:
                    await setup.subscriber(self, subs)
            if scope.cancelled_caught:
                self._end_session(f"connector/subscriber exceeded setup_timeout={setup.setup_timeout:g} s")
        except (NotConnected, ConnectionClosed) as exc:
            if not self._peer_gone:  # else the reader ends the session with the real reason
                self._end_session(f"lost during setup: {exc}")
        except Exception as exc:
            log.exception("%s: connector/subscriber failed", self.id)
            self._end_session(f"connector/subscriber failed: {type(exc).__name__}: {exc}")
        finally:
            self._setting_up = False
        if self._session_end is None:
            self._attempt = 0
            self._fire("subscribed", f"{len(self.subscriptions)} subscriptions")

    # -- the hot path ----------------------------------------------------

    async def _reader(self, stream: ByteStream, proto: ClientProtocol, leftovers: list[object]) -> None:
        """Read, decode, deliver; and keep the traffic deadline.

        Liveness lives here rather than in a watchdog task: each receive waits
        under a deadline (last traffic + keepalive / traffic_timeout / grace),
        which costs one clock read and one cancel scope per *read*, never per
        message, and no extra task per connection.
        """
        if leftovers:
            await self._dispatch(proto, leftovers)
            if self._session_end is not None:
                return
        receive_before = deadline_receiver(stream)
        feed = proto.receive_data
        clock = self._clock
        size = self.setup.read_size
        timeout = self.setup.traffic_timeout
        grace = self.setup.pong_timeout
        # A keepalive ping at half the timeout lets a quiet but healthy peer
        # answer before the deadline; one ping per quiet spell.
        keepalive = timeout / 2 if self.setup.keepalive else None
        pinged_at: float | None = None  # the _last_rx value our last ping followed
        stale_until: float | None = None  # grace deadline while stale
        while True:
            last = self._last_rx
            if stale_until is not None:
                due = stale_until
            elif keepalive is not None and pinged_at != last:
                due = last + keepalive
            else:
                due = last + timeout
            try:
                data = await receive_before(due, size)
            except anyio.EndOfStream:
                self._reader_done(self._eof_reason(proto))
                return
            except _TRANSPORT_ERRORS as exc:
                self._reader_done(f"connection broken: {_describe(exc)}")
                return
            if data is None:  # the deadline passed with nothing received
                now = clock()
                if stale_until is not None:
                    self._reader_done(f"no traffic within pong_timeout={grace:g} s after a ping")
                    return
                if keepalive is not None and pinged_at != last:
                    pinged_at = last  # keepalive (or, while setting up, a probe); then the full timeout
                    await self._ping_or_end()
                elif self.state is State.LIVE:
                    self._fire("silence", f"no traffic for {timeout:g} s")
                    stale_until = now + grace
                    await self._ping_or_end()
                else:
                    self._last_rx = now  # still setting up: setup_timeout bounds that phase
                continue
            if stale_until is not None:
                stale_until = None
                self._fire("traffic", "frame within the grace")
            items = feed(data)
            if proto.controls or self._waiters:
                await self._dispatch(proto, items)
                if self._session_end is not None:
                    return
            elif items:
                self.messages_received += len(items)
                await self._deliver(items)  # type: ignore[arg-type]  # controls==False: all str/bytes
            # Taken after handling (still one clock read per read): time spent
            # in a slow handler is not the peer's silence.
            self._last_rx = clock()

    async def _ping_or_end(self) -> None:
        proto = self._proto
        if proto is not None and proto.state is ProtocolState.OPEN:
            await self._reader_write(proto.send_ping(b"wirestate"), "ping")

    async def _reader_write(self, data: bytes, what: str) -> None:
        """A write by the reader (ping, pong, close echo), bounded so a peer
        that stops reading (or a send stuck behind the lock) cannot stall
        liveness: past ``pong_timeout`` the session ends."""
        grace = self.setup.pong_timeout
        try:
            with self._deadline(grace) as scope:
                await self._write(data)
        except _TRANSPORT_ERRORS as exc:
            self._end_session(f"{what} failed: {_describe(exc)}")
            return
        if scope.cancelled_caught:
            self._end_session(f"{what} not written within pong_timeout={grace:g} s (peer not reading)")

    def _eof_reason(self, proto: ClientProtocol) -> str:
        if proto.close_received is not None:
            code, why = proto.close_received
            return f"server closed with {code}" + (f" {why!r}" if why else "")
        return "connection closed by peer without a close frame (1006)"

    async def _dispatch(self, proto: ClientProtocol, items: list[object]) -> None:
        """Slow path: a read that held control events or pending requests."""
        messages: list[Message] = []
        for item in items:
            kind = type(item)
            if kind is str or kind is bytes:
                if self._waiters and self._match(item):  # type: ignore[arg-type]
                    continue
                messages.append(item)  # type: ignore[arg-type]
            elif kind is Close:
                self.last_close_received = (item.code, item.reason)  # type: ignore[attr-defined]
            elif kind is Failure:
                log.warning("%s: protocol violation by server: %s (%s)", self.id, item.reason, item.code)  # type: ignore[attr-defined]
        # Pongs (and a close reply) go out before the handler sees this read's
        # messages: a ping that arrived before a message is answered before
        # anything the handler sends in reply to that message.
        outgoing = proto.data_to_send()
        if outgoing:
            if proto.close_sent is not None and self.last_close_sent is None:
                self.last_close_sent = proto.close_sent
            if proto.state is ProtocolState.CLOSED:
                # Our close reply or failure close: best effort, bounded; the close
                # (or violation) is what ends the session, not this write.
                with self._deadline(self.setup.close_timeout):
                    try:
                        await self._write(outgoing)
                    except _TRANSPORT_ERRORS:
                        pass
            else:
                await self._reader_write(outgoing, "pong")
        if messages:
            self.messages_received += len(messages)
            if self._session_end is None:
                await self._deliver(messages)
            else:
                # Ending, but what arrived is still handed over, within close_timeout.
                with anyio.CancelScope(shield=True, deadline=self._clock() + self.setup.close_timeout):
                    await self._deliver(messages)
        if self._session_end is not None:
            return
        if proto.state is ProtocolState.CLOSED:
            self.last_close_sent = proto.close_sent or self.last_close_sent
            self._peer_gone = True  # (before the drain: a setup failing now defers to our reason)
            if proto.close_received is None:
                code, why = proto.close_sent or (1002, "protocol error")
                self._reader_done(f"protocol error from server: {why} (closed with {code})")
            else:
                # Wait briefly for the server to drop TCP (RFC 6455 7.1.1), then go.
                await _drain_to_eof(self._stream, self._clock() + self.setup.close_timeout)
                self._reader_done(self._eof_reason(proto))

    def _make_delivery(self, awaited: bool | None = None) -> Callable[[list[Message]], Awaitable[None]]:
        """Build the per-read delivery function once, for the handler's shape."""
        setup = self.setup
        batch = setup.batch_handler
        handler = setup.handler
        if awaited is None:
            awaited = is_async(batch if batch is not None else handler)
        if batch is not None:
            if awaited:

                async def deliver_batch_async(messages: list[Message]) -> None:
                    self._delivering = True  # (only async handlers can await close())
                    try:
                        await batch(self, messages)  # type: ignore[misc]
                    except Exception:
                        self._handler_failed(len(messages))
                    finally:
                        self._delivering = False

                return deliver_batch_async

            async def deliver_batch(messages: list[Message]) -> None:
                try:
                    batch(self, messages)
                except Exception:
                    self._handler_failed(len(messages))

            return self._probing(deliver_batch, lambda messages: batch(self, messages))

        assert handler is not None
        if awaited:

            async def deliver_each_async(messages: list[Message]) -> None:
                self._delivering = True  # (only async handlers can await close())
                try:
                    for message in messages:
                        try:
                            await handler(self, message)  # type: ignore[misc]
                        except Exception:
                            self._handler_failed(1)
                finally:
                    self._delivering = False

            return deliver_each_async

        async def deliver_each(messages: list[Message]) -> None:
            for message in messages:
                try:
                    handler(self, message)
                except Exception:
                    self._handler_failed(1)

        return self._probing(deliver_each, lambda messages: handler(self, messages[0]))

    def _probing(
        self,
        fast: Callable[[list[Message]], Awaitable[None]],
        first_call: Callable[[list[Message]], object],
    ) -> Callable[[list[Message]], Awaitable[None]]:
        """Wrap a plain handler's delivery to look at its first return value.

        A plain function that returns an awaitable (a lambda around an async
        call) was meant to be awaited: its messages would otherwise be lost
        without a trace. Checked once, then the plain fast path runs.
        """

        async def first_delivery(messages: list[Message]) -> None:
            self._deliver = fast
            per_message = self.setup.batch_handler is None
            try:
                result = first_call(messages)
            except Exception:
                self._handler_failed(1 if per_message else len(messages))
                result = None
            if inspect.isawaitable(result):
                log.warning("%s: the handler returned an awaitable, so it is awaited from now on: declare it async def", self.id)
                self._deliver = self._make_delivery(awaited=True)
                self._delivering = True  # (as in the async deliveries: it may await close())
                try:
                    await result
                except Exception:
                    self._handler_failed(1 if per_message else len(messages))
                finally:
                    self._delivering = False
            if per_message and len(messages) > 1:
                await self._deliver(messages[1:])

        return first_delivery

    def _handler_failed(self, count: int) -> None:
        # A handler bug must not kill the stream, and must not pass unnoticed.
        self.handler_errors += 1
        log.exception("%s: handler raised (%d message(s) affected)", self.id, count)

    # -- sending and requests -------------------------------------------

    async def _write(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:
            raise NotConnected(f"{self.id}: not connected ({self.state.value})")
        gate = self._send_gate
        if gate is None:
            gate = self._send_gate = _SendGate()
        await gate.acquire()
        try:
            if self._stream is not stream:
                raise NotConnected(f"{self.id}: the connection was replaced while this send waited")
            try:
                await stream.send(data)
            except _TRANSPORT_ERRORS:
                raise
            except BaseException:
                # Interrupted (cancelled, timed out): on a stream that writes in
                # pieces part of the frame may be on the wire, and anything sent
                # after it would be spliced into its payload. End the session.
                if not isinstance(stream, _ATOMIC_STREAMS) and self._stream is stream:
                    gate.close()
                    self._end_session("a send was interrupted mid-frame")
                raise
        finally:
            gate.release()

    def _open_protocol(self) -> ClientProtocol:
        proto = self._proto
        if proto is None or proto.state is not ProtocolState.OPEN:
            raise NotConnected(f"{self.id}: cannot send while {self.state.value}")
        return proto

    async def send_text(self, text: str) -> None:
        """Send one text message."""
        await self._send_frame(self._open_protocol().send_text(text))

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary message."""
        await self._send_frame(self._open_protocol().send_bytes(data))

    async def send(self, payload: str | bytes | dict[str, Any] | list[Any]) -> None:
        """Send ``str`` as text, ``bytes`` as binary, a dict/list as JSON text."""
        if isinstance(payload, str):
            await self.send_text(payload)
        elif isinstance(payload, (bytes, bytearray, memoryview)):
            await self.send_bytes(bytes(payload))
        elif isinstance(payload, (dict, list)):
            await self._send_frame(self._open_protocol().send_text(orjson.dumps(payload).decode()))
        else:
            raise TypeError(f"cannot send {type(payload).__name__}: use str, bytes, dict or list")

    async def _send_frame(self, frame: bytes) -> None:
        try:
            await self._write(frame)
        except _TRANSPORT_ERRORS as exc:
            raise NotConnected(f"{self.id}: send failed: {_describe(exc)}") from None

    async def ping(self, payload: bytes = b"") -> None:
        """Send a protocol-level ping (the pong resets the traffic deadline)."""
        await self._send_frame(self._open_protocol().send_ping(payload))

    def next_id(self) -> int:
        """The next message id of this connection (1, 2, 3, ...; never reused)."""
        return next(self._ids)

    async def request(
        self,
        payload: str | bytes | dict[str, Any] | list[Any],
        *,
        match: Callable[[Message], bool],
        timeout: float = 10.0,
    ) -> Message:
        """Send ``payload`` and return the first message ``match`` accepts.

        The matcher is registered before the send, so a fast reply is never
        missed; the matched message is not passed to the handler. Raises
        :class:`RequestTimeout`, or :class:`ConnectionLost` if the socket
        drops first (the request's outcome is then unknown). Don't await it
        from inside the handler: the handler runs in the reader, which is
        what delivers the reply (it would wait for its timeout).
        """
        waiter = _Waiter(match)
        self._waiters.append(waiter)
        try:
            with self._deadline(timeout):  # the send counts too: a blocked send is a timeout
                await self.send(payload)
                await waiter.event.wait()
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        if waiter.error is not None:
            raise waiter.error
        if not waiter.event.is_set():
            raise RequestTimeout(f"{self.id}: no matching reply within {timeout:g} s")
        assert waiter.result is not None
        return waiter.result

    def _match(self, message: Message) -> bool:
        for waiter in self._waiters:
            try:
                hit = waiter.match(message)
            except Exception as exc:
                waiter.error, hit = exc, True
            if hit:
                self._waiters.remove(waiter)
                waiter.result = message
                waiter.event.set()
                return True
        return False

    def _fail_waiters(self, error: BaseException) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.error = error
            waiter.event.set()


def _anyio_task_id() -> int:
    return anyio.get_current_task().id


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _close_quietly(stream: ByteStream | None) -> None:
    if stream is None:
        return
    if isinstance(stream, (AsyncioByteStream, MemoryByteStream)):
        await stream.aclose()  # never blocks: no deadline scope needed
        return
    with anyio.move_on_after(1.0, shield=True):
        try:
            await stream.aclose()
        except Exception:  # closing a broken stream may fail; it is closed either way
            pass


async def _drain_to_eof(stream: ByteStream | None, deadline: float) -> None:
    """Read and drop until end of stream, an error, or ``deadline``."""
    if stream is None:
        return
    receive_before = deadline_receiver(stream)
    try:
        while await receive_before(deadline, 65536) is not None:
            pass
    except _TRANSPORT_ERRORS:
        return

