"""The live state of a rate limit: :class:`Limiter` and one class per algorithm.

:mod:`engine.ratelimit` holds the setting (:class:`~engine.ratelimit.RateLimit`),
documents what each algorithm allows, and is where to import :class:`Limiter`
from; this module is how a limiter enforces it on the event loop's clock.

``Limiter(rate)`` makes the instance of the algorithm's class. The base class
holds all that the algorithms share: the weight check, the fast path of
``try_acquire`` and ``acquire`` (no queue ahead and room now: take the tokens
without yielding), and the slow paths: a FIFO queue of waiters in which only
the head sleeps, once, until its computed release time, and the ``wait`` a
refusal reports, planned on a copy of the state behind every queued send. Each
algorithm's class supplies four small methods: :meth:`Limiter._take` (the fast
path's decision), :meth:`Limiter._plan`, :meth:`Limiter._apply` and the slots
its plans read (:attr:`Limiter._planned`, copied by :meth:`Limiter._shadow`).
"""

from __future__ import annotations

import math
from collections import deque
from itertools import repeat
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

import anyio

from engine.clock import Clock, loop_clock
from engine.errors import ConfigError, RateLimited

if TYPE_CHECKING:
    from typing import Self

    from engine.ratelimit import RateLimit

__all__ = ["Limiter"]

# Sends due within a nanosecond go now: float sums of interval/actions drift
# by an ulp or two, and no exchange measures that finely.
_EPS = 1e-9


def _check_rate(rate: object) -> None:
    # engine.ratelimit imports this module (RateLimit.limiter() makes a Limiter),
    # so the class is looked up when a limiter is made, not at import
    from engine.ratelimit import RateLimit

    if not isinstance(rate, RateLimit):
        raise ConfigError(f"Limiter needs a RateLimit, not {type(rate).__name__}")


class _Waiter:
    """One queued acquire: its weight, whether it goes ahead (``first``), and the event that makes it the head."""

    __slots__ = ("weight", "first", "event")

    def __init__(self, weight: int, first: bool = False) -> None:
        self.weight = weight
        self.first = first
        self.event: anyio.Event | None = None


