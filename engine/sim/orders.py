"""Private data of the simulated exchange: orders, their updates and fills, per account.

After a login, a connection may subscribe to the private channels ``orders``
and ``fills`` (per symbol, like public channels) and send ``place_order``.
An account is the API key it logged in with; every connection of one account
subscribed to a private (channel, symbol) receives the same message text, and
``seq`` numbers each (account, channel) stream from 1 (so a client can
deduplicate private messages across connections by ``(channel, seq)`` too).

An accepted order is answered (by the session, possibly late and out of
order: see :class:`~engine.sim.exchange.SimExchange`'s ``response_delay``),
then on ``orders`` an ``open`` update, then it fills in 1 to 3 parts, each
0.1 to 1.0 s (virtual) after the previous one, at the order's price: a
``fills`` message per part and an ``orders`` update (``partially_filled``,
then ``filled``) after each. All draws come from the desk's seeded generator.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup

from engine.sim import dialect
from transports.encode import OP_TEXT, encode_frame

__all__ = ["Desk", "PrivateSubscriber"]

_UNITS = 10_000  # sizes have four decimals


class PrivateSubscriber(Protocol):
    """A connection that takes private messages."""

    def deliver(self, channel: str, symbol: str, text: str, frame: bytes | None = None) -> None:
        """Queue ``text`` (or its ready ``frame``) for writing, or drop and count it; never blocks."""


@dataclass(slots=True)
class _Account:
    seq: dict[str, int] = field(default_factory=dict)  # per private channel
    subscribers: dict[tuple[str, str], dict[PrivateSubscriber, None]] = field(default_factory=dict)


def _units(size: str) -> int:
    whole, _, frac = size.partition(".")
    return int(whole) * _UNITS + int((frac + "0000")[:4])


def _render(units: int) -> str:
    return f"{units // _UNITS}.{units % _UNITS:04d}"


class Desk:
    """Orders for every account; fills run as tasks in the exchange's task group."""

    def __init__(self, rng: random.Random, task_group: Callable[[], TaskGroup]) -> None:
        self._rng = rng
        self._task_group = task_group
        self._accounts: dict[str, _Account] = {}
        self._next_order = 0
        self._next_trade = 0
        #: Orders accepted so far.
        self.orders = 0
        #: Fills made so far.
        self.fills = 0

    def _account(self, account: str) -> _Account:
        return self._accounts.setdefault(account, _Account())

    def subscribe(self, account: str, channel: str, symbol: str, subscriber: PrivateSubscriber) -> None:
        """Deliver ``account``'s (channel, symbol) messages to ``subscriber`` from now on."""
        self._account(account).subscribers.setdefault((channel, symbol), {})[subscriber] = None

    def unsubscribe(self, account: str, channel: str, symbol: str, subscriber: PrivateSubscriber) -> None:
        """Stop delivering; unknown subscriptions are ignored."""
        self._account(account).subscribers.get((channel, symbol), {}).pop(subscriber, None)

    def _publish(self, account: str, channel: str, symbol: str, message: dict[str, Any]) -> None:
        state = self._account(account)
        seq = state.seq[channel] = state.seq.get(channel, 0) + 1
        text = dialect.encode({**message, "seq": seq})
        frame = encode_frame(OP_TEXT, text.encode(), mask=False)
        for subscriber in list(state.subscribers.get((channel, symbol), ())):
            subscriber.deliver(channel, symbol, text, frame)

    def place(self, account: str, order: dialect.PlaceOrder, now: float) -> dict[str, Any]:
        """Accept ``order``; returns its ``order`` answer; updates and fills follow on the private channels."""
        self._next_order += 1
        self.orders += 1
        order_id = self._next_order
        update = dialect.order_update(order, order_id, "open", "0.0000", now)
        self._publish(account, "orders", order.symbol, update)
        parts = self._rng.randint(1, 3)
        delays = [self._rng.uniform(0.1, 1.0) for _ in range(parts)]
        self._task_group().start_soon(self._fill, account, order, order_id, delays)
        return dialect.order_ack(order, order_id)

    async def _fill(self, account: str, order: dialect.PlaceOrder, order_id: int, delays: list[float]) -> None:
        total = _units(order.size)
        done = 0
        for i, delay in enumerate(delays):
            await anyio.sleep(delay)
            part = total - done if i == len(delays) - 1 else max(1, total // len(delays))
            part = min(part, total - done)
            done += part
            self._next_trade += 1
            self.fills += 1
            now = anyio.current_time()
            fill = dialect.fill_message(order, order_id, self._next_trade, _render(part), now)
            self._publish(account, "fills", order.symbol, fill)
            status = "filled" if done >= total else "partially_filled"
            self._publish(account, "orders", order.symbol, dialect.order_update(order, order_id, status, _render(done), now))
