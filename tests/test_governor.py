"""The governor: decorrelated jitter, a per-host attempt budget, Retry-After, close classes.

Unit tests drive ``decide()`` with a fake clock; end-to-end tests run real
Connections against the in-process simulator on virtual time (asyncio and
trio): 50 connections dropped at once reconnect within the host budget.
"""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import engine
from engine import Connection, ConnectionSetup, State, StateChanged
from engine.causes import (
    Cause,
    ClosedByPeer,
    GiveUp,
    HandshakeRejection,
    InvalidHandshake,
    OpenTimeout,
    SetupFailure,
    TransportError,
)
from engine.errors import ConfigError
from engine.governor import Governor, HostPolicy, _HostBudget
from engine.policy import ReconnectPolicy, Retry, decide_safely
from engine.sim import SimExchange
from transports.base import URL, ByteStream

pytestmark = pytest.mark.anyio

# looptime keeps time in whole microseconds: a dial lands within that of its slot
EPS = 1e-5


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def most_in_window(times: list[float], window: float) -> int:
    """The most ``times`` in any half-open ``[x, x + window)`` (to within EPS)."""
    times = sorted(times)
    return max((bisect.bisect_left(times, t + window - EPS) - i for i, t in enumerate(times)), default=0)


DROP = TransportError("reset", during="session")

