"""Connection: one logical WebSocket slot that stays alive.

A Connection owns one run task (under ``async with``, in an anyio task group
the block owns; or :meth:`Connection.run` in the caller's task group) and
drives the connection machine (:mod:`machines.connection`). What it does is
split by concern:

- :mod:`engine.supervisor`: sessions one after another, the policy's waits;
- :mod:`engine.session`: one socket: dial + handshake, setup, teardown;
- :mod:`engine.reader`: the hot path and liveness (:mod:`engine.liveness`);
- :mod:`engine.handlers`, :mod:`engine.wire`, :mod:`engine.requests`:
  the handler, ordered writes, request/response correlation;
- :mod:`engine.policy`: what to do after a cause (:mod:`engine.causes`).

The machine is the authority: every decision here reads its state first,
and a session end is reported once, as a typed cause, on the ``lost``
transition (with the policy's decision).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import anyio
import anyio.abc
import anyio.lowlevel

from engine.causes import Cancelled, Cause
from engine.clock import Clock, loop_clock
from engine.closing import begin_close, leave_block, stop
from engine.config import ConnectionSetup
from engine.delivery import Outlet, Stream, Streams
from engine.dialing import default_dialer
from engine.errors import ConfigError, ConnectionClosed, stopped_error
from engine.events import StateChanged
from engine.handlers import Delivery
from engine.ids import message_id_source
from engine.observe import StateListener, Transitions
from engine.policy import Decision, DefaultPolicy, ReconnectPolicy, Retry, decide_safely
from engine.ratelimit import Limiter, limiter_source
from engine.requests import Requests, json_id
from engine.sending import Sending
from engine.supervisor import supervise
from engine.tasks import task_identity
from engine.wire import Wire
from machines.connection import ConnectionModel, State, state_of
from transports.base import Dialer
from transports.websocket import is_valid_close_code

__all__ = ["Connection"]

log = logging.getLogger("wirestate.connection")

Message = str | bytes


class _Info(NamedTuple):
    """What a trigger is fired with: the machine hands it to the listener untouched."""

    cause: Cause | None
    note: str
    delay: float | None


class Connection(Sending):
    """A self-healing WebSocket connection slot.

    Use as ``async with Connection(setup) as conn:`` (runs in a task group the
    block owns; leaving the block closes it), or start :meth:`run` in your own
    task group and call :meth:`close` to stop it. A stopped connection can be
    run again.

    Args:
        setup: what to connect to and the callbacks.
        dialer: ``async (URL) -> ByteStream``; TCP/TLS by default. Tests and
            the simulator pass an in-memory dialer.
        clock: seconds as a float; the event loop's own clock by default
            (what ``anyio.current_time`` reads). An injected clock must agree
            with the loop's: sleeps and deadlines use the loop's.
        wall_clock: POSIX seconds, read only to turn an HTTP-date
            ``Retry-After`` into a delay (``time.time`` by default).
        id: the slot's logical id in every :class:`StateChanged`; stable
            across reconnects. Defaults to ``setup.name`` or scheme://host.
        rng: random source for the default policy's backoff jitter (seed it
            for replayable tests).
        streams: the :class:`~engine.delivery.Streams` its events go to (a
            manager passes its own); by default the connection has its own,
            ended when it stops.
    """

    __slots__ = (
        "setup", "url", "id", "subscriptions", "subprotocol", "cause", "failures",
        "last_close_received", "last_close_sent", "last_rejection",
        "messages_received", "handler_errors", "sessions",
        "_dialer", "_clock", "_own_clock", "_wall_clock", "_model", "_trail",
        "_policy", "_decision", "_decided_at", "_wire", "_pause", "_tg", "_reader_task", "_task_id",
        "_requests", "_delivery", "_ids", "limiter", "_outlet",
    )  # fmt: skip

    def __init__(
        self,
        setup: ConnectionSetup,
        *,
        dialer: Dialer | None = None,
        clock: Clock | None = None,
        wall_clock: Callable[[], float] | None = None,
        id: str | None = None,
        rng: random.Random | None = None,
        streams: Streams | None = None,
    ) -> None:
        if not isinstance(setup, ConnectionSetup):
            raise TypeError(f"Connection needs a ConnectionSetup, not {type(setup).__name__}")
        if setup.handler is None and setup.batch_handler is None:
            raise ConfigError("ConnectionSetup needs one of handler= or batch_handler= (messages must go somewhere)")
        self.setup = setup
        self.url = setup.parsed_url
        # Not the full URL: paths and queries often carry tokens (listen keys).
        self.id = id or setup.name or f"{self.url.scheme}://{self.url.host_header}"
        self._dialer = dialer if dialer is not None else default_dialer(setup.ssl_context)
        self._clock: Clock = clock if clock is not None else anyio.current_time  # bound at start
        self._own_clock = clock is None
        self._wall_clock = wall_clock if wall_clock is not None else time.time
        self._model = ConnectionModel(needs_auth=setup.authenticated, listener=self._on_transition)
        self._trail = Transitions(self.id, setup.on_state_change)
        self._policy: ReconnectPolicy = (
            setup.policy
            if setup.policy is not None
            else DefaultPolicy(setup.backoff, retry_after_cap=setup.retry_after_cap, rng=rng)
        )
        self._decision: Decision | None = None  # the policy's answer to the last lost session
        self._decided_at = 0.0
        #: the typed cause of the last transition (why it is reconnecting, closing or stopped); None when it had none
        self.cause: Cause | None = None
        #: failed attempts in a row (reset once a session stays live for ``healthy_after``)
        self.failures = 0
        self._wire: Wire | None = None  # the current session's socket
        self._pause: anyio.CancelScope | None = None  # the policy's wait between sessions
        self._tg: anyio.abc.TaskGroup | None = None  # the run task's owner under ``async with``
        self._reader_task: int | None = None
        self._task_id: Callable[[], int] = _anyio_task_id  # bound to the backend at start
        #: (code, reason) of the last close frame received / sent, across sessions
        self.last_close_received: tuple[int, str] | None = None
        self.last_close_sent: tuple[int, str] | None = None
        #: the last handshake rejection (status, headers, body), across sessions
        self.last_rejection: Any = None
        #: the subprotocol the server chose on the current session
        self.subprotocol: str | None = None
        self.messages_received = 0
        self.handler_errors = 0
        self.sessions = 0
        self.subscriptions: list[Any] = []
        observe = setup.latency_observer
        self._requests = Requests(
            setup.response_key or json_id,
            self.id,
            self.now,  # (reads self._clock, bound to the loop's clock at start)
            (lambda key, took: observe(self, key, took)) if observe else None,
            marker=setup.response_marker,
        )
        self._delivery = Delivery(self)
        #: the rate limit every send of this connection waits on (None: no limit); a Limiter
        #: passed in the setup is shared with whoever else holds it (other connections, REST)
        source = limiter_source(setup.rate_limit)
        self.limiter: Limiter | None = source() if source is not None else None
        self._ids = message_id_source(setup.message_id)
        # Typed events: its own streams, or the manager's (shared by its connections).
        self._outlet = Outlet(streams, clock=clock)
        self._trail.subscribe(self._outlet.on_transition)

    def __repr__(self) -> str:
        return f"<Connection {self.id!r} {self.state.value}>"

    # -- observation -----------------------------------------------------

    @property
    def state(self) -> State:
        """The machine's current state."""
        return state_of(self._model.state)

    @property
    def pending_requests(self) -> list[tuple[Any, float]]:
        """``(key, deadline)`` of each :meth:`request` waiting now (deadlines on the injected clock)."""
        return self._requests.waiting()

    @property
    def response_key_errors(self) -> int:
        """Messages on which ``setup.response_key`` raised (each counted as no match)."""
        return self._requests.key_errors

    @property
    def history(self) -> list[StateChanged]:
        """The most recent transitions, oldest first (bounded)."""
        return self._trail.history

    def on_state_change(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(StateChanged)`` on every transition; returns an unsubscribe function.

        Register before starting to see the first transition (or pass
        listeners in ``ConnectionSetup.on_state_change``).
        """
        return self._trail.subscribe(listener)

    # -- typed events (engine.delivery) ---------------------------------

    def emit(self, event: Any) -> None:
        """Hand a typed event (:mod:`engine.events`) to the streams; never waits (call it from handlers)."""
        self._outlet.emit(event)

    def emit_many(self, events: list[Any]) -> None:
        """:meth:`emit` for a list (e.g. every event of one read, from a ``batch_handler``): the same
        result as emitting each in order, at a fraction of the cost."""
        self._outlet.emit_many(events)

    def stream(self, *types: type, **options: Any) -> Stream:
        """Open a bounded stream of this connection's events; see :meth:`engine.delivery.Streams.stream`."""
        return self._outlet.hub.stream(*types, **options)

    def now(self) -> float:
        """The injected clock's time (stamp events' ``received`` with it)."""
        return self._clock()

    async def wait_for(self, *states: State) -> State:
        """Wait (no polling) until the state is one of ``states``; return it.

        A state entered and left again while the caller waited counts as
        reached (the state it returns is then that one, not the current one).

        Raises :class:`~engine.errors.GaveUp` (or its subclass
        :class:`~engine.errors.HandshakeRejected`) if the connection gave up,
        :class:`~engine.errors.ConnectionClosed` if it was closed, before
        reaching them. Before the connection starts, it waits.
        """
        if not states:
            raise ValueError("wait_for needs at least one State")
        trail = self._trail
        mark = trail.count
        while True:
            current = self.state
            if current in states:
                return current
            # A state passed through while this task slept (a refused dial is
            # connecting and reconnecting again in one step) counts as reached.
            for event in trail.since(mark):
                if event.dest in states:
                    return event.dest
            if current is State.DISCONNECTED and self.cause is not None:
                raise stopped_error(self.id, self.cause)
            mark = trail.count
            await trail.next_change()

    def _on_transition(self, source: State, dest: State, trigger: str, info: _Info | None) -> None:
        cause, note, delay = info if info is not None else (None, "", None)
        self.cause = cause
        reason = note or (str(cause) if cause else "")
        self._trail.record(StateChanged(self.id, source, dest, trigger, reason, self._clock(), cause, delay))

    def _fire(self, trigger: str, cause: Cause | None = None, *, note: str = "", delay: float | None = None) -> None:
        """Fire a trigger; one the state does not allow raises (a bug)."""
        self._model.fire(trigger, _Info(cause, note, delay))

    # -- what sessions report ---------------------------------------------

    def _lose(self, cause: Cause) -> None:
        """The session is over because of ``cause``: ask the policy and fire ``lost``.

        Speculative on purpose: while closing, or when another part already
        reported this session's end, there is nothing to fire (the first cause stands).
        """
        if not self._model.may_fire("lost"):
            return
        wire = self._wire
        if wire is not None and wire.live_since is not None:
            if self._clock() - wire.live_since >= self.setup.healthy_after:
                self.failures = 0  # that attempt succeeded: the budget starts over
        decision = decide_safely(self._policy, cause, self.failures, self.id)
        self.failures += 1
        self._decision = decision
        self._decided_at = self._clock()  # the wait counts from the decision, not from teardown's end
        if isinstance(decision, Retry):
            why = f" ({decision.note})" if decision.note else ""
            self._fire("lost", cause, note=f"{cause}; retry in {decision.delay:.3f} s{why}", delay=decision.delay)
        else:
            self._fire("lost", cause, note=f"{cause}; giving up: {decision.reason}")

    def _end_session(self, cause: Cause) -> None:
        """End the current session now (report ``cause``, stop its tasks)."""
        self._lose(cause)
        wire = self._wire
        if wire is not None:
            wire.scope.cancel()

    def _went_live(self) -> None:
        wire = self._wire
        if wire is not None:
            wire.live_since = self._clock()
        self._fire("subscribed", note=f"{len(self.subscriptions)} subscriptions")

    # -- lifetime --------------------------------------------------------

    async def __aenter__(self) -> Connection:
        self._start()
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        tg.start_soon(self._run)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None, "__aexit__ without __aenter__"
        return await leave_block(self, tg, exc_info)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the connection alive until :meth:`close` or give-up.

        With ``await task_group.start(conn.run)`` it returns once the
        connection has left ``disconnected`` (dialing has begun).
        """
        self._start()
        task_status.started()
        await self._run()

    def _start(self) -> None:
        if not self._model.may_fire("connect"):
            raise RuntimeError(f"{self.id}: already running ({self.state.value})")
        if self._own_clock:
            self._clock = loop_clock()
        self._requests.unbind()
        self._task_id = task_identity()
        self.failures = 0
        self._fire("connect")

    async def _run(self) -> None:
        self._reader_task = self._task_id()  # the reader always runs in this task
        try:
            if self.state is State.CONNECTING:  # (a close() before this task ran left it closing)
                await supervise(self)
        finally:
            state = self.state
            if state is not State.DISCONNECTED:
                if state is not State.CLOSING:  # cancelled from outside, without close()
                    self._fire("close", Cancelled())
                self._fire("closed", self.cause, note="close complete")
            if self._requests:
                self._requests.fail_all(ConnectionClosed(f"{self.id}: closed", self.cause))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (idempotent, never raises for a connection going away); bounded by twice ``close_timeout``.

        Returns when the run task has ended. Called from inside an async
        handler it sends the close frame and stops without waiting for the
        peer's reply (the handler runs in the reader, which would deliver it).
        """
        if not is_valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent (use 1000, 1001, 1008-1014 or 3000-4999)")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("close reason is limited to 123 UTF-8 bytes")
        in_reader = self._task_id() == self._reader_task
        if self.state is State.DISCONNECTED:
            return  # never started, or already stopped
        if self.state is State.CLOSING:  # another close is under way: don't cut it short
            if not in_reader:
                with anyio.move_on_after(self.setup.close_timeout):
                    await self._wait_stopped()
                if self.state is not State.DISCONNECTED:
                    self._stop()  # (that close is stuck; bounded all the same)
                    with anyio.move_on_after(self.setup.close_timeout):
                        await self._wait_stopped()
            return
        try:
            with anyio.CancelScope(deadline=self._clock() + self.setup.close_timeout):
                if await self._begin_close(code, reason) and not in_reader:
                    # The reader sees the peer's reply and TCP close and ends the
                    # session; the run loop stops because the state is closing.
                    await self._wait_stopped()
        finally:
            # Whatever happened above (timeout, cancellation of the caller), stop.
            if self.state is not State.DISCONNECTED:
                self._stop()
        if not in_reader:
            # Stopped tasks end promptly; a run task killed outright (an interrupt
            # inside its own cleanup) never reports: don't wait for it forever.
            with anyio.move_on_after(self.setup.close_timeout):
                await self._wait_stopped()

    async def _wait_stopped(self) -> None:
        while self.state is not State.DISCONNECTED:
            await self._trail.next_change()

    async def _begin_close(self, code: int, reason: str) -> bool:
        return await begin_close(self, code, reason)

    def _stop(self) -> None:
        stop(self)


def _anyio_task_id() -> int:
    return anyio.get_current_task().id

