"""The one background task a Connection owns, and cheap task identity.

``async with Connection(...)`` runs the connection in a task the block owns,
like an anyio task group with one child: a crash of the child cancels the
block's body and comes out of the block in an exception group; leaving the
block with an exception stops the child at once; leaving it waits for the
child. On trio (and any non-asyncio backend) that *is* an anyio task group.
On asyncio it is a plain task plus one cancel scope for the body: the same
semantics at a third of the cost (an anyio task group + child costs ~18 µs
against ~5 µs, which was a visible share of handshake latency).

The child is stopped through its own anyio cancel scopes (the ``stop``
callback), never by a native ``Task.cancel()``, so shielded sections inside
it (a bounded close, a final delivery) behave exactly as under a task group.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from transports.base import running_asyncio_loop

__all__ = ["TaskOwner", "own_task", "task_identity"]

ExcInfo = tuple[type[BaseException] | None, BaseException | None, Any]


class TaskOwner:
    """Runs one coroutine for the lifetime of an ``async with`` block (see the module doc)."""

    async def start(self, child: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Begin owning: call from ``__aenter__``."""
        raise NotImplementedError

    async def join(self, exc_info: ExcInfo, stop: Callable[[], None]) -> bool | None:
        """Wait for the child: call from ``__aexit__``. ``stop()`` ends the child promptly.

        Returns / raises what a task group's ``__aexit__`` would. ``stop`` is
        the owner's only way in, so it must also work on a child that has not
        run yet (Connection sets ``_close_requested`` first, which its run
        task checks before anything else).
        """
        raise NotImplementedError


class _TaskGroupOwner(TaskOwner):
    __slots__ = ("_group",)

    def __init__(self) -> None:
        self._group = anyio.create_task_group()

    async def start(self, child: Callable[[], Coroutine[Any, Any, None]]) -> None:
        await self._group.__aenter__()
        self._group.start_soon(child)

    async def join(self, exc_info: ExcInfo, stop: Callable[[], None]) -> bool | None:
        # (with an exception in flight the group cancels the child itself)
        return await self._group.__aexit__(*exc_info)


class _AsyncioOwner(TaskOwner):
    __slots__ = ("_loop", "_body", "_task", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._body: anyio.CancelScope | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def start(self, child: Callable[[], Coroutine[Any, Any, None]]) -> None:
        # The body runs in this scope so that a crashed child can cancel it.
        self._body = anyio.CancelScope()
        self._body.__enter__()
        self._task = self._loop.create_task(self._run(child))
        self._task.add_done_callback(self._child_done)

    async def _run(self, child: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await child()
        finally:
            # Wake a join from the child's last step: a done callback alone
            # would cost one more loop iteration before the join resumes.
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _child_done(self, task: asyncio.Task[None]) -> None:
        self._wake()  # (also when the task was cancelled before it ever ran)
        if not task.cancelled() and task.exception() is not None and self._body is not None:
            self._body.cancel()

    async def join(self, exc_info: ExcInfo, stop: Callable[[], None]) -> bool | None:
        body, task = self._body, self._task
        assert body is not None and task is not None, "join() without start()"
        _, exc_val, exc_tb = exc_info
        try:
            if exc_val is not None:
                stop()
            try:
                await self._wait(task)
            except asyncio.CancelledError as cancelled:
                # Cancelled while waiting: stop the child, still wait for it (it
                # ends promptly), then report as a task group would: errors win
                # over the cancellation, else the cancellation goes on.
                stop()
                with anyio.CancelScope(shield=True):
                    await self._wait(task)
                if exc_val is None:
                    exc_val = cancelled
            errors: list[BaseException] = []
            if exc_val is not None and not isinstance(exc_val, asyncio.CancelledError):
                errors.append(exc_val)
            crash = None if task.cancelled() else task.exception()
            if crash is not None:
                errors.append(crash)
            if errors:
                raise BaseExceptionGroup("unhandled errors in a TaskGroup", errors) from None
            if exc_val is not None:
                raise exc_val
        except BaseException as exc:
            if body.__exit__(type(exc), exc, exc.__traceback__):
                return True
            raise
        finally:
            del exc_val, exc_tb
        return body.__exit__(None, None, None)

    async def _wait(self, task: asyncio.Task[None]) -> None:
        while not task.done():
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


def own_task() -> TaskOwner:
    """A :class:`TaskOwner` for the running backend (call inside the event loop)."""
    loop = running_asyncio_loop()
    return _AsyncioOwner(loop) if loop is not None else _TaskGroupOwner()


def task_identity() -> Callable[[], int]:
    """A function returning an id of the current task (bound once: anyio's
    ``get_current_task()`` builds a TaskInfo on every call)."""
    if running_asyncio_loop() is not None:
        current = asyncio.current_task
        return lambda: id(current())
    return lambda: anyio.get_current_task().id
