"""A session's send queue: frames go out whole, one at a time, in priority order.

Three priorities: :attr:`Priority.CONTROL` (pongs, close frames, keepalive
pings, and whatever the connector sends while logging in) before
:attr:`Priority.SUBSCRIPTION` (what the subscriber sends) before
:attr:`Priority.NORMAL`; first come first served within one. Uncontended the
queue is a flag (no checkpoint, no allocation); a waiter is handed the turn
directly on release, so a sender that loops cannot starve the reader's
pongs. The queue is bounded (:class:`~engine.errors.SendQueueFull` past
``max_queued`` waiting senders) and when the session ends every waiting
sender fails with :class:`~engine.errors.ConnectionLost` (the frame was not
sent): none vanishes silently.
"""

from __future__ import annotations

import enum
import heapq

import anyio

from engine.errors import ConnectionLost, SendQueueFull

__all__ = ["Priority", "SendQueue", "priority_in"]


class Priority(enum.IntEnum):
    """Which frames go first when several wait."""

    CONTROL = 0
    SUBSCRIPTION = 1
    NORMAL = 2


# What the connector sends while logging in goes first, then the subscriber's.
_BY_STATE = {"authenticating": Priority.CONTROL, "subscribing": Priority.SUBSCRIPTION}


def priority_in(state: str) -> Priority:
    """The default priority of a send made while the connection is in ``state`` (its value)."""
    return _BY_STATE.get(state, Priority.NORMAL)


class _Turn:
    __slots__ = ("priority", "seq", "event", "waiting")

    def __init__(self, priority: int, seq: int) -> None:
        self.priority = priority
        self.seq = seq
        self.event = anyio.Event()
        self.waiting = True  # False once cancelled (left in the heap, skipped on release)

    def __lt__(self, other: _Turn) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)


class SendQueue:
    """Turns to write, by priority (see the module doc)."""

    __slots__ = ("busy", "max_queued", "_heap", "_seq", "_waiting", "_closed")

    def __init__(self, max_queued: int = 10_000) -> None:
        self.busy = False
        self.max_queued = max_queued
        self._heap: list[_Turn] = []
        self._seq = 0
        self._waiting = 0
        self._closed: str | None = None  # why the queue no longer takes turns

    @property
    def free(self) -> bool:
        """Nobody holds or waits for a turn, and the queue is open: a frame may go at once."""
        return not self.busy and self._closed is None

    @property
    def closed(self) -> bool:
        """The session is over: every send fails with :class:`ConnectionLost`."""
        return self._closed is not None

    @property
    def waiting(self) -> int:
        """Senders waiting for their turn."""
        return self._waiting

    async def acquire(self, priority: int = Priority.NORMAL) -> None:
        """Wait for this sender's turn (raises when the queue is full or closed)."""
        if self._closed is not None:
            raise ConnectionLost(self._closed)
        if not self.busy:
            self.busy = True
            return
        if self._waiting >= self.max_queued:
            raise SendQueueFull(f"{self._waiting} sends are already waiting (max_queued={self.max_queued})")
        self._seq += 1
        turn = _Turn(priority, self._seq)
        heapq.heappush(self._heap, turn)
        self._waiting += 1
        try:
            await turn.event.wait()
        except BaseException:
            if turn.waiting:  # still queued: give the place up
                turn.waiting = False
                self._waiting -= 1
            elif self._closed is None:
                self.release()  # it was handed to us as we were cancelled: pass it on
            raise
        if self._closed is not None:
            raise ConnectionLost(self._closed)

    def release(self) -> None:
        """End this sender's turn; the next waiter (by priority) gets it directly."""
        if self._closed is not None:
            return
        heap = self._heap
        while heap:
            turn = heapq.heappop(heap)
            if turn.waiting:
                turn.waiting = False
                self._waiting -= 1
                turn.event.set()  # stays busy: the turn moves to this sender
                return
        self.busy = False

    def close(self, why: str = "the session ended before this frame was sent") -> None:
        """Fail every waiting sender (and every later one) with :class:`ConnectionLost` saying ``why``."""
        self._closed = why
        heap, self._heap = self._heap, []
        self._waiting = 0
        for turn in heap:
            if turn.waiting:
                turn.waiting = False
                turn.event.set()
