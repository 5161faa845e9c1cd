"""Events of the book driver: a book lost continuity (Gap), a book is exact again (BookResynced).

Frozen, slotted dataclasses, like :class:`engine.events.StateChanged`; they
are produced only on sync events (never per delta), so their cost does not
matter. Each carries ``at``: the injected clock's time of the message (or
fetch) that caused it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BookResynced", "Gap", "GapReason"]

#: why a book lost continuity
GapReason = str  # "sequence" | "checksum" | "overflow" | "bad_data"


@dataclass(frozen=True, slots=True)
class Gap:
    """One symbol's book can no longer be trusted; it is cleared and resyncs.

    ``reason``: ``"sequence"`` (a delta does not follow the last one under the
    sequence rule: ``expected`` is the book's last sequence, ``first``/``last``
    the delta's range), ``"checksum"`` (the exchange's checksum differs from the
    book's: ``expected`` is the exchange's value, ``last`` ours), ``"overflow"``
    (more deltas than ``buffer_limit`` arrived before the snapshot: ``last`` is
    how many were dropped), or ``"bad_data"`` (a level the book cannot take;
    ``detail`` says which). ``resubscribe`` tells the caller that the exchange
    needs a resubscribe to send a new snapshot (``BookConfig.resubscribe``).
    """

    symbol: str
    reason: GapReason
    at: float
    expected: int | None = None
    first: int | None = None
    last: int | None = None
    detail: str = ""
    resubscribe: bool = False

    def __str__(self) -> str:
        why = f" ({self.detail})" if self.detail else ""
        return f"[{self.at:10.3f}] {self.symbol}: book gap, {self.reason}{why}"


@dataclass(frozen=True, slots=True)
class BookResynced:
    """One symbol's book is exact again after a :class:`Gap`: a snapshot was applied
    and the deltas buffered meanwhile followed it. ``since`` is the time of the gap,
    ``sequence`` where the book is now, ``resyncs`` how many this symbol has had."""

    symbol: str
    reason: GapReason
    since: float
    at: float
    sequence: int | None
    resyncs: int

    def __str__(self) -> str:
        return f"[{self.at:10.3f}] {self.symbol}: book resynced after {self.reason} ({self.at - self.since:.3f} s)"
