"""Manager: one exchange's connections, and a subscription ledger that survives everything.

::

    manager = Manager(WebsocketSetup(exchange="sim", max_subscriptions_per_connection=2, ...))
    manager.add_connection(ConnectionSetup(url="wss://...", ...))
    async with manager:                        # connect, log in, subscribe the generated set
        await manager.subscribe([Subscription("trades", "ETH-USD")])
        await manager.unsubscribe([...])

The manager owns a task group; each connection (a *slot*) runs in it with a
stable logical id (``"<setup name>#<n>"``). Subscriptions are placed on spare
capacity first, then on new connections to the same URL; a connection emptied
by unsubscribes closes with 1000 and is not redialled. When one connection
drops, only it reconnects, and its session subscribes exactly the ledger's
subscriptions for it. State changes of every connection arrive at
:meth:`Manager.on_state_change` listeners.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from engine.clock import Clock
from engine.config import ConnectionSetup, WebsocketSetup
from engine.connection import Connection
from engine.delivery import Stream, Streams
from engine.errors import ConfigError, WirestateError
from engine.events import StateChanged, SubscriptionChanged
from engine.bookkeeper import BookKeeper
from engine.books import BookConfig, Books, BookView
from engine.fleet import Fleet
from engine.freshness import quiet
from engine.ledger import Entry, Ledger
from engine.slots import ConnectionInfo
from engine.subscribing import Subscribing
from engine.subscriptions import SubscriptionInfo
from machines.connection import State
from machines.manager import ManagerModel, ManagerState
from machines.subscription import SubState
from transports.base import Dialer

__all__ = ["ConnectionInfo", "Manager", "SubscriptionInfo"]

log = logging.getLogger("wirestate.manager")


class Manager(Subscribing):
    """Coordinates one exchange's connections and subscriptions (see the module doc).

    Args:
        setup: the exchange's :class:`WebsocketSetup`.
        dialer, clock, rng: passed to every connection (tests inject the
            simulator's dialer and a seeded rng).
        governor: the reconnect policy shared by every connection whose
            setup has none (``governor.for_host(host)`` gives each its host's
            view, so connections to one host share its attempt budget).
    """

    def __init__(
        self,
        setup: WebsocketSetup,
        *,
        dialer: Dialer | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        governor: Any = None,
    ) -> None:
        if not isinstance(setup, WebsocketSetup):
            raise ConfigError(f"Manager needs a WebsocketSetup, not {type(setup).__name__}")
        self.setup = setup
        self._model = ManagerModel(self._on_manager_change)
        # typed events of every connection (trade_feed / fills_feed: delivered at all or not)
        self._streams = Streams(clock, trades=setup.trade_feed, fills=setup.fills_feed)
        self._books: BookKeeper | None = None  # the order books, when the setup keeps them
        if setup.orderbook is not None:
            if not isinstance(setup.orderbook, BookConfig):
                raise ConfigError(f"WebsocketSetup.orderbook must be a BookConfig, not {type(setup.orderbook).__name__}")
            self._books = BookKeeper(Books(setup.orderbook), self._streams, self._spawn, self._resync_book)
            self._streams.books = self._books
        self._ledger = Ledger(self._on_subscription_change)
        self._fleet = Fleet(
            setup, self._ledger, self._on_connection_change, dialer=dialer, clock=clock, rng=rng, governor=governor,
            streams=self._streams,
        )
        self._listeners: list[Callable[[StateChanged], None]] = []
        self._changed: anyio.Event | None = None  # set on any connection or subscription change
        self._tg: anyio.abc.TaskGroup | None = None

    def __repr__(self) -> str:
        return f"<Manager {self.setup.exchange!r} {self.state.value}, {len(self._fleet.slots)} connections>"

    # -- setup -------------------------------------------------------------

    def add_connection(self, setup: ConnectionSetup, *, name: str | None = None) -> str:
        """Add a connection setup (before start); returns its name (``setup.name`` or ``"conn<n>"``)."""
        if self._model.state != ManagerState.STOPPED.value:
            raise WirestateError(f"add_connection while the manager is {self.state.value}: add setups before start")
        return self._fleet.add(setup, name)

    # -- observation -------------------------------------------------------

    @property
    def state(self) -> ManagerState:
        """The manager machine's state."""
        return ManagerState(self._model.state)

    def on_state_change(self, listener: Callable[[StateChanged], None]) -> Callable[[], None]:
        """Hear every connection's state changes (one stream for all); returns an unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def stream(self, *types: type, **options: Any) -> Stream:
        """A bounded stream of every connection's typed events, in batches: ``async for batch in manager.stream()``.

        One for everything by default, or per channel / subscription (``stream(Trade, symbols=[...])``),
        each with its own policy and capacity: see :meth:`engine.delivery.Streams.stream`.
        Open it before :meth:`start` to miss nothing; it ends after :meth:`shutdown`.
        """
        return self._streams.stream(*types, **options)

    def connections(self) -> list[ConnectionInfo]:
        """Every managed connection: id, setup name, state, number of subscriptions."""
        return [
            ConnectionInfo(s.id, s.group.name, s.state, self._ledger.count(s.id), s.rotation.state if s.rotation else None)
            for s in self._fleet.slots.values()
        ]

    def subscriptions(self) -> list[SubscriptionInfo]:
        """Every subscription in the ledger with its state and connection."""
        return [SubscriptionInfo(e.sub, e.sub_state, e.slot, e.error) for e in self._ledger.entries()]

    def connection(self, connection_id: str) -> Connection:
        """The Connection behind a logical id."""
        return self._fleet.connection(connection_id)

    async def disable(self, setup_name: str) -> None:
        """Close a setup's connections (1000); their subscriptions stay in the ledger for :meth:`enable`."""
        await self._fleet.disable(setup_name)

    async def enable(self, setup_name: str) -> None:
        """Start a disabled setup's connections again; each resubscribes its subscriptions."""
        await self._fleet.enable(setup_name)

    async def set_url(self, setup_name: str, url: str) -> None:
        """Point a setup at a new URL: its connections reconnect there (same ids, same subscriptions)."""
        await self._fleet.set_url(setup_name, url)

    async def rotate(self, connection_id: str) -> bool:
        """Replace a connection now, make-before-break (its setup needs ``rotate_after``).

        A replacement is opened, logged in and subscribed beside it, both run
        ``rotate_overlap`` seconds with each message delivered once, then the
        old one closes with 1000; the logical id stays. Returns True once the
        replacement carries the connection, False if it could not come up
        (the old one carries on). For an exchange's "this server restarts
        soon" notice, say, ahead of the lifetime ``rotate_after`` plans for.
        """
        return await self._fleet.rotate_now(connection_id)

    def get_connection(self, message_filter: Any = None) -> Connection:
        """A streaming connection to send on: the first whose setup's ``message_filter`` equals the given one."""
        for slot in self._fleet.slots.values():
            if slot.group.setup.message_filter == message_filter and slot.streaming:
                return slot.conn
        for slot in self._fleet.slots.values():
            if slot.group.setup.message_filter == message_filter:
                return slot.conn
        raise WirestateError(f"no connection with message_filter {message_filter!r}")

    async def wait_for(self, connection_id: str, *states: State) -> State:
        """Wait until connection ``connection_id`` is in (or passes through) one of ``states``.

        Unlike ``Connection.wait_for`` it waits across stops: a managed
        connection that gave up may be started again (:meth:`enable`, the monitor).
        """
        if not states:
            raise ValueError("wait_for needs at least one State")
        current = self.connection(connection_id).state
        if current in states:
            return current
        reached: list[State] = []

        def hear(event: StateChanged) -> None:
            if event.connection == connection_id and event.dest in states:
                reached.append(event.dest)

        unsubscribe = self.on_state_change(hear)
        try:
            while not reached:
                await self._next_change()
        finally:
            unsubscribe()
        return reached[0]

    def diagram(self) -> str:
        """A Mermaid state diagram of the connections now (one line per connection)."""
        lines = ["stateDiagram-v2"]
        for slot in self._fleet.slots.values():
            node = slot.id.replace("#", "_").replace("-", "_")
            lines.append(f'  state "{slot.id}: {slot.state.value}" as {node}')
        return "\n".join(lines)

    def _on_manager_change(self, source: Any, dest: Any, trigger: str, info: Any) -> None:
        log.info("manager %s: %s -> %s on %s", self.setup.exchange, source, dest, trigger)

    def _on_connection_change(self, event: StateChanged, conn: Connection) -> None:
        slot = self._fleet.slots.get(event.connection)
        if slot is not None and slot.conn is not conn:
            slot = None  # a rotation's other connection: the ledger follows the slot's own
        if slot is not None and event.trigger in ("lost", "close"):
            for entry in self._ledger.of_slot(slot.id):
                entry.fire_if("connection_lost")
            if self._books is not None:
                self._books.connection_lost(slot.id)
        self._wake()
        if slot is not None and event.trigger == "subscribed" and self._tg is not None:
            if self._ledger.pending(slot.id):  # placed while the session was subscribing
                self._tg.start_soon(self._catch_up, slot)
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("manager %s: state listener failed", self.setup.exchange)

    def _on_subscription_change(self, entry: Entry, source: SubState, dest: SubState, trigger: str) -> None:
        if dest is SubState.SUBSCRIBED:
            entry.since = self._streams.now()
        if self._streams.streams:  # (an event nobody reads is not built: flush() makes 20,000 of these)
            self._streams.control(SubscriptionChanged(
                subscription=entry.sub, source=source.value, dest=dest.value, trigger=trigger,
                error=entry.error, connection=entry.slot, received=self._streams.now(),
            ))  # fmt: skip
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None:
            changed.set()

    async def _next_change(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # -- lifetime ----------------------------------------------------------

    async def __aenter__(self) -> Manager:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        tg, self._tg = self._tg, None
        assert tg is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.shutdown()
        finally:
            tg.cancel_scope.cancel()  # (the monitor and anything shutdown left)
            result = await tg.__aexit__(*exc_info)  # always: a task group left open corrupts the task tree
        return result

    async def start(self, *, timeout: float | None = None) -> None:
        """Connect every setup, log in private ones, subscribe the generated set; return when all are live.

        Connections that cannot come up keep trying per their policy; ``timeout``
        bounds the wait for live (None: each setup's open + setup timeouts).
        """
        if not self._fleet.groups:
            raise ConfigError("the manager has no connection setups: call add_connection() first")
        self._model.fire("start")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = self._fleet.tg = tg
        try:
            for group in self._fleet.groups.values():
                if group.setup.subscriptions_not_required:
                    self._fleet.new_slot(group)
            await self.flush(wait=False)
            tg.start_soon(self._fleet.heal_forever, self.setup.connection_monitor_interval)
            if any(g.setup.stream_of is not None for g in self._fleet.groups.values()):
                tg.start_soon(self._watch_quiet)
            groups = self._fleet.groups.values()
            bound = timeout if timeout is not None else max(g.setup.open_timeout + g.setup.setup_timeout for g in groups)
            with anyio.move_on_after(bound):
                while not all(s.streaming or s.stopped for s in self._fleet.slots.values()):
                    await self._next_change()
        except BaseException as exc:
            # A start that fails leaves nothing running behind it, and the task group
            # is exited whatever happens (outside the shield: scopes exit in order).
            try:
                with anyio.CancelScope(shield=True):
                    await self._fleet.close_all()
            finally:
                tg.cancel_scope.cancel()
                await tg.__aexit__(type(exc), exc, exc.__traceback__)
                self._tg = self._fleet.tg = None
                self._model.fire("shutdown")
                self._model.fire("stopped")
            raise
        self._model.fire("started")

    async def shutdown(self) -> None:
        """Close every connection (1000, bounded by their close timeouts); idempotent."""
        if not self._model.may_fire("shutdown"):
            return
        self._model.fire("shutdown")
        await self._fleet.close_all()
        self._streams.end()  # consumers read what is queued, then their loops end
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        self._model.fire("stopped")

    async def _watch_quiet(self) -> None:
        """Resubscribe alone each subscription with a symbol silent past its ``stale_after``."""
        while True:
            limits = [e.sub.stale_after for e in self._ledger.entries() if e.sub.stale_after is not None]
            # (a quarter of the shortest limit: noticed within 25 % of it)
            await anyio.sleep(min(limits) / 4 if limits else self.setup.connection_monitor_interval)
            now = self._streams.now()
            for slot in list(self._fleet.slots.values()):
                if slot.freshness is None or not slot.streaming:
                    continue
                found = quiet(slot.freshness, self._ledger.of_slot(slot.id), now)
                for entry in found:
                    assert entry.sub.stale_after is not None
                    entry.fire("stale", f"silent for more than {entry.sub.stale_after:g} s")
                if found:
                    assert self._tg is not None
                    self._tg.start_soon(self._resubscribe_alone, slot, found, "quiet")

    def book(self, symbol: str, depth: int | None = None) -> BookView:
        """``symbol``'s order book now, an immutable view (``WebsocketSetup.orderbook`` must be set).

        Raises :class:`~engine.books.UnknownBook` for a symbol no book event came for yet.
        """
        if self._books is None:
            raise ConfigError("this manager keeps no order books: set WebsocketSetup.orderbook=BookConfig(...)")
        return self._books.view(symbol, depth)

    def _spawn(self, func: Callable[..., Any], *args: Any) -> None:
        if self._tg is not None:
            self._tg.start_soon(func, *args)

    def _resync_book(self, symbol: str, connection: str) -> None:
        """A book that needs the exchange's snapshot again: resubscribe its subscription alone."""
        slot = self._fleet.slots.get(connection)
        books = self._books
        if slot is None or books is None or self._tg is None:
            return
        channel = books.books.config.channel
        entries = [
            e for e in self._ledger.of_slot(slot.id)
            if e.sub.channel == channel and symbol in e.sub.symbols and e.state == SubState.SUBSCRIBED.value
        ]  # fmt: skip
        for entry in entries:
            entry.fire("resync", f"the {symbol} book needs a new snapshot")
        if entries:
            self._tg.start_soon(self._resubscribe_alone, slot, entries, f"{symbol} book resync")
