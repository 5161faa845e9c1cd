"""Subscriptions: what a user wants to receive, with a stable key.

A :class:`Subscription` is a value: two with the same channel, asset,
symbols, interval, levels and params are the same subscription (its
:attr:`~Subscription.key`), whatever order their params were given in.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any, NamedTuple

import attrs

from engine.errors import ConfigError
from machines.subscription import SubState

__all__ = ["Subscription", "SubscriptionInfo", "listed", "names", "repeated"]


def _symbols(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    try:
        symbols = tuple(value)
    except TypeError:
        raise ConfigError(f"Subscription.symbols must be a string or a sequence of strings, not {type(value).__name__}") from None
    for symbol in symbols:
        if not isinstance(symbol, str) or not symbol:
            raise ConfigError(f"Subscription.symbols: {symbol!r} is not a symbol")
    return symbols


def _params(value: Any) -> tuple[tuple[str, Hashable], ...]:
    if value is None:
        return ()
    items: Iterable[Any] = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = tuple(sorted((str(k), v) for k, v in items))
        hash(pairs)
    except (TypeError, ValueError):
        raise ConfigError("Subscription.params must be a mapping of names to hashable values") from None
    return pairs


def _channel(instance: Any, attribute: Any, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"Subscription.channel must be a non-empty string, not {value!r}")


def _stale_after(instance: Any, attribute: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
        raise ConfigError(f"Subscription.stale_after must be a positive number of seconds, not {value!r}")


@attrs.frozen
class Subscription:
    """One stream to receive: ``Subscription("trades", symbols=["BTC-USDT"])``."""

    channel: str = attrs.field(validator=_channel)
    symbols: tuple[str, ...] = attrs.field(default=(), converter=_symbols)
    asset: str = ""
    interval: str | None = None
    levels: int | None = None
    params: tuple[tuple[str, Hashable], ...] = attrs.field(default=(), converter=_params)
    authenticated: bool = False  # a private stream: placed on an authenticated connection
    #: seconds of silence on any of its symbols after which it is resubscribed alone (needs the
    #: connection setup's ``stream_of``); not part of the key
    stale_after: float | None = attrs.field(default=None, eq=False, validator=_stale_after)


    _key: tuple[Any, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        # (computed once: the ledger and flush() ask for it many times per subscription)
        key = (self.channel, self.asset, self.symbols, self.interval, self.levels, self.params, self.authenticated)
        object.__setattr__(self, "_key", key)

    @property
    def key(self) -> tuple[Any, ...]:
        """The identity the ledger uses (hashable)."""
        return self._key

    def __str__(self) -> str:
        parts = [self.channel]
        if self.asset:
            parts.append(self.asset)
        if self.symbols:
            parts.append(",".join(self.symbols))
        if self.interval:
            parts.append(self.interval)
        if self.levels is not None:
            parts.append(f"L{self.levels}")
        return ":".join(parts)


class SubscriptionInfo(NamedTuple):
    """One row of :meth:`Manager.subscriptions`."""

    subscription: Subscription
    state: SubState
    connection: str
    error: str | None


def listed(subs: Iterable[Any]) -> list[Subscription]:
    """``subs`` as a list, each checked to be a Subscription."""
    items = list(subs)
    for sub in items:
        if not isinstance(sub, Subscription):
            raise ConfigError(f"expected Subscription objects, got {type(sub).__name__}: {sub!r}")
    return items


def names(subs: list[Subscription], keys: tuple[Any, ...]) -> str:
    """The readable names of the ``subs`` whose key is in ``keys``."""
    wanted = set(keys)
    return ", ".join(str(s) for s in subs if s.key in wanted)


def repeated(keys: list[Any], known: Any) -> tuple[Any, ...]:
    """The keys already in ``known`` or seen earlier in ``keys`` (a set: pairwise checks are quadratic)."""
    seen: set[Any] = set()
    found = []
    for key in keys:
        if key in known or key in seen:
            found.append(key)
        seen.add(key)
    return tuple(found)
