"""A manager's fleet: its connection setups (groups), their connections (slots), and their tasks.

The fleet makes, starts, stops and retires connections; it does not decide
what they subscribe to (the manager and its ledger do). Every connection runs
in the manager's task group; a slot keeps its logical id across reconnects,
restarts and URL changes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import anyio
import anyio.abc
import attrs

from engine.causes import GiveUp
from engine.clock import Clock, loop_clock
from engine.config import ConnectionSetup, WebsocketSetup
from engine.connection import Connection
from engine.delivery import Streams
from engine.errors import ConfigError, WirestateError
from engine.events import StateChanged
from engine.freshness import Freshness
from engine.ledger import Ledger
from engine.policy import is_fatal
from engine.rotation import Rotation
from engine.slots import Group, Slot, send_subscribe, slot_setup
from engine.subscriptions import Subscription
from machines.connection import State
from engine.dialing import default_dialer
from transports.base import URL, ByteStream, Dialer

__all__ = ["Fleet"]

log = logging.getLogger("wirestate.manager")


class Fleet:
    """Groups and slots of one manager (see the module doc)."""

    def __init__(
        self,
        ws: WebsocketSetup,
        ledger: Ledger,
        listener: Callable[[StateChanged, Connection], None],
        *,
        dialer: Dialer | None,
        clock: Clock | None,
        rng: random.Random | None,
        governor: Any,
        streams: Streams,
    ) -> None:
        self.ws = ws
        self.groups: dict[str, Group] = {}
        self.slots: dict[str, Slot] = {}
        self.tg: anyio.abc.TaskGroup | None = None  # the manager's, while it runs
        self._ledger = ledger
        self._listener = listener
        self._dialer = dialer
        self._dialing: anyio.Semaphore | None = None  # bounds simultaneous dials (WebsocketSetup.max_dialing)
        self._clock = clock
        self._rng = rng
        self._governor = governor
        self.streams = streams  # the manager's: every connection's typed events go there

    def add(self, setup: ConnectionSetup, name: str | None) -> str:
        """Add a setup under ``name``; returns the name."""
        name = name or setup.name or f"conn{len(self.groups) + 1}"
        if name in self.groups:
            raise ConfigError(f"a connection setup named {name!r} was already added")
        self.groups[name] = Group.complete(name, setup, self.ws)
        return name

    def group(self, name: str | None, authenticated: bool = False) -> Group:
        """The setup called ``name``, or the first that takes (public or private) subscriptions."""
        if name is not None:
            try:
                return self.groups[name]
            except KeyError:
                raise ConfigError(f"no connection setup named {name!r} (have {sorted(self.groups)})") from None
        for candidate in self.groups.values():
            if not candidate.setup.subscriptions_not_required and candidate.setup.authenticated == authenticated:
                return candidate
        kind = "an authenticated" if authenticated else "a public"
        raise ConfigError(f"no connection setup takes subscriptions on {kind} connection")

    def connection(self, connection_id: str) -> Connection:
        """The Connection behind a logical id."""
        try:
            return self.slots[connection_id].conn
        except KeyError:
            raise WirestateError(f"no connection {connection_id!r} (have {sorted(self.slots)})") from None

    # -- making and running connections -----------------------------------------

    def _connection(self, slot: Slot, moved: dict[Hashable, Subscription] | None = None) -> Connection:
        conn: Connection | None = None

        def hear(event: StateChanged) -> None:
            assert conn is not None
            if event.trigger == "subscribed" and conn is slot.conn and slot.rotation is not None:
                self._arm_rotation(slot, conn, event.at + (slot.group.setup.rotate_after or 0.0))
            self._listener(event, conn)

        setup = slot_setup(slot, self._ledger, (hear,), moved)
        if setup.policy is None and self._governor is not None:
            # connections to one host share that host's attempt budget
            setup = attrs.evolve(setup, policy=self._governor.for_host(setup.parsed_url.host))
        conn = Connection(setup, dialer=self._metered_dialer(setup), clock=self._clock, id=slot.id, rng=self._rng, streams=self.streams)
        return conn

    def _metered_dialer(self, setup: ConnectionSetup) -> Dialer:
        """The connection's dialer, at most ``max_dialing`` of the fleet's dials at a time."""
        inner = self._dialer if self._dialer is not None else default_dialer(setup.ssl_context)

        async def dial(url: URL) -> ByteStream:
            if self._dialing is None:
                self._dialing = anyio.Semaphore(self.ws.max_dialing)  # (made in the loop, on first use)
            async with self._dialing:
                return await inner(url)

        return dial

    def new_slot(self, group: Group) -> Slot:
        """A new connection of ``group``, started (it dials in the background)."""
        assert self.tg is not None, "connections run while the manager runs"
        slot = Slot(group.new_slot_id(), group)
        setup = group.setup
        if setup.rotate_after is not None:
            slot.rotation = Rotation(slot.id, setup.message_identity, self._rotation_logger(slot))
        if setup.stream_of is not None:
            slot.freshness = Freshness(setup.stream_of, self._clock or loop_clock(), slot.id)
        slot.conn = self._connection(slot)
        group.slots.append(slot)
        self.slots[slot.id] = slot
        self.tg.start_soon(slot.conn.run)  # (no wrapper: its frame would live as long as the connection)
        return slot

    async def retire(self, slot: Slot, reason: str) -> None:
        """Close ``slot`` with 1000 and forget it: it is not redialled."""
        slot.enabled = False
        self.slots.pop(slot.id, None)
        if slot in slot.group.slots:
            slot.group.slots.remove(slot)
        await self._close_slot(slot, 1000, reason)

    async def _close_slot(self, slot: Slot, code: int = 1000, reason: str = "") -> None:
        if slot.timer is not None:
            slot.timer.cancel()
        async with anyio.create_task_group() as tg:
            tg.start_soon(slot.conn.close, code, reason)
            if slot.successor is not None:
                tg.start_soon(slot.successor.close, code, reason)

    async def close_all(self) -> None:
        """Close every connection (1000), concurrently, each bounded by its close_timeout."""
        async with anyio.create_task_group() as tg:
            for slot in list(self.slots.values()):
                tg.start_soon(self._close_slot, slot)

    # -- make-before-break rotation -------------------------------------------------

    def _rotation_logger(self, slot: Slot) -> Callable[[Any, Any, str, Any], None]:
        def hear(source: Any, dest: Any, trigger: str, info: Any) -> None:
            log.info("%s: rotation %s -> %s on %s%s", slot.id, source, dest, trigger, f" ({info})" if info else "")

        return hear

    def _arm_rotation(self, slot: Slot, conn: Connection, dial_at: float) -> None:
        """Have a replacement of ``conn`` (``slot``'s) dial at ``dial_at``; the rotation begins
        ``rotate_overlap`` before that (at most ``rotate_after`` before)."""
        if slot.timer is not None:
            slot.timer.cancel()
        setup = slot.group.setup
        if self.tg is not None and setup.rotate_after is not None:
            at = dial_at - min(setup.rotate_overlap, setup.rotate_after)
            self.tg.start_soon(self._rotate_at, slot, conn, conn.sessions, at)

    async def _rotate_at(self, slot: Slot, conn: Connection, session: int, at: float) -> None:
        with anyio.CancelScope() as scope:
            slot.timer = scope
            await anyio.sleep_until(at)
        if slot.timer is scope:
            slot.timer = None
        if scope.cancelled_caught:
            return  # re-armed, closed, or the session ended
        still = slot.conn is conn and conn.sessions == session and slot.streaming and slot.enabled
        if still and slot.rotation is not None and slot.rotation.may_fire("begin"):
            await self._rotate(slot)

    async def rotate_now(self, slot_id: str) -> bool:
        """Rotate one connection now (make-before-break); True once the replacement carries it."""
        slot = self.slots.get(slot_id)
        if slot is None:
            raise WirestateError(f"no connection {slot_id!r} (have {sorted(self.slots)})")
        rotation = slot.rotation
        if rotation is None:
            raise ConfigError(f"{slot_id}: its setup has no rotate_after (set one to make it rotatable)")
        if not rotation.may_fire("begin"):
            raise WirestateError(f"{slot_id}: a rotation is already under way ({rotation.state})")
        if not slot.streaming:
            raise WirestateError(f"{slot_id}: not streaming ({slot.state.value}); nothing to rotate")
        done = rotation.completed
        await self._rotate(slot)
        return rotation.completed > done

    async def _rotate(self, slot: Slot) -> None:
        """Open a replacement beside ``slot``'s connection, overlap, cut over, close the old one."""
        rotation, old, setup = slot.rotation, slot.conn, slot.group.setup
        assert rotation is not None and self.tg is not None
        rotation.fire("begin", f"{old.id} has a lifetime limit (rotate_after {setup.rotate_after:g} s)")
        moved: dict[Hashable, Subscription] = {}
        new: Connection | None = None
        try:
            # Match from rotate_overlap before the replacement dials: what it is sent on
            # subscribing (a copy of the latest ticker, a snapshot) the old one may have
            # delivered just before.
            await anyio.sleep(setup.rotate_overlap)
            if not slot.enabled or slot.conn is not old or not slot.streaming:
                rotation.fire("abort", "the old connection went down first; it resubscribes on its own")
                return
            new = slot.successor = self._connection(slot, moved)
            await self.tg.start(new.run)
            with anyio.move_on_after(setup.open_timeout + setup.setup_timeout):
                try:
                    await new.wait_for(State.LIVE, State.RECONNECTING, State.DISCONNECTED)
                except WirestateError:
                    pass  # it gave up: said below
            live_at = self.streams.now()
            why = self._why_not(slot, old, new)
            if why:
                return await self._abort(slot, new, why)
            rotation.fire("joined", f"replacement live with {len(moved)} subscriptions")
            await anyio.sleep(setup.rotate_overlap)
            why = self._why_not(slot, old, new)
            if why:
                return await self._abort(slot, new, why)
            slot.conn, slot.successor = new, None
            self._adopt(slot, moved)
            rotation.fire("cut", "the replacement carries the slot")
            self._arm_rotation(slot, new, live_at + (setup.rotate_after or 0.0))
            await old.close(1000, "rotated")
            await anyio.sleep(setup.rotate_overlap)  # the replacement's late copies still matched
            rotation.fire("settled", f"{rotation.twins.duplicates if rotation.twins else 0} duplicates dropped")
        except BaseException:
            if new is not None and slot.successor is new:
                slot.successor = None
                with anyio.CancelScope(shield=True):
                    await new.close(1000, "rotation abandoned")
            if rotation.may_fire("abort"):
                rotation.fire("abort", "interrupted")
            elif rotation.may_fire("settled"):
                rotation.fire("settled", "interrupted")
            raise

    @staticmethod
    def _why_not(slot: Slot, old: Connection, new: Connection) -> str:
        if not slot.enabled or slot.conn is not old:
            return "the slot was closed or restarted"
        if new.state not in (State.LIVE, State.STALE):
            return f"the replacement did not come up ({new.state.value}: {new.cause})"
        if old.state not in (State.LIVE, State.STALE):
            return f"the old connection went {old.state.value} meanwhile; it resubscribes on its own"
        return ""

    async def _abort(self, slot: Slot, new: Connection, why: str) -> None:
        assert slot.rotation is not None
        slot.successor = None
        slot.rotation.fire("abort", why)
        log.warning("%s: rotation abandoned: %s", slot.id, why)
        await new.close(1000, "rotation abandoned")
        if slot.conn.state in (State.LIVE, State.STALE) and slot.enabled:
            # try again later (the old connection's own reconnect re-arms it otherwise)
            retry = min(slot.group.setup.rotate_after or 60.0, 60.0)
            self._arm_rotation(slot, slot.conn, self.streams.now() + retry)

    def _adopt(self, slot: Slot, moved: dict[Hashable, Subscription]) -> None:
        """The ledger after a cut-over: what the replacement subscribed is subscribed; the rest goes out on it now."""
        present = set()
        for entry in self._ledger.of_slot(slot.id):
            present.add(entry.sub.key)
            if entry.sub.key in moved:
                entry.fire_if("send")  # (resubscribing: the old one dropped meanwhile)
                if entry.fire_if("acked"):
                    entry.error = None
            else:
                entry.fire_if("connection_lost")  # placed during the overlap: sent on the replacement below
        group = slot.group
        pending = self._ledger.pending(slot.id)
        assert self.tg is not None
        if pending and group.setup.subscriber is not None:
            self.tg.start_soon(self._send_quietly, send_subscribe, slot.conn, pending, group.setup.subscriber)
        gone = [sub for key, sub in moved.items() if key not in present]  # unsubscribed during the overlap
        if gone and group.setup.unsubscriber is not None:
            self.tg.start_soon(self._send_quietly, group.setup.unsubscriber, slot.conn, gone)

    @staticmethod
    async def _send_quietly(send: Callable[..., Awaitable[None]], *args: Any) -> None:
        try:
            await send(*args)
        except (WirestateError, OSError) as exc:
            log.warning("%s: after rotation: %s", args[0].id, exc)

    # -- runtime control ----------------------------------------------------------

    async def disable(self, name: str) -> None:
        """Close a setup's connections (1000); they stay in the fleet, not redialled, until enabled."""
        group = self.group(name)
        for slot in group.slots:
            slot.enabled = False
        async with anyio.create_task_group() as tg:
            for slot in group.slots:
                tg.start_soon(self._close_slot, slot, 1000, "disabled")

    async def enable(self, name: str) -> None:
        """Start a disabled setup's connections again."""
        for slot in self.group(name).slots:
            if not slot.enabled and slot.conn.state is State.DISCONNECTED:
                await self.restart(slot)

    async def restart(self, slot: Slot) -> None:
        """Run a stopped slot's connection again; returns once it is connecting."""
        assert self.tg is not None, "connections run while the manager runs"
        slot.enabled = True
        await self.tg.start(slot.conn.run)

    async def set_url(self, name: str, url: str) -> None:
        """Point a setup at a new URL: its connections close and reconnect there (same ids)."""
        group = self.group(name)
        group.setup = attrs.evolve(group.setup, url=url)  # (validated: a bad URL raises ConfigError here)
        await self.disable(name)
        for slot in group.slots:
            slot.conn = self._connection(slot)
        await self.enable(name)

    async def heal_forever(self, interval: float) -> None:
        """Every ``interval`` seconds: start again enabled connections that gave up for a reason
        that may pass (a spent retry budget), never those refused for good (login, 1008, 401)."""
        while True:
            await anyio.sleep(interval)
            for slot in list(self.slots.values()):
                cause = slot.conn.cause
                if not (slot.enabled and slot.conn.state is State.DISCONNECTED and isinstance(cause, GiveUp)):
                    continue
                if cause.last is not None and is_fatal(cause.last):
                    continue
                log.info("manager %s: %s gave up (%s); starting it again", self.ws.exchange, slot.id, cause)
                await self.restart(slot)
