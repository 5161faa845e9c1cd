"""The governor: one reconnect policy shared by many connections.

A :class:`Governor` decides, like any :class:`~engine.policy.ReconnectPolicy`,
after each lost session whether and when a connection dials again. Unlike a
per-connection policy it sees the whole fleet, so it can keep a mass drop from
turning into a reconnect storm:

- **Backoff** with *decorrelated jitter* (AWS, "Exponential backoff and
  jitter"): ``delay = min(cap, uniform(base, previous * 3))``, starting over at
  ``attempt == 0``; or, with ``jitter=False``, plain ``min(cap, base * 2**attempt)``.
- **A per-host budget**: at most ``attempts_per_window`` reconnects per
  ``window`` seconds for all connections to one host. Every :class:`Retry`
  reserves a slot at ``now + delay`` in that host's schedule; when that slot
  would overfill some window, the delay is pushed to the first free slot. Fifty
  connections dropped at once reconnect spread out, never more than the budget
  in any window.
- **Retry-After** from a :class:`~engine.causes.HandshakeRejection` wins over a
  shorter backoff, capped by ``retry_after_cap``; the budget still applies.
- **Close classes**: a server's 1000/1001 (going away, normal close) is retried
  quickly (``base``, no growth); 1008 (policy violation), a rejected login,
  handshake statuses that retrying cannot change (400, 401, 403, ...) and a
  request we cannot build give up at once, with a readable reason; everything
  else backs off. ``max_attempts`` bounds failures in a row.
- **Observable**: every decision goes to the ``on_decision`` listeners
  ``(host, cause, attempt, decision)``, and the :class:`Retry` note says why
  (``"quick retry after 1001"``, ``"host budget 5/10 s: delayed 3.200 s"``),
  which the connection shows on its ``lost`` :class:`~engine.events.StateChanged`.

Use it per host: ``governor.for_host("api.example.com")`` returns a
:class:`HostPolicy` to put in ``ConnectionSetup.policy`` (the manager does this
for every connection whose setup has no policy of its own). Call it once per
connection: the view carries that connection's jitter history, the budget is
the host's. The governor itself is also a policy (``decide(cause, attempt)``);
every connection given the governor directly shares one budget (host ``None``).

What the budget can and cannot see: only the reconnects it grants. A
connection's first dial does not pass through a reconnect policy, and a slot
stays reserved when its connection is closed before using it (the budget errs
on the careful side). The connection waits ``delay`` from the end of the lost
session's teardown (immediate after a drop or a peer's close), so the dial
lands on its slot when the governor's clock is the event loop's clock.
"""

from __future__ import annotations

import logging
import math
import random
from bisect import bisect_right, insort
from collections.abc import Callable, Iterable
from typing import TypeAlias

import anyio

from engine.causes import Cause, ClosedByPeer, GiveUp, HandshakeRejection
from engine.errors import ConfigError
from engine.policy import FATAL_CLOSE_CODES, FATAL_STATUSES, Decision, Retry, fatal_reason

__all__ = ["DecisionListener", "Governor", "HostPolicy", "QUICK_CLOSE_CODES"]

log = logging.getLogger("wirestate.governor")

#: ``(host, cause, attempt, decision)``; ``host`` is None for the governor's own (hostless) budget.
DecisionListener: TypeAlias = Callable[[str | None, Cause, int, Decision], None]

#: Server close codes that mean "come back": retried after ``base``, without growth.
QUICK_CLOSE_CODES = frozenset({1000, 1001})

_HISTORY = 16  # jitter history kept per view: previous delays of the last few attempt numbers


def _number(owner: str, name: str, value: object, *, positive: bool) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and positive:
        ok = value > 0  # type: ignore[operator]
    elif ok:
        ok = value >= 0  # type: ignore[operator]
    if not ok:
        kind = "a positive finite number" if positive else "a finite number >= 0"
        raise ConfigError(f"{owner}.{name} must be {kind}, not {value!r}")
    return float(value)  # type: ignore[arg-type]


def _count(owner: str, name: str, value: object) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ConfigError(f"{owner}.{name} must be a positive integer or None, not {value!r}")
    return value


