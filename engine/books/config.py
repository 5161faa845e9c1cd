"""BookConfig: how the order books of one setup are kept in sync.

An attrs class validated on construction: a bad value raises
:class:`~engine.errors.ConfigError` naming the field, where the user builds it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import attrs

from engine.books.sequence import SequenceRule, Unchecked
from engine.errors import ConfigError
from engine.events import BookSnapshot

if TYPE_CHECKING:
    from engine.books.book import Book

__all__ = ["BookConfig", "ChecksumHook", "SnapshotFetcher"]

#: ``(book) -> int``: the book's checksum in the exchange's format (see engine.books.checksum)
ChecksumHook = Callable[["Book"], int]
#: ``async (symbol) -> BookSnapshot``: a REST snapshot (with its own rate limit and client)
SnapshotFetcher = Callable[[str], Awaitable[BookSnapshot]]


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"BookConfig.{attribute.name} must be a positive integer, not {value!r}")


def _depth(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None:
        _positive_int(instance, attribute, value)


def _rule(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not callable(getattr(value, "check", None)):
        raise ConfigError(
            "BookConfig.sequence must be a sequence rule with check(delta, last, bridged) "
            f"(engine.books.sequence: Binance(), Strict(), Linked(), Unchecked()), not {type(value).__name__}"
        )


def _hook(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise ConfigError(f"BookConfig.{attribute.name} must be callable or None, not {type(value).__name__}")


def _fetcher(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _hook(instance, attribute, value)
    if value is not None and not inspect.iscoroutinefunction(value) and not inspect.iscoroutinefunction(
        getattr(value, "__call__", None)
    ):
        raise ConfigError("BookConfig.fetch_snapshot must be an async function: async (symbol) -> BookSnapshot")


def _timeout(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"BookConfig.{attribute.name} must be a positive number of seconds, not {value!r}")


@attrs.frozen
class BookConfig:
    """How books are kept (one config for every symbol of a setup).

    - ``buffer_limit``: deltas kept while waiting for a snapshot (the seed's 5);
      one more is an overflow: the buffer is dropped (counted) and the symbol resyncs.
    - ``depth``: keep only the best ``depth`` levels per side (None: all).
    - ``sequence``: the sequence rule (:mod:`engine.books.sequence`); default
      :class:`~engine.books.sequence.Unchecked`.
    - ``checksum``: ``(book) -> int`` compared with each message's checksum
      (:mod:`engine.books.checksum` has Kraken's and OKX's); None: not checked.
    - ``fetch_snapshot``: ``async (symbol) -> BookSnapshot`` for exchanges whose
      snapshot comes from REST (Binance); None when the stream sends it.
    - ``fetch_timeout``: seconds a fetch may take (the injected loop clock).
    - ``resubscribe``: the exchange sends a new snapshot only on a resubscribe;
      every result that starts a resync says so (``BookResult.resubscribe``) and
      the caller resubscribes that symbol.
    - ``price_cache``: parsed prices kept per book (bounded; cleared when full).
    - ``channel``: the subscription channel that carries books: under a
      :class:`~engine.manager.Manager`, a symbol that needs a snapshot the
      stream must send again (``resubscribe``, or no ``fetch_snapshot``) has
      its subscription on this channel resubscribed alone.
    """

    buffer_limit: int = attrs.field(default=5, validator=_positive_int)
    depth: int | None = attrs.field(default=None, validator=_depth)
    sequence: SequenceRule = attrs.field(factory=Unchecked, validator=_rule)
    checksum: ChecksumHook | None = attrs.field(default=None, validator=_hook)
    fetch_snapshot: SnapshotFetcher | None = attrs.field(default=None, validator=_fetcher, repr=False)
    fetch_timeout: float = attrs.field(default=10.0, validator=_timeout)
    resubscribe: bool = False
    price_cache: int = attrs.field(default=4096, validator=_positive_int)
    channel: str = "book"
