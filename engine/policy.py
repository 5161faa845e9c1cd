"""What happens after a session ends: one replaceable reconnect policy.

The connection hands the policy the typed cause (:mod:`engine.causes`) and
the number of consecutive unhealthy attempts; the policy answers
:class:`Retry` (after a delay) or :class:`~engine.causes.GiveUp` (with a
reason a user can read). :class:`DefaultPolicy` is today's rule: capped
exponential backoff with jitter, a server's ``Retry-After`` wins when longer
(capped), fatal classes give up at once, ``max_attempts`` bounds the rest.
Pass your own object with a ``decide`` method in ``ConnectionSetup.policy``.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import attrs

from engine.causes import (
    Cause,
    ClosedByPeer,
    GiveUp,
    HandshakeRejection,
    InvalidHandshake,
    SetupFailure,
)
from engine.errors import ConfigError

__all__ = ["Backoff", "Decision", "DefaultPolicy", "ReconnectPolicy", "Retry", "decide_safely", "fatal_reason", "is_fatal"]

log = logging.getLogger("wirestate.policy")


@dataclass(frozen=True, slots=True)
class Retry:
    """Reconnect after ``delay`` seconds; ``note`` explains the delay (shown in the state change)."""

    delay: float
    note: str = ""


Decision = Retry | GiveUp


@runtime_checkable
class ReconnectPolicy(Protocol):
    """Decides, after each session end, whether and when to reconnect."""

    def decide(self, cause: Cause, attempt: int) -> Decision:
        """``attempt``: failed attempts in a row before this one (0 after a healthy session)."""
        ...


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be a positive finite number, not {value!r}")


def _attempts(instance: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be a positive integer or None, not {value!r}")


@attrs.frozen
class Backoff:
    """Capped exponential reconnect delays.

    The n-th retry waits ``min(maximum, initial * multiplier**n)``, times a
    uniform factor in [0.5, 1] when ``jitter`` is on (so a fleet of clients
    does not reconnect in lockstep). ``max_attempts=None`` retries forever;
    otherwise the connection gives up after that many failed attempts in a row
    (an attempt is a success only once its session stayed healthy for
    ``ConnectionSetup.healthy_after`` seconds).
    """

    initial: float = attrs.field(default=0.5, validator=_positive)
    maximum: float = attrs.field(default=30.0, validator=_positive)
    multiplier: float = attrs.field(default=2.0, validator=_positive)
    jitter: bool = True
    max_attempts: int | None = attrs.field(default=None, validator=_attempts)

    def __attrs_post_init__(self) -> None:
        if self.maximum < self.initial:
            raise ConfigError(f"Backoff.maximum ({self.maximum}) must be >= Backoff.initial ({self.initial})")
        if self.multiplier < 1:
            raise ConfigError(f"Backoff.multiplier must be >= 1, not {self.multiplier}")

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        if self.jitter:
            base *= rng.uniform(0.5, 1.0)
        return base


#: HTTP answers that will not change by retrying: give up instead of hammering.
FATAL_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 426})
#: Close codes that say "don't come back like this": policy violation.
FATAL_CLOSE_CODES = frozenset({1008})


class DefaultPolicy:
    """Backoff, capped Retry-After, fatal classes (see the module doc).

    Args:
        backoff: the delays and the attempt budget.
        retry_after_cap: the longest a server's ``Retry-After`` may make us
            wait (``inf`` or ``1e12`` would otherwise park the connection forever).
        fatal_statuses: handshake statuses that give up at once.
        fatal_close_codes: close codes from the server that give up at once.
        rng: jitter source (seed it for replayable tests).
    """

    __slots__ = ("backoff", "retry_after_cap", "fatal_statuses", "fatal_close_codes", "_rng")

    def __init__(
        self,
        backoff: Backoff | None = None,
        *,
        retry_after_cap: float = 300.0,
        fatal_statuses: frozenset[int] = FATAL_STATUSES,
        fatal_close_codes: frozenset[int] = FATAL_CLOSE_CODES,
        rng: random.Random | None = None,
    ) -> None:
        if backoff is not None and not isinstance(backoff, Backoff):
            raise ConfigError("DefaultPolicy.backoff must be a Backoff")
        if isinstance(retry_after_cap, bool) or not isinstance(retry_after_cap, (int, float)) or not (
            0 <= retry_after_cap < math.inf
        ):
            raise ConfigError(f"DefaultPolicy.retry_after_cap must be a finite number >= 0, not {retry_after_cap!r}")
        self.backoff = backoff if backoff is not None else Backoff()
        self.retry_after_cap = float(retry_after_cap)
        self.fatal_statuses = frozenset(fatal_statuses)
        self.fatal_close_codes = frozenset(fatal_close_codes)
        self._rng = rng  # made on first use: a Random is 2.5 KiB per idle connection

    def __repr__(self) -> str:
        return f"DefaultPolicy({self.backoff!r}, retry_after_cap={self.retry_after_cap:g})"

    def decide(self, cause: Cause, attempt: int) -> Decision:
        """Give up on a fatal cause or a spent budget; else retry after the backoff (or Retry-After)."""
        fatal = self.fatal(cause)
        if fatal is not None:
            return GiveUp(fatal, cause)
        budget = self.backoff.max_attempts
        if budget is not None and attempt >= budget:
            return GiveUp(f"{attempt} attempts failed", cause)
        if self._rng is None:
            self._rng = random.Random()
        delay = self.backoff.delay(attempt, self._rng)
        note = ""
        retry_after = cause.retry_after if isinstance(cause, HandshakeRejection) else None
        if retry_after is not None and retry_after > delay:
            if retry_after > self.retry_after_cap:
                delay = self.retry_after_cap
                note = f"Retry-After {retry_after:g} s capped to {delay:g} s"
            else:
                delay = retry_after
                note = f"Retry-After {retry_after:g} s"
        return Retry(delay, note)

    def fatal(self, cause: Cause) -> str | None:
        """Why ``cause`` is not worth retrying, or None."""
        return fatal_reason(cause, self.fatal_statuses, self.fatal_close_codes)


def fatal_reason(
    cause: Cause,
    fatal_statuses: frozenset[int] = FATAL_STATUSES,
    fatal_close_codes: frozenset[int] = FATAL_CLOSE_CODES,
) -> str | None:
    """Why ``cause`` is not worth retrying (a readable reason), or None: the rule every policy shares."""
    if isinstance(cause, HandshakeRejection) and cause.status in fatal_statuses:
        return f"the server refused the handshake with HTTP {cause.status}; retrying will not change that"
    if isinstance(cause, InvalidHandshake) and cause.ours:
        return "our handshake request cannot be built; check the URL and headers"
    if isinstance(cause, ClosedByPeer) and cause.code in fatal_close_codes:
        why = " (policy violation)" if cause.code == 1008 else ""
        said = f": {cause.reason!r}" if cause.reason else ""
        return f"the server closed with {cause.code}{why}{said}; not coming back like this"
    if isinstance(cause, SetupFailure) and cause.rejected:
        return f"authentication was rejected ({cause.error or cause.phase}); retrying could get us banned"
    return None


def decide_safely(policy: ReconnectPolicy, cause: Cause, attempt: int, owner: str) -> Decision:
    """``policy.decide``, with a policy bug (it raised, or answered nonsense) turned into a give-up."""
    try:
        decision = policy.decide(cause, attempt)
    except Exception as exc:
        log.exception("%s: the reconnect policy raised; giving up", owner)
        return GiveUp(f"the reconnect policy raised {type(exc).__name__}", cause)
    if isinstance(decision, Retry) and decision.delay >= 0:
        return decision
    if isinstance(decision, GiveUp):
        return decision if decision.last is not None else GiveUp(decision.reason, cause)
    log.error("%s: the reconnect policy answered %r, not Retry or GiveUp; giving up", owner, decision)
    return GiveUp("the reconnect policy gave no valid decision", cause)


def is_fatal(cause: Cause) -> bool:
    """Whether ``cause`` is one the default rules never retry (refused for good: 401, 1008, login...)."""
    return fatal_reason(cause) is not None
