"""One consumer's bounded buffer under one declared backpressure policy, read in batches.

A :class:`Stream` is made by :meth:`engine.delivery.Streams.stream`, which
routes events to it. It holds at most ``capacity`` data events; when full, its
:class:`Policy` decides:

- ``block``: nothing is lost; backpressure reaches the socket. ``emit`` never
  waits (a sync handler cannot); after a read's messages are delivered, a
  reader that filled a ``block`` stream waits (:meth:`Stream.wait_space`)
  before it reads again, so the buffer overshoots by at most one read. The
  wait does not count as the peer's silence (the reader resets its traffic
  deadline after it). Every connection that filled the stream pauses (under a
  manager, all that feed it), and a paused connection answers nothing: an
  exchange that pings and expects a pong within its own timeout will drop a
  connection whose consumer stalls longer than that.
- ``drop_oldest``: the oldest queued event makes room (counted ``dropped``).
- ``conflate``: an event replaces the queued one with the same key (latest
  ticker per symbol; counted ``conflated``); events without a key, or a full
  buffer of distinct keys, fall back to ``drop_oldest``.
- ``fail``: the stream gets an :class:`~engine.events.Error` (``OVERFLOW``),
  then ends; what it would have received after is counted ``dropped``.

Nothing is lost uncounted: ``produced == delivered + dropped + conflated +
queued``. The engine's own events (errors, backlog alerts, subscription
changes, gaps, resyncs) are queued outside the capacity, in order with the
data, and never dropped. A :class:`~engine.events.Backlog` event is queued
when the fill crosses ``alert_at``, and ends a batch whose events were
preceded by drops.
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, Protocol

import anyio

from engine.events import Backlog, Book, BookResynced, Error, ErrorKind, Gap, Kline, SubscriptionChanged, Ticker



class Hub(Protocol):
    """What a stream needs of the hub that made it (:class:`engine.delivery.Streams`)."""

    filtered: int
    unrouted: int

    def now(self) -> float: ...

    def forget(self, stream: Stream) -> None: ...

__all__ = ["ENGINE_EVENTS", "ConflateKey", "Policy", "Stream", "StreamStats", "latest_key"]

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
    """One consumer's bounded buffer (make it with :meth:`engine.delivery.Streams.stream`).

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
        hub: Hub,
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

    def offer_many(self, events: list[Any]) -> bool:
        """Queue a run of data events as :meth:`offer` would one by one; True when a ``block`` stream is now full.

        When they all fit (the common case) it is one extend and one wake-up;
        otherwise each goes through :meth:`offer`.
        """
        count = len(events)
        size = self._size
        if size + count > self._room:
            full = False
            for event in events:
                full = self.offer(event) or full
            return full
        self.produced += count
        if self._since is None:
            self._since = self._hub.now()
        if self._armed and size + count >= self.alert_at:
            # the alert goes where one-by-one offers would put it: right after the crossing event
            cut = max(1, self.alert_at - size)
            self._queue.extend(events[:cut])
            self._size = size + cut
            self._armed = False
            self._append_control(self._backlog())
            self._queue.extend(events[cut:])
        else:
            self._queue.extend(events)
        size += count
        self._size = size
        ready = self._ready
        if ready is not None:
            self._ready = None
            ready.set()
        return self._blocking and size >= self.capacity

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
    def hub(self) -> Hub:
        """The :class:`~engine.delivery.Streams` it belongs to (its ``filtered`` and ``unrouted`` counts)."""
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
