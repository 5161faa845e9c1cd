"""The book-sync machine: one per order-book symbol.

``unsynced`` (no book wanted yet, or dropped) → ``buffering`` (subscribed:
deltas are kept, bounded, until a snapshot arrives) → ``synced`` (the book is
exact; deltas apply in sequence) → ``resyncing`` (a gap, a checksum mismatch,
bad data or a buffer overflow made the book untrustworthy: it is cleared and
deltas are buffered again until a new snapshot). Fired on sync events only,
never per delta: a transition costs ~10 µs, a delta ~1 µs.
"""

from __future__ import annotations

import enum
from typing import Any

from machines.table import Table, TableModel

__all__ = ["BookState", "BOOK", "BookModel"]


class BookState(str, enum.Enum):
    """Where one symbol's book stands."""

    UNSYNCED = "unsynced"  # nothing wanted yet, or reset (unsubscribed, connection lost)
    BUFFERING = "buffering"  # waiting for the first snapshot; deltas buffered
    SYNCED = "synced"  # exact: deltas apply in sequence
    RESYNCING = "resyncing"  # was synced, lost continuity: cleared, waiting for a new snapshot

    def __str__(self) -> str:
        return self.value


_WAITING = [BookState.BUFFERING, BookState.RESYNCING]

TRANSITIONS: tuple[dict[str, Any], ...] = (
    {"trigger": "start", "source": BookState.UNSYNCED, "dest": BookState.BUFFERING},
    # a snapshot (from the stream or a REST fetch) makes the book exact; in
    # ``synced`` it replaces the book (exchanges resend full books at will)
    {"trigger": "snapshot", "source": [*_WAITING, BookState.SYNCED], "dest": BookState.SYNCED},
    {"trigger": "gap", "source": BookState.SYNCED, "dest": BookState.RESYNCING},
    {"trigger": "checksum_failed", "source": BookState.SYNCED, "dest": BookState.RESYNCING},
    {"trigger": "bad_data", "source": [*_WAITING, BookState.SYNCED], "dest": BookState.RESYNCING},
    {"trigger": "overflow", "source": _WAITING, "dest": BookState.RESYNCING},
    {"trigger": "reset", "source": [*_WAITING, BookState.SYNCED], "dest": BookState.UNSYNCED},
)

BOOK = Table("book", BookState, TRANSITIONS, BookState.UNSYNCED, "machines/book.py")


class BookModel(TableModel):
    """One symbol's sync state; the book driver keeps one per symbol."""

    table = BOOK