def _codes(owner: str, name: str, value: Iterable[int]) -> frozenset[int]:
    try:
        codes = frozenset(value)
    except TypeError:
        raise ConfigError(f"{owner}.{name} must be a set of integers, not {value!r}") from None
    if not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise ConfigError(f"{owner}.{name} must hold integers only, not {sorted(map(repr, codes))}")
    return codes


class _HostBudget:
    """One host's schedule of reserved reconnect times (sorted; bounded, see :meth:`reserve`)."""

    __slots__ = ("limit", "window", "slots")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.slots: list[float] = []

    def reserve(self, at: float, now: float) -> float:
        """Reserve the first time ``>= at`` that keeps every ``window`` under ``limit``; return it.

        Invariant of ``slots``: any ``limit + 1`` consecutive slots span at
        least ``window``, i.e. no half-open interval ``[x, x + window)`` holds
        more than ``limit`` of them. Slots at or before ``now - window`` can no
        longer share a window with a new one (never earlier than ``now``) and
        are dropped, so the schedule holds only the recent past and the
        reservations still ahead.
        """
        slots, limit, window = self.slots, self.limit, self.window
        cut = bisect_right(slots, now - window)
        if cut:
            del slots[:cut]
        t = at
        while True:
            p = bisect_right(slots, t)
            after = len(slots) - p
            jump: float | None = None
            # every run of limit + 1 consecutive slots that would contain t:
            # k slots before it, limit - k after it
            for k in range(max(0, limit - after), min(limit, p) + 1):
                first = slots[p - k] if k else t
                last = slots[p + limit - k - 1] if k < limit else t
                if first + window > last:  # the run spans less than a window: t does not fit
                    # No time in [t, earliest + window) fits while the run's slots
                    # stay in one window, so jumping there skips no free slot.
                    earliest = slots[p - k] if k else slots[p]
                    jump = earliest + window if jump is None else max(jump, earliest + window)
            if jump is None:
                insort(slots, t)
                return t
            t = jump


class HostPolicy:
    """The governor's policy for connections to one host (from :meth:`Governor.for_host`).

    A :class:`~engine.policy.ReconnectPolicy`: put it in
    ``ConnectionSetup.policy``. It shares the host's attempt budget with every
    other view of that host, and keeps its own jitter history (one view per
    connection gives each connection its own decorrelated sequence).
    """

    __slots__ = ("governor", "host", "_budget", "_history")

    def __init__(self, governor: Governor, host: str | None, budget: _HostBudget | None) -> None:
        #: the governor that decides
        self.governor = governor
        #: the host whose budget this view spends (None: the governor's own, hostless budget)
        self.host = host
        self._budget = budget
        self._history: dict[int, float] = {}  # attempt -> the backoff delay granted at it

    def __repr__(self) -> str:
        return f"<HostPolicy {self.host!r} of {self.governor!r}>"

    def decide(self, cause: Cause, attempt: int) -> Decision:
        """Retry or give up after ``cause``; ``attempt`` is failures in a row (0: start over)."""
        return self.governor._decide(self, cause, attempt)


