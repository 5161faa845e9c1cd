"""A manager's connections: groups (one per ConnectionSetup) and their slots (one per socket).

A :class:`Group` is a connection setup completed with the manager's global
callbacks (single style) or its own (multi style). A :class:`Slot` is one
managed :class:`~engine.connection.Connection` of a group, with a stable
logical id; its session subscribes whatever the ledger holds for it, so a
reconnect resubscribes exactly its own subscriptions and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, NamedTuple

import anyio
import attrs

from engine.config import ConnectionSetup, WebsocketSetup
from engine.connection import Connection
from engine.errors import ConfigError, ConnectionClosed, NotConnected, SubscriptionError
from engine.freshness import Freshness
from engine.gate import gated
from engine.ledger import Entry, Ledger
from engine.rotation import Rotation
from engine.subscriptions import Subscription
from machines.connection import State
from machines.subscription import SUBSCRIPTION, SubState

__all__ = ["ConnectionInfo", "Group", "Slot", "send_subscribe", "send_unsubscribe", "slot_setup"]

log = logging.getLogger("wirestate.manager")

_GLOBAL_CALLBACKS = ("connector", "subscriber", "unsubscriber", "generate_subscriptions", "handler", "batch_handler")


class ConnectionInfo(NamedTuple):
    """One row of :meth:`Manager.connections`."""

    id: str
    setup: str
    state: State
    subscriptions: int
    #: its make-before-break rotation's state (``"steady"`` when none is under way), None if it never rotates
    rotation: str | None = None


class Group:
    """One connection setup of a manager and the connections made from it."""

    __slots__ = ("name", "setup", "slots", "capacity", "_next")

    def __init__(self, name: str, setup: ConnectionSetup, capacity: int | None) -> None:
        self.name = name
        self.setup = setup
        self.slots: list[Slot] = []
        self.capacity = capacity  # subscriptions per connection (None: no limit)
        self._next = 0

    @classmethod
    def complete(cls, name: str, given: ConnectionSetup, ws: WebsocketSetup) -> Group:
        """``given`` with the globals filled in (single style) or checked (multi style)."""
        if not isinstance(given, ConnectionSetup):
            raise ConfigError(f"add_connection needs a ConnectionSetup, not {type(given).__name__}")
        changes: dict[str, Any] = {"traffic_timeout": ws.traffic_timeout}
        if not ws.use_multi_connection_management:
            for field in _GLOBAL_CALLBACKS:
                if getattr(given, field) is None and getattr(ws, field) is not None:
                    changes[field] = getattr(ws, field)
            if given.handler is not None or given.batch_handler is not None:
                changes.pop("handler", None)
                changes.pop("batch_handler", None)
        setup = attrs.evolve(given, **changes)
        where = f"connection setup {name!r}"
        if setup.handler is None and setup.batch_handler is None:
            raise ConfigError(f"{where}: missing callback: handler (or batch_handler)")
        if not setup.subscriptions_not_required and setup.subscriber is None:
            raise ConfigError(f"{where}: missing callback: subscriber (or set subscriptions_not_required=True)")
        return cls(name, setup, None if setup.subscriptions_not_required else ws.max_subscriptions_per_connection)

    def new_slot_id(self) -> str:
        self._next += 1
        return f"{self.name}#{self._next}"


class Slot:
    """One managed connection: its id, its group, its Connection (set right after).

    With ``rotate_after`` the slot also has a :class:`~engine.rotation.Rotation`
    and, while one is under way, a ``successor`` connection; with ``stream_of``
    a :class:`~engine.freshness.Freshness`.
    """

    __slots__ = ("id", "group", "conn", "enabled", "rotation", "freshness", "successor", "timer")

    def __init__(self, slot_id: str, group: Group) -> None:
        self.id = slot_id
        self.group = group
        self.conn: Connection = None  # type: ignore[assignment]  # (the fleet makes it right after)
        self.enabled = True
        self.rotation: Rotation | None = None
        self.freshness: Freshness | None = None
        self.successor: Connection | None = None  # the replacement while a rotation runs
        self.timer: anyio.CancelScope | None = None  # the wait for the next rotation

    @property
    def state(self) -> State:
        return self.conn.state

    @property
    def stopped(self) -> bool:
        """Ran and stopped (gave up or was closed); not "not started yet"."""
        return self.conn.state is State.DISCONNECTED and self.conn.cause is not None

    @property
    def streaming(self) -> bool:
        """Live or stale: a subscribe sent now goes out on the current session."""
        return self.conn.state in (State.LIVE, State.STALE)

    def admit(self, conn: Any, message: str | bytes) -> bool:
        """The slot's message gate (:mod:`engine.gate`): freshness stamps, rotation twins."""
        if self.freshness is not None:
            self.freshness.touch(message)
        return self.rotation is None or self.rotation.admit(conn, message)


