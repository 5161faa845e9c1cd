"""Bounded event streams, each with one declared backpressure policy; consumers take batches.

Handlers produce typed events (:mod:`engine.events`) with ``conn.emit(event)``;
a :class:`Streams` hub (one per standalone connection, one shared by a
manager's connections) routes each event to the :class:`Stream` objects that
asked for its type and symbol. A consumer iterates a stream and gets *lists*
of events (one ``await`` per batch: an ``async for`` per event costs ~3 us).

Each stream has a ``capacity`` and one :class:`Policy` for when it is full:

- ``block``: nothing is lost; backpressure reaches the socket. ``emit`` never
  waits (a sync handler cannot); after a read's messages are delivered, a
  reader that filled a ``block`` stream waits for space before it reads again,
  so the buffer overshoots by at most one read. The wait does not count as
  the peer's silence (the reader resets its traffic deadline after it).
- ``drop_oldest``: the oldest queued event makes room (counted ``dropped``).
- ``conflate``: an event replaces the queued one with the same key (latest
  ticker per symbol; counted ``conflated``); events without a key, or a full
  buffer of distinct keys, fall back to ``drop_oldest``.
- ``fail``: the stream gets an :class:`~engine.events.Error` (``OVERFLOW``),
  then ends; what it would have received after is counted ``dropped``.

Nothing is lost uncounted: per stream ``produced == delivered + dropped +
conflated + queued``; the hub counts events no stream wanted (``unrouted``)
and fills/trades muted by the setup's switches (``filtered``). Engine events
(errors, backlog alerts, subscription changes, gaps, resyncs) go to every
stream (matching its symbols, if it names some), outside its capacity, in
order with the data, and are never dropped. A :class:`~engine.events.Backlog`
event is queued when a stream's fill crosses ``alert_at`` and after a batch
whose events were preceded by drops.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Callable, Collection, Hashable
from typing import Any, NamedTuple

import anyio

from engine.causes import SetupFailure
from engine.clock import Clock, loop_clock
from engine.errors import ConfigError
from engine.events import (
    Backlog,
    Book,
    BookResynced,
    Error,
    ErrorKind,
    Fill,
    Gap,
    Kline,
    OrderUpdate,
    StateChanged,
    SubscriptionChanged,
    Ticker,
    Trade,
)
from machines.connection import State

__all__ = ["ENGINE_EVENTS", "Outlet", "Policy", "Stream", "StreamStats", "Streams", "latest_key"]

#: the engine's own events: never dropped, never conflated, outside the capacity
ENGINE_EVENTS: frozenset[type] = frozenset({Error, Backlog, SubscriptionChanged, Gap, BookResynced})

ConflateKey = Callable[[Any], Hashable | None]


class Policy(enum.Enum):
    """What a full stream does (see the module doc)."""

    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"
    CONFLATE = "conflate"
    FAIL = "fail"


def latest_key(event: Any) -> Hashable | None:
    """The default conflation key: state-like events (ticker, book, one candle) per symbol.

    Trades, fills and order updates are happenings, not states: None (never
    conflated; a full ``conflate`` stream drops the oldest instead).
    """
    cls = type(event)
    if cls is Ticker or cls is Book:
        return (cls, event.symbol)
    if cls is Kline:
        return (cls, event.symbol, event.interval, event.start)
    return None


class StreamStats(NamedTuple):
    """A stream's counters at one moment (``lag``: seconds the oldest queued event has waited)."""

    name: str
    policy: Policy
    capacity: int
    produced: int
    delivered: int
    dropped: int
    conflated: int
    queued: int
    lag: float
    max_lag: float
    blocked: int  # times a reader had to wait for space
    blocked_for: float  # seconds readers waited, in total
    ended: bool


