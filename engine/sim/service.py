"""What the simulated exchange does with one connection's requests.

A :class:`Service` per connection carries out parsed requests
(:mod:`engine.sim.dialect`): subscriptions on the exchange-wide feed or the
account's private streams, logins (:mod:`engine.sim.auth`), orders
(:mod:`engine.sim.orders`), pings; and applies the exchange-wide one-shot
faults (:class:`~engine.sim.faults.Faults`): refused subscribes and logins,
duplicate answers, late (so out-of-order) order answers. Writing is the
session's job: the service calls its :class:`Replier`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from engine.sim import dialect
from engine.sim.auth import Authenticator
from engine.sim.faults import Faults
from engine.sim.feed import Feed
from engine.sim.orders import Desk

__all__ = ["Replier", "Service", "Venue"]


@dataclass(slots=True)
class Venue:
    """Everything of one exchange that its connections share."""

    symbols: tuple[str, ...]
    feed: Feed
    desk: Desk
    auth: Authenticator = field(default_factory=Authenticator)
    faults: Faults = field(default_factory=Faults)
    #: Seconds an order answer waits, drawn uniformly per answer from the connection's seeded generator.
    response_delay: tuple[float, float] = (0.0, 0.0)
    #: Entries each connection's transcript keeps.
    log_limit: int = 1_000
    #: Seconds after which the exchange closes each connection (None: never), and the close code.
    lifetime: float | None = None
    lifetime_code: int = 1001
    #: Seconds a close waits for the client's answer.
    close_timeout: float = 2.0
    #: The code and message of a subscribe refused by ``reject_subscribes``.
    refusal: tuple[int, str] = (dialect.REFUSED, "subscribe refused")


class Replier(Protocol):
    """How the service answers: the session's write path."""

    async def reply(self, message: dict[str, Any], *, droppable: bool = False) -> None:
        """Write one answer (held during a stall, or dropped when ``droppable``)."""

    def reply_later(self, message: dict[str, Any], delay: float) -> None:
        """Write one answer after ``delay`` seconds (in the connection's task group)."""

    def deliver(self, channel: str, symbol: str, text: str, frame: bytes | None = None) -> None:
        """Take one data message (public or private), with its ready frame if there is one."""


class Service:
    """One connection's subscriptions, login and orders."""

    def __init__(self, venue: Venue, replier: Replier) -> None:
        self._venue = venue
        self._out = replier
        self.rng: random.Random = random.Random(0)  # replaced by the accepted handshake's
        #: Public (channel, symbol) subscriptions, in subscribe order.
        self.keys: dict[tuple[str, str], None] = {}
        #: Private (channel, symbol) subscriptions.
        self.private: dict[tuple[str, str], None] = {}
        #: The API key this connection logged in with (None: not logged in).
        self.account: str | None = None

    @property
    def authenticated(self) -> bool:
        """True after a successful login."""
        return self.account is not None

    def leave(self) -> None:
        """The connection ended: leave every stream."""
        self._venue.feed.leave(self._out, list(self.keys))
        if self.account is not None:
            for channel, symbol in self.private:
                self._venue.desk.unsubscribe(self.account, channel, symbol, self._out)
        self.keys.clear()
        self.private.clear()

    async def _answer(self, message: dict[str, Any], *, droppable: bool = False) -> None:
        await self._out.reply(message, droppable=droppable)
        if self._venue.faults.take("duplicate_responses"):
            await self._out.reply(message, droppable=droppable)

    async def carry_out(self, request: dialect.Request, *, stalled: bool) -> None:
        """Act on one request and answer it."""
        if isinstance(request, dialect.Ping):
            if not stalled:  # a stalled exchange answers no pings
                await self._answer(dialect.pong(request), droppable=True)
        elif isinstance(request, dialect.Login):
            await self._answer(self._login(request))
        elif isinstance(request, dialect.Subscribe):
            await self._subscribe(request)
        elif isinstance(request, dialect.Unsubscribe):
            self._unsubscribe(request)  # no data after the ack
            await self._answer(dialect.subscription_ack(request))
        elif isinstance(request, dialect.PlaceOrder):
            await self._place(request)
        else:
            await self._answer(dialect.error(request))

    def _login(self, request: dialect.Login) -> dict[str, Any]:
        if self._venue.faults.take("reject_logins"):
            return dialect.login_result(request, "login refused")
        refusal = self._venue.auth.check(
            request.key, request.timestamp, request.nonce, request.signature, anyio.current_time()
        )
        if refusal is None and self.account is None:
            self.account = request.key
        elif refusal is None and self.account != request.key:
            refusal = "already logged in with another key"
        return dialect.login_result(request, refusal)

    async def _subscribe(self, request: dialect.Subscribe) -> None:
        private = request.channel in dialect.PRIVATE_CHANNELS
        if private and self.account is None:
            await self._answer(dialect.error(dialect.Invalid(dialect.UNAUTHORIZED, "log in first", request.id)))
            return
        if self._venue.faults.take("reject_subscribes"):
            code, message = self._venue.refusal
            await self._answer(dialect.error(dialect.Invalid(code, message, request.id)))
            return
        await self._answer(dialect.subscription_ack(request))  # the ack goes before any data
        now = anyio.current_time()
        for symbol in request.symbols:
            key = (request.channel, symbol)
            if private and key not in self.private:
                assert self.account is not None
                self.private[key] = None
                self._venue.desk.subscribe(self.account, request.channel, symbol, self._out)
            elif not private and key not in self.keys:
                self.keys[key] = None
                self._venue.feed.subscribe(request.channel, symbol, self._out, now)

    def _unsubscribe(self, request: dialect.Unsubscribe) -> None:
        for symbol in request.symbols:
            key = (request.channel, symbol)
            if self.keys.pop(key, 0) is None:
                self._venue.feed.unsubscribe(request.channel, symbol, self._out)
            if self.private.pop(key, 0) is None and self.account is not None:
                self._venue.desk.unsubscribe(self.account, request.channel, symbol, self._out)

    async def _place(self, order: dialect.PlaceOrder) -> None:
        if self.account is None:
            await self._answer(dialect.error(dialect.Invalid(dialect.UNAUTHORIZED, "log in first", order.id)))
            return
        answer = self._venue.desk.place(self.account, order, anyio.current_time())
        low, high = self._venue.response_delay
        delay = self.rng.uniform(low, high) if high > 0 else 0.0
        if delay > 0:
            self._out.reply_later(answer, delay)
            if self._venue.faults.take("duplicate_responses"):
                self._out.reply_later(answer, delay + self.rng.uniform(low, high))
        else:
            await self._answer(answer)
