"""Weighted rate limits (engine/ratelimit.py), on virtual time on every backend.

Release times are read from the loop's clock after each acquire returns; the
limiter sleeps once, until the computed time, so they are exact (looptime
rounds its clock to the microsecond, hence ``abs=1e-6``).
"""

from __future__ import annotations

import math
import random

import anyio
import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ConfigError, RateLimited, WirestateError
from engine.ratelimit import Limiter, RateLimit, limiter_source

TOL = 1e-6


def approx(values: object) -> object:
    return pytest.approx(values, abs=TOL)


async def released_in_order(limiter: Limiter, weights: list[int]) -> list[float]:
    """Queue one acquire per weight, in this order, all at the same instant; their
    release times (from the start)."""
    start = anyio.current_time()
    times = [math.nan] * len(weights)

    async def one(i: int, weight: int, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await limiter.acquire(weight)  # queued before the next task starts
        times[i] = anyio.current_time() - start

    async with anyio.create_task_group() as tg:
        for i, weight in enumerate(weights):
            await tg.start(one, i, weight)
    return times


async def start_send(
    tg: anyio.abc.TaskGroup,
    limiter: Limiter,
    weight: int,
    released: dict[str, float] | None = None,
    name: str = "",
    scope: anyio.CancelScope | None = None,
) -> None:
    """Start a task whose acquire is queued (or done) by the time this returns."""

    async def send(*, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with scope or anyio.CancelScope():
            task_status.started()
            await limiter.acquire(weight)
            if released is not None:
                released[name] = anyio.current_time()

    await tg.start(send)


# -- the setting -----------------------------------------------------------------------


def test_per_and_every_build_frozen_limits() -> None:
    rate = RateLimit.per(1.0, 2)
    assert (rate.interval, rate.actions, rate.weight, rate.algorithm, rate.burst) == (1.0, 2, 1, "gcra", 1)
    assert rate.count_control is True  # Binance counts pings and pongs: the safe default
    assert rate.spacing == 0.5 and rate.capacity == 2
    assert RateLimit.every(0.5) == RateLimit.per(0.5, 1)
    assert RateLimit.per(60, 1200, 5, algorithm="sliding", count_control=False).count_control is False
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        rate.actions = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 0, "actions": 1},
        {"interval": -1.0, "actions": 1},
        {"interval": math.inf, "actions": 1},
        {"interval": math.nan, "actions": 1},
        {"interval": "1", "actions": 1},
        {"interval": True, "actions": 1},
        {"interval": 1.0, "actions": 0},
        {"interval": 1.0, "actions": 1.5},
        {"interval": 1.0, "actions": True},
        {"interval": 1.0, "actions": 2, "weight": 0},
        {"interval": 1.0, "actions": 2, "weight": 3},  # more than one send may ever cost
        {"interval": 1.0, "actions": 2, "algorithm": "leaky"},
        {"interval": 1.0, "actions": 2, "burst": 0},
        {"interval": 1.0, "actions": 2, "burst": 2, "algorithm": "window"},
        {"interval": 1.0, "actions": 2, "count_control": "yes"},
    ],
)
def test_bad_settings_raise_config_error(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimit(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError) and "RateLimit" in str(info.value)


def test_capacity_is_the_heaviest_possible_send() -> None:
    assert RateLimit.per(1, 10).capacity == 10
    assert RateLimit.per(1, 10, burst=20).capacity == 20
    assert RateLimit.per(1, 10, algorithm="window").capacity == 10
    assert RateLimit.per(1, 10, algorithm="sliding").capacity == 10
    assert RateLimit.per(1, 10, 10).weight == 10


def test_limiter_picks_the_algorithm_and_needs_a_rate_limit() -> None:
    for algorithm in ("gcra", "window", "sliding"):
        limiter = Limiter(RateLimit.per(1, 5, algorithm=algorithm))  # type: ignore[arg-type]
        assert isinstance(limiter, Limiter) and limiter.rate.algorithm == algorithm
        assert limiter.waiting == 0 and algorithm in repr(limiter)
    with pytest.raises(ConfigError):
        Limiter("2/s")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Limiter(RateLimit.per(1, 5), clock=3.0)  # type: ignore[arg-type]


def test_limiter_source_makes_one_limiter_per_connection_or_shares_one() -> None:
    rate = RateLimit.per(1, 5)
    assert limiter_source(None) is None
    per_connection = limiter_source(rate)
    assert per_connection is not None
    first, second = per_connection(), per_connection()
    assert first is not second and first.rate is rate
    shared = rate.limiter()
    source = limiter_source(shared)
    assert source is not None and source() is shared and source() is shared
    factory = rate.factory()
    assert limiter_source(factory) is factory
    with pytest.raises(ConfigError):
        limiter_source("5/s")  # type: ignore[arg-type]


def test_rate_limited_is_a_wirestate_error_with_the_wait() -> None:
    error = RateLimited("x", 0.25)
    assert isinstance(error, WirestateError) and error.wait == 0.25


# -- injected clock: the decisions are plain arithmetic ------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_try_acquire_with_an_injected_clock_needs_no_event_loop() -> None:
    clock = FakeClock()
    limiter = RateLimit.per(1.0, 2).limiter(clock=clock)
    limiter.try_acquire()
    with pytest.raises(RateLimited) as info:
        limiter.try_acquire()
    assert info.value.wait == approx(0.5)
    clock.now = 0.2
    with pytest.raises(RateLimited) as info:
        limiter.try_acquire()
    assert info.value.wait == approx(0.3)
    clock.now = 0.5
    limiter.try_acquire()


_SEND = st.tuples(st.floats(min_value=0, max_value=1.5), st.integers(min_value=1, max_value=5))


@settings(max_examples=150, deadline=None)
@given(
    algorithm=st.sampled_from(["gcra", "window", "sliding"]),
    burst=st.integers(min_value=1, max_value=5),
    sends=st.lists(_SEND, min_size=1, max_size=60),
)
def test_waiting_exactly_the_refusals_wait_is_enough(algorithm: str, burst: int, sends: list[tuple[float, int]]) -> None:
    """Each refused send succeeds once ``.wait`` has passed (never sooner needed, never a
    second refusal), and the sends made that way respect the algorithm's bound."""
    rate = RateLimit.per(1.0, 5, algorithm=algorithm, burst=burst if algorithm == "gcra" else 1)  # type: ignore[arg-type]
    clock = FakeClock()
    limiter = rate.limiter(clock=clock)
    sent: list[tuple[float, int]] = []
    for gap, weight in sends:
        weight = min(weight, rate.try_capacity)
        clock.now += gap
        try:
            limiter.try_acquire(weight)
        except RateLimited as refused:
            assert refused.wait > 0
            clock.now += refused.wait
            limiter.try_acquire(weight)  # exactly enough
        sent.append((clock.now, weight))
    for i in range(len(sent)):
        total = 0
        for j in range(i, len(sent)):
            total += sent[j][1]
            span = sent[j][0] - sent[i][0]
            if algorithm == "gcra":  # at most burst + span / spacing units
                assert total * rate.spacing <= span + burst * rate.spacing + 1e-9
            elif algorithm == "sliding" and span < rate.interval - 1e-9:
                assert total <= rate.actions


# -- GCRA: the seed's even spacing, and bursts -----------------------------------------


@pytest.mark.anyio
async def test_seed_spacing_first_goes_at_once_then_evenly() -> None:
    limiter = RateLimit.per(1.0, 2).limiter()
    assert await released_in_order(limiter, [1, 1, 1, 1]) == approx([0.0, 0.5, 1.0, 1.5])


@pytest.mark.anyio
async def test_every_spaces_sends_by_the_duration() -> None:
    limiter = RateLimit.every(0.25).limiter()
    assert await released_in_order(limiter, [1, 1, 1]) == approx([0.0, 0.25, 0.5])


@pytest.mark.anyio
async def test_burst_of_actions_third_send_waits_half_a_second() -> None:
    """2 per second with burst=2: two go at once, the third waits exactly 0.5 s."""
    limiter = RateLimit.per(1.0, 2, burst=2).limiter()
    assert await released_in_order(limiter, [1, 1, 1, 1]) == approx([0.0, 0.0, 0.5, 1.0])


@pytest.mark.anyio
async def test_weight_five_at_ten_per_second_waits_400ms_after_its_first_token() -> None:
    """DESIGN §4: a send of weight w waits for w tokens; weight 5 at 10/s goes 0.4 s
    after its first token (tokens every 0.1 s, it needs 4 more)."""
    # a fresh limiter: the first token is there at once, the fifth at 0.4
    assert await released_in_order(RateLimit.per(1.0, 10).limiter(), [5]) == approx([0.0 + 0.4])
    # after a weight-1 send at t=0, the weight-5 send's first token comes at 0.1: it goes at 0.5
    assert await released_in_order(RateLimit.per(1.0, 10).limiter(), [1, 5]) == approx([0.0, 0.1 + 0.4])
    # with a bucket of two, its first token is there at t=0 too: it goes at 0.4
    assert await released_in_order(RateLimit.per(1.0, 10, burst=2).limiter(), [1, 5]) == approx([0.0, 0.4])


@pytest.mark.anyio
async def test_acquire_that_needs_no_wait_takes_no_time() -> None:
    limiter = RateLimit.per(1.0, 3, burst=3).limiter()
    start = anyio.current_time()
    await limiter.acquire()
    await limiter.acquire(2)
    assert anyio.current_time() == start and limiter.waiting == 0


@pytest.mark.anyio
async def test_async_with_acquires_the_default_weight() -> None:
    limiter = RateLimit.per(1.0, 10, weight=5).limiter()
    start = anyio.current_time()
    async with limiter as entered:
        assert entered is limiter
        assert anyio.current_time() - start == approx(0.4)
    async with limiter:
        assert anyio.current_time() - start == approx(0.9)


# -- the window algorithms -------------------------------------------------------------


@pytest.mark.anyio
async def test_window_lets_five_go_then_waits_to_the_window_edge() -> None:
    limiter = RateLimit.per(1.0, 5, algorithm="window").limiter()
    times = await released_in_order(limiter, [1] * 12)
    assert times == approx([0.0] * 5 + [1.0] * 5 + [2.0] * 2)


@pytest.mark.anyio
async def test_window_opens_at_the_first_send_after_an_idle_spell() -> None:
    limiter = RateLimit.per(1.0, 5, algorithm="window").limiter()
    await anyio.sleep(0.3)
    times = await released_in_order(limiter, [2, 3, 1])  # 2 + 3 fill the window that opened at 0.3
    assert times == approx([0.0, 0.0, 1.0])


@pytest.mark.anyio
async def test_strict_sliding_never_lets_n_plus_one_into_any_window() -> None:
    """100 concurrent acquires at 5 per second: no 6 within any second."""
    n, interval = 5, 1.0

    async def burst(limiter: Limiter) -> list[float]:
        times: list[float] = []

        async def one() -> None:
            await limiter.acquire()
            times.append(anyio.current_time())

        async with anyio.create_task_group() as tg:
            for _ in range(100):
                tg.start_soon(one)
        start = min(times)
        return sorted(t - start for t in times)

    def worst_window(times: list[float]) -> float:
        """The shortest span holding n + 1 releases."""
        return min(times[i + n] - times[i] for i in range(len(times) - n))

    times = await burst(RateLimit.per(interval, n, algorithm="sliding").limiter())
    assert len(times) == 100
    assert worst_window(times) >= interval - TOL
    assert times[-1] == approx(19.0)  # and no slower than that: 5 at 0, 5 at 1.0, ...
    # GCRA with a burst of n does let n + 1 into a window (which is why "sliding" exists)
    gcra = await burst(RateLimit.per(interval, n, burst=n).limiter())
    assert worst_window(gcra) < interval - TOL


@pytest.mark.anyio
async def test_strict_sliding_counts_weight_in_every_window() -> None:
    rng = random.Random(7)
    weights = [rng.randint(1, 5) for _ in range(60)]
    limiter = RateLimit.per(1.0, 10, algorithm="sliding").limiter()
    times = await released_in_order(limiter, weights)
    assert times == sorted(times)  # FIFO
    for i, start in enumerate(times):
        in_window = sum(w for t, w in zip(times[i:], weights[i:]) if t < start + 1.0 - TOL)
        assert in_window <= 10


# -- non-blocking ----------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("rate", "room", "wait"),
    [
        (RateLimit.per(1.0, 2), 1, 0.5),
        (RateLimit.per(1.0, 2, burst=2), 2, 0.5),
        (RateLimit.per(1.0, 5, algorithm="window"), 5, 1.0),
        (RateLimit.per(1.0, 5, algorithm="sliding"), 5, 1.0),
    ],
    ids=["gcra", "gcra-burst", "window", "sliding"],
)
async def test_try_acquire_raises_rate_limited_with_the_wait(rate: RateLimit, room: int, wait: float) -> None:
    limiter = rate.limiter()
    for _ in range(room):
        limiter.try_acquire()
    with pytest.raises(RateLimited) as info:
        limiter.try_acquire()
    assert info.value.wait == approx(wait)
    await anyio.sleep(0.2)
    with pytest.raises(RateLimited) as info:
        limiter.try_acquire()
    assert info.value.wait == approx(wait - 0.2)
    await anyio.sleep(info.value.wait)
    limiter.try_acquire()  # the wait was exactly enough