class Stream:
    """One consumer's bounded buffer (make it with :meth:`Streams.stream`).

    ``async for batch in stream`` yields non-empty lists of events, oldest
    first, until the stream ends (:meth:`close`, the ``fail`` policy, or its
    source stopping); :meth:`receive` takes one batch. Use ``async with`` (or
    call :meth:`close`) when you stop reading: a ``block`` stream nobody reads
    holds its connections' readers.
    """

    __slots__ = (
        "name", "policy", "capacity", "alert_at", "max_batch", "types", "symbols",
        "produced", "delivered", "dropped", "conflated", "max_lag", "blocked", "blocked_for",
        "_hub", "_key", "_room", "_blocking", "_queue", "_latest", "_unique", "_size", "_controls", "_armed",
        "_reported", "_since", "_ended", "_ready", "_space",
    )  # fmt: skip

    def __init__(
        self,
        hub: Streams,
        name: str,
        policy: Policy,
        capacity: int,
        *,
        types: tuple[type, ...],
        symbols: frozenset[str] | None,
        key: ConflateKey,
        alert_at: int,
        max_batch: int | None,
    ) -> None:
        self._hub = hub
        self.name = name
        self.policy = policy
        self.capacity = capacity
        self.alert_at = alert_at
        self.max_batch = max_batch
        self.types = types
        self.symbols = symbols
        self._key = key
        # queue without further checks while fewer than this are queued (0: always check)
        self._room = 0 if policy is Policy.CONFLATE else capacity
        self._blocking = policy is Policy.BLOCK
        self.produced = self.delivered = self.dropped = self.conflated = 0
        self.max_lag = 0.0
        self.blocked = 0
        self.blocked_for = 0.0
        self._queue: deque[Any] = deque()  # every policy but conflate
        self._latest: dict[Hashable, Any] = {}  # conflate: key -> latest event, in arrival order of the key
        self._unique = itertools.count()  # keys for what is never conflated
        self._size = 0  # data events queued (engine events do not count against the capacity)
        self._controls = 0  # engine events queued
        self._armed = True  # the fill alert fires once per crossing
        self._reported = 0  # drops told in a Backlog event so far
        self._since: float | None = None  # when the queue last became non-empty (the oldest's wait)
        self._ended = False
        self._ready: anyio.Event | None = None  # the consumer waits for events
        self._space: anyio.Event | None = None  # readers wait for room (block)

    def __repr__(self) -> str:
        return f"<Stream {self.name!r} {self.policy.value} {self._size}/{self.capacity}>"

    # -- producer side (the hub) -------------------------------------------------

    def wants(self, cls: type, symbol: str | None) -> bool:
        """Whether data events of ``cls`` about ``symbol`` belong here."""
        if self.types and not issubclass(cls, self.types):
            return False
        return self.symbols is None or symbol in self.symbols

    def offer(self, event: Any) -> bool:
        """Queue a data event under the policy; True when a ``block`` stream is now full."""
        self.produced += 1
        size = self._size
        if size < self._room:  # the common case: room left (conflate and ended streams go the long way)
            if self._since is None:
                self._since = self._hub.now()
            self._queue.append(event)
            size += 1
            self._size = size
            if size >= self.alert_at and self._armed:
                self._armed = False
                self._append_control(self._backlog())
            ready = self._ready
            if ready is not None:
                self._ready = None
                ready.set()
            return self._blocking and size >= self.capacity
        return self._offer_rest(event)

    def _offer_rest(self, event: Any) -> bool:
        if self._ended:
            self.dropped += 1
            return False
        if self._since is None:
            self._since = self._hub.now()
        if self.policy is Policy.CONFLATE:
            self._conflate(event)
        else:
            policy = self.policy
            if policy is Policy.DROP_OLDEST:
                self._drop_oldest()
            elif policy is Policy.FAIL:
                self.dropped += 1
                self._fail()
                return False
            # (block: over capacity by at most one read; the reader waits before the next)
            self._queue.append(event)
            self._size += 1
        if self._size >= self.alert_at and self._armed:
            self._armed = False
            self._append_control(self._backlog())
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready.set()
        return self._blocking and self._size >= self.capacity

    def _conflate(self, event: Any) -> None:
        latest = self._latest
        key = self._key(event)
        if key is None:
            key = next(self._unique)
        elif key in latest:
            latest[key] = event  # (keeps the key's place: the first unread update's turn)
            self.conflated += 1
            return
        if self._size >= self.capacity:
            self._drop_oldest()
        latest[key] = event
        self._size += 1

    def _drop_oldest(self) -> None:
        """Remove the oldest queued data event (engine events stay)."""
        if self.policy is Policy.CONFLATE:
            latest = self._latest
            for key, old in latest.items():
                if type(old) not in ENGINE_EVENTS:
                    del latest[key]
                    break
        else:
            queue = self._queue
            if type(queue[0]) not in ENGINE_EVENTS:
                queue.popleft()
            else:  # rare: an engine event at the head; keep it and its place
                for i, old in enumerate(queue):
                    if type(old) not in ENGINE_EVENTS:
                        del queue[i]
                        break
        self._size -= 1
        self.dropped += 1

    def _fail(self) -> None:
        self._append_control(
            Error(
                kind=ErrorKind.OVERFLOW,
                message=f"stream {self.name!r} overflowed its capacity of {self.capacity}: it ends here",
                received=self._hub.now(),
            )
        )
        self._end()

    def control(self, event: Any) -> None:
        """Queue an engine event (never dropped, outside the capacity)."""
        if self._ended:
            return
        if self._since is None:
            self._since = self._hub.now()
        self._append_control(event)
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready.set()

    def _append_control(self, event: Any) -> None:
        self._controls += 1
        if self.policy is Policy.CONFLATE:
            self._latest[next(self._unique)] = event
        else:
            self._queue.append(event)

    def _backlog(self) -> Backlog:
        return Backlog(
            stream=self.name,
            queued=self._size,
            capacity=self.capacity,
            dropped=self.dropped,
            conflated=self.conflated,
            lag=self._lag(self._hub.now()),
            received=self._hub.now(),
        )

    def _lag(self, now: float) -> float:
        # Exact for the oldest queued event when consumers take whole batches (the default).
        since = self._since
        return now - since if since is not None else 0.0

    def _end(self) -> None:
        self._ended = True
        self._room = 0
        for waiter in (self._ready, self._space):
            if waiter is not None:
                waiter.set()
        self._ready = self._space = None

    @property
    def full(self) -> bool:
        """A ``block`` stream at capacity: its readers wait."""
        return self._size >= self.capacity and not self._ended

    async def wait_space(self) -> None:
        """Return once the stream is below capacity (or ended); counts the wait."""
        if not self.full:
            return
        now = self._hub.now
        started = now()
        self.blocked += 1
        try:
            while self.full:
                if self._space is None:
                    self._space = anyio.Event()
                await self._space.wait()
        finally:
            self.blocked_for += now() - started

    # -- consumer side --------------------------------------------------------------

    @property
    def ended(self) -> bool:
        """No more batches after what is queued."""
        return self._ended

    def close(self) -> None:
        """Stop this stream: it takes no more events, readers waiting on it go on; idempotent."""
        if not self._ended:
            self._end()
        self._hub.forget(self)
        self.dropped += self._size  # queued and never to be read: counted, not lost silently
        self._size = 0
        self._since = None
        self._queue.clear()
        self._latest.clear()

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.close()

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> list[Any]:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def receive(self) -> list[Any]:
        """The next batch (oldest first); raises :class:`anyio.EndOfStream` once the stream ended and is empty."""
        while not (self._queue or self._latest):
            if self._ended:
                raise anyio.EndOfStream
            ready = self._ready
            if ready is None:
                ready = self._ready = anyio.Event()
            await ready.wait()
        return self._take()

    def take_nowait(self) -> list[Any]:
        """What is queued now, as a batch (empty when nothing is; never waits)."""
        return self._take() if (self._queue or self._latest) else []

    @property
    def hub(self) -> Streams:
        """The :class:`Streams` it belongs to (its ``filtered`` and ``unrouted`` counts)."""
        return self._hub

    @property
    def queued(self) -> int:
        """Events queued now (data and the engine's own)."""
        return len(self._latest) if self.policy is Policy.CONFLATE else len(self._queue)

    def _take(self) -> list[Any]:
        now = self._hub.now()
        lag = self._lag(now)
        if lag > self.max_lag:
            self.max_lag = lag
        limit = self.max_batch
        if self.policy is Policy.CONFLATE:
            latest = self._latest
            if limit is None or len(latest) <= limit:
                batch = list(latest.values())
                latest.clear()
            else:
                keys = list(itertools.islice(latest, limit))
                batch = [latest.pop(k) for k in keys]
        else:
            queue = self._queue
            if limit is None or len(queue) <= limit:
                batch = list(queue)
                queue.clear()
            else:
                batch = [queue.popleft() for _ in range(limit)]
        self._since = now if (self._queue or self._latest) else None
        controls = self._controls
        if controls:
            if self._queue or self._latest:  # a partial batch: count what it holds
                controls = sum(1 for e in batch if type(e) in ENGINE_EVENTS)
            self._controls -= controls
        data = len(batch) - controls
        self._size -= data
        self.delivered += data
        if self.dropped > self._reported and self.policy is not Policy.FAIL:
            # losses since the last report: say so at the end of this batch
            # (a failed stream's overflow error is its report, and its last event)
            self._reported = self.dropped
            batch.append(self._backlog())
        if self._size < self.alert_at // 2 or not self._size:
            self._armed = True
        space = self._space
        if space is not None and self._size < self.capacity:
            self._space = None
            space.set()
        return batch

    def stats(self) -> StreamStats:
        """The counters now (also as an event: :class:`~engine.events.Backlog`)."""
        return StreamStats(
            self.name, self.policy, self.capacity, self.produced, self.delivered, self.dropped,
            self.conflated, self._size, self._lag(self._hub.now()), self.max_lag, self.blocked,
            self.blocked_for, self._ended,
        )  # fmt: skip


