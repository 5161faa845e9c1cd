"""A manager's order books on the data path: book events in, exact books and resync events out.

With ``WebsocketSetup(orderbook=BookConfig(...))`` the streams hub hands
every :class:`~engine.events.BookSnapshot` and :class:`~engine.events.BookUpdate`
a handler emits to :class:`BookKeeper` instead of the streams. It applies
them to :class:`~engine.books.Books` (one sync machine per symbol) and
passes on what a consumer may trust:

- an update or snapshot that leaves its book in sync goes to the streams as
  it came, followed by the maintained :class:`~engine.events.Book` view when
  a stream asked for ``Book`` events (built only then);
- :class:`~engine.events.Gap`, :class:`~engine.events.Error` (``RESYNC``) and
  :class:`~engine.events.BookResynced` go to every stream as engine events;
- a symbol that needs a snapshot fetches one (``BookConfig.fetch_snapshot``,
  in the manager's task group, retried on failure), or, when the exchange
  sends snapshots only on subscribing (``BookConfig.resubscribe``), has its
  subscription resubscribed alone. Other symbols never wait.

A connection that drops takes its symbols' books back to unsynced: they sync
again from what the next session brings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from engine.books import Books, BookState, BookView
from engine.books.sync import BookResult
from engine.events import Book, BookSnapshot, BookUpdate

if TYPE_CHECKING:
    from engine.delivery import Streams

__all__ = ["BookKeeper"]

log = logging.getLogger("wirestate.books")

#: ``(function, *args)``: start a task in the owner's task group
Spawn = Callable[..., None]
#: ``(symbol, connection id)``: resubscribe that symbol's book subscription alone
Resubscribe = Callable[[str, str], None]

_RETRY = 1.0  # seconds before a failed snapshot fetch is tried again


class BookKeeper:
    """The books of one streams hub (see the module doc)."""

    def __init__(self, books: Books, hub: Streams, spawn: Spawn, resubscribe: Resubscribe) -> None:
        self.books = books
        self._hub = hub
        self._spawn = spawn
        self._resubscribe = resubscribe
        self._fed_by: dict[str, str] = {}  # symbol -> the connection its book events come from

    def view(self, symbol: str, depth: int | None = None) -> BookView:
        """``symbol``'s book now (raises :class:`~engine.books.UnknownBook` if never seen)."""
        return self.books.view(symbol, depth)

    def take(self, event: BookSnapshot | BookUpdate) -> Any:
        """Apply one book event; pass on what is trustworthy. Returns a full ``block`` stream, if any."""
        symbol = event.symbol
        self._fed_by[symbol] = event.connection
        result = self.books.snapshot(event) if type(event) is BookSnapshot else self.books.apply(event)  # type: ignore[arg-type]
        self._after(symbol, result, event.connection)
        if self.books.state(symbol) is not BookState.SYNCED:
            return None  # buffered, or the book is being rebuilt: not yet trustworthy
        full = self._hub.deliver(event)
        self._publish_view(symbol, event.connection, event.received)
        return full

    def connection_lost(self, connection: str) -> None:
        """Every book fed by ``connection`` goes back to unsynced (the next session resyncs it)."""
        for symbol, fed_by in list(self._fed_by.items()):
            if fed_by == connection and symbol in self.books:
                self.books.reset(symbol)

    def _after(self, symbol: str, result: BookResult, connection: str) -> None:
        for event in result.events:
            self._hub.control(event)
        if result.resubscribe or (result.need_snapshot and self.books.config.fetch_snapshot is None):
            self._resubscribe(symbol, connection)  # (the stream sends a snapshot only on subscribing)
        elif result.need_snapshot:
            self._spawn(self._fetch, symbol, connection)

    async def _fetch(self, symbol: str, connection: str) -> None:
        result = await self.books.fetch(symbol)
        if result.error:
            log.warning("%s: %s; trying again in %g s", connection or "books", result.error, _RETRY)
            await anyio.sleep(_RETRY)
        self._after(symbol, result, connection)
        if self.books.state(symbol) is BookState.SYNCED:
            self._publish_view(symbol, connection, self._hub.now())

    def _publish_view(self, symbol: str, connection: str, received: float) -> None:
        if self._hub.wants(Book, symbol):
            self._hub.deliver(msgspec.structs.replace(self.books.event(symbol), connection=connection, received=received))
