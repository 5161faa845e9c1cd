"""Sequence rules: does a delta follow the book, is it older than the book, or is there a gap?

A rule answers one question per delta, :meth:`SequenceRule.check`, with one of
:data:`APPLY`, :data:`STALE` (older than the book: dropped and counted, not a
gap; after a REST snapshot the buffered deltas it already contains are
stale) or :data:`GAP` (the symbol resyncs). ``last`` is the book's sequence
(the snapshot's ``seq``, then each applied delta's ``seq``); ``bridged`` is False for
the first delta after a snapshot, where some exchanges allow an overlap.

When the book has no sequence (``last`` is None: a snapshot without one)
every rule applies the delta and takes its ``seq`` as the book's sequence.
A delta's ``first_seq``..``seq`` is the range of update ids it covers
(Binance ``U``..``u``; ``first_seq`` None: just ``seq``), ``prev_seq`` the id it
follows (OKX ``prevSeqId``) — the fields of :class:`engine.events.BookUpdate`.

The rules (each a small frozen object; write your own with the same method):

- :class:`Binance`: first delta after the snapshot ``U <= last+1 <= u``, then
  ``U == last+1``; ``u <= last`` is stale. Binance spot diff depth, and
  Gate.io's REST-snapshot flows (``U``/``u`` against the book id).
- :class:`Strict`: every delta ``U == last+1`` (``U`` is ``last`` for
  exchanges with one number per message); ``u <= last`` is stale. Gate.io
  ``spot.obu`` (``U == local+1``), Bybit/Kraken-style single counters.
- :class:`Linked`: every delta names its predecessor, ``prev == last``
  (OKX ``prevSeqId``, Binance futures ``pu``); ``u <= last`` is stale.
- :class:`Unchecked`: everything applies (exchanges without sequence numbers,
  where a checksum is the only integrity check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from engine.events import BookUpdate

__all__ = ["APPLY", "GAP", "STALE", "Binance", "Linked", "SequenceRule", "Strict", "Unchecked"]

APPLY: Final = 0
STALE: Final = 1
GAP: Final = 2


class SequenceRule(Protocol):
    """Decides where a delta stands against the book's sequence."""

    def check(self, delta: BookUpdate, last: int | None, bridged: bool) -> int:
        """:data:`APPLY`, :data:`STALE` or :data:`GAP` for ``delta`` on a book at ``last``."""
        ...


@dataclass(frozen=True, slots=True)
class Binance:
    """``U <= last+1 <= u`` for the first delta after the snapshot, ``U == last+1`` after it."""

    def check(self, delta: BookUpdate, last: int | None, bridged: bool) -> int:
        end = delta.seq
        if last is None or end is None:
            return APPLY if last is None else GAP
        if end <= last:
            return STALE
        start = delta.first_seq if delta.first_seq is not None else end
        if bridged:
            return APPLY if start == last + 1 else GAP
        return APPLY if start <= last + 1 else GAP  # (last + 1 <= end holds: end > last)


@dataclass(frozen=True, slots=True)
class Strict:
    """Every delta starts right after the book: ``U == last+1`` (``U`` defaults to ``u``)."""

    def check(self, delta: BookUpdate, last: int | None, bridged: bool) -> int:
        end = delta.seq
        if last is None or end is None:
            return APPLY if last is None else GAP
        if end <= last:
            return STALE
        start = delta.first_seq if delta.first_seq is not None else end
        return APPLY if start == last + 1 else GAP


@dataclass(frozen=True, slots=True)
class Linked:
    """Every delta names the one before it: ``prev == last``."""

    def check(self, delta: BookUpdate, last: int | None, bridged: bool) -> int:
        if last is None:
            return APPLY
        end = delta.seq
        if delta.prev_seq == last:
            return APPLY
        if end is not None and end <= last:
            return STALE
        return GAP


@dataclass(frozen=True, slots=True)
class Unchecked:
    """No sequence check: every delta applies."""

    def check(self, delta: BookUpdate, last: int | None, bridged: bool) -> int:
        return APPLY