_MUTED = object()  # route marker: switched off by the setup (counted as filtered)
_CONTROL = object()  # route marker: an engine event (to every stream)


class Streams:
    """The streams of one standalone connection or of one manager (see the module doc).

    ``trades`` and ``fills`` are the setup's ``trade_feed`` and ``fills_feed``:
    when off, :class:`~engine.events.Trade` (resp. :class:`~engine.events.Fill`
    and :class:`~engine.events.OrderUpdate`) events are counted in
    :attr:`filtered` and never delivered. ``clock`` is the injected clock (by
    default the running loop's, bound on first use).
    """

    __slots__ = ("filtered", "unrouted", "_clock", "_muted", "_streams", "_routes", "_names")

    def __init__(self, clock: Clock | None = None, *, trades: bool = True, fills: bool = True) -> None:
        #: events muted by ``trade_feed`` / ``fills_feed``
        self.filtered = 0
        #: events emitted while no open stream wanted them
        self.unrouted = 0
        self._clock = clock
        muted: list[type] = []
        if not trades:
            muted.append(Trade)
        if not fills:
            muted += [Fill, OrderUpdate]
        self._muted = tuple(muted)
        self._streams: list[Stream] = []
        self._routes: dict[tuple[type, str | None], Any] = {}
        self._names = itertools.count(1)

    def now(self) -> float:
        """The injected clock's time."""
        if self._clock is None:
            self._clock = loop_clock()
        return self._clock()

    @property
    def streams(self) -> list[Stream]:
        """The open streams."""
        return list(self._streams)

    def stream(
        self,
        *types: type,
        symbols: Collection[str] | None = None,
        policy: Policy | str = Policy.BLOCK,
        capacity: int = 10_000,
        key: ConflateKey | None = None,
        alert_at: float = 0.8,
        max_batch: int | None = None,
        name: str | None = None,
    ) -> Stream:
        """Open a stream of the events of ``types`` (every type when none), about ``symbols`` (every symbol: None).

        One stream for everything by default; a stream per channel is
        ``stream(Ticker)``, per subscription ``stream(Trade, symbols=["BTC-USD"])``.
        An event wanted by several streams goes to each. ``policy`` (a
        :class:`Policy` or its value) says what happens when ``capacity`` data
        events are queued; ``key(event)`` is the conflation key (default
        :func:`latest_key`); ``alert_at`` is the fill (a fraction of the capacity,
        or a count) that queues a :class:`~engine.events.Backlog` event;
        ``max_batch`` bounds a batch (None: all that is queued).
        """
        try:
            chosen = Policy(policy)
        except ValueError:
            values = ", ".join(repr(p.value) for p in Policy)
            raise ConfigError(f"stream policy must be one of {values}, not {policy!r}") from None
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ConfigError(f"stream capacity must be a positive integer, not {capacity!r}")
        if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch <= 0):
            raise ConfigError(f"stream max_batch must be a positive integer or None, not {max_batch!r}")
        for cls in types:
            if not isinstance(cls, type):
                raise ConfigError(f"stream types must be event classes (Trade, Ticker, ...), not {cls!r}")
        if isinstance(symbols, str):
            symbols = (symbols,)  # one symbol, not its letters
        if key is not None and not callable(key):
            raise ConfigError(f"stream key must be a callable (event -> key or None), not {key!r}")
        if isinstance(alert_at, bool) or not isinstance(alert_at, (int, float)) or alert_at <= 0:
            raise ConfigError(f"stream alert_at must be a positive fraction or count, not {alert_at!r}")
        threshold = max(1, round(alert_at * capacity)) if alert_at <= 1 and isinstance(alert_at, float) else int(alert_at)
        stream = Stream(
            self,
            name or f"stream{next(self._names)}",
            chosen,
            capacity,
            types=types,
            symbols=frozenset(symbols) if symbols is not None else None,
            key=key or latest_key,
            alert_at=threshold,
            max_batch=max_batch,
        )
        self._streams.append(stream)
        self._routes.clear()
        return stream

    def forget(self, stream: Stream) -> None:
        """Take a closed stream out of the routes."""
        if stream in self._streams:
            self._streams.remove(stream)
            self._routes.clear()

    def publish(self, event: Any) -> Stream | None:
        """Route one event; returns a ``block`` stream it filled (its reader should wait), else None."""
        try:
            key = (type(event), event.symbol)
        except AttributeError:
            key = (type(event), None)
        routes = self._routes.get(key)
        if routes is None:
            routes = self._route(key)
        if type(routes) is not tuple:
            if routes is _MUTED:
                self.filtered += 1
            else:
                self.control(event)
            return None
        full = None
        for stream in routes:
            if stream.offer(event):
                full = stream
        if not routes:
            self.unrouted += 1
        return full

    def _route(self, key: tuple[type, str | None]) -> Any:
        cls, symbol = key
        routes: Any
        if cls in ENGINE_EVENTS:
            routes = _CONTROL
        elif self._muted and issubclass(cls, self._muted):
            routes = _MUTED
        else:
            routes = tuple(s for s in self._streams if s.wants(cls, symbol))
        self._routes[key] = routes
        return routes

    def control(self, event: Any) -> None:
        """An engine event to every stream (those naming symbols: only about theirs, or about none)."""
        symbol = getattr(event, "symbol", None)
        for stream in self._streams:
            if symbol is None or stream.symbols is None or symbol in stream.symbols:
                stream.control(event)

    def end(self) -> None:
        """The source stopped: every open stream ends once its queue is read."""
        for stream in self._streams:
            stream._end()