#: what a replacement subscribes: whatever its slot streams or is about to
_MOVING = frozenset({SubState.SUBSCRIBED.value, SubState.SUBSCRIBING.value, SubState.RESUBSCRIBING.value, SubState.INACTIVE.value})


def slot_setup(
    slot: Slot,
    ledger: Ledger,
    listeners: tuple[Callable[..., None], ...],
    moved: dict[Hashable, Subscription] | None = None,
) -> ConnectionSetup:
    """The setup a slot's Connection runs: the group's, subscribing what the ledger holds for it.

    With ``moved`` it is a rotation's replacement: it subscribes everything
    the slot streams, without touching the ledger (the old connection still
    carries those subscriptions), and notes each key it subscribed in ``moved``.
    """
    group, slot_id = slot.group, slot.id
    user_subscriber = group.setup.subscriber
    generate: Callable[[], list[Entry]] | None = None
    subscribe: Callable[[Connection, list[Entry]], Awaitable[None]] | None = None
    if user_subscriber is not None and moved is None:

        def generate() -> list[Entry]:
            return ledger.pending(slot_id)

        async def subscribe(conn: Connection, entries: list[Entry]) -> None:
            if entries:
                await send_subscribe(conn, entries, user_subscriber)

    elif user_subscriber is not None and moved is not None:

        def generate() -> list[Entry]:  # what the slot streams or is about to
            return [e for e in ledger.of_slot(slot_id) if e.state in _MOVING]

        async def subscribe(conn: Connection, entries: list[Entry]) -> None:
            # a failure here fails the replacement's session, and with it the rotation
            if entries:
                await user_subscriber(conn, [e.sub for e in entries])
            moved.update((e.sub.key, e.sub) for e in entries)

    setup = attrs.evolve(
        group.setup,
        name=slot_id,
        generate_subscriptions=generate,
        subscriber=subscribe,
        on_state_change=(*group.setup.on_state_change, *listeners),
    )
    if slot.rotation is not None or slot.freshness is not None:
        setup = gated(setup, slot.admit)
    return setup


async def send_subscribe(
    conn: Connection, entries: list[Entry], subscriber: Callable[[Any, list[Subscription]], Awaitable[None]]
) -> None:
    """Subscribe ``entries`` on ``conn`` with the user's subscriber; mark each acked or failed.

    A subscriber that raises fails these subscriptions (their error kept),
    not the connection; losing the connection meanwhile is the connection's
    business (the entries go back to resubscribing with it).
    """
    sending = SUBSCRIPTION.fire_all(entries, "send")
    if not sending:
        return
    try:
        await subscriber(conn, [e.sub for e in sending])
    except (NotConnected, ConnectionClosed):
        raise
    except Exception as exc:
        why = f"{type(exc).__name__}: {exc}"
        log.warning("%s: subscribe of %d subscription(s) failed: %s", conn.id, len(sending), why)
        for entry in sending:
            entry.fire_if("rejected", why)
        return
    for entry in SUBSCRIPTION.fire_all(sending, "acked"):
        entry.error = None


async def send_unsubscribe(
    conn: Connection, entries: list[Entry], unsubscriber: Callable[[Any, list[Subscription]], Awaitable[None]] | None
) -> None:
    """Unsubscribe the ``subscribed`` ones of ``entries`` on ``conn``; raises SubscriptionError on failure."""
    leaving = [e for e in entries if e.may_fire("unsubscribe")]
    if not leaving:
        return
    if unsubscriber is None:
        raise SubscriptionError(
            f"{conn.id}: no unsubscriber configured to unsubscribe {', '.join(str(e.sub) for e in leaving)}",
            tuple(e.sub.key for e in leaving),
        )
    for entry in leaving:
        entry.fire("unsubscribe")
    try:
        await unsubscriber(conn, [e.sub for e in leaving])
    except BaseException as exc:
        for entry in leaving:
            entry.fire_if("unsubscribe_failed", f"unsubscribe failed: {type(exc).__name__}: {exc}")
        if isinstance(exc, Exception) and not isinstance(exc, (NotConnected, ConnectionClosed)):
            raise SubscriptionError(
                f"{conn.id}: unsubscribe failed: {type(exc).__name__}: {exc}", tuple(e.sub.key for e in leaving)
            ) from exc
        raise
    for entry in leaving:
        entry.fire_if("unsubscribed")