class Governor:
    """A reconnect policy shared by many connections (see the module doc).

    Args:
        base: the shortest backoff, and the quick retry's delay (seconds).
        cap: the longest backoff (``>= base``); Retry-After and the budget may
            push a delay beyond it.
        jitter: decorrelated jitter (on) or plain ``base * 2**attempt`` (off).
        max_attempts: give up after that many failures in a row (None: never).
        attempts_per_window: reconnects granted per host in any ``window``
            seconds (None: no budget).
        window: the budget's window, seconds.
        retry_after_cap: the longest a server's ``Retry-After`` may make a
            connection wait.
        quick_close_codes: server close codes retried after ``base``, no growth.
        fatal_close_codes: server close codes that give up.
        fatal_statuses: handshake HTTP statuses that give up.
        rng: the jitter's random source (seed it for replayable runs).
        clock: seconds, in the event loop's time base (``anyio.current_time``
            by default); read inside ``decide``, which runs in the event loop.
        on_decision: listeners called with ``(host, cause, attempt, decision)``
            after every decision (more with :meth:`on_decision`).

    Raises:
        ConfigError: an argument is out of range (negative window, zero
            attempts, ``cap < base``, ...).
    """

    __slots__ = (
        "base", "cap", "jitter", "max_attempts", "attempts_per_window", "window", "retry_after_cap",
        "quick_close_codes", "fatal_close_codes", "fatal_statuses", "_rng", "_clock", "_listeners",
        "_budgets", "_own",
    )  # fmt: skip

    def __init__(
        self,
        *,
        base: float = 0.5,
        cap: float = 30.0,
        jitter: bool = True,
        max_attempts: int | None = None,
        attempts_per_window: int | None = 10,
        window: float = 10.0,
        retry_after_cap: float = 300.0,
        quick_close_codes: Iterable[int] = QUICK_CLOSE_CODES,
        fatal_close_codes: Iterable[int] = FATAL_CLOSE_CODES,
        fatal_statuses: Iterable[int] = FATAL_STATUSES,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
        on_decision: Iterable[DecisionListener] = (),
    ) -> None:
        name = "Governor"
        self.base = _number(name, "base", base, positive=True)
        self.cap = _number(name, "cap", cap, positive=True)
        if self.cap < self.base:
            raise ConfigError(f"Governor.cap ({cap!r}) must be >= Governor.base ({base!r})")
        if not isinstance(jitter, bool):
            raise ConfigError(f"Governor.jitter must be True or False, not {jitter!r}")
        self.jitter = jitter
        self.max_attempts = _count(name, "max_attempts", max_attempts)
        self.attempts_per_window = _count(name, "attempts_per_window", attempts_per_window)
        self.window = _number(name, "window", window, positive=True)
        self.retry_after_cap = _number(name, "retry_after_cap", retry_after_cap, positive=False)
        self.quick_close_codes = _codes(name, "quick_close_codes", quick_close_codes)
        self.fatal_close_codes = _codes(name, "fatal_close_codes", fatal_close_codes)
        self.fatal_statuses = _codes(name, "fatal_statuses", fatal_statuses)
        both = self.quick_close_codes & self.fatal_close_codes
        if both:
            raise ConfigError(f"Governor: close codes {sorted(both)} cannot be both quick and fatal")
        if rng is not None and not isinstance(rng, random.Random):
            raise ConfigError(f"Governor.rng must be a random.Random, not {type(rng).__name__}")
        self._rng = rng if rng is not None else random.Random()
        if clock is not None and not callable(clock):
            raise ConfigError(f"Governor.clock must be callable (seconds as a float), not {clock!r}")
        self._clock: Callable[[], float] = clock if clock is not None else anyio.current_time
        listeners = (on_decision,) if callable(on_decision) else tuple(on_decision)
        if not all(callable(listener) for listener in listeners):
            raise ConfigError("Governor.on_decision must be callables (host, cause, attempt, decision)")
        self._listeners: list[DecisionListener] = list(listeners)
        self._budgets: dict[str | None, _HostBudget] = {}
        self._own = HostPolicy(self, None, self._budget(None))

    def __repr__(self) -> str:
        budget = f"{self.attempts_per_window}/{self.window:g} s" if self.attempts_per_window else "no budget"
        return f"Governor(base={self.base:g}, cap={self.cap:g}, jitter={self.jitter}, {budget})"

    # -- the policy ----------------------------------------------------------

    def for_host(self, host: str) -> HostPolicy:
        """A new policy view for one connection to ``host`` (the host's budget, its own jitter)."""
        if not isinstance(host, str) or not host:
            raise ConfigError(f"Governor.for_host needs a host name, not {host!r}")
        key = host.lower()
        return HostPolicy(self, key, self._budget(key))

    def decide(self, cause: Cause, attempt: int) -> Decision:
        """Retry or give up, on the governor's own budget (shared by all who use it directly).

        ``attempt`` is failures in a row before this one (0 after a healthy
        session: the backoff starts over).
        """
        return self._decide(self._own, cause, attempt)

    def fatal(self, cause: Cause) -> str | None:
        """Why ``cause`` is not worth retrying (a readable reason), or None."""
        return fatal_reason(cause, self.fatal_statuses, self.fatal_close_codes)

    # -- observation ---------------------------------------------------------

    def on_decision(self, listener: DecisionListener) -> Callable[[], None]:
        """Call ``listener(host, cause, attempt, decision)`` after every decision; returns an unsubscribe function."""
        if not callable(listener):
            raise ConfigError(f"Governor.on_decision needs a callable, not {listener!r}")
        self._listeners.append(listener)

        def unsubscribe() -> None:
            try:
                self._listeners.remove(listener)
            except ValueError:
                pass

        return unsubscribe

    @property
    def listeners(self) -> tuple[DecisionListener, ...]:
        """The decision listeners, in call order."""
        return tuple(self._listeners)

    def schedule(self, host: str | None) -> tuple[float, ...]:
        """``host``'s reserved reconnect times, oldest first (recent past and ahead; None: the governor's own)."""
        budget = self._budgets.get(host.lower() if isinstance(host, str) else host)
        return tuple(budget.slots) if budget is not None else ()

    def hosts(self) -> tuple[str, ...]:
        """The hosts that have a budget (every host ``for_host`` was called with)."""
        return tuple(h for h in self._budgets if h is not None)

    # -- inside --------------------------------------------------------------

    def _budget(self, key: str | None) -> _HostBudget | None:
        if self.attempts_per_window is None:
            return None
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = _HostBudget(self.attempts_per_window, self.window)
        return budget

    def _decide(self, view: HostPolicy, cause: Cause, attempt: int) -> Decision:
        attempt = attempt if isinstance(attempt, int) and attempt > 0 else 0
        decision = self._decision(view, cause, attempt)
        for listener in tuple(self._listeners):
            try:
                listener(view.host, cause, attempt, decision)
            except Exception:
                log.exception("a governor decision listener raised (ignored)")
        return decision

    def _decision(self, view: HostPolicy, cause: Cause, attempt: int) -> Decision:
        fatal = self.fatal(cause)
        if fatal is not None:
            return GiveUp(fatal, cause)
        if self.max_attempts is not None and attempt >= self.max_attempts:
            return GiveUp(f"{attempt} attempts failed in a row (max_attempts={self.max_attempts})", cause)
        notes: list[str] = []
        if isinstance(cause, ClosedByPeer) and cause.code in self.quick_close_codes:
            delay = self.base
            notes.append(f"quick retry after {cause.code}")
        else:
            delay = self._backoff(view, attempt)
            notes.append(f"backoff, attempt {attempt + 1}")
        self._remember(view, attempt, delay)
        retry_after = cause.retry_after if isinstance(cause, HandshakeRejection) else None
        if retry_after is not None and retry_after > delay:
            if retry_after > self.retry_after_cap:
                delay = self.retry_after_cap
                notes.append(f"Retry-After {retry_after:g} s capped to {delay:g} s")
            else:
                delay = retry_after
                notes.append(f"Retry-After {retry_after:g} s")
        budget = view._budget
        if budget is not None:
            now = self._clock()
            wanted = now + delay
            slot = budget.reserve(wanted, now)
            if slot > wanted:
                notes.append(f"host budget {budget.limit}/{budget.window:g} s: delayed {slot - wanted:.3f} s")
                delay = slot - now
        return Retry(delay, "; ".join(notes))

    def _backoff(self, view: HostPolicy, attempt: int) -> float:
        if not self.jitter:
            return min(self.cap, self.base * 2.0 ** min(attempt, 64))
        if attempt == 0:
            previous = self.base  # a healthy session (or the first loss): start over
        else:
            known = view._history.get(attempt - 1)
            # (unknown when the view is new to this connection: assume the plain curve)
            previous = known if known is not None else min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))
        return min(self.cap, self._rng.uniform(self.base, previous * 3.0))

    @staticmethod
    def _remember(view: HostPolicy, attempt: int, delay: float) -> None:
        history = view._history
        history.pop(attempt, None)
        history[attempt] = delay
        if len(history) > _HISTORY:
            del history[next(iter(history))]