class Outlet:
    """A connection's side of the streams: ``emit``, the pause at the read boundary, its losses as errors.

    The reader checks :attr:`full` after each read's messages were delivered
    and, when set, awaits :meth:`relieve` before it reads again. Listening to
    the connection's transitions (:meth:`on_transition`), it tells every
    stream when a session is lost (with the close code), when a login is
    rejected and when the connection gives up; a connection that owns its hub
    (a standalone one) ends its streams when it stops.
    """

    __slots__ = ("_hub", "_clock", "full", "owns_hub")

    def __init__(self, hub: Streams | None, *, clock: Clock | None = None) -> None:
        # A connection's own hub is made when first needed (most connections under a
        # manager share its hub; an idle connection should not pay for one).
        self._hub = hub
        self._clock = clock
        self.owns_hub = hub is None
        #: ``block`` streams this connection filled since its reader last waited
        self.full: tuple[Stream, ...] = ()

    @property
    def hub(self) -> Streams:
        """The streams the events go to."""
        hub = self._hub
        if hub is None:
            hub = self._hub = Streams(self._clock)
        return hub

    def on_transition(self, change: StateChanged) -> None:
        """A state listener: losses become :class:`~engine.events.Error` events in the streams."""
        cause = change.cause
        error: Error | None = None
        if change.trigger == "lost" and cause is not None:
            if isinstance(cause, SetupFailure) and cause.rejected:
                kind, code = ErrorKind.AUTH, None
            else:
                kind, code = ErrorKind.CLOSED, getattr(cause, "code", None)
            error = Error(kind=kind, message=change.reason, code=code, connection=change.connection, received=change.at)
        elif change.trigger == "give_up":
            error = Error(kind=ErrorKind.GAVE_UP, message=change.reason, connection=change.connection, received=change.at)
        hub = self._hub
        if hub is None:
            return  # (no stream was ever opened: nobody to tell)
        if error is not None:
            hub.control(error)
        if change.dest is State.DISCONNECTED and self.owns_hub:
            hub.end()

    def emit(self, event: Any) -> None:
        """Hand one typed event to the streams; never waits."""
        stream = (self._hub or self.hub).publish(event)
        if stream is not None and stream not in self.full:
            self.full += (stream,)

    async def relieve(self) -> None:
        """Wait until every stream this connection filled has room again (or ended)."""
        while self.full:
            await self.full[0].wait_space()
            self.full = self.full[1:]