@pytest.mark.anyio
async def test_try_acquire_does_not_jump_the_queue() -> None:
    """With a weight-10 send queued, a weight-1 try is refused (FIFO) and told the
    wait behind it."""
    limiter = RateLimit.per(1.0, 10).limiter()
    limiter.try_acquire()  # token 1 at t=0; the next token comes at 0.1
    async with anyio.create_task_group() as tg:
        await start_send(tg, limiter, 10)  # goes at 1.0 (its tenth token)
        assert limiter.waiting == 1
        with pytest.raises(RateLimited) as info:
            limiter.try_acquire()
        assert info.value.wait == approx(1.1)
    with pytest.raises(RateLimited) as info:
        limiter.try_acquire()
    assert info.value.wait == approx(0.1)


@pytest.mark.anyio
async def test_try_acquire_wait_counts_every_queued_waiter() -> None:
    limiter = RateLimit.per(1.0, 5, algorithm="window").limiter()
    for _ in range(5):
        limiter.try_acquire()
    async with anyio.create_task_group() as tg:
        for weight in (3, 3):  # 3 goes at 1.0; the second 3 no longer fits: 2.0
            await start_send(tg, limiter, weight)
        with pytest.raises(RateLimited) as info:
            limiter.try_acquire(2)  # 2 fits beside the second 3, in the window from 2.0
        assert info.value.wait == approx(2.0)
        with pytest.raises(RateLimited) as info:
            limiter.try_acquire(3)
        assert info.value.wait == approx(3.0)


