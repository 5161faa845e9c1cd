"""Per-subscription staleness: a quiet symbol on a busy connection is resubscribed alone.

A connection's traffic monitor (:mod:`engine.liveness`) only knows that
*something* arrives; one symbol can fall silent (the exchange lost that
subscription) while fifty others stream. With the setup's ``stream_of(message)
-> (channel, symbol) | None``, :class:`Freshness` stamps when each
``(channel, symbol)`` of one managed connection was last heard;
:func:`quiet` names the subscribed entries (``Subscription.stale_after``
set) with a symbol silent for longer than that since they were acked. The
manager resubscribes those alone, without touching the connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable

from engine.clock import Clock
from engine.ledger import Entry
from machines.subscription import SubState

__all__ = ["Freshness", "quiet"]

log = logging.getLogger("wirestate.manager")

Message = str | bytes
StreamOf = Callable[[Message], "tuple[str, str] | None"]

_SUBSCRIBED = SubState.SUBSCRIBED.value


class Freshness:
    """When each ``(channel, symbol)`` of one managed connection was last heard."""

    __slots__ = ("_stream_of", "_clock", "heard", "errors", "_where")

    def __init__(self, stream_of: StreamOf, clock: Clock, where: str) -> None:
        self._stream_of = stream_of
        self._clock = clock
        self._where = where
        self.heard: dict[Hashable, float] = {}
        #: messages ``stream_of`` raised on (counted, logged once)
        self.errors = 0

    def touch(self, message: Message) -> None:
        try:
            key = self._stream_of(message)
        except Exception:
            self.errors += 1
            if self.errors == 1:
                log.exception("%s: stream_of raised (counted in freshness.errors; logged once)", self._where)
            return
        if key is not None:
            self.heard[key] = self._clock()

    def last_heard(self, channel: str, symbol: str, since: float) -> float:
        """When ``(channel, symbol)`` was last heard, and not before ``since``."""
        heard = self.heard.get((channel, symbol))
        return since if heard is None or heard < since else heard


def quiet(freshness: Freshness, entries: Iterable[Entry], now: float) -> list[Entry]:
    """The subscribed entries with ``stale_after`` that have a symbol silent for longer than it."""
    found = []
    for entry in entries:
        limit = entry.sub.stale_after
        if limit is None or entry.state != _SUBSCRIBED:
            continue
        symbols = entry.sub.symbols or ("",)
        oldest = min(freshness.last_heard(entry.sub.channel, s, entry.since) for s in symbols)
        if now - oldest > limit:
            found.append(entry)
    return found
