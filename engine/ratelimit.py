"""Weighted rate limits that never trip an exchange's ban.

A :class:`RateLimit` is the setting (frozen, validated, shareable); a
:class:`Limiter` is the live state that enforces it on the event loop's clock
(its classes live in :mod:`engine.limiters`; import it from here)::

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
from collections.abc import Callable
from typing import Any, Literal

import attrs

from engine.clock import Clock
from engine.errors import ConfigError
from engine.limiters import Limiter

__all__ = ["ALGORITHMS", "Algorithm", "Limiter", "RateLimit", "limiter_source"]

#: how a :class:`RateLimit` counts (see the module doc)
Algorithm = Literal["gcra", "window", "sliding"]
ALGORITHMS: tuple[Algorithm, ...] = ("gcra", "window", "sliding")


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
