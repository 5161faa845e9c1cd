"""Weighted rate limits that never trip an exchange's ban.

A :class:`RateLimit` is the setting (frozen, validated, shareable); a
:class:`Limiter` is the live state that enforces it on the event loop's clock::

    rate = RateLimit.per(1.0, 2)              # 2 actions per second, weight 1 each
    limiter = rate.limiter()
    await limiter.acquire()                   # waits exactly until there is room
    await limiter.acquire(5)                  # a send of weight 5 waits for 5 tokens
    limiter.try_acquire()                     # never waits: raises RateLimited(.wait)
    async with limiter:                       # the default weight, e.g. around a REST call
        ...

Algorithms (``RateLimit(algorithm=...)``):

``"gcra"`` (default)
    The generic cell rate algorithm: tokens arrive evenly, one every
    ``interval / actions`` seconds, and the bucket holds ``burst`` of them.
    ``burst=1`` (the default) is the seed's behaviour: the first send goes at
    once, the next ones are evenly spaced at ``interval / actions``; a send of
    weight ``w`` goes when its ``w``-th token arrives, ``(w - 1) * interval /
    actions`` after its first one (weight 5 at 10/s: 0.4 s after the first
    token). ``burst=actions`` lets a full interval's worth go at once after
    idling, then spaces the rest: at 2 per second, a burst of sends goes out
    at 0, 0, 0.5, 1.0, ... (the third waits exactly 0.5 s). In any span of
    ``L`` seconds GCRA sends at most ``burst + L * actions / interval``.

``"window"``
    A fixed window that rolls: the window opens at the first send after the
    previous one closed and lasts ``interval``; it lets ``actions`` (weight
    units) through, then the next send waits to the window's edge, where the
    next window opens. For exchanges that count per window. Two windows back to
    back may together let ``2 * actions`` through within one ``interval``
    across their common edge: if the exchange's windows are not ours (aligned
    to the wall clock, say), use ``"sliding"``.

``"sliding"``
    Strict: at most ``actions`` weight units in *any* window of length
    ``interval`` (half-open), so no burst at a window edge, whatever the
    exchange's window alignment. The limiter keeps the last ``actions`` release
    times (a bounded deque: one entry per weight unit).

A single send heavier than :attr:`RateLimit.capacity` (``actions``, or
``burst`` if larger, for GCRA) could never go without breaking the limit:
asking for it raises :class:`~engine.errors.ConfigError` (a ``ValueError``) at
once instead of hanging. A blocking ``acquire`` collects a GCRA send's tokens
as they arrive, so its weight may exceed ``burst``; a non-blocking
``try_acquire`` cannot wait for them, so with GCRA its weight must fit in the
bucket (``weight <= burst``, :attr:`RateLimit.try_capacity`), or it raises
ConfigError too: it could never succeed.

Fairness and cancellation: waiters are released strictly in the order they
asked (FIFO), so a heavy send is never starved by a stream of light ones, and
only the first waiter sleeps, once, until its computed release time (no
polling). A waiter that is cancelled gives its place back: it has taken no
tokens, and those behind it are not delayed by it. Tokens are taken when an
acquire returns; a send that is then abandoned still counts (it may have
reached the wire).

An acquire that needn't wait returns without yielding to the event loop (like
``asyncio.Lock.acquire`` when free) and a cancelled scope does not stop it:
the send that follows is the checkpoint.

Sharing: one :class:`Limiter` may be shared by every connection to one host
(and the user's own REST calls) so they hold the combined rate; a
:class:`RateLimit` itself holds no state, and :meth:`RateLimit.factory` gives
each new connection a limiter of its own. :func:`limiter_source` turns what a
setup's ``rate_limit`` holds (None, a RateLimit, a Limiter, a factory) into
that per-connection factory. A limiter lives in one event loop: its default
clock is bound on first use, from inside the loop (engine code never reads
``time.monotonic()``); inject ``clock=`` to drive it from anything else.

Control frames: :attr:`RateLimit.count_control` tells the send queue whether
pings, pongs and close frames take a token (weight 1) too. It is on by
default: Binance counts every incoming frame, PING and PONG included, against
its 5-messages-per-second limit, and an uncounted pong can trip it.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from itertools import repeat
from typing import Any, Literal, NoReturn

import anyio
import attrs

from engine.clock import Clock, loop_clock
from engine.errors import ConfigError, RateLimited

__all__ = ["ALGORITHMS", "Algorithm", "Limiter", "RateLimit", "limiter_source"]

#: how a :class:`RateLimit` counts (see the module doc)
Algorithm = Literal["gcra", "window", "sliding"]
ALGORITHMS: tuple[Algorithm, ...] = ("gcra", "window", "sliding")

# Sends due within a nanosecond go now: float sums of interval/actions drift
# by an ulp or two, and no exchange measures that finely.
_EPS = 1e-9


def _positive_finite(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"RateLimit.{attribute.name} must be a positive, finite number of seconds, not {value!r}")


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"RateLimit.{attribute.name} must be a positive integer, not {value!r}")


def _algorithm(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value not in ALGORITHMS:
        raise ConfigError(f"RateLimit.algorithm must be one of {ALGORITHMS}, not {value!r}")


def _bool(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"RateLimit.{attribute.name} must be True or False, not {value!r}")


@attrs.frozen
class RateLimit:
    """``actions`` weight units per ``interval`` seconds; immutable, validated on construction.

    Args:
        interval: the window, in seconds.
        actions: how many weight units the exchange allows per ``interval``.
        weight: the default cost of one send (``acquire()`` without a weight).
        algorithm: ``"gcra"`` (default), ``"window"`` or ``"sliding"`` (strict).
        burst: GCRA only: how many tokens the bucket holds; 1 spaces every send
            evenly (the seed), ``actions`` lets a full interval's worth go at once.
        count_control: whether pings, pongs and close frames take a token too
            (default True: Binance counts them).

    Bad values raise :class:`~engine.errors.ConfigError` naming the field.
    """

    interval: float = attrs.field(validator=_positive_finite)
    actions: int = attrs.field(validator=_positive_int)
    weight: int = attrs.field(default=1, validator=_positive_int)
    algorithm: Algorithm = attrs.field(default="gcra", validator=_algorithm)
    burst: int = attrs.field(default=1, validator=_positive_int)
    count_control: bool = attrs.field(default=True, validator=_bool)

    def __attrs_post_init__(self) -> None:
        if self.burst != 1 and self.algorithm != "gcra":
            raise ConfigError(f"RateLimit.burst applies to algorithm='gcra' only, not {self.algorithm!r}")
        if self.weight > self.capacity:
            raise ConfigError(
                f"RateLimit.weight {self.weight} is more than one send may ever cost here "
                f"(at most {self.capacity}: {self.actions} per {self.interval} s)"
            )

    @classmethod
    def per(
        cls,
        interval: float,
        actions: int,
        weight: int = 1,
        *,
        algorithm: Algorithm = "gcra",
        burst: int = 1,
        count_control: bool = True,
    ) -> RateLimit:
        """``actions`` of weight 1 per ``interval`` seconds; ``weight`` is the default cost of one send.

        ``RateLimit.per(1.0, 2)`` is 2 actions per second (the seed's
        ``NewRateLimitWithWeight``).
        """
        return cls(interval, actions, weight, algorithm=algorithm, burst=burst, count_control=count_control)

    @classmethod
    def every(
        cls, seconds: float, *, algorithm: Algorithm = "gcra", burst: int = 1, count_control: bool = True
    ) -> RateLimit:
        """One action every ``seconds`` (``RateLimit.every(0.2)`` is 5 per second, evenly spaced)."""
        return cls(seconds, 1, 1, algorithm=algorithm, burst=burst, count_control=count_control)

    @property
    def capacity(self) -> int:
        """The heaviest single send this limit can ever let through."""
        return max(self.actions, self.burst) if self.algorithm == "gcra" else self.actions

    @property
    def try_capacity(self) -> int:
        """The heaviest send ``try_acquire`` can ever let through: what the bucket holds
        (``burst`` for GCRA; ``actions`` for the window algorithms)."""
        return self.burst if self.algorithm == "gcra" else self.actions

    @property
    def spacing(self) -> float:
        """Seconds between two tokens at the steady rate: ``interval / actions``."""
        return self.interval / self.actions

    def limiter(self, *, clock: Clock | None = None) -> Limiter:
        """A new :class:`Limiter` enforcing this limit (share it to share the budget)."""
        return Limiter(self, clock=clock)

    def factory(self, *, clock: Clock | None = None) -> Callable[[], Limiter]:
        """A zero-argument callable that makes a fresh limiter each call: one per connection."""

        def new_limiter() -> Limiter:
            return Limiter(self, clock=clock)

        return new_limiter


class _Waiter:
    """One queued acquire: its weight, and the event that makes it the head."""

    __slots__ = ("weight", "event")

    def __init__(self, weight: int) -> None:
        self.weight = weight
        self.event: anyio.Event | None = None


class Limiter:
    """The live state of one :class:`RateLimit`; ``Limiter(rate)`` picks the algorithm's class.

    Args:
        rate: the limit to enforce.
        clock: seconds, monotonic, in the event loop's time base; default: the
            running loop's clock (``anyio.current_time``), bound on first use.
    """

    __slots__ = ("rate", "_clock", "_weight", "_capacity", "_try_capacity", "_try_weight", "_waiters", "_pending")

    def __new__(cls, rate: RateLimit, *, clock: Clock | None = None) -> Limiter:
        """Make the instance of the class that implements ``rate.algorithm``."""
        kind: type[Limiter] = cls
        if cls is Limiter:
            if not isinstance(rate, RateLimit):
                raise ConfigError(f"Limiter needs a RateLimit, not {type(rate).__name__}")
            kind = _KINDS[rate.algorithm]
        return object.__new__(kind)

    def __init__(self, rate: RateLimit, *, clock: Clock | None = None) -> None:
        if not isinstance(rate, RateLimit):
            raise ConfigError(f"Limiter needs a RateLimit, not {type(rate).__name__}")
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
        raise NotImplementedError  # each algorithm's class inlines its fast path

    async def acquire(self, weight: int | None = None) -> None:
        """Wait until ``weight`` tokens (default: the rate's ``weight``) are free, then take them.

        Waiters are served first come, first served; a cancelled waiter takes
        nothing and delays nobody.

        Raises:
            ConfigError: at once, if ``weight`` is not a positive integer or
                is more than :attr:`RateLimit.capacity` (it could never go).
        """
        raise NotImplementedError  # each algorithm's class inlines its fast path

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

    async def _queue(self, weight: int) -> None:
        waiter = _Waiter(weight)
        waiters = self._waiters
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

    # -- per algorithm ------------------------------------------------------------
    # Each class inlines its own try_acquire and acquire (the same weight check,
    # one clock read, a few float operations, no call, no allocation: about half
    # the cost of calling a shared helper); the slow paths above use these three.

    def _plan(self, weight: int, now: float) -> tuple[float, Any]:
        """When a send of ``weight`` asked at ``now`` may go (>= now), and the state after it."""
        raise NotImplementedError

    def _apply(self, state: Any) -> None:
        """Make a planned state the current one."""
        raise NotImplementedError

    def _shadow(self) -> Limiter:
        """A copy of the state for planning ahead (no queue, no clock)."""
        raise NotImplementedError


class _Gcra(Limiter):
    """GCRA: the theoretical arrival time ``tat`` of the next token moves on by ``spacing`` per unit."""

    __slots__ = ("_tat", "_step", "_tau", "_slack")

    def __init__(self, rate: RateLimit, *, clock: Clock | None = None) -> None:
        super().__init__(rate, clock=clock)
        self._tat = -math.inf
        self._step = rate.interval / rate.actions
        self._tau = rate.burst * self._step  # how far ahead of now tat may run
        self._slack = self._tau + _EPS

    def try_acquire(self, weight: int | None = None) -> None:
        """Take ``weight`` tokens now, or raise :class:`~engine.errors.RateLimited` (see :class:`Limiter`)."""
        if weight is None and self._try_weight:
            w = self._try_weight
        elif type(weight) is int and 0 < weight <= self._try_capacity:
            w = weight
        else:
            w = self._checked(self._weight if weight is None else weight, self._try_capacity)
        now = self._clock()
        tat = self._tat
        if tat < now:
            tat = now
        tat += w * self._step
        if tat - self._slack <= now and not self._waiters:
            self._tat = tat
            return
        self._refuse(w)

    async def acquire(self, weight: int | None = None) -> None:
        """Wait until ``weight`` tokens are free, then take them (see :class:`Limiter`)."""
        if weight is None:
            w = self._weight
        elif type(weight) is int and 0 < weight <= self._capacity:
            w = weight
        else:
            w = self._checked(weight, self._capacity)
        now = self._clock()
        tat = self._tat
        if tat < now:
            tat = now
        tat += w * self._step
        if tat - self._slack <= now and not self._waiters:
            self._tat = tat
            return
        await self._queue(w)

    def _plan(self, weight: int, now: float) -> tuple[float, Any]:
        tat = self._tat
        if tat < now:
            tat = now
        tat += weight * self._step
        release = tat - self._tau
        return (release if release > now + _EPS else now), tat

    def _apply(self, state: Any) -> None:
        self._tat = state

    def _shadow(self) -> Limiter:
        shadow = object.__new__(_Gcra)
        shadow._tat, shadow._step, shadow._tau = self._tat, self._step, self._tau
        return shadow


class _Window(Limiter):
    """A rolling fixed window: ``actions`` units from its first send until ``interval`` later."""

    __slots__ = ("_end", "_count", "_interval", "_limit")

    def __init__(self, rate: RateLimit, *, clock: Clock | None = None) -> None:
        super().__init__(rate, clock=clock)
        self._end = -math.inf
        self._count = 0
        self._interval = float(rate.interval)
        self._limit = rate.actions

    def try_acquire(self, weight: int | None = None) -> None:
        """Take ``weight`` units now, or raise :class:`~engine.errors.RateLimited` (see :class:`Limiter`)."""
        if weight is None and self._try_weight:
            w = self._try_weight
        elif type(weight) is int and 0 < weight <= self._try_capacity:
            w = weight
        else:
            w = self._checked(self._weight if weight is None else weight, self._try_capacity)
        now = self._clock()
        if not self._waiters:
            if now + _EPS >= self._end:  # the window closed: this send opens the next
                self._end = now + self._interval
                self._count = w
                return
            count = self._count + w
            if count <= self._limit:
                self._count = count
                return
        self._refuse(w)

    async def acquire(self, weight: int | None = None) -> None:
        """Wait until ``weight`` units fit, then take them (see :class:`Limiter`)."""
        if weight is None:
            w = self._weight
        elif type(weight) is int and 0 < weight <= self._capacity:
            w = weight
        else:
            w = self._checked(weight, self._capacity)
        now = self._clock()
        if not self._waiters:
            if now + _EPS >= self._end:
                self._end = now + self._interval
                self._count = w
                return
            count = self._count + w
            if count <= self._limit:
                self._count = count
                return
        await self._queue(w)

    def _plan(self, weight: int, now: float) -> tuple[float, Any]:
        end = self._end
        if now + _EPS >= end:
            return now, (now + self._interval, weight)
        if self._count + weight <= self._limit:
            return now, (end, self._count + weight)
        return end, (end + self._interval, weight)  # at the edge, the next window opens

    def _apply(self, state: Any) -> None:
        self._end, self._count = state

    def _shadow(self) -> Limiter:
        shadow = object.__new__(_Window)
        shadow._end, shadow._count = self._end, self._count
        shadow._interval, shadow._limit = self._interval, self._limit
        return shadow


class _Sliding(Limiter):
    """Strict sliding window over the last ``actions`` release times (one entry per weight unit)."""

    __slots__ = ("_times", "_interval", "_limit", "_cut", "_span")

    def __init__(self, rate: RateLimit, *, clock: Clock | None = None) -> None:
        super().__init__(rate, clock=clock)
        self._times: deque[float] = deque(maxlen=rate.actions)
        self._interval = float(rate.interval)
        self._limit = rate.actions
        self._cut = rate.actions + 1
        self._span = self._interval - _EPS  # a unit this long ago has left the window

    def try_acquire(self, weight: int | None = None) -> None:
        """Take ``weight`` units now, or raise :class:`~engine.errors.RateLimited` (see :class:`Limiter`)."""
        if weight is None and self._try_weight:
            w = self._try_weight
        elif type(weight) is int and 0 < weight <= self._try_capacity:
            w = weight
        else:
            w = self._checked(self._weight if weight is None else weight, self._try_capacity)
        times = self._times
        i = len(times) + w - self._cut  # the unit that must have left the window for w more to fit
        now = self._clock()
        if (i < 0 or times[i] + self._span <= now) and not self._waiters:
            if w == 1:
                times.append(now)
            else:
                times.extend(repeat(now, w))
            return
        self._refuse(w)

    async def acquire(self, weight: int | None = None) -> None:
        """Wait until ``weight`` units fit in every window, then take them (see :class:`Limiter`)."""
        if weight is None:
            w = self._weight
        elif type(weight) is int and 0 < weight <= self._capacity:
            w = weight
        else:
            w = self._checked(weight, self._capacity)
        times = self._times
        i = len(times) + w - self._cut
        now = self._clock()
        if (i < 0 or times[i] + self._span <= now) and not self._waiters:
            if w == 1:
                times.append(now)
            else:
                times.extend(repeat(now, w))
            return
        await self._queue(w)

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

    def _shadow(self) -> Limiter:
        shadow = object.__new__(_Sliding)
        shadow._times = deque(self._times, maxlen=self._times.maxlen)
        shadow._interval, shadow._limit = self._interval, self._limit
        return shadow


_KINDS: dict[str, type[Limiter]] = {"gcra": _Gcra, "window": _Window, "sliding": _Sliding}


def limiter_source(value: RateLimit | Limiter | Callable[[], Limiter] | None) -> Callable[[], Limiter] | None:
    """Turn a setup's ``rate_limit`` into a per-connection limiter factory (None: no limit).

    - a :class:`RateLimit`: each connection gets a limiter of its own;
    - a :class:`Limiter`: every connection shares that one (one host's budget);
    - a zero-argument callable returning a Limiter: called once per connection.
    """
    if value is None:
        return None
    if isinstance(value, RateLimit):
        return value.factory()
    if isinstance(value, Limiter):
        shared = value

        def the_shared() -> Limiter:
            return shared

        return the_shared
    if callable(value):
        return value
    raise ConfigError(
        f"rate_limit must be a RateLimit, a Limiter or a () -> Limiter factory, not {type(value).__name__}"
    )
