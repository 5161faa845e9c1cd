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
It is also made a member of the body's cancel scope in anyio's own
bookkeeping, exactly as anyio's task groups register their children, so
cancelling a scope around the block reaches it at once. That bookkeeping is
private to anyio (``TaskState``, ``_task_states``); without it (another anyio)
the owner falls back to a task group, and tests/test_tasks.py pins the
behaviour on the installed version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from transports.base import running_asyncio_loop

try:  # anyio's record of which cancel scope each asyncio task runs in (private)
    from anyio._backends._asyncio import TaskState as _TaskState
    from anyio._backends._asyncio import _task_states
except ImportError:  # pragma: no cover - another anyio: use a task group
    _TaskState = None  # type: ignore[assignment,misc]

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
        # (Any: the asyncio backend's scope, whose private task set start() uses)
        self._body: Any = None
        self._task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    async def start(self, child: Callable[[], Coroutine[Any, Any, None]]) -> None:
        # The body runs in this scope so that a crashed child can cancel it.
        body: Any = anyio.CancelScope()
        self._body = body
        body.__enter__()
        host = asyncio.current_task()
        task = self._task = self._loop.create_task(self._run(child))
        # A member of the body's scope, as a task group's child is of the group's.
        _task_states[task] = _TaskState(id(host), body)
        body._tasks.add(task)
        task.add_done_callback(self._child_done)

    async def _run(self, child: Callable[[], Coroutine[Any, Any, None]]) -> None:
        try:
            await child()
        finally:
            # Leave the body's scope and wake a join from the child's last step:
            # a done callback alone would cost one more loop iteration.
            self._leave_body()
            self._wake()

    def _leave_body(self) -> None:
        task, body = self._task, self._body
        if task is not None and body is not None:
            body._tasks.discard(task)
            _task_states.pop(task, None)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _child_done(self, task: asyncio.Task[None]) -> None:
        self._leave_body()  # (also when the task was cancelled before it ever ran)
        self._wake()
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
            # As at a task group's exit: a scope around the block that was cancelled
            # while nothing here awaited (the child was already done) sees it now.
            await anyio.lowlevel.checkpoint_if_cancelled()
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
    if loop is not None and _TaskState is not None:
        return _AsyncioOwner(loop)
    return _TaskGroupOwner()


def task_identity() -> Callable[[], int]:
    """A function returning an id of the current task (bound once: anyio's
    ``get_current_task()`` builds a TaskInfo on every call)."""
    if running_asyncio_loop() is not None:
        current = asyncio.current_task
        return lambda: id(current())
    return lambda: anyio.get_current_task().id
