"""What a connection makes observable: its transitions, as they happen.

A bounded history, listeners called on every :class:`StateChanged` (a
listener that raises is logged, never breaks the connection), and a wake-up
for tasks waiting on a condition (no polling: one event per wait, set on the
next transition).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import anyio

from engine.events import StateChanged

__all__ = ["StateListener", "Transitions"]

log = logging.getLogger("wirestate.connection")

StateListener = Callable[[StateChanged], None]
_HISTORY = 256


class Transitions:
    """The transition trail of one connection slot."""

    __slots__ = ("owner", "history", "listeners", "count", "_changed")

    def __init__(self, owner: str, listeners: Iterable[StateListener] = ()) -> None:
        self.owner = owner
        #: the most recent transitions (at most ~2 x 256; a list: an empty deque is 0.6 KiB)
        self.history: list[StateChanged] = []
        self.listeners: list[StateListener] = list(listeners)
        #: transitions recorded so far (a mark for :meth:`since`)
        self.count = 0
        # An anyio Event needs a running loop and costs ~0.6 KiB: made by the first wait.
        self._changed: anyio.Event | None = None

    def record(self, event: StateChanged) -> None:
        """Keep ``event``, wake waiters, log it at INFO, tell the listeners."""
        history = self.history
        history.append(event)
        self.count += 1
        if len(history) > 2 * _HISTORY:
            del history[:-_HISTORY]
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()
        if log.isEnabledFor(logging.INFO):
            log.info("%s", event)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                log.exception("%s: state listener failed", self.owner)

    def since(self, mark: int) -> list[StateChanged]:
        """The transitions recorded after :attr:`count` was ``mark`` (as far as history reaches)."""
        newer = self.count - mark
        return self.history[-newer:] if newer > 0 else []

    def subscribe(self, listener: StateListener) -> Callable[[], None]:
        """Add a listener; returns the function that removes it."""
        self.listeners.append(listener)
        return lambda: self.listeners.remove(listener) if listener in self.listeners else None

    async def next_change(self) -> None:
        """Return after the next transition."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()
