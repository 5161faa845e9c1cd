"""A one-shot wake-up with a deadline: what a pending request waits on.

On asyncio it is a bare future and one timer handle (``loop.call_at``):
~1.5 us a request, where an ``anyio.Event`` waited on inside an
``anyio.CancelScope(deadline=...)`` costs ~11 us (measured: the scope's
enter/exit ~6 us, the event ~5 us). Elsewhere (trio) it is exactly that
event and scope. Either way the wait is cancellable like any other await
(anyio cancel scopes reach it), and the deadline is on the loop's clock, the
one the engine reads.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable

import anyio

from transports.base import running_asyncio_loop

__all__ = ["Waiter", "new_waiter", "waiter_factory"]


class Waiter:
    """Set once (:meth:`set`); :meth:`wait` returns True if it was, False at the deadline."""

    __slots__ = ()

    def set(self) -> None:
        raise NotImplementedError

    def is_set(self) -> bool:
        raise NotImplementedError

    async def wait(self, deadline: float = math.inf) -> bool:
        """Wait until set (True) or until ``deadline`` on the loop's clock (False)."""
        raise NotImplementedError


def _expire(future: asyncio.Future[bool]) -> None:
    if not future.done():
        future.set_result(False)


class _FutureWaiter(Waiter):
    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[bool] = loop.create_future()

    def set(self) -> None:
        future = self._future
        if not future.done():
            future.set_result(True)

    def is_set(self) -> bool:
        future = self._future
        return future.done() and not future.cancelled() and future.result()

    async def wait(self, deadline: float = math.inf) -> bool:
        future = self._future
        if future.done():
            return not future.cancelled() and future.result()
        timer = None if deadline == math.inf else future.get_loop().call_at(deadline, _expire, future)
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()


class _EventWaiter(Waiter):
    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self, deadline: float = math.inf) -> bool:
        with anyio.CancelScope(deadline=deadline):
            await self._event.wait()
        return self._event.is_set()


def new_waiter() -> Waiter:
    """A waiter for the running backend (call from inside the event loop)."""
    return waiter_factory()()


def waiter_factory() -> Callable[[], Waiter]:
    """What makes waiters for the running backend, bound once (call from inside the event loop).

    (Finding the running asyncio loop costs a ``getpid()`` syscall on CPython
    3.11: a connection asks once per run, not once per request.)
    """
    loop = running_asyncio_loop()
    return functools.partial(_FutureWaiter, loop) if loop is not None else _EventWaiter
