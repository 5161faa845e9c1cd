"""Typed events from connections to bounded streams; consumers take batches.

Handlers produce typed events (:mod:`engine.events`) with ``conn.emit(event)``;
a :class:`Streams` hub (one per standalone connection, one shared by a
manager's connections) routes each event to the :class:`~engine.stream.Stream`
objects that asked for its type and symbol, each a bounded buffer with one
declared policy (``block``, ``drop_oldest``, ``conflate``, ``fail``: see
:mod:`engine.stream`). A consumer iterates a stream and gets *lists* of
events (one ``await`` per batch: an ``async for`` per event costs ~3 us).

Nothing is lost uncounted: each stream counts what it did not deliver; the
hub counts events no open stream wanted (``unrouted``) and trades, fills and
order updates muted by the setup's ``trade_feed`` / ``fills_feed`` switches
(``filtered``). Engine events (errors, backlog alerts, subscription changes,
gaps, resyncs) go to every stream (to those naming symbols: when about one of
theirs or about none). A connection's :class:`Outlet` is its side: ``emit``,
the wait at the read boundary for ``block`` streams, and its session losses,
close codes, rejected logins and give-ups as :class:`~engine.events.Error` events.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection
from typing import Any, Protocol

from engine.causes import SetupFailure
from engine.clock import Clock, loop_clock
from engine.errors import ConfigError
from engine.events import BookSnapshot, BookUpdate, Error, ErrorKind, Fill, OrderUpdate, StateChanged, Trade
from engine.stream import ENGINE_EVENTS, ConflateKey, Policy, Stream, StreamStats, latest_key
from machines.connection import State

__all__ = ["ENGINE_EVENTS", "Outlet", "Policy", "Stream", "StreamStats", "Streams", "latest_key"]


_MUTED = object()  # route marker: switched off by the setup (counted as filtered)
_CONTROL = object()  # route marker: an engine event (to every stream)
_BOOKS = object()  # route marker: a book event, for the order books first


class BookTaker(Protocol):
    """What keeps the order books (:class:`engine.bookkeeper.BookKeeper`): book events go there first."""

    def take(self, event: Any) -> Stream | None: ...


class Streams:
    """The streams of one standalone connection or of one manager (see the module doc).

    ``trades`` and ``fills`` are the setup's ``trade_feed`` and ``fills_feed``:
    when off, :class:`~engine.events.Trade` (resp. :class:`~engine.events.Fill`
    and :class:`~engine.events.OrderUpdate`) events are counted in
    :attr:`filtered` and never delivered. ``clock`` is the injected clock (by
    default the running loop's, bound on first use).
    """

    __slots__ = ("filtered", "unrouted", "books", "_clock", "_muted", "_streams", "_routes", "_past_books", "_names")

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
        self._past_books: dict[tuple[type, str | None], tuple[Stream, ...]] = {}  # routes of what the books let through
        self._names = itertools.count(1)
        #: the order books book events go through first (:mod:`engine.bookkeeper`), if kept
        self.books: BookTaker | None = None

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
        self._past_books.clear()
        return stream

    def forget(self, stream: Stream) -> None:
        """Take a closed stream out of the routes."""
        if stream in self._streams:
            self._streams.remove(stream)
            self._routes.clear()
            self._past_books.clear()

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
            if routes is _BOOKS:
                return self.books.take(event)  # type: ignore[union-attr]  # (_BOOKS only while books are kept)
            if routes is _MUTED:
                self.filtered += 1
            else:
                self.control(event)
            return None
        return self._offer(event, routes)

    def publish_many(self, events: list[Any]) -> list[Stream]:
        """Route a list of events as :meth:`publish` would one by one; returns the ``block`` streams they filled.

        One route lookup per run of events with the same type and symbol, and
        one :meth:`Stream.offer_many` per stream and run: a read's trades cost
        a fraction of emitting each.
        """
        full: list[Stream] = []
        run: list[Any] = []
        key: tuple[type, str | None] | None = None
        for event in events:
            try:
                here = (type(event), event.symbol)
            except AttributeError:
                here = (type(event), None)
            if here != key:
                if run:
                    self._publish_run(key, run, full)  # type: ignore[arg-type]
                    run = []
                key = here
            run.append(event)
        if run:
            self._publish_run(key, run, full)  # type: ignore[arg-type]
        return full

    def _publish_run(self, key: tuple[type, str | None], run: list[Any], full: list[Stream]) -> None:
        routes = self._routes.get(key)
        if routes is None:
            routes = self._route(key)
        if type(routes) is not tuple:  # (books, muted, engine events: one by one)
            for event in run:
                stream = self.publish(event)
                if stream is not None and stream not in full:
                    full.append(stream)
            return
        if not routes:
            self.unrouted += len(run)
        for stream in routes:
            if stream.offer_many(run) and stream not in full:
                full.append(stream)

    def deliver(self, event: Any) -> Stream | None:
        """Route one event to the streams that want it, past the books (the keeper's own way out)."""
        key = (type(event), event.symbol)
        routes = self._past_books.get(key)
        if routes is None:
            routes = self._past_books[key] = tuple(s for s in self._streams if s.wants(*key))
        return self._offer(event, routes)

    def wants(self, cls: type, symbol: str | None) -> bool:
        """Whether an open stream takes ``cls`` events about ``symbol``."""
        return any(s.wants(cls, symbol) for s in self._streams)

    def _offer(self, event: Any, routes: tuple[Stream, ...]) -> Stream | None:
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
        elif self.books is not None and (cls is BookUpdate or cls is BookSnapshot):
            routes = _BOOKS
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

    def emit_many(self, events: list[Any]) -> None:
        """Hand a list of typed events to the streams, in order; never waits."""
        for stream in (self._hub or self.hub).publish_many(events):
            if stream not in self.full:
                self.full += (stream,)

    async def relieve(self) -> None:
        """Wait until every stream this connection filled has room again (or ended)."""
        while self.full:
            await self.full[0].wait_space()
            self.full = self.full[1:]
