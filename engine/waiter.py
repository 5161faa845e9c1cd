"""One-shot wake-ups with deadlines: what pending requests wait on.

On asyncio a request waits on a bare future, and the deadlines of all of one
table's waiters share one timer (:class:`Deadlines`: a queue of in-order
deadlines, a heap for the rest, and one ``loop.call_at`` handle armed at the
earliest): a request costs a future and an append, where an ``anyio.Event``
waited on inside an ``anyio.CancelScope(deadline=...)`` costs ~11 us
(measured: the scope's enter/exit ~6 us, the event ~5 us) and a timer handle
per request ~2 us. Under trio it waits on exactly that event and scope
(:meth:`EventDone.wait` inside the request's own cancel scope, which times
its send too). Either way the wait is cancellable like any other await
(anyio cancel scopes reach it), and deadlines are on the loop's clock, the
one the engine reads.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Generic, NamedTuple, Protocol, TypeVar

import anyio

from transports.base import running_asyncio_loop

__all__ = ["Deadlines", "Done", "EventDone", "Waits", "finish", "waits_for_running_loop"]

K = TypeVar("K")
T = TypeVar("T")


class Done(Protocol):
    """What a pending request waits on: the part of :class:`asyncio.Future` it uses.

    On asyncio it is the loop's own future (``await`` it; the table's timer
    expires it); under trio an :class:`EventDone`. The result says how the
    wait ended: True answered (or failed: the request carries the error),
    False timed out.
    """

    def done(self) -> bool: ...

    def result(self) -> bool: ...

    def set_result(self, result: bool) -> None: ...


class EventDone:
    """:class:`Done` on an ``anyio.Event`` (trio), waited for with :meth:`wait` and a deadline."""

    __slots__ = ("_event", "_result")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._result: bool | None = None

    def done(self) -> bool:
        return self._result is not None

    def result(self) -> bool:
        if self._result is None:
            raise RuntimeError("not done yet")  # (as a future would)
        return self._result

    def set_result(self, result: bool) -> None:
        if self._result is not None:
            raise RuntimeError("already done")  # (as a future would: callers check done() first)
        self._result = result
        self._event.set()

    async def wait(self, deadline: float = math.inf) -> bool:
        """Wait until done (its result) or ``deadline`` on the loop's clock passed (False)."""
        if deadline == math.inf:
            await self._event.wait()
        else:
            with anyio.CancelScope(deadline=deadline):
                await self._event.wait()
        return bool(self._result)


def finish(done: Done, result: bool) -> None:
    """End the wait with ``result``, unless it already ended (answered, expired, or its task was cancelled)."""
    if not done.done():
        done.set_result(result)


class Deadlines(Generic[K, T]):
    """One timer for many deadlines: ``expire(item)`` once an item's deadline passes, if it is still alive.

    An item added under ``key`` is alive while ``live`` (the table of what
    waits, by key) still maps ``key`` to it: answered, cancelled or replaced,
    it is not. Deadlines that come in order (one timeout for every request:
    the usual case) go to the end of a queue; one earlier than the queue's
    last goes to a heap. Items that stopped waiting stay until they reach the
    front or the entries are rebuilt (when they are over twice the live
    count), so adding is one append and dropping costs nothing. The timer is
    armed at the earliest live deadline only: with equal timeouts it fires
    once per timeout, not once per request.
    """

    __slots__ = ("_call_at", "_clock", "_expire", "_live", "_queue", "_heap", "_seq", "_timer", "_at")

    def __init__(
        self,
        call_at: Callable[[float, Callable[[], None]], asyncio.TimerHandle],
        clock: Callable[[], float],
        expire: Callable[[T], None],
        live: Mapping[K, T],
    ) -> None:
        self._call_at = call_at
        self._clock = clock
        self._expire = expire
        # (aliveness is read from the table itself, inline: a predicate
        # function would be a Python call per entry, ~1 % of a round trip)
        self._live = live
        self._queue: deque[tuple[float, K, T]] = deque()  # deadlines in the order added, never decreasing
        self._heap: list[tuple[float, int, K, T]] = []  # the others
        self._seq = itertools.count()  # (heap ties: never compare keys or items)
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer fires

    def __len__(self) -> int:
        """Entries held, live or not (bounded by about twice the live count)."""
        return len(self._queue) + len(self._heap)

    def add(self, deadline: float, key: K, item: T) -> None:
        """Expire ``item`` at ``deadline`` unless ``live`` stops mapping ``key`` to it first."""
        if deadline == math.inf:
            return
        queue = self._queue
        if not queue or deadline >= queue[-1][0]:
            queue.append((deadline, key, item))
        else:
            heapq.heappush(self._heap, (deadline, next(self._seq), key, item))
        size = len(queue) + len(self._heap)
        if size > 64 and size > 2 * len(self._live) + 64:
            self._rebuild()
        if deadline < self._at:
            self._arm(deadline)

    def _rebuild(self) -> None:
        """Drop the entries of items no longer alive (order kept)."""
        get = self._live.get
        self._queue = deque([entry for entry in self._queue if get(entry[1]) is entry[2]])
        heap = self._heap
        if heap:
            heap[:] = [entry for entry in heap if get(entry[2]) is entry[3]]
            heapq.heapify(heap)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = self._call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._at = None, math.inf
        queue, heap, get, now = self._queue, self._heap, self._live.get, self._clock()
        # Pop from the front what is due or dead (each tested once); expire what is due and alive.
        while queue:
            deadline, key, item = queue[0]
            alive = get(key) is item
            if alive and deadline > now:
                break
            queue.popleft()
            if alive:
                self._expire(item)
        while heap:
            deadline, _, key, item = heap[0]
            alive = get(key) is item
            if alive and deadline > now:
                break
            heapq.heappop(heap)
            if alive:
                self._expire(item)
        first = min(queue[0][0] if queue else math.inf, heap[0][0] if heap else math.inf)
        if first < math.inf:
            self._arm(first)

    def close(self) -> None:
        """Stop the timer and forget every deadline."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._at = None, math.inf
        self._queue.clear()
        self._heap.clear()


class Waits(NamedTuple):
    """How waiting is done on the running backend (found once per run, at its first request)."""

    #: makes one :class:`Done`: an asyncio future of the loop (as ``loop.create_future``), :class:`EventDone` under trio
    new: Callable[[], Done]
    #: ``loop.call_at`` on asyncio (deadlines share a :class:`Deadlines` timer, and the
    #: future is awaited as it is); None: each request waits in its own cancel scope (trio)
    call_at: Callable[[float, Callable[[], None]], asyncio.TimerHandle] | None


def waits_for_running_loop() -> Waits:
    """The running backend's :class:`Waits` (call from inside the event loop).

    (Finding the running asyncio loop costs a ``getpid()`` syscall on CPython
    3.11: a connection asks at the first request of a run, not at every one.)
    """
    loop = running_asyncio_loop()
    if loop is None:
        return Waits(EventDone, None)
    new: Callable[[], Done] = loop.create_future
    if type(loop).create_future is asyncio.BaseEventLoop.create_future:
        # The stock method only makes an asyncio.Future for this loop: made
        # directly (a C call), a request saves a Python call (0.4 % of its
        # instructions, measured). A loop with its own create_future keeps it.
        new = functools.partial(asyncio.Future, loop=loop)
    return Waits(new, loop.call_at)
