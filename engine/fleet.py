"""A manager's fleet: its connection setups (groups), their connections (slots), and their tasks.

The fleet makes, starts, stops and retires connections; it does not decide
what they subscribe to (the manager and its ledger do). Every connection runs
in the manager's task group; a slot keeps its logical id across reconnects,
restarts and URL changes.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import attrs

from engine.causes import GiveUp
from engine.clock import Clock
from engine.config import ConnectionSetup, WebsocketSetup
from engine.connection import Connection
from engine.delivery import Streams
from engine.errors import ConfigError, WirestateError
from engine.events import StateChanged
from engine.ledger import Ledger
from engine.policy import is_fatal
from engine.slots import Group, Slot, slot_setup
from machines.connection import State
from transports.base import Dialer

__all__ = ["Fleet"]

log = logging.getLogger("wirestate.manager")


class Fleet:
    """Groups and slots of one manager (see the module doc)."""

    def __init__(
        self,
        ws: WebsocketSetup,
        ledger: Ledger,
        listener: Callable[[StateChanged], None],
        *,
        dialer: Dialer | None,
        clock: Clock | None,
        rng: random.Random | None,
        governor: Any,
        streams: Streams | None = None,
    ) -> None:
        self.ws = ws
        self.groups: dict[str, Group] = {}
        self.slots: dict[str, Slot] = {}
        self.tg: anyio.abc.TaskGroup | None = None  # the manager's, while it runs
        self._ledger = ledger
        self._listener = listener
        self._dialer = dialer
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

    def _connection(self, group: Group, slot_id: str) -> Connection:
        setup = slot_setup(group, slot_id, self._ledger, (self._listener,))
        if setup.policy is None and self._governor is not None:
            # connections to one host share that host's attempt budget
            setup = attrs.evolve(setup, policy=self._governor.for_host(setup.parsed_url.host))
        return Connection(setup, dialer=self._dialer, clock=self._clock, id=slot_id, rng=self._rng, streams=self.streams)

    def new_slot(self, group: Group) -> Slot:
        """A new connection of ``group``, started (it dials in the background)."""
        assert self.tg is not None, "connections run while the manager runs"
        slot_id = group.new_slot_id()
        slot = Slot(slot_id, group, self._connection(group, slot_id))
        group.slots.append(slot)
        self.slots[slot_id] = slot
        self.tg.start_soon(self._run, slot)
        return slot

    async def _run(self, slot: Slot, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        await slot.conn.run(task_status=task_status)

    async def retire(self, slot: Slot, reason: str) -> None:
        """Close ``slot`` with 1000 and forget it: it is not redialled."""
        slot.enabled = False
        self.slots.pop(slot.id, None)
        if slot in slot.group.slots:
            slot.group.slots.remove(slot)
        await slot.conn.close(1000, reason)

    async def close_all(self) -> None:
        """Close every connection (1000), concurrently, each bounded by its close_timeout."""
        async with anyio.create_task_group() as tg:
            for slot in list(self.slots.values()):
                tg.start_soon(slot.conn.close)

    # -- runtime control ----------------------------------------------------------

    async def disable(self, name: str) -> None:
        """Close a setup's connections (1000); they stay in the fleet, not redialled, until enabled."""
        group = self.group(name)
        for slot in group.slots:
            slot.enabled = False
        async with anyio.create_task_group() as tg:
            for slot in group.slots:
                tg.start_soon(slot.conn.close, 1000, "disabled")

    async def enable(self, name: str) -> None:
        """Start a disabled setup's connections again."""
        for slot in self.group(name).slots:
            if not slot.enabled and slot.conn.state is State.DISCONNECTED:
                await self.restart(slot)

    async def restart(self, slot: Slot) -> None:
        """Run a stopped slot's connection again; returns once it is connecting."""
        assert self.tg is not None, "connections run while the manager runs"
        slot.enabled = True
        await self.tg.start(self._run, slot)

    async def set_url(self, name: str, url: str) -> None:
        """Point a setup at a new URL: its connections close and reconnect there (same ids)."""
        group = self.group(name)
        group.setup = attrs.evolve(group.setup, url=url)  # (validated: a bad URL raises ConfigError here)
        await self.disable(name)
        for slot in group.slots:
            slot.conn = self._connection(group, slot.id)
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
