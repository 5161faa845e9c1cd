"""TaskOwner: one owned child with task-group semantics, on both backends and virtual time.

On asyncio the owner is a plain task plus a body cancel scope; on trio an anyio
task group. Each test states the task-group behaviour both must show.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from engine.tasks import (
    TaskOwner,
    _AsyncioOwner,
    _TaskGroupOwner,
    own_task,
    task_identity,
)

pytestmark = pytest.mark.anyio


class _Child:
    """A child that runs in its own cancel scope (what ``stop`` cancels), like Connection's run task."""

    def __init__(self, work: Any = None) -> None:
        self.scope: anyio.CancelScope | None = None
        self.events: list[str] = []
        self.work = work
        self.work_fails = False

    async def __call__(self) -> None:
        self.events.append("started")
        try:
            with anyio.CancelScope() as self.scope:
                if self.work is not None:
                    await self.work(self)
                else:
                    await anyio.sleep_forever()
        finally:
            self.events.append("ended")

    def stop(self) -> None:
        if self.scope is not None:
            self.scope.cancel()


async def _run_block(owner: TaskOwner, child: _Child, body: Any) -> Any:
    """``async with``-shaped use of an owner, as Connection does it."""
    await owner.start(child)
    try:
        await body()
    except BaseException as exc:
        if not await owner.join((type(exc), exc, exc.__traceback__), child.stop):
            raise
        return None
    return await owner.join((None, None, None), child.stop)


async def test_owner_matches_the_backend(anyio_backend: Any) -> None:
    owner = own_task()
    assert isinstance(owner, _AsyncioOwner if anyio_backend[0] == "asyncio" else _TaskGroupOwner)


async def test_normal_exit_waits_for_the_child() -> None:
    async def work(child: _Child) -> None:
        await anyio.sleep(3)
        child.events.append("worked")

    child = _Child(work)
    start = anyio.current_time()
    with anyio.fail_after(60):
        await _run_block(own_task(), child, lambda: anyio.sleep(0))
    assert child.events == ["started", "worked", "ended"]
    assert anyio.current_time() - start == pytest.approx(3)


async def test_body_error_stops_the_child_at_once_and_propagates() -> None:
    child = _Child()

    async def body() -> None:
        await anyio.sleep(1)
        raise KeyError("body")

    start = anyio.current_time()
    with anyio.fail_after(60), pytest.raises(BaseExceptionGroup) as info:
        await _run_block(own_task(), child, body)
    assert [type(e) for e in info.value.exceptions] == [KeyError]
    assert child.events == ["started", "ended"]
    assert anyio.current_time() - start == pytest.approx(1)


async def test_child_crash_cancels_the_body_and_comes_out_in_a_group() -> None:
    async def work(child: _Child) -> None:
        await anyio.sleep(2)
        raise RuntimeError("bug in the child")

    body_reached_end = False

    async def body() -> None:
        nonlocal body_reached_end
        await anyio.sleep_forever()
        body_reached_end = True

    start = anyio.current_time()
    with anyio.fail_after(60), pytest.raises(BaseExceptionGroup) as info:
        await _run_block(own_task(), _Child(work), body)
    assert [str(e) for e in info.value.exceptions] == ["bug in the child"]
    assert not body_reached_end
    assert anyio.current_time() - start == pytest.approx(2)


async def test_outer_cancellation_while_joining_stops_the_child_but_spares_its_shield() -> None:
    async def work(child: _Child) -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(1)  # a bounded shielded cleanup must run to its end
                child.events.append("cleaned up")

    child = _Child(work)
    owner = own_task()
    start = anyio.current_time()
    with anyio.fail_after(60), anyio.move_on_after(5) as outer:
        await owner.start(child)
        # The body ends normally; then the join is cancelled by the outer deadline.
        await owner.join((None, None, None), child.stop)
    assert outer.cancelled_caught
    assert child.events == ["started", "cleaned up", "ended"]
    assert anyio.current_time() - start == pytest.approx(6)


async def test_exit_before_the_child_ran_still_ends_it() -> None:
    child = _Child(lambda c: anyio.sleep(0))
    with anyio.fail_after(60):
        await _run_block(own_task(), child, lambda: anyio.lowlevel.checkpoint())
    assert child.events == ["started", "ended"]


async def test_task_identity_tells_tasks_apart() -> None:
    ident = task_identity()
    seen: list[int] = []

    async def record() -> None:
        seen.append(ident())

    async with anyio.create_task_group() as tg:
        tg.start_soon(record)
        tg.start_soon(record)
    assert ident() == ident() == anyio.get_current_task().id
    assert len(set(seen)) == 2 and ident() not in seen


async def _cleanup_for_one_second(child: _Child) -> None:
    try:
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.sleep(1)  # the join is cancelled while this runs
        if child.work_fails:
            raise RuntimeError("child failed in cleanup")


@pytest.mark.parametrize("failing", ["body", "child"])
async def test_errors_survive_a_cancelled_join(failing: str) -> None:
    """An outer cancellation during the join does not swallow the body's error or the child's crash."""
    child = _Child(_cleanup_for_one_second)
    child.work_fails = failing == "child"

    async def body() -> None:
        await anyio.sleep(0.1)
        if failing == "body":
            raise KeyError("body error")

    with anyio.fail_after(60), pytest.raises(BaseExceptionGroup) as info:
        with anyio.move_on_after(0.5):  # fires while the join waits for the child's cleanup
            await _run_block(own_task(), child, body)
    assert [type(e) for e in info.value.exceptions] == [KeyError if failing == "body" else RuntimeError]
    assert child.events == ["started", "ended"]


async def test_a_scope_around_the_block_reaches_the_child_at_once() -> None:
    """The child is inside the caller's cancel scopes (as a task group's child is): cancelling
    one stops the child even while the body sits in a shielded section."""
    child = _Child()

    async def body() -> None:
        await anyio.sleep(1)
        outer.cancel()
        with anyio.CancelScope(shield=True):
            await anyio.sleep(2)
            assert child.events == ["started", "ended"]

    with anyio.fail_after(60), anyio.CancelScope() as outer:
        await _run_block(own_task(), child, body)
    assert outer.cancelled_caught
