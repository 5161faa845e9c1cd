"""When each subscription of one connection is due its next data message.

A plain data structure, no clock of its own: callers pass ``now`` (from
``anyio.current_time()``). One connection's data task sleeps until
:meth:`Schedule.next_due`, then sends whatever :meth:`Schedule.pop_due` returns,
so there is no task or timer per message.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Due", "Schedule"]


@dataclass(slots=True)
class _Entry:
    due: float
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Due:
    """One data message to send now: which subscription, and its sequence number."""

    channel: str
    symbol: str
    seq: int


class Schedule:
    """Due times for ``(channel, symbol)`` subscriptions at ``rate`` messages/second each.

    A new subscription is due at once (the first message follows the ack), then
    every ``1 / rate`` seconds. ``seq`` counts that subscription's messages from
    1 and restarts when it is removed and added again. A subscription that fell
    a whole period behind (the connection was stalled or the sender blocked)
    skips the missed messages instead of sending a burst.
    """

    def __init__(self, rate: float) -> None:
        if not rate >= 0.0 or math.isinf(rate):
            raise ValueError(f"rate must be a finite number >= 0, not {rate!r}")
        self.period = 1.0 / rate if rate > 0.0 else math.inf
        self._entries: dict[tuple[str, str], _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> frozenset[tuple[str, str]]:
        """The current ``(channel, symbol)`` subscriptions."""
        return frozenset(self._entries)

    def add(self, channel: str, symbol: str, now: float) -> bool:
        """Subscribe; returns False (and changes nothing) if already subscribed."""
        key = (channel, symbol)
        if key in self._entries:
            return False
        self._entries[key] = _Entry(now)
        return True

    def remove(self, channel: str, symbol: str) -> bool:
        """Unsubscribe; returns False if it was not subscribed."""
        return self._entries.pop((channel, symbol), None) is not None

    def next_due(self) -> float | None:
        """The earliest due time, or None when nothing will ever be due."""
        if not self._entries or math.isinf(self.period):
            return None
        return min(entry.due for entry in self._entries.values())

    def pop_due(self, now: float) -> list[Due]:
        """Everything due at ``now``, each advanced to its next due time."""
        if math.isinf(self.period):
            return []
        due: list[Due] = []
        for (channel, symbol), entry in self._entries.items():
            if entry.due > now:
                continue
            entry.seq += 1
            due.append(Due(channel, symbol, entry.seq))
            entry.due += self.period
            if entry.due <= now:  # a whole period behind: skip, don't burst
                entry.due = now + self.period
        return due
