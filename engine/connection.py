"""Connection: one logical WebSocket slot that stays alive.

A Connection owns its tasks (a task group opened by :meth:`Connection.run`),
drives the connection machine (:mod:`machines.connection`), the sans-IO
protocol (:mod:`transports.websocket`) and a byte transport (a dialer).

Per session (one socket): dial + handshake -> ``opened`` -> connector
(``authenticating``) -> subscriber (``subscribing``) -> ``live``. Two tasks run
beside the setup: the *reader* (hot path: one socket read, one clock read,
every complete message of that read handed to the handler) and the
*watchdog* (exact traffic deadline from the injected clock: silence ->
``stale`` + ping; any frame within the grace -> ``live``; else ``lost``).
A lost session ends its task group; the run loop backs off and retries.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import orjson

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
from machines.connection import MACHINE, ConnectionModel, State
from transports.base import ByteStream, Dialer
from transports.tcp import tcp_dialer
from transports.websocket import (
    Accepted,
    ClientProtocol,
    Close,
    Failure,
    InvalidHandshake,
    ProtocolState,
    Rejected,
)

__all__ = ["Clock", "Connection"]

log = logging.getLogger("wirestate.connection")

Clock = Callable[[], float]
Message = str | bytes
StateListener = Callable[[StateChanged], None]

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
        clock: seconds as a float; ``anyio.current_time`` by default. Must
            agree with the event loop's clock (sleeps use the loop's clock).
        id: the slot's logical id in every :class:`StateChanged`; stable
            across reconnects. Defaults to ``setup.name`` or the URL.
        rng: random source for backoff jitter (seed it for replayable tests).
    """

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
        self.id = id or setup.name or str(self.url)
        self._dialer = dialer if dialer is not None else tcp_dialer(setup.ssl_context)
        self._clock: Clock = clock if clock is not None else anyio.current_time
        self._rng = rng if rng is not None else random.Random()
        self._model = ConnectionModel(needs_auth=setup.authenticated, listener=self._on_transition)
        self._listeners: list[StateListener] = []
        self.history: deque[StateChanged] = deque(maxlen=_HISTORY)
        # anyio primitives need a running event loop: made in _primitives().
        self._changed: anyio.Event | None = None
        self._finished: anyio.Event | None = None
        self._send_lock: anyio.Lock | None = None
        self._peer_closed: anyio.Event | None = None
        self._started = False
        self._close_requested: tuple[int, str] | None = None
        self._run_scope: anyio.CancelScope | None = None
        self._session_scope: anyio.CancelScope | None = None
        self._session_end: _SessionEnd | None = None
        self._stream: ByteStream | None = None
        self._proto: ClientProtocol | None = None
        self._waiters: list[_Waiter] = []
        self._stale_wake: anyio.Event | None = None
        self._reader_task: int | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
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
        MACHINE.add_model(self._model)

    def __repr__(self) -> str:
        return f"<Connection {self.id!r} {self.state.value}>"

    def _primitives(self) -> tuple[anyio.Event, anyio.Event]:
        if self._changed is None or self._finished is None:
            self._changed = anyio.Event()
            self._finished = anyio.Event()
            self._send_lock = anyio.Lock()
            self._peer_closed = anyio.Event()
        return self._changed, self._finished

    # -- observation -----------------------------------------------------

    @property
    def state(self) -> State:
        """The machine's current state."""
        return self._model.state

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
            changed, finished = self._primitives()
            current = self.state
            if current in states:
                return current
            if finished.is_set():
                self._raise_finished()
            await changed.wait()

    def _raise_finished(self) -> None:
        last = self.history[-1] if self.history else None
        if last is not None and last.trigger == "give_up":
            raise GaveUp(f"{self.id}: gave up: {last.reason}")
        raise ConnectionClosed(f"{self.id}: closed")

    def _on_transition(self, source: State, dest: State, trigger: str, reason: str) -> None:
        event = StateChanged(self.id, source, dest, trigger, reason, self._clock())
        self.history.append(event)
        changed = self._changed
        if changed is not None:
            self._changed = anyio.Event()
            changed.set()
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("%s: state listener failed", self.id)

    def _fire(self, trigger: str, reason: str = "") -> bool:
        return self._model.fire(trigger, reason)

    # -- lifetime --------------------------------------------------------

    async def __aenter__(self) -> Connection:
        self._primitives()
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await self._task_group.start(self.run)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._task_group is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.close()
        finally:
            return await self._task_group.__aexit__(*exc_info)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Keep the connection alive until :meth:`close` or give-up.

        With ``await task_group.start(conn.run)`` it returns once the
        connection has left ``disconnected`` (dialing has begun).
        """
        if self._started:
            raise RuntimeError(f"{self.id}: run() was already started")
        if self._finished is not None and self._finished.is_set():
            raise RuntimeError(f"{self.id}: closed before run() started")
        self._started = True
        changed, finished = self._primitives()
        try:
            with anyio.CancelScope() as scope:
                self._run_scope = scope
                self._fire("connect")
                task_status.started()
                await self._keep_alive()
        finally:
            self._fail_waiters(ConnectionClosed(f"{self.id}: closed"))
            if self.state is not State.DISCONNECTED:
                self._fire("close", "cancelled")  # cancelled from outside, without close()
                self._fire("closed", "close complete")
            MACHINE.remove_model(self._model)
            finished.set()
            changed = self._changed
            if changed is not None:
                changed.set()

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
            delay = self.setup.backoff.delay(self._attempt, self._rng, end.retry_after)
            self._attempt += 1
            await anyio.sleep(delay)
            if self._close_requested is not None:
                return
            self._fire("retry", f"attempt {self._attempt} after {delay:.3f} s")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close (idempotent, bounded by ``close_timeout``); returns when every task has ended."""
        _, finished = self._primitives()
        if self._close_requested is None:
            self._close_requested = (code, reason)
            if not self._started:
                MACHINE.remove_model(self._model)
                finished.set()
                return
            if self._fire("close", reason or "user close"):
                await self._close_session(code, reason)
            if self._session_scope is not None:
                self._session_scope.cancel()
            if self._run_scope is not None:
                self._run_scope.cancel()
        elif not self._started:
            return
        await finished.wait()

    async def _close_session(self, code: int, reason: str) -> None:
        proto, stream = self._proto, self._stream
        if proto is None or stream is None or proto.state is not ProtocolState.OPEN:
            return
        with anyio.move_on_after(self.setup.close_timeout):
            try:
                await self._write(proto.send_close(code, reason))
                self.last_close_sent = proto.close_sent
                # The reader keeps running and sees the peer's close reply or EOF,
                # unless close() was called from inside the handler (the reader itself).
                if self._peer_closed is not None and anyio.get_current_task().id != self._reader_task:
                    await self._peer_closed.wait()
            except _TRANSPORT_ERRORS:
                pass

    # -- one session -----------------------------------------------------

    async def _session(self) -> _SessionEnd:
        self.sessions += 1
        self._session_end = None
        self._peer_closed = anyio.Event()
        try:
            stream, proto, leftovers = await self._open()
        except _SessionEnd as end:
            return end
        self._stream, self._proto = stream, proto
        try:
            with anyio.CancelScope() as scope:
                self._session_scope = scope
                async with anyio.create_task_group() as tg:
                    self._last_rx = self._clock()
                    self._fire("opened", f"subprotocol {proto.subprotocol}" if proto.subprotocol else "")
                    tg.start_soon(self._reader, stream, proto, leftovers)
                    tg.start_soon(self._watchdog)
                    if await self._set_up():
                        self._attempt = 0
                        self._fire("subscribed", f"{len(self.subscriptions)} subscriptions")
                    await anyio.sleep_forever()
        finally:
            self._session_scope = None
            self._stream = self._proto = None
            self._fail_waiters(ConnectionLost(f"{self.id}: connection lost while a request was pending"))
            with anyio.CancelScope(shield=True):
                await _close_quietly(stream)
        return self._session_end or _SessionEnd("closed")

    def _end_session(self, reason: str, *, retry_after: float | None = None, fatal: bool = False) -> None:
        """Record why this session ends (first reason wins) and stop its tasks."""
        if self._session_end is None:
            self._session_end = _SessionEnd(reason, retry_after=retry_after, fatal=fatal)
        if self._session_scope is not None:
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
            with anyio.fail_after(setup.open_timeout):
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
        except TimeoutError:
            reason = f"no handshake within open_timeout={setup.open_timeout:g} s"
        except InvalidHandshake as exc:
            reason = f"invalid handshake: {exc}"
        except _TRANSPORT_ERRORS as exc:
            reason = f"dial failed: {_describe(exc)}"
        except BaseException:
            await _close_quietly(stream)
            raise
        await _close_quietly(stream)
        raise _SessionEnd(reason)

    async def _set_up(self) -> bool:
        """Run connector and subscriber; False when the session ended meanwhile."""
        setup = self.setup
        try:
            with anyio.fail_after(setup.setup_timeout):
                if setup.connector is not None:
                    await setup.connector(self)
                self._fire("authenticated", "connector done")
                subs = list(setup.generate_subscriptions()) if setup.generate_subscriptions else []
                self.subscriptions = subs
                if setup.subscriber is not None:
                    await setup.subscriber(self, subs)
        except TimeoutError:
            self._end_session(f"connector/subscriber exceeded setup_timeout={setup.setup_timeout:g} s")
        except (NotConnected, ConnectionClosed) as exc:
            self._end_session(f"lost during setup: {exc}")
        except Exception as exc:
            log.exception("%s: connector/subscriber failed", self.id)
            self._end_session(f"connector/subscriber failed: {type(exc).__name__}: {exc}")
        return self._session_end is None

    # -- the hot path ----------------------------------------------------

    async def _reader(self, stream: ByteStream, proto: ClientProtocol, leftovers: list[object]) -> None:
        self._reader_task = anyio.get_current_task().id
        peer_closed = self._peer_closed
        assert peer_closed is not None
        if leftovers:
            await self._dispatch(proto, leftovers)
        receive = stream.receive
        feed = proto.receive_data
        clock = self._clock
        size = self.setup.read_size
        deliver = self._deliver
        while True:
            try:
                data = await receive(size)
            except anyio.EndOfStream:
                peer_closed.set()
                self._end_session(self._eof_reason(proto))
                return
            except _TRANSPORT_ERRORS as exc:
                peer_closed.set()
                self._end_session(f"connection broken: {_describe(exc)}")
                return
            self._last_rx = clock()
            if self._stale_wake is not None:
                self._stale_wake.set()
            items = feed(data)
            if proto.controls or self._waiters:
                await self._dispatch(proto, items)
            elif items:
                self.messages_received += len(items)
                await deliver(items)

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
        if messages:
            self.messages_received += len(messages)
            await self._deliver(messages)
        outgoing = proto.data_to_send()
        if outgoing:
            if proto.close_sent is not None and self.last_close_sent is None:
                self.last_close_sent = proto.close_sent
            try:
                await self._write(outgoing)
            except _TRANSPORT_ERRORS:
                pass  # the reader sees the broken stream next
        if proto.state is ProtocolState.CLOSED:
            self.last_close_sent = proto.close_sent or self.last_close_sent
            if self._peer_closed is not None:
                self._peer_closed.set()
            if proto.close_received is None:
                code, why = proto.close_sent or (1002, "protocol error")
                self._end_session(f"protocol error from server: {why} (closed with {code})")
            else:
                # Wait briefly for the server to drop TCP (RFC 6455 7.1.1), then go.
                with anyio.move_on_after(self.setup.close_timeout):
                    await _drain_to_eof(self._stream)
                self._end_session(self._eof_reason(proto))

    def _make_delivery(self) -> Callable[[list[Message]], Awaitable[None]]:
        """Build the per-read delivery function once, for the handler's shape."""
        setup = self.setup
        if setup.batch_handler is not None:
            batch = setup.batch_handler
            if is_async(batch):

                async def deliver_batch_async(messages: list[Message]) -> None:
                    try:
                        await batch(self, messages)  # type: ignore[misc]
                    except Exception:
                        self._handler_failed(len(messages))

                return deliver_batch_async

            async def deliver_batch(messages: list[Message]) -> None:
                try:
                    batch(self, messages)
                except Exception:
                    self._handler_failed(len(messages))

            return deliver_batch

        handler = setup.handler
        assert handler is not None
        if is_async(handler):

            async def deliver_each_async(messages: list[Message]) -> None:
                for message in messages:
                    try:
                        await handler(self, message)  # type: ignore[misc]
                    except Exception:
                        self._handler_failed(1)

            return deliver_each_async

        async def deliver_each(messages: list[Message]) -> None:
            for message in messages:
                try:
                    handler(self, message)
                except Exception:
                    self._handler_failed(1)

        return deliver_each

    def _handler_failed(self, count: int) -> None:
        # A handler bug must not kill the stream, and must not pass unnoticed.
        self.handler_errors += 1
        log.exception("%s: handler raised (%d message(s) affected)", self.id, count)

    # -- liveness --------------------------------------------------------

    async def _watchdog(self) -> None:
        timeout = self.setup.traffic_timeout
        # A keepalive ping at half the timeout lets a quiet but healthy peer
        # answer before the deadline; one ping per quiet spell.
        keepalive = timeout / 2 if self.setup.keepalive else None
        clock = self._clock
        pinged_at: float | None = None  # the _last_rx our keepalive ping answered to
        while True:
            last = self._last_rx
            now = clock()
            if keepalive is not None and pinged_at != last and now >= last + keepalive and self.state is State.LIVE:
                pinged_at = last
                await self._send_ping_quietly()
                continue
            due = last + timeout
            if keepalive is not None and pinged_at != last:
                due = last + keepalive
            if now < due:
                # Exact deadline: sleep until it; reads only move it later.
                await anyio.sleep(due - now)
                continue
            if self.state is not State.LIVE:
                # Still setting up: setup_timeout bounds that phase.
                await anyio.sleep(timeout)
                continue
            await self._probe(timeout)

    async def _send_ping_quietly(self) -> None:
        proto = self._proto
        if proto is not None and proto.state is ProtocolState.OPEN:
            try:
                await self._write(proto.send_ping(b"wirestate"))
            except _TRANSPORT_ERRORS as exc:
                self._end_session(f"ping failed: {_describe(exc)}")

    async def _probe(self, silent_for: float) -> None:
        grace = self.setup.pong_timeout
        wake = self._stale_wake = anyio.Event()
        self._fire("silence", f"no traffic for {silent_for:g} s")
        try:
            await self._send_ping_quietly()
            with anyio.move_on_after(grace):
                await wake.wait()
        finally:
            self._stale_wake = None
        if wake.is_set():
            self._fire("traffic", "frame within the grace")
        else:
            self._end_session(f"no traffic within pong_timeout={grace:g} s after a ping")

    # -- sending and requests -------------------------------------------

    async def _write(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:
            raise NotConnected(f"{self.id}: not connected ({self.state.value})")
        assert self._send_lock is not None
        async with self._send_lock:
            await stream.send(data)

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
        drops first (the request's outcome is then unknown).
        """
        waiter = _Waiter(match)
        self._waiters.append(waiter)
        try:
            await self.send(payload)
            with anyio.move_on_after(timeout):
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


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _close_quietly(stream: ByteStream | None) -> None:
    if stream is None:
        return
    with anyio.move_on_after(1.0, shield=True):
        try:
            await stream.aclose()
        except Exception:  # closing a broken stream may fail; it is closed either way
            pass


async def _drain_to_eof(stream: ByteStream | None) -> None:
    if stream is None:
        return
    try:
        while await stream.receive():
            pass
    except _TRANSPORT_ERRORS:
        return

