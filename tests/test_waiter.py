"""engine.waiter: one timer for many deadlines (Deadlines) against a plain model, and the waiters."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.waiter import Deadlines, EventDone, finish, waits_for_running_loop


class FakeLoop:
    """call_at + clock, advanced by hand: timers fire in time order, as a loop would."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[list[Any]] = []  # [when, callback, cancelled]
        self.armed = 0

    def call_at(self, when: float, callback: Any) -> Any:
        timer = [when, callback, False]
        self.timers.append(timer)
        self.armed += 1

        class Handle:
            def cancel(self) -> None:
                timer[2] = True

        return Handle()

    def advance(self, to: float) -> None:
        for _ in range(10_000):  # (bounded)
            due = [t for t in self.timers if not t[2] and t[0] <= to]
            if not due:
                break
            first = min(due, key=lambda t: t[0])
            self.timers.remove(first)
            self.now = max(self.now, first[0])
            first[1]()
        self.now = to


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.floats(0.1, 50.0)),  # a deadline this far ahead
        st.tuples(st.just("drop"), st.integers(0, 200)),  # stop waiting (answered), by index
        st.tuples(st.just("advance"), st.floats(0.0, 20.0)),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_deadlines_expire_exactly_the_live_items_whose_time_came(script: list[tuple[str, Any]]) -> None:
    loop = FakeLoop()
    live: dict[int, float] = {}  # item -> deadline (the model)
    table: dict[str, int] = {}  # key -> item: what Deadlines reads (alive while it maps the key to the item)
    key_of: dict[int, str] = {}
    expired: list[tuple[int, float]] = []

    def expire(item: int) -> None:
        expired.append((item, loop.now))
        live.pop(item)
        del table[key_of[item]]

    deadlines: Deadlines[str, int] = Deadlines(loop.call_at, lambda: loop.now, expire, table)
    made = 0
    for op, arg in script:
        if op == "add":
            # a few keys come back once free (a new item under an old key: the old entry is dead)
            key = f"k{made % 5}" if f"k{made % 5}" not in table else f"u{made}"
            live[made], key_of[made], table[key] = loop.now + arg, key, made
            deadlines.add(loop.now + arg, key, made)
            made += 1
        elif op == "drop" and live:
            item = sorted(live)[arg % len(live)]
            live.pop(item)
            del table[key_of[item]]
        elif op == "advance":
            before = dict(live)
            loop.advance(loop.now + arg)
            due = {item for item, at in before.items() if at <= loop.now}
            assert {item for item, _ in expired if item in before} == due  # all of them, and no other
            for item, when in expired:
                if item in before:
                    assert when == pytest.approx(before[item])  # at its deadline, not later
            expired.clear()
            assert all(at > loop.now for at in live.values())
        assert len(deadlines) <= 2 * len(live) + 65  # dropped items do not pile up


def test_a_new_item_under_an_old_key_keeps_its_own_deadline() -> None:
    """The table maps the key to another item now (the request was answered and the key
    asked again): the old entry is dead, and the new item expires at its own time only."""
    loop = FakeLoop()
    table: dict[str, str] = {"k": "first"}
    expired: list[tuple[str, float]] = []
    deadlines: Deadlines[str, str] = Deadlines(loop.call_at, lambda: loop.now, lambda item: expired.append((item, loop.now)), table)
    deadlines.add(10.0, "k", "first")
    table["k"] = "second"  # (first answered; the same key asked again)
    deadlines.add(50.0, "k", "second")
    loop.advance(20.0)
    assert expired == []
    loop.advance(60.0)
    assert expired == [("second", 50.0)]


def test_an_infinite_deadline_arms_nothing() -> None:
    loop = FakeLoop()
    deadlines: Deadlines[str, int] = Deadlines(loop.call_at, lambda: loop.now, lambda item: None, {"k": 1})
    deadlines.add(math.inf, "k", 1)
    assert loop.armed == 0



@pytest.mark.anyio
async def test_what_a_request_waits_on_says_answered_or_expired_and_ends_once() -> None:
    waits = waits_for_running_loop()
    answered, expired = waits.new(), waits.new()
    finish(answered, True)
    finish(answered, False)  # (too late: it stays answered)
    finish(expired, False)
    finish(expired, True)
    assert answered.done() and answered.result() is True
    assert expired.done() and expired.result() is False
    if waits.call_at is not None:  # asyncio: the loop's own future, awaited as it is
        assert isinstance(answered, asyncio.Future)
        assert await answered is True  # type: ignore[misc]
    else:
        assert isinstance(answered, EventDone) and isinstance(expired, EventDone)
        assert await answered.wait() is True and await expired.wait() is False


@pytest.mark.anyio
async def test_an_event_done_whose_deadline_passed_ends_false_without_waiting() -> None:
    done = EventDone()
    with anyio.fail_after(5):
        assert await done.wait(anyio.current_time()) is False  # (the deadline is now: no wall-clock wait)
    assert not done.done()
    with pytest.raises(RuntimeError, match="not done"):
        done.result()
    done.set_result(True)
    with pytest.raises(RuntimeError, match="already done"):
        done.set_result(False)
    assert await done.wait(anyio.current_time()) is True
