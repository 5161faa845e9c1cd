"""Subscribing: the part of :class:`~engine.manager.Manager` that adds, removes and resends subscriptions.

Subscriptions go on spare capacity first, then on new connections to the
same URL (:meth:`Subscribing.subscribe`); :meth:`Subscribing.flush` sends only
the difference between each setup's generated set and the ledger; failed
ones are asked again on their own connection. A subscription that went quiet
or whose book needs a new snapshot is resubscribed alone on its live socket.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import anyio

from engine.config import WebsocketSetup
from engine.errors import (
    ConnectionClosed,
    DuplicateSubscription,
    NotConnected,
    RequestTimeout,
    SubscriptionFailed,
    SubscriptionNotFound,
    WirestateError,
)
from engine.fleet import Fleet
from engine.ledger import SETTLED, Entry, Ledger
from engine.slots import Group, Slot, send_subscribe, send_unsubscribe
from engine.subscriptions import Subscription, listed, names, repeated
from machines.manager import ManagerModel, ManagerState
from machines.subscription import SubState

__all__ = ["Subscribing"]

log = logging.getLogger("wirestate.manager")

_FAILED = SubState.FAILED.value


class Subscribing:
    """Subscribe, unsubscribe, flush (a base of Manager; it holds no state of its own)."""

    __slots__ = ()

    # what it uses of the manager
    setup: WebsocketSetup
    _model: ManagerModel
    _ledger: Ledger
    _fleet: Fleet

    @property
    def state(self) -> ManagerState:  # (the manager's; declared here for the messages below)
        raise NotImplementedError

    async def _next_change(self) -> None:
        """Wait for any connection or subscription change (the manager's)."""
        raise NotImplementedError

    def _place(self, group: Group, subs: list[Subscription]) -> dict[str, list[Entry]]:
        """Spare capacity first, then new connections; returns the new entries by slot."""
        placed: dict[str, list[Entry]] = {}
        capacity = group.capacity
        for sub in subs:
            slot = next(
                (s for s in group.slots if s.enabled and (capacity is None or self._ledger.count(s.id) < capacity)),
                None,
            )
            if slot is None:
                slot = self._fleet.new_slot(group)
            placed.setdefault(slot.id, []).append(self._ledger.add(sub, slot.id, group.name))
        return placed

    async def subscribe(
        self, subs: Iterable[Subscription], *, group: str | None = None, wait: bool = True, timeout: float | None = None
    ) -> None:
        """Add subscriptions (to setup ``group``, default the first that takes subscriptions).

        Raises :class:`DuplicateSubscription` (nothing added) if a key is
        already in the ledger or repeated; a key whose subscribe *failed* is
        sent again instead (on its connection). With ``wait`` it returns once each
        is acked, raising :class:`SubscriptionFailed` naming the rejected ones
        or :class:`RequestTimeout` naming the unanswered ones after ``timeout``
        (default: the setup's open + setup timeouts).
        """
        subs = listed(subs)
        if not subs:
            return
        if self._model.state not in (ManagerState.STARTING.value, ManagerState.RUNNING.value):
            raise WirestateError(f"subscribe while the manager is {self.state.value}")
        keys = [s.key for s in subs]
        dupes = repeated(keys, self._ledger)
        failed = [e for e in map(self._ledger.get, dict.fromkeys(dupes)) if e is not None and e.state == _FAILED]
        if failed and len(failed) == len(dupes):  # (only failed ones, each once: asked again)
            retried = {e.sub.key for e in failed}
            await self._retry(failed, wait=wait, timeout=timeout)
            subs = [s for s in subs if s.key not in retried]
            if not subs:
                return
            dupes = ()
        if dupes:
            raise DuplicateSubscription(f"already subscribed: {names(subs, dupes)}", dupes)
        kinds = {s.authenticated for s in subs}
        if group is None and len(kinds) > 1:
            # private ones go to the authenticated setup: one call per kind
            await self.subscribe([s for s in subs if s.authenticated], wait=wait, timeout=timeout)
            await self.subscribe([s for s in subs if not s.authenticated], wait=wait, timeout=timeout)
            return
        chosen = self._fleet.group(group, kinds.pop() if kinds else False)
        placed = self._place(chosen, subs)
        await self._send_on_slots(placed)
        if wait:
            bound = timeout if timeout is not None else chosen.setup.open_timeout + chosen.setup.setup_timeout
            await self._settle([e for entries in placed.values() for e in entries], bound)

    async def _send_on_slots(self, by_slot: dict[str, list[Entry]]) -> None:
        """Subscribe each slot's entries on it now, concurrently (a slot not streaming sends them on connect)."""
        async with anyio.create_task_group() as tg:
            for slot_id, entries in by_slot.items():
                slot = self._fleet.slots.get(slot_id)
                if slot is not None and slot.streaming and slot.group.setup.subscriber is not None:
                    tg.start_soon(send_subscribe, slot.conn, entries, slot.group.setup.subscriber)

    async def _retry(self, entries: list[Entry], *, wait: bool, timeout: float | None) -> None:
        """Send failed subscriptions again on their connections."""
        by_slot: dict[str, list[Entry]] = {}
        for entry in entries:
            by_slot.setdefault(entry.slot, []).append(entry)
        await self._send_on_slots(by_slot)
        if wait:
            setups = [self._fleet.slots[s].group.setup for s in by_slot if s in self._fleet.slots]
            bound = max((u.open_timeout + u.setup_timeout for u in setups), default=0.0)
            await self._settle(entries, timeout if timeout is not None else bound)

    async def _settle(self, entries: list[Entry], bound: float) -> None:
        with anyio.move_on_after(bound):
            while not all(e.state in SETTLED for e in entries):
                await self._next_change()
        failed = tuple(e.sub.key for e in entries if e.state == SubState.FAILED.value)
        if failed:
            errors = "; ".join(f"{e.sub}: {e.error}" for e in entries if e.state == SubState.FAILED.value)
            raise SubscriptionFailed(f"subscribe failed: {errors}", failed)
        late = tuple(e.sub.key for e in entries if e.state not in SETTLED)
        if late:
            raise RequestTimeout(f"no subscribe ack within {bound:g} s for {names([e.sub for e in entries], late)}")

    async def unsubscribe(self, subs: Iterable[Subscription]) -> None:
        """Remove subscriptions (all must be in the ledger: else :class:`SubscriptionNotFound`, nothing removed).

        Subscribed ones are unsubscribed through the setup's unsubscriber; a
        connection left without subscriptions closes with 1000 and is not redialled.
        """
        subs = listed(subs)
        missing = tuple(s.key for s in subs if s.key not in self._ledger)
        if missing:
            raise SubscriptionNotFound(f"not subscribed: {names(subs, missing)}", missing)
        by_slot: dict[str, list[Entry]] = {}
        for sub in subs:
            entry = self._ledger.get(sub.key)
            assert entry is not None
            by_slot.setdefault(entry.slot, []).append(entry)
        for slot_id, entries in by_slot.items():
            slot = self._fleet.slots.get(slot_id)
            empties = slot is not None and self._ledger.count(slot_id) == len(entries)
            with anyio.move_on_after(slot.group.setup.setup_timeout if slot is not None else 0):
                while not all(e.state not in (SubState.SUBSCRIBING.value,) for e in entries):
                    await self._next_change()  # a subscribe in flight settles first
            if slot is not None and slot.streaming and not empties:
                try:
                    await send_unsubscribe(slot.conn, entries, slot.group.setup.unsubscriber)
                except (NotConnected, ConnectionClosed):
                    pass  # the socket is gone, and with it the exchange's subscriptions
            for entry in entries:
                entry.fire_if("drop")
                self._ledger.remove(entry)
            if slot is not None and empties and not slot.group.setup.subscriptions_not_required:
                await self._fleet.retire(slot, "no subscriptions left")

    async def flush(self, *, wait: bool = True) -> None:
        """Diff each setup's ``generatelisted()`` against the ledger; send only the difference."""
        for group in self._fleet.groups.values():
            generate = group.setup.generate_subscriptions
            if generate is None or group.setup.subscriptions_not_required:
                continue
            desired = {s.key: s for s in listed(generate())}
            if not self.setup.use_multi_connection_management:
                # single style: one generator for all; each connection takes its kind
                desired = {k: s for k, s in desired.items() if s.authenticated == group.setup.authenticated}
            mine = [e for e in self._ledger.entries() if e.group == group.name]
            actual = {e.sub.key: e.sub for e in mine}
            gone = [sub for key, sub in actual.items() if key not in desired]
            new = [sub for key, sub in desired.items() if key not in actual]
            failed = [e for e in mine if e.state == _FAILED and e.sub.key in desired]
            if gone:
                await self.unsubscribe(gone)
            if failed:
                await self._retry(failed, wait=wait, timeout=None)  # (refused before: asked again)
            if new:
                await self.subscribe(new, group=group.name, wait=wait)

    # -- resubscribing on a live socket (quiet subscriptions, book resyncs) and catching up --

    async def _resubscribe_alone(self, slot: Slot, entries: list[Entry], why: str) -> None:
        """Unsubscribe (best effort) and subscribe again ``entries`` (already ``resubscribing``) on ``slot``."""
        conn, setup = slot.conn, slot.group.setup
        log.warning("%s: resubscribing (%s) %s", slot.id, why, ", ".join(str(e.sub) for e in entries))
        try:
            if setup.unsubscriber is not None:
                try:
                    await setup.unsubscriber(conn, [e.sub for e in entries])
                except (NotConnected, ConnectionClosed):
                    raise
                except Exception as exc:
                    log.info("%s: unsubscribe before resubscribing failed (%s); subscribing anyway", slot.id, exc)
            assert setup.subscriber is not None
            await send_subscribe(conn, [e for e in entries if e.state == SubState.RESUBSCRIBING.value], setup.subscriber)
        except (NotConnected, ConnectionClosed):
            pass  # the connection dropped: its next session sends them (they are resubscribing)

    async def _catch_up(self, slot: Slot) -> None:
        subscriber = slot.group.setup.subscriber
        if subscriber is not None and slot.streaming:
            try:
                await send_subscribe(slot.conn, self._ledger.pending(slot.id), subscriber)
            except (NotConnected, ConnectionClosed):
                pass  # the next session sends them
