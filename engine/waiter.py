"""One-shot wake-ups with deadlines: what pending requests wait on.

On asyncio a waiter is a bare future, and the deadlines of all of one
table's waiters share one timer (:class:`Deadlines`, a heap and one
``loop.call_at`` handle armed at the earliest): a request costs a future and
a heap push, where an ``anyio.Event`` waited on inside an
``anyio.CancelScope(deadline=...)`` costs ~11 us (measured: the scope's
enter/exit ~6 us, the event ~5 us) and a timer handle per request ~2 us.
Under trio a waiter is exactly that event and scope (:meth:`Waiter.wait`
with a deadline). Either way the wait is cancellable like any other await
(anyio cancel scopes reach it), and deadlines are on the loop's clock, the
one the engine reads.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import math
from collections.abc import Callable
from typing import Generic, NamedTuple, TypeVar

import anyio

from transports.base import running_asyncio_loop

__all__ = ["Deadlines", "Waiter", "Waits", "waits_for_running_loop"]

T = TypeVar("T")


class Waiter:
    """Set once (:meth:`set`: True) or expired (:meth:`expire`: False); :meth:`wait` says which."""

    __slots__ = ()

    def set(self) -> None:
        raise NotImplementedError

    def expire(self) -> None:
        """End the wait as timed out (nothing, if it already ended)."""
        raise NotImplementedError

    def is_set(self) -> bool:
        raise NotImplementedError

    async def wait(self, deadline: float = math.inf) -> bool:
        """Wait until set (True) or expired or ``deadline`` on the loop's clock passed (False)."""
        raise NotImplementedError


class _FutureWaiter(Waiter):
    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[bool] = loop.create_future()

    def set(self) -> None:
        future = self._future
        if not future.done():
            future.set_result(True)

    def expire(self) -> None:
        future = self._future
        if not future.done():
            future.set_result(False)

    def is_set(self) -> bool:
        future = self._future
        return future.done() and not future.cancelled() and future.result()

    async def wait(self, deadline: float = math.inf) -> bool:
        future = self._future
        if future.done():
            return not future.cancelled() and future.result()
        timer = None if deadline == math.inf else future.get_loop().call_at(deadline, self.expire)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()


class _EventWaiter(Waiter):
    __slots__ = ("_event", "_set")

    def __init__(self) -> None:
        self._event = anyio.Event()
        self._set = False

    def set(self) -> None:
        if not self._event.is_set():
            self._set = True
            self._event.set()

    def expire(self) -> None:
        self._event.set()  # (set() after this changes nothing)

    def is_set(self) -> bool:
        return self._set

    async def wait(self, deadline: float = math.inf) -> bool:
        if deadline == math.inf:
            await self._event.wait()
        else:
            with anyio.CancelScope(deadline=deadline):
                await self._event.wait()
        return self._set


class Deadlines(Generic[T]):
    """One timer for many deadlines: ``expire(item)`` once an item's deadline passes, if still ``alive(item)``.

    Items that stopped waiting stay in the heap until they reach its top or
    the heap is rebuilt (when it holds over twice the live count), so adding
    is one heap push and dropping costs nothing. The timer is armed at the
    earliest live deadline only: with equal timeouts it fires once per
    timeout, not once per request.
    """

    __slots__ = ("_call_at", "_clock", "_expire", "_alive", "_live", "_heap", "_seq", "_timer", "_at")

    def __init__(
        self,
        call_at: Callable[[float, Callable[[], None]], asyncio.TimerHandle],
        clock: Callable[[], float],
        expire: Callable[[T], None],
        alive: Callable[[T], bool],
        live: Callable[[], int],
    ) -> None:
        self._call_at = call_at
        self._clock = clock
        self._expire = expire
        self._alive = alive
        self._live = live  # how many items still wait (when to rebuild the heap)
        self._heap: list[tuple[float, int, T]] = []
        self._seq = itertools.count()  # (ties: never compare the items themselves)
        self._timer: asyncio.TimerHandle | None = None
        self._at = math.inf  # when the timer fires

    def add(self, deadline: float, item: T) -> None:
        """Expire ``item`` at ``deadline`` unless it stops being alive first."""
        if deadline == math.inf:
            return
        heap = self._heap
        size = len(heap)
        if size > 64 and size > 2 * self._live() + 64:
            alive = self._alive
            heap[:] = [entry for entry in heap if alive(entry[2])]
            heapq.heapify(heap)
        heapq.heappush(heap, (deadline, next(self._seq), item))
        if deadline < self._at:
            self._arm(deadline)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._at = when
        self._timer = self._call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer, self._at = None, math.inf
        heap, alive, now = self._heap, self._alive, self._clock()
        while heap and (heap[0][0] <= now or not alive(heap[0][2])):
            _, _, item = heapq.heappop(heap)
            if alive(item):
                self._expire(item)
        if heap:
            self._arm(heap[0][0])

    def close(self) -> None:
        """Stop the timer and forget every deadline."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._at = None, math.inf
        self._heap.clear()


class Waits(NamedTuple):
    """How waiting is done on the running backend (found once per run, at its first request)."""

    #: makes one waiter
    new: Callable[[], Waiter]
    #: ``loop.call_at`` on asyncio (deadlines share a :class:`Deadlines` timer); None: each
    #: wait carries its own deadline (:meth:`Waiter.wait`)
    call_at: Callable[[float, Callable[[], None]], asyncio.TimerHandle] | None


def waits_for_running_loop() -> Waits:
    """The running backend's :class:`Waits` (call from inside the event loop).

    (Finding the running asyncio loop costs a ``getpid()`` syscall on CPython
    3.11: a connection asks at the first request of a run, not at every one.)
    """
    loop = running_asyncio_loop()
    if loop is None:
        return Waits(_EventWaiter, None)
    return Waits(functools.partial(_FutureWaiter, loop), loop.call_at)