# -- sharing ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_one_limiter_shared_by_two_connections_holds_the_combined_rate() -> None:
    async def connection(limiter: Limiter, times: list[float]) -> None:
        for _ in range(5):
            await limiter.acquire()
            times.append(anyio.current_time())

    rate = RateLimit.per(1.0, 2)
    shared = rate.limiter()
    start = anyio.current_time()
    times: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(connection, shared, times)
        tg.start_soon(connection, shared, times)
    assert sorted(t - start for t in times) == approx([0.5 * i for i in range(10)])

    make = rate.factory()  # a limiter per connection: each holds the rate on its own
    start = anyio.current_time()
    own: list[float] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(connection, make(), own)
        tg.start_soon(connection, make(), own)
    assert sorted(t - start for t in own) == approx(sorted([0.5 * i for i in range(5)] * 2))


# -- fairness and cancellation ---------------------------------------------------------


@pytest.mark.anyio
async def test_waiters_go_in_order_and_a_heavy_send_is_not_starved() -> None:
    limiter = RateLimit.per(1.0, 10).limiter()
    times = await released_in_order(limiter, [1, 10, 1, 1, 1, 2, 1])
    # the weight-10 send gets its tenth token at 1.0; the light ones queue behind it
    assert times == approx([0.0, 1.0, 1.1, 1.2, 1.3, 1.5, 1.6])


