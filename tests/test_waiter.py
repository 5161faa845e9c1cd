"""engine.waiter: one timer for many deadlines (Deadlines) against a plain model, and the waiters."""

from __future__ import annotations

import math
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.waiter import Deadlines, waits_for_running_loop


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
    expired: list[tuple[int, float]] = []
    deadlines: Deadlines[int] = Deadlines(
        loop.call_at, lambda: loop.now, lambda item: (expired.append((item, loop.now)), live.pop(item)),
        lambda item: item in live, lambda: len(live),
    )  # fmt: skip
    made = 0
    for op, arg in script:
        if op == "add":
            live[made] = loop.now + arg
            deadlines.add(loop.now + arg, made)
            made += 1
        elif op == "drop" and live:
            live.pop(sorted(live)[arg % len(live)])
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
        assert len(deadlines._heap) <= 2 * len(live) + 65  # dropped items do not pile up


def test_an_infinite_deadline_arms_nothing() -> None:
    loop = FakeLoop()
    deadlines: Deadlines[int] = Deadlines(loop.call_at, lambda: loop.now, lambda item: None, lambda item: True, lambda: 1)
    deadlines.add(math.inf, 1)
    assert loop.armed == 0



@pytest.mark.anyio
async def test_a_waiter_says_whether_it_was_set_or_its_time_ran_out() -> None:
    waits = waits_for_running_loop()
    answered, late, expired = waits.new(), waits.new(), waits.new()
    answered.set()
    assert await answered.wait(anyio.current_time() + 1) is True
    with anyio.fail_after(5):
        assert await late.wait(anyio.current_time() + 1) is False
    assert not late.is_set()
    expired.expire()
    expired.set()  # (too late: it stays expired)
    assert await expired.wait() is False and not expired.is_set()
