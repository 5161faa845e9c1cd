"""Make-before-break rotation of one managed connection: matching what two connections deliver.

While a slot rotates (:mod:`machines.rotation`), its old connection and its
replacement both stream the same subscriptions. :class:`Twins` lets each
message through once: a message from one connection that the other already
delivered (and that was not matched yet) is a duplicate, swallowed and
counted. Matching is a multiset per connection, so a message an exchange
legitimately sends twice on one connection is still delivered twice. The
unmatched copies are bounded (oldest forgotten first, counted); everything
is dropped when the rotation settles.

The steps themselves (open the replacement, wait for it, cut over, close
the old one) are the fleet's (:mod:`engine.fleet`); this module holds the
per-slot state and the matching.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from machines.rotation import RotationModel, RotationState

__all__ = ["Rotation", "Twins"]

Message = str | bytes
Identity = Callable[[Message], Hashable | None]

_STEADY = RotationState.STEADY.value
#: unmatched copies kept per connection (at ~100k messages/s of overlap, a second's worth)
DEFAULT_LIMIT = 100_000


class Twins:
    """Each message of two connections delivered once (see the module doc)."""

    __slots__ = ("_identity", "_limit", "_unmatched", "duplicates", "forgotten")

    def __init__(self, identity: Identity | None, limit: int = DEFAULT_LIMIT) -> None:
        self._identity = identity
        self._limit = limit
        self._unmatched: dict[int, dict[Hashable, int]] = {}  # id(connection) -> copies not yet seen on the other
        #: copies swallowed because the other connection delivered them first
        self.duplicates = 0
        #: unmatched copies forgotten at the bound (their twins, if any come, are delivered again)
        self.forgotten = 0

    def admit(self, conn: Any, message: Message) -> bool:
        key = message if self._identity is None else self._identity(message)
        if key is None:
            return True  # "never a duplicate" (acks, per-connection replies)
        mine = id(conn)
        for other, copies in self._unmatched.items():
            if other != mine:
                count = copies.get(key)
                if count:
                    if count == 1:
                        del copies[key]
                    else:
                        copies[key] = count - 1
                    self.duplicates += 1
                    return False
        copies = self._unmatched.setdefault(mine, {})
        copies[key] = copies.get(key, 0) + 1
        if len(copies) > self._limit:
            del copies[next(iter(copies))]
            self.forgotten += 1
        return True

    def clear(self) -> None:
        self._unmatched.clear()


class Rotation(RotationModel):
    """One slot's rotation: its machine, its matcher while it rotates, and counts."""

    def __init__(
        self, slot_id: str, identity: Identity | None, listener: Callable[[Any, Any, str, Any], None] | None = None
    ) -> None:
        super().__init__(listener)
        self.slot_id = slot_id
        self._identity = identity
        self.twins: Twins | None = None
        #: rotations completed / abandoned (the old connection carried on)
        self.completed = 0
        self.aborted = 0
        #: duplicates swallowed over every rotation so far
        self.duplicates = 0

    def admit(self, conn: Any, message: Message) -> bool:
        """Deliver this message? (Always, unless a rotation is under way and it is a twin.)"""
        if self.state == _STEADY:
            return True
        twins = self.twins
        return twins is None or twins.admit(conn, message)

    def transitioned(self, source: Any, dest: Any, trigger: str, info: Any) -> None:
        super().transitioned(source, dest, trigger, info)
        if trigger == "begin":
            self.twins = Twins(self._identity)
        elif dest == _STEADY:
            twins, self.twins = self.twins, None
            if twins is not None:
                self.duplicates += twins.duplicates
            if trigger == "settled":
                self.completed += 1
            else:
                self.aborted += 1