@pytest.mark.anyio
async def test_cancelled_head_gives_its_place_back() -> None:
    limiter = RateLimit.per(1.0, 10).limiter()
    start = anyio.current_time()
    released: dict[str, float] = {}
    await limiter.acquire()  # t=0; the next token comes at 0.1
    heavy = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        await start_send(tg, limiter, 5, released, "heavy", heavy)  # would go at 0.5
        await start_send(tg, limiter, 1, released, "c")  # queued behind it
        await anyio.sleep(0.2)
        assert limiter.waiting == 2
        heavy.cancel()
    assert released.keys() == {"c"}
    assert released["c"] - start == approx(0.2)  # at once: its token (0.1) is long there
    await limiter.acquire()
    assert anyio.current_time() - start == approx(0.3)  # the heavy send took no tokens


@pytest.mark.anyio
async def test_cancelled_waiter_in_the_middle_delays_nobody() -> None:
    limiter = RateLimit.per(1.0, 10).limiter()
    start = anyio.current_time()
    released: dict[str, float] = {}
    await limiter.acquire()
    middle = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        await start_send(tg, limiter, 1, released, "b")  # the head: goes at 0.1
        await start_send(tg, limiter, 5, released, "middle", middle)
        await start_send(tg, limiter, 1, released, "d")
        await anyio.sleep(0.05)
        middle.cancel()
    assert {name: t - start for name, t in released.items()} == approx({"b": 0.1, "d": 0.2})