class Limiter:
    """The live state of one :class:`~engine.ratelimit.RateLimit`; ``Limiter(rate)`` picks the algorithm's class.

    Args:
        rate: the limit to enforce.
        clock: seconds, monotonic, in the event loop's time base; default: the
            running loop's clock (``anyio.current_time``), bound on first use.
    """

    __slots__ = ("rate", "_clock", "_weight", "_capacity", "_try_capacity", "_try_weight", "_waiters", "_pending")

    #: the slots :meth:`_plan` reads and :meth:`_apply` writes: what :meth:`_shadow` copies
    _planned: ClassVar[tuple[str, ...]] = ()

    def __new__(cls, rate: RateLimit, *, clock: Clock | None = None) -> Limiter:
        """Make the instance of the class that implements ``rate.algorithm``."""
        kind: type[Limiter] = cls
        if cls is Limiter:
            _check_rate(rate)
            kind = _KINDS[rate.algorithm]
        return object.__new__(kind)

    def __init__(self, rate: RateLimit, *, clock: Clock | None = None) -> None:
        _check_rate(rate)
        if clock is not None and not callable(clock):
            raise ConfigError(f"Limiter clock must be callable () -> float, not {type(clock).__name__}")
        self.rate = rate
        self._clock: Clock = clock if clock is not None else self._bind_clock
        self._weight = rate.weight
        self._capacity = rate.capacity
        self._try_capacity = rate.try_capacity
        # the default weight for try_acquire; 0 when it could never go without waiting
        self._try_weight = rate.weight if rate.weight <= rate.try_capacity else 0
        self._waiters: deque[_Waiter] = deque()
        # (release time, state to apply) of the head while it sleeps
        self._pending: tuple[float, Any] | None = None

    def _bind_clock(self) -> float:
        clock = loop_clock()
        now = clock()  # outside a loop this raises, and nothing is bound
        self._clock = clock
        return now

    def __repr__(self) -> str:
        rate = self.rate
        return f"<Limiter {rate.algorithm} {rate.actions}/{rate.interval}s waiting={len(self._waiters)}>"

    @property
    def waiting(self) -> int:
        """How many acquires are queued, waiting for room."""
        return len(self._waiters)

    def try_acquire(self, weight: int | None = None) -> None:
        """Take ``weight`` tokens (default: the rate's ``weight``) now, or raise.

        Raises:
            RateLimited: no room now, or sends are queued ahead (FIFO);
                ``.wait`` is the seconds it would take (0 when the queued
                sends are due now and only the turn is missing).
            ConfigError: ``weight`` is not a positive integer, or more than
                :attr:`RateLimit.try_capacity` (it could never go at once).
        """
        if weight is None and self._try_weight:
            w = self._try_weight
        elif type(weight) is int and 0 < weight <= self._try_capacity:
            w = weight
        else:
            w = self._checked(self._weight if weight is None else weight, self._try_capacity)
        if self._waiters or not self._take(w):
            self._refuse(w)

    def take(self, weight: int | None = None) -> bool:
        """:meth:`acquire`'s fast path alone: take ``weight`` tokens now if nobody is queued and they fit.

        False takes nothing (then ``await acquire()`` waits for them); raises
        :class:`ConfigError` for a weight :meth:`acquire` refuses. For callers
        that wrap only the waiting path (in a cancel scope, say).
        """
        if weight is None:
            w = self._weight
        elif type(weight) is int and 0 < weight <= self._capacity:
            w = weight
        else:
            w = self._checked(weight, self._capacity)
        return not self._waiters and self._take(w)

    async def acquire(self, weight: int | None = None, *, first: bool = False) -> None:
        """Wait until ``weight`` tokens (default: the rate's ``weight``) are free, then take them.

        Waiters are served first come, first served; a cancelled waiter takes
        nothing and delays nobody. ``first=True`` (control frames: a pong, a
        close reply) queues ahead of every ordinary waiter, behind the head
        (whose turn may already be planned) and earlier ``first`` waiters.

        Raises:
            ConfigError: at once, if ``weight`` is not a positive integer or
                is more than :attr:`RateLimit.capacity` (it could never go).
        """
        if weight is None:
            w = self._weight
        elif type(weight) is int and 0 < weight <= self._capacity:
            w = weight
        else:
            w = self._checked(weight, self._capacity)
        if self._waiters or not self._take(w):
            await self._queue(w, first)

    async def __aenter__(self) -> Limiter:
        """``async with limiter:`` acquires the default weight."""
        await self.acquire()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Nothing to give back: the tokens are spent."""

    # -- slow paths ---------------------------------------------------------------

    def _refuse(self, weight: int) -> NoReturn:
        wait = self._wait_for(weight)
        raise RateLimited(f"rate limited: a send of weight {weight} would wait {wait:.6f} s", wait)

    def _checked(self, weight: int, capacity: int) -> int:
        if type(weight) is int and 0 < weight <= capacity:
            return weight
        if isinstance(weight, bool) or not isinstance(weight, int) or weight <= 0:
            raise ConfigError(f"a send's weight must be a positive integer, not {weight!r}")
        if weight > capacity:
            rate = self.rate
            if weight <= self._capacity:  # try_acquire with GCRA: the bucket holds `burst`
                raise ConfigError(
                    f"try_acquire of weight {weight} can never go at once: the bucket holds burst={rate.burst} "
                    f"(acquire() collects the tokens as they come; or raise burst to {weight})"
                )
            raise ConfigError(
                f"a send of weight {weight} can never go: {rate.actions} per {rate.interval} s "
                f"({rate.algorithm}) lets at most {capacity} through at once"
            )
        return int(weight)

    async def _queue(self, weight: int, first: bool = False) -> None:
        waiter = _Waiter(weight, first)
        waiters = self._waiters
        if first and len(waiters) > 1:
            at = 1
            while at < len(waiters) and waiters[at].first:
                at += 1
            waiters.insert(at, waiter)
        else:
            waiters.append(waiter)
        try:
            if waiters[0] is not waiter:
                event = waiter.event = anyio.Event()
                await event.wait()  # set when every waiter ahead has gone (or given up)
            now = self._clock()
            release, state = self._plan(weight, now)
            if release > now:
                self._pending = (release, state)
                await anyio.sleep(release - now)
            self._apply(state)
        finally:
            if waiters[0] is waiter:
                self._pending = None
                waiters.popleft()
                if waiters:
                    head = waiters[0].event
                    assert head is not None  # only a waiter that found the queue empty has none
                    head.set()
            else:
                waiters.remove(waiter)

    def _wait_for(self, weight: int) -> float:
        """Seconds until a send of ``weight`` would go, behind every queued one."""
        now = self._clock()
        shadow = self._shadow()
        at = now
        waiters = iter(self._waiters)
        if self._pending is not None:  # the head is asleep: its plan is made
            next(waiters)
            release, state = self._pending
            shadow._apply(state)
            at = max(at, release)
        for waiter in waiters:
            release, state = shadow._plan(waiter.weight, at)
            shadow._apply(state)
            at = release
        release, _ = shadow._plan(weight, at)
        return release - now

    def _shadow(self) -> Self:
        """A copy of the state for planning ahead (no queue, no clock)."""
        shadow = object.__new__(type(self))
        for name in self._planned:
            setattr(shadow, name, getattr(self, name))
        return shadow

    # -- per algorithm ------------------------------------------------------------

    def _take(self, weight: int) -> bool:
        """The fast path, with no queue ahead: if ``weight`` fits now, take it and say True."""
        raise NotImplementedError

    def _plan(self, weight: int, now: float) -> tuple[float, Any]:
        """When a send of ``weight`` asked at ``now`` may go (>= now), and the state after it."""
        raise NotImplementedError

    def _apply(self, state: Any) -> None:
        """Make a planned state the current one."""
        raise NotImplementedError


class _Gcra(Limiter):
    """GCRA: the theoretical arrival time ``tat`` of the next token moves on by ``spacing`` per unit."""

    __slots__ = ("_tat", "_step", "_tau", "_slack")
    _planned = ("_tat", "_step", "_tau")

    def __init__(self, rate: RateLimit, *, clock: Clock | None = None) -> None:
        super().__init__(rate, clock=clock)
        self._tat = -math.inf
        self._step = rate.interval / rate.actions
        self._tau = rate.burst * self._step  # how far ahead of now tat may run
        self._slack = self._tau + _EPS

    def _take(self, weight: int) -> bool:
        now = self._clock()
        tat = self._tat
        if tat < now:
            tat = now
        tat += weight * self._step
        if tat - self._slack <= now:
            self._tat = tat
            return True
        return False

    def _plan(self, weight: int, now: float) -> tuple[float, Any]:
        tat = self._tat
        if tat < now:
            tat = now
        tat += weight * self._step
        release = tat - self._tau
        return (release if release > now + _EPS else now), tat

    def _apply(self, state: Any) -> None:
        self._tat = state


class _Window(Limiter):
    """A rolling fixed window: ``actions`` units from its first send until ``interval`` later."""

    __slots__ = ("_end", "_count", "_interval", "_limit")
    _planned = ("_end", "_count", "_interval", "_limit")

    def __init__(self, rate: RateLimit, *, clock: Clock | None = None) -> None:
        super().__init__(rate, clock=clock)
        self._end = -math.inf
        self._count = 0
        self._interval = float(rate.interval)
        self._limit = rate.actions

    def _take(self, weight: int) -> bool:
        now = self._clock()
        if now + _EPS >= self._end:  # the window closed: this send opens the next
            self._end = now + self._interval
            self._count = weight
            return True
        count = self._count + weight
        if count <= self._limit:
            self._count = count
            return True
        return False

    def _plan(self, weight: int, now: float) -> tuple[float, Any]:
        end = self._end
        if now + _EPS >= end:
            return now, (now + self._interval, weight)
        if self._count + weight <= self._limit:
            return now, (end, self._count + weight)
        return end, (end + self._interval, weight)  # at the edge, the next window opens

    def _apply(self, state: Any) -> None:
        self._end, self._count = state


class _Sliding(Limiter):
    """Strict sliding window over the last ``actions`` release times (one entry per weight unit)."""

    __slots__ = ("_times", "_interval", "_limit", "_cut", "_span")
    _planned = ("_interval", "_limit")  # and a copy of _times

    def __init__(self, rate: RateLimit, *, clock: Clock | None = None) -> None:
        super().__init__(rate, clock=clock)
        self._times: deque[float] = deque(maxlen=rate.actions)
        self._interval = float(rate.interval)
        self._limit = rate.actions
        self._cut = rate.actions + 1
        self._span = self._interval - _EPS  # a unit this long ago has left the window

    def _take(self, weight: int) -> bool:
        times = self._times
        i = len(times) + weight - self._cut  # the unit that must have left the window for `weight` more to fit
        now = self._clock()
        if i < 0 or times[i] + self._span <= now:
            if weight == 1:
                times.append(now)
            else:
                times.extend(repeat(now, weight))
            return True
        return False

    def _plan(self, weight: int, now: float) -> tuple[float, Any]:
        times = self._times
        i = len(times) - self._limit + weight - 1
        release = now if i < 0 else times[i] + self._interval
        if release <= now + _EPS:
            release = now
        return release, (release, weight)

    def _apply(self, state: Any) -> None:
        at, weight = state
        self._times.extend(repeat(at, weight))

    def _shadow(self) -> Self:
        shadow = super()._shadow()
        shadow._times = deque(self._times, maxlen=self._times.maxlen)
        return shadow


_KINDS: dict[str, type[Limiter]] = {"gcra": _Gcra, "window": _Window, "sliding": _Sliding}
