"""The subscription ledger: every subscription the manager knows, its state and its connection.

One :class:`Entry` per subscription key; an entry *is* the model its
subscription machine (:mod:`machines.subscription`) drives. The ledger
answers "what should this connection be subscribed to" (its pending set,
sent again after every reconnect) and "where is this subscription"; it never
sends anything.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from engine.subscriptions import Subscription
from machines.subscription import SubscriptionModel, SubState

__all__ = ["Entry", "Ledger", "PENDING", "SETTLED"]

#: states whose subscription still has to be sent on its connection's next session
PENDING = frozenset({SubState.INACTIVE.value, SubState.RESUBSCRIBING.value, SubState.FAILED.value})
#: states that end a subscribe: acked or failed
SETTLED = frozenset({SubState.SUBSCRIBED.value, SubState.FAILED.value})

#: ``(entry, source, dest, trigger)`` after every subscription transition
Listener = Callable[["Entry", SubState, SubState, str], None]


class Entry(SubscriptionModel):
    """One subscription in the ledger, and its state machine's model."""

    def __init__(self, sub: Subscription, slot: str, group: str, listener: Listener | None) -> None:
        super().__init__()
        self.sub = sub
        self.slot = slot  # the logical id of the connection it lives on
        self.group = group  # the connection setup it belongs to
        self.error: str | None = None  # why it failed, when it did
        self.since = 0.0  # when it was last acked (the manager's clock)
        self._on_change = listener

    @property
    def sub_state(self) -> SubState:
        return SubState(self.state)

    def transitioned(self, source: Any, dest: Any, trigger: str, info: Any) -> None:
        if self._on_change is not None:
            self._on_change(self, source, dest, trigger)

    def fire_if(self, trigger: str, error: str | None = None) -> bool:
        """Fire ``trigger`` only if the state allows it (deliberately speculative)."""
        if not self.may_fire(trigger):
            return False
        if error is not None:
            self.error = error
        self.fire(trigger, error)
        return True


class Ledger:
    """Entries by key, and by connection."""

    __slots__ = ("_entries", "_by_slot", "_listener")

    def __init__(self, listener: Listener | None = None) -> None:
        self._entries: dict[Hashable, Entry] = {}
        self._by_slot: dict[str, dict[Hashable, Entry]] = {}
        self._listener = listener

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get(self, key: Hashable) -> Entry | None:
        return self._entries.get(key)

    def entries(self) -> Iterable[Entry]:
        return self._entries.values()

    def add(self, sub: Subscription, slot: str, group: str) -> Entry:
        """A new ``inactive`` entry on ``slot``; the caller checked the key is new."""
        entry = Entry(sub, slot, group, self._listener)
        self._entries[sub.key] = entry
        self._by_slot.setdefault(slot, {})[sub.key] = entry
        return entry

    def remove(self, entry: Entry) -> None:
        key = entry.sub.key
        self._entries.pop(key, None)
        on_slot = self._by_slot.get(entry.slot)
        if on_slot is not None:
            on_slot.pop(key, None)
            if not on_slot:
                del self._by_slot[entry.slot]

    def of_slot(self, slot: str) -> list[Entry]:
        return list(self._by_slot.get(slot, {}).values())

    def count(self, slot: str) -> int:
        return len(self._by_slot.get(slot, ()))

    def pending(self, slot: str) -> list[Entry]:
        """What ``slot`` has to send (again) on its next session."""
        return [e for e in self._by_slot.get(slot, {}).values() if e.state in PENDING]