@pytest.mark.anyio
async def test_head_and_next_cancelled_together_pass_the_turn_on() -> None:
    """The head is cancelled and wakes the next waiter, which is cancelled too (before
    it ran): the one after them goes on time, and nothing is left queued."""
    limiter = RateLimit.per(1.0, 10).limiter()
    start = anyio.current_time()
    released: dict[str, float] = {}
    await limiter.acquire()
    head, second = anyio.CancelScope(), anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        await start_send(tg, limiter, 5, released, "head", head)  # would go at 0.5
        await start_send(tg, limiter, 1, released, "second", second)
        await start_send(tg, limiter, 1, released, "third")
        await anyio.sleep(0.2)
        head.cancel()
        second.cancel()
    assert released.keys() == {"third"}
    assert released["third"] - start == approx(0.2)
    assert limiter.waiting == 0
    await limiter.acquire()
    assert anyio.current_time() - start == approx(0.3)


@pytest.mark.anyio
async def test_a_send_that_can_never_fit_fails_at_once() -> None:
    for rate, too_heavy in [
        (RateLimit.per(1.0, 10), 11),
        (RateLimit.per(1.0, 10, burst=20), 21),
        (RateLimit.per(1.0, 5, algorithm="window"), 6),
        (RateLimit.per(1.0, 5, algorithm="sliding"), 6),
    ]:
        limiter = rate.limiter()
        start = anyio.current_time()
        with pytest.raises(ConfigError, match="can never go"):
            await limiter.acquire(too_heavy)
        with pytest.raises(ValueError):
            limiter.try_acquire(too_heavy)
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(ConfigError):
                await limiter.acquire(bad)  # type: ignore[arg-type]
        assert anyio.current_time() == start and limiter.waiting == 0  # no hang, nothing queued
        await limiter.acquire(too_heavy - 1)  # the heaviest that fits goes
    RateLimit.per(1.0, 10, burst=20).limiter().try_acquire(15)  # a bucket of 20 holds 15


def test_try_acquire_weight_must_fit_the_gcra_bucket() -> None:
    """acquire() collects a heavy send's tokens as they come; try_acquire cannot wait
    for them, so with GCRA a weight above ``burst`` could never succeed: it says so."""
    rate = RateLimit.per(1.0, 10, weight=5)
    assert (rate.capacity, rate.try_capacity) == (10, 1)
    limiter = rate.limiter(clock=FakeClock())
    with pytest.raises(ConfigError, match="burst=1"):
        limiter.try_acquire()  # the default weight, 5
    with pytest.raises(ConfigError, match="burst=1"):
        limiter.try_acquire(2)
    RateLimit.per(1.0, 10, burst=5).limiter(clock=FakeClock()).try_acquire(5)
    assert RateLimit.per(1.0, 10, algorithm="window").try_capacity == 10