# -- arguments ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"window": -1.0}, "Governor.window must be a positive finite number"),
        ({"window": 0}, "Governor.window must be a positive finite number"),
        ({"window": float("inf")}, "Governor.window"),
        ({"attempts_per_window": 0}, "Governor.attempts_per_window must be a positive integer"),
        ({"attempts_per_window": 2.5}, "Governor.attempts_per_window"),
        ({"attempts_per_window": True}, "Governor.attempts_per_window"),
        ({"max_attempts": 0}, "Governor.max_attempts must be a positive integer"),
        ({"base": 0}, "Governor.base must be a positive finite number"),
        ({"base": 2.0, "cap": 1.0}, "Governor.cap (1.0) must be >= Governor.base (2.0)"),
        ({"retry_after_cap": -1}, "Governor.retry_after_cap must be a finite number >= 0"),
        ({"jitter": 1}, "Governor.jitter must be True or False"),
        ({"rng": 7}, "Governor.rng must be a random.Random"),
        ({"clock": 3.0}, "Governor.clock must be callable"),
        ({"on_decision": [1]}, "Governor.on_decision must be callables"),
        ({"quick_close_codes": {1000, 1008}}, "cannot be both quick and fatal"),
        ({"fatal_statuses": {"401"}}, "Governor.fatal_statuses must hold integers"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Governor(**kwargs)
    assert words in str(info.value)


def test_for_host_needs_a_host() -> None:
    with pytest.raises(ConfigError, match="needs a host name"):
        Governor().for_host("")


def test_governor_and_its_views_are_reconnect_policies() -> None:
    governor = Governor()
    assert isinstance(governor, ReconnectPolicy)
    view = governor.for_host("Sim.Test")
    assert isinstance(view, ReconnectPolicy) and isinstance(view, HostPolicy)
    assert view.host == "sim.test" and view.governor is governor
    assert governor.hosts() == ("sim.test",)
    # accepted where the connection takes a policy
    ConnectionSetup(url="ws://sim.test/ws", handler=lambda c, m: None, policy=view)
    ConnectionSetup(url="ws://sim.test/ws", handler=lambda c, m: None, policy=governor)
    assert {"Governor", "HostPolicy"} <= set(engine.__all__)


# -- backoff ----------------------------------------------------------------------


def test_without_jitter_plain_capped_exponential() -> None:
    governor = Governor(base=0.5, cap=10.0, jitter=False, attempts_per_window=None, clock=FakeClock())
    delays = [governor.decide(DROP, attempt) for attempt in range(8)]
    assert [d.delay for d in delays if isinstance(d, Retry)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert delays[3] == Retry(4.0, "backoff, attempt 4")


def test_decorrelated_jitter_stays_between_base_and_three_times_the_last() -> None:
    base, cap = 0.5, 20.0
    for seed in range(20):
        view = Governor(base=base, cap=cap, attempts_per_window=None, rng=random.Random(seed), clock=FakeClock()).for_host(
            "h"
        )
        previous = base
        for attempt in range(12):
            decision = view.decide(DROP, attempt)
            assert isinstance(decision, Retry)
            assert base <= decision.delay <= min(cap, 3 * previous)
            previous = decision.delay
        # a healthy session: attempt 0 starts over
        again = view.decide(DROP, 0)
        assert isinstance(again, Retry) and base <= again.delay <= 3 * base


def test_jitter_is_replayable_with_a_seeded_rng() -> None:
    def run(seed: int) -> list[float]:
        view = Governor(attempts_per_window=None, rng=random.Random(seed), clock=FakeClock()).for_host("h")
        return [view.decide(DROP, a).delay for a in range(10)]  # type: ignore[union-attr]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_each_view_keeps_its_own_jitter_history() -> None:
    governor = Governor(base=1.0, cap=1000.0, attempts_per_window=None, rng=random.Random(3), clock=FakeClock())
    grown, fresh = governor.for_host("h"), governor.for_host("h")
    for attempt in range(10):
        grown.decide(DROP, attempt)
    # fresh's second attempt grows from its own first delay, not from grown's tenth
    first = fresh.decide(DROP, 0)
    second = fresh.decide(DROP, 1)
    assert isinstance(first, Retry) and isinstance(second, Retry)
    assert second.delay <= 3 * first.delay


# -- close classes and give-ups --------------------------------------------------------


@pytest.mark.parametrize(
    "cause, words",
    [
        (ClosedByPeer(1008, "too many requests"), "the server closed with 1008 (policy violation): 'too many requests'"),
        (SetupFailure("authenticating", "AuthenticationFailed: bad key", rejected=True), "authentication was rejected"),
        (HandshakeRejection(401), "the server refused the handshake with HTTP 401"),
        (HandshakeRejection(403), "HTTP 403"),
        (HandshakeRejection(404), "HTTP 404"),
        (HandshakeRejection(400), "HTTP 400"),
        (HandshakeRejection(405), "HTTP 405"),
        (HandshakeRejection(410), "HTTP 410"),
        (HandshakeRejection(426), "HTTP 426"),
        (InvalidHandshake("bad header", ours=True), "our handshake request cannot be built"),
    ],
)
def test_fatal_classes_give_up_with_a_readable_reason(cause: Cause, words: str) -> None:
    governor = Governor(clock=FakeClock())
    decision = governor.for_host("h").decide(cause, 0)
    assert isinstance(decision, GiveUp)
    assert words in decision.reason
    assert decision.last == cause
    assert governor.schedule("h") == ()  # a give-up reserves nothing


@pytest.mark.parametrize(
    "cause",
    [
        ClosedByPeer(1006),
        ClosedByPeer(1011, "internal error"),
        ClosedByPeer(4000),
        HandshakeRejection(503),
        HandshakeRejection(429),
        InvalidHandshake("garbage", ours=False),
        SetupFailure("subscribing", "ValueError: x"),
        OpenTimeout(10.0),
        DROP,
    ],
)
def test_other_causes_back_off(cause: Cause) -> None:
    view = Governor(base=0.5, cap=60.0, jitter=False, attempts_per_window=None, clock=FakeClock()).for_host("h")
    decision = view.decide(cause, 4)
    assert decision == Retry(8.0, "backoff, attempt 5")


@pytest.mark.parametrize("code", [1000, 1001])
def test_going_away_is_a_quick_retry_without_growth(code: int) -> None:
    view = Governor(base=0.5, cap=60.0, attempts_per_window=None, clock=FakeClock()).for_host("h")
    for attempt in (0, 3, 9):
        assert view.decide(ClosedByPeer(code), attempt) == Retry(0.5, f"quick retry after {code}")


def test_max_attempts_gives_up() -> None:
    view = Governor(max_attempts=3, attempts_per_window=None, clock=FakeClock()).for_host("h")
    assert isinstance(view.decide(DROP, 2), Retry)
    decision = view.decide(DROP, 3)
    assert decision == GiveUp("3 attempts failed in a row (max_attempts=3)", DROP)


def test_retry_after_wins_and_is_capped_and_the_budget_still_applies() -> None:
    clock = FakeClock(0.0)
    governor = Governor(
        base=0.5, cap=5.0, jitter=False, attempts_per_window=1, window=100.0, retry_after_cap=100.0, clock=clock
    )
    capped = governor.for_host("h").decide(HandshakeRejection(503, 1e9), 0)
    assert capped == Retry(100.0, "backoff, attempt 1; Retry-After 1e+09 s capped to 100 s")
    # another connection's Retry-After of 30 s lands within a window of the first's slot (100 s):
    # pushed to when that slot leaves the window, 200 s
    pushed = governor.for_host("h").decide(HandshakeRejection(429, 30.0), 0)
    assert pushed == Retry(200.0, "backoff, attempt 1; Retry-After 30 s; host budget 1/100 s: delayed 170.000 s")
    # on another host, the Retry-After alone
    assert governor.for_host("h2").decide(HandshakeRejection(429, 30.0), 0) == Retry(
        30.0, "backoff, attempt 1; Retry-After 30 s"
    )
    # a Retry-After shorter than the backoff changes nothing
    short = Governor(base=4.0, cap=5.0, jitter=False, attempts_per_window=None, clock=clock).decide(
        HandshakeRejection(503, 1.0), 0
    )
    assert short == Retry(4.0, "backoff, attempt 1")


# -- the host budget ------------------------------------------------------------------


def test_a_mass_drop_is_spread_over_windows() -> None:
    clock = FakeClock(1000.0)
    governor = Governor(base=0.5, attempts_per_window=5, window=10.0, clock=clock, rng=random.Random(0))
    decisions = [governor.for_host("sim.test").decide(ClosedByPeer(1001), 0) for _ in range(20)]
    delays = [d.delay for d in decisions if isinstance(d, Retry)]
    assert delays == [0.5] * 5 + [10.5] * 5 + [20.5] * 5 + [30.5] * 5
    assert decisions[7] == Retry(10.5, "quick retry after 1001; host budget 5/10 s: delayed 10.000 s")
    assert most_in_window([clock.now + d for d in delays], 10.0) == 5
    # another host has a budget of its own, and so does the governor used directly
    assert governor.for_host("other.test").decide(ClosedByPeer(1001), 0) == Retry(0.5, "quick retry after 1001")
    assert governor.decide(ClosedByPeer(1001), 0) == Retry(0.5, "quick retry after 1001")


def test_budget_with_jitter_never_overfills_a_window() -> None:
    clock = FakeClock(0.0)
    governor = Governor(base=0.2, cap=8.0, attempts_per_window=4, window=3.0, clock=clock, rng=random.Random(5))
    rng = random.Random(9)
    granted: list[float] = []
    for _ in range(300):
        clock.now += rng.expovariate(5.0)
        decision = governor.for_host("h").decide(DROP, rng.randrange(6))
        assert isinstance(decision, Retry) and decision.delay >= 0
        granted.append(clock.now + decision.delay)
    assert most_in_window(granted, 3.0) <= 4


def _fits(slots: list[float], t: float, limit: int, window: float) -> bool:
    merged = sorted([*slots, t])
    return all(merged[i] + window <= merged[i + limit] for i in range(len(merged) - limit))


def test_reserve_takes_the_first_free_slot() -> None:
    """Against brute force: the free times start at the wanted time or when a slot leaves a window."""
    rng = random.Random(11)
    for _ in range(200):
        limit, window = rng.randint(1, 4), rng.choice([1.0, 2.5, 10.0])
        budget = _HostBudget(limit, window)
        now = 0.0
        for _ in range(25):
            now += rng.choice([0.0, 0.1, 0.7, 3.0])
            at = now + rng.choice([0.0, 0.5, 1.0, 2.5, 7.0])
            kept = [s for s in budget.slots if s > now - window]
            candidates = sorted({at, *(s + window for s in kept if s + window > at)})
            expected = next(c for c in candidates if _fits(kept, c, limit, window))
            assert budget.reserve(at, now) == expected
            assert _fits(budget.slots[:-1], budget.slots[-1], limit, window)  # the invariant holds


def test_the_schedule_forgets_what_is_older_than_the_window() -> None:
    clock = FakeClock(0.0)
    governor = Governor(base=0.5, cap=2.0, attempts_per_window=3, window=5.0, clock=clock, rng=random.Random(1))
    view = governor.for_host("h")
    for _ in range(2_000):
        decided_at = clock.now
        decision = view.decide(DROP, 1)
        assert isinstance(decision, Retry)
        clock.now += decision.delay  # the retry happens, then that session is lost at once
    slots = governor.schedule("h")
    assert 0 < len(slots) <= 4  # the last window and the one slot ahead, not 2,000
    assert min(slots) > decided_at - 5.0


def test_decisions_reach_listeners_and_a_failing_listener_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[Any, ...]] = []
    governor = Governor(jitter=False, clock=FakeClock(), on_decision=[lambda *args: seen.append(args)])

    def broken(*args: Any) -> None:
        raise RuntimeError("listener bug")

    stop = governor.on_decision(broken)
    with caplog.at_level(logging.ERROR, logger="wirestate.governor"):
        first = governor.for_host("h").decide(ClosedByPeer(1008), 0)
    assert "listener raised" in caplog.text
    stop()
    stop()  # twice is fine
    second = governor.decide(DROP, 2)
    assert seen == [("h", ClosedByPeer(1008), 0, first), (None, DROP, 2, second)]
    assert len(governor.listeners) == 1


def test_decide_safely_accepts_the_governors_answers() -> None:
    view = Governor(clock=FakeClock()).for_host("h")
    assert isinstance(decide_safely(view, DROP, 0, "c"), Retry)
    assert isinstance(decide_safely(view, ClosedByPeer(1008), 0, "c"), GiveUp)


# -- end to end: Connections against the simulator --------------------------------------


def recording(sim: SimExchange, dials: list[float]) -> Callable[[URL], Awaitable[ByteStream]]:
    inner = sim.dialer()

    async def dial(url: URL) -> ByteStream:
        dials.append(anyio.current_time())
        return await inner(url)

    return dial


def setup_for(policy: ReconnectPolicy, events: list[StateChanged] | None = None) -> ConnectionSetup:
    return ConnectionSetup(
        url="ws://sim.test/ws",
        handler=lambda conn, message: None,
        policy=policy,
        on_state_change=(events.append,) if events is not None else (),
    )


def lost(events: list[StateChanged]) -> list[StateChanged]:
    return [e for e in events if e.trigger == "lost"]


async def test_fifty_connections_dropped_at_once_reconnect_within_the_host_budget() -> None:
    limit, window = 5, 10.0
    decisions: list[tuple[Any, ...]] = []
    governor = Governor(
        base=0.5, cap=5.0, attempts_per_window=limit, window=window, rng=random.Random(7),
        on_decision=[lambda *args: decisions.append(args)],
    )  # fmt: skip
    dials: list[float] = []
    events: list[StateChanged] = []
    with anyio.fail_after(3600):
        async with SimExchange(rate=0) as sim, anyio.create_task_group() as tg:
            dial = recording(sim, dials)
            conns = [
                Connection(setup_for(governor.for_host("sim.test"), events), dialer=dial, id=f"c{i}") for i in range(50)
            ]
            for conn in conns:
                await tg.start(conn.run)
            for conn in conns:
                await conn.wait_for(State.LIVE)
            assert sim.connections == 50

            await anyio.sleep(2 * window)  # healthy for a while; the first dials are out of every window
            dropped_at = anyio.current_time()
            first_dials = len(dials)
            sim.drop()
            await sim.wait_connections(50)
            for conn in conns:
                await conn.wait_for(State.LIVE)
            back_at = anyio.current_time()
            tg.cancel_scope.cancel()

    redials = dials[first_dials:]
    assert len(redials) == 50  # each reconnected at its first try
    assert most_in_window(redials, window) <= limit
    assert most_in_window(redials, window) == limit  # the budget was the bottleneck
    spread = max(redials) - min(redials)
    # 50 at 5 per 10 s: dials 0, 5, ..., 45 are each a full window apart
    assert spread >= (50 // limit - 1) * window - EPS
    assert min(redials) >= dropped_at + 0.5 - EPS  # nobody before the base delay
    assert back_at - dropped_at < 120.0
    assert len(decisions) == 50 and all(host == "sim.test" and isinstance(d, Retry) for host, _, _, d in decisions)
    # the lost transitions show the delay and why
    drops = lost(events)
    assert len(drops) == 50
    assert sum("host budget 5/10 s: delayed" in e.reason for e in drops) >= 40
    assert all(e.delay is not None and e.delay >= 0.5 for e in drops)
    report = sorted(r - dropped_at for r in redials)
    print(f"\nredials after the drop: first {report[0]:.3f} s, last {report[-1]:.3f} s, "
          f"most in any {window:g} s window: {most_in_window(redials, window)}")  # fmt: skip


async def test_429_with_retry_after_30_waits_at_least_30_seconds() -> None:
    governor = Governor(base=0.5, cap=5.0, rng=random.Random(1))
    dials: list[float] = []
    events: list[StateChanged] = []
    with anyio.fail_after(600):
        async with SimExchange(rate=0) as sim:
            sim.reject_next(429, [("Retry-After", "30")])
            async with Connection(setup_for(governor.for_host("sim.test"), events), dialer=recording(sim, dials)) as conn:
                await conn.wait_for(State.LIVE)
    assert len(dials) == 2
    assert dials[1] - dials[0] >= 30.0 - EPS
    (rejected,) = lost(events)
    assert rejected.cause == HandshakeRejection(429, 30.0)
    assert rejected.delay == 30.0
    assert "Retry-After 30 s" in rejected.reason


async def test_1008_gives_up_with_a_readable_reason() -> None:
    governor = Governor(base=0.5, rng=random.Random(1))
    dials: list[float] = []
    with anyio.fail_after(600):
        async with SimExchange(rate=0) as sim:
            async with Connection(setup_for(governor.for_host("sim.test")), dialer=recording(sim, dials)) as conn:
                await conn.wait_for(State.LIVE)
                await sim.close_all(1008, "slow down")
                await conn.wait_for(State.DISCONNECTED)
                assert isinstance(conn.cause, GiveUp)
                assert conn.cause.last == ClosedByPeer(1008, "slow down")
                assert conn.cause.reason == (
                    "the server closed with 1008 (policy violation): 'slow down'; not coming back like this"
                )
                assert [e.trigger for e in conn.history][-2:] == ["lost", "give_up"]
    assert len(dials) == 1  # never dialled again


async def test_1001_reconnects_quickly() -> None:
    governor = Governor(base=0.5, cap=30.0, rng=random.Random(1))
    dials: list[float] = []
    events: list[StateChanged] = []
    with anyio.fail_after(600):
        async with SimExchange(rate=0) as sim:
            async with Connection(setup_for(governor.for_host("sim.test"), events), dialer=recording(sim, dials)) as conn:
                await conn.wait_for(State.LIVE)
                for _ in range(3):  # not even a growing delay on repeats
                    closed_at = anyio.current_time()
                    await sim.close_all(1001, "restart")
                    await conn.wait_for(State.CONNECTING)
                    await conn.wait_for(State.LIVE)
                    assert dials[-1] - closed_at == pytest.approx(0.5, abs=EPS)
    quick = lost(events)
    assert len(quick) == 3
    assert all(e.delay == 0.5 and "quick retry after 1001" in e.reason for e in quick)
