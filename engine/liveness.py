"""Traffic deadlines for one session: keepalive ping, silence, and the grace after it.

Exact deadlines from the injected clock, no polling task: the reader waits
for each read until :meth:`Liveness.due`, and asks :meth:`Liveness.expired`
what to do when that passes. Only *complete frames* count as traffic (the
reader moves ``last_rx``): a peer that drips one frame a byte at a time is
silent, and a frame that takes longer than ``traffic_timeout`` plus
``pong_timeout`` to arrive ends the session.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from engine.errors import ConfigError

__all__ = ["AppPing", "Liveness", "Expiry"]


def _payload(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if attribute.name == "reply" and value is None:
        return
    if not isinstance(value, (str, bytes)) or not value:
        raise ConfigError(f"AppPing.{attribute.name} must be a non-empty str (text) or bytes (binary), not {value!r}")


def _interval(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf")):
        raise ConfigError(f"AppPing.interval must be a positive number of seconds or None, not {value!r}")


@attrs.frozen
class AppPing:
    """An application-level ping, for exchanges that want one (OKX: the text ``"ping"``, answered ``"pong"``).

    ``message`` is sent (as text for ``str``, binary for ``bytes``) instead of
    a protocol ping after ``interval`` seconds without a complete frame (None:
    half the traffic timeout, like the protocol keepalive), and as the probe
    when the connection turns stale. A message equal to ``reply`` is traffic
    like any other frame but is not handed to the handler.
    """

    message: str | bytes = attrs.field(validator=_payload)
    interval: float | None = attrs.field(default=None, validator=_interval)
    reply: str | bytes | None = attrs.field(default=None, validator=_payload)


class Expiry(enum.Enum):
    """What the reader does when :meth:`Liveness.due` passed with nothing received."""

    KEEPALIVE = "keepalive"  # send a ping, keep waiting (still live)
    SILENCE = "silence"  # live -> stale, send a ping, wait for the grace
    LOST = "lost"  # stale and the grace passed: the session is over
    IDLE = "idle"  # not live (setting up or closing): another bound applies; wait on


class Liveness:
    """Deadline bookkeeping; the state (live or stale) stays in the machine.

    With ``keepalive`` a ping goes out after ``timeout / 2`` of silence, so a
    quiet but healthy peer answers it before the deadline; one ping per
    quiet spell.
    """

    __slots__ = ("timeout", "grace", "keepalive", "pinged_at", "stale_until")

    def __init__(self, timeout: float, grace: float, keepalive: bool, every: float | None = None) -> None:
        self.timeout = timeout
        self.grace = grace
        self.keepalive = (every if every is not None else timeout / 2) if keepalive else None
        self.pinged_at: float | None = None  # the last_rx value our keepalive ping followed
        self.stale_until = 0.0  # grace deadline, meaningful while the machine is stale

    def due(self, last_rx: float, stale: bool) -> float:
        """When the next read gives up waiting."""
        if stale:
            return self.stale_until
        keepalive = self.keepalive
        if keepalive is not None and self.pinged_at != last_rx:
            return last_rx + keepalive
        return last_rx + self.timeout

    def expired(self, last_rx: float, now: float, *, live: bool, stale: bool) -> Expiry:
        """The deadline passed with no complete frame; what now (and note it)."""
        if stale:
            return Expiry.LOST
        if self.keepalive is not None and self.pinged_at != last_rx:
            self.pinged_at = last_rx  # keepalive (or, while setting up, a probe); then the full timeout
            return Expiry.KEEPALIVE
        if live:
            self.stale_until = now + self.grace
            return Expiry.SILENCE
        return Expiry.IDLE
