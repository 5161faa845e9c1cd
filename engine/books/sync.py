"""The per-symbol sync driver: buffer, snapshot, sequence, checksum, resync.

Sans-IO: the driver takes already decoded values, the engine's typed events
:class:`~engine.events.BookUpdate` and :class:`~engine.events.BookSnapshot`
(levels as the exchange's text; ``ts`` the exchange's time, ``received`` the
injected clock's; any object with those attributes works), and answers each
with a :class:`BookResult`: the events it produced and what the caller has to
do next. It never sleeps, reads a clock or sends:

- ``need_snapshot``: the symbol waits for a snapshot. If it comes from REST
  (``BookConfig.fetch_snapshot``) the caller starts ``await books.fetch(symbol)``
  in its own task group; that is the only awaiting part (bounded by
  ``fetch_timeout``, at most one fetch per symbol at a time, a failure counted
  and reported in the result, never raised). Otherwise the stream sends it.
- ``resubscribe``: the exchange sends a new snapshot only on a resubscribe
  (``BookConfig.resubscribe``): the caller resubscribes that symbol.

Each symbol has its own machine (:mod:`machines.book`) fired on sync events
only; a delta in ``synced`` is a sequence check and a book update. A gap, a
checksum mismatch, bad data or a buffer overflow resyncs *that* symbol and
never raises: every other symbol keeps applying. The events are the engine's
(:mod:`engine.events`), so they go to the same streams as the data: a
sequence gap is a :class:`~engine.events.Gap` (``expected``: one past the
book's sequence; ``got``: the first id the delta covers); a checksum mismatch,
a bad level or an overflow is an :class:`~engine.events.Error` of kind
``RESYNC`` naming the symbol and the cause; when the book is exact again, a
:class:`~engine.events.BookResynced` with the first cause as ``reason``
(``"sequence"``, ``"checksum"``, ``"bad_data"``, ``"overflow"``). Each carries
``received``: the injected clock's time of the message (or fetch) that caused
it. Everything dropped is counted in :class:`BookStats` (stale deltas,
overflowed or discarded buffers, unused snapshots).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from engine.books.book import Book, BookView
from engine.books.config import BookConfig
from engine.books.errors import BookDataError, UnknownBook
from engine.books.sequence import APPLY, STALE
from engine.errors import ConfigError
from engine.events import Book as BookEvent
from engine.events import BookResynced, BookSnapshot, BookUpdate, Error, ErrorKind, Gap
from machines.book import BookModel, BookState

__all__ = ["BookResult", "BookStats", "BookSync", "Books", "StateListener"]

_SYNCED = BookState.SYNCED.value
_UNSYNCED = BookState.UNSYNCED.value

#: ``(symbol, source, dest, trigger)`` after every transition of a symbol's machine
StateListener = Callable[[str, BookState, BookState, str], None]


@dataclass(frozen=True, slots=True)
class BookResult:
    """What one delta, snapshot or fetch did: events, and what the caller must do next."""

    events: tuple[Gap | Error | BookResynced, ...] = ()
    need_snapshot: bool = False
    resubscribe: bool = False
    error: str = ""  # a failed fetch (also counted in BookStats.fetch_failures)


#: the common answer (applied, buffered or stale): shared, nothing allocated
NOTHING = BookResult()


@dataclass(slots=True)
class BookStats:
    """Counters of one symbol (``Books.stats`` returns a copy)."""

    applied: int = 0  # deltas applied to the book
    buffered: int = 0  # deltas buffered while waiting for a snapshot
    stale: int = 0  # deltas older than the book, dropped
    overflowed: int = 0  # buffered deltas dropped by a buffer overflow
    discarded: int = 0  # buffered deltas dropped by a reset or a bad snapshot
    snapshots: int = 0  # snapshots applied
    unused_snapshots: int = 0  # fetched snapshots that came when none was wanted any more
    gaps: int = 0  # sequence gaps
    checksum_failures: int = 0
    bad_data: int = 0  # messages with a level the book cannot take
    overflows: int = 0
    resyncs: int = 0  # times the book became exact again after a Gap
    fetches: int = 0
    fetch_failures: int = 0


class BookSync:
    """One symbol: its book, machine, buffer and counters (see the module docstring)."""

    def __init__(
        self, symbol: str, config: BookConfig, listener: StateListener | None = None, connection: str = ""
    ) -> None:
        self.symbol = symbol
        self.connection = connection  # stamped on the events
        self.config = config
        self.book = Book(symbol, config.depth, config.price_cache)
        self.stats = BookStats()
        self._model = BookModel(self._heard if listener is not None else None)
        self._listener = listener
        self._rule = config.sequence
        self._checksum = config.checksum
        self._buffer: list[BookUpdate] = []
        self._bridged = False  # a delta was applied since the snapshot (the rule's first/next distinction)
        self._lost: str | None = None  # why the book resyncs (the first cause): its BookResynced names it

    @property
    def state(self) -> BookState:
        """The symbol's sync state (its machine's)."""
        return BookState(self._model.state)

    def view(self, depth: int | None = None) -> BookView:
        """An immutable view of the best ``depth`` levels (all with None) and the state."""
        return self.book.view(depth, self._model.state)

    def _heard(self, source: BookState, dest: BookState, trigger: str, info: object) -> None:
        assert self._listener is not None
        self._listener(self.symbol, source, dest, trigger)

    # -- the caller's verbs ------------------------------------------------------------

    def start(self) -> BookResult:
        """Want this book: ``unsynced`` → ``buffering`` (deltas are kept until the snapshot)."""
        self._model.fire("start")
        return BookResult(need_snapshot=True, resubscribe=False)

    def apply(self, delta: BookUpdate) -> BookResult:
        """Apply, buffer or drop one delta; a problem resyncs this symbol (never raises)."""
        state = self._model.state
        if state == _SYNCED:
            return self._apply(delta)
        result = NOTHING
        if state == _UNSYNCED:
            result = self.start()
        buffer = self._buffer
        buffer.append(delta)
        self.stats.buffered += 1
        if len(buffer) > self.config.buffer_limit:
            dropped = len(buffer) - 1
            self.stats.overflows += 1
            self.stats.overflowed += dropped
            del buffer[:-1]  # keep the newest: it may still bridge the next snapshot
            limit = self.config.buffer_limit
            why = f"{dropped} buffered deltas dropped: more than buffer_limit={limit} before a snapshot"
            return self._lose("overflow", "overflow", delta.received, None, why, trim=False)
        return result

    def snapshot(self, snapshot: BookSnapshot) -> BookResult:
        """Replace the book with ``snapshot``, then apply the buffered deltas that follow it."""
        book = self.book
        at = snapshot.received
        if self._model.state == _UNSYNCED:
            self._model.fire("start")
        try:
            book.load(snapshot.bids, snapshot.asks)
        except BookDataError as exc:
            self.stats.bad_data += 1
            self.stats.discarded += len(self._buffer)
            self._buffer = []
            return self._lose("bad_data", "bad_data", at, None, f"snapshot refused: {exc}")
        book.seq = snapshot.seq
        book.ts = snapshot.ts
        book.received = at
        self._model.fire("snapshot")
        self.stats.snapshots += 1
        self._bridged = False
        if snapshot.checksum is not None and self._checksum is not None:
            mismatch = self._verify(snapshot.checksum, at)
            if mismatch is not None:
                return mismatch
        buffer, self._buffer = self._buffer, []
        for index, delta in enumerate(buffer):
            result = self._apply(delta)
            if self._model.state != _SYNCED:  # lost again: the newer deltas wait for the next snapshot
                self._buffer.extend(buffer[index + 1 :])
                return result
        cause, self._lost = self._lost, None
        if cause is None:
            return NOTHING
        self.stats.resyncs += 1
        healed = BookResynced(symbol=self.symbol, reason=cause, seq=book.seq, received=at, connection=self.connection)
        return BookResult((healed,))

    def reset(self) -> None:
        """Stop keeping this book (unsubscribed, connection lost): ``unsynced``, cleared."""
        if self._model.state != _UNSYNCED:
            self._model.fire("reset")
        self.stats.discarded += len(self._buffer)
        self._buffer = []
        self._lost = None
        self._bridged = False
        self.book.clear()

    # -- inside ------------------------------------------------------------------------

    def _apply(self, delta: BookUpdate) -> BookResult:
        book = self.book
        verdict = self._rule.check(delta, book.seq, self._bridged)
        if verdict != APPLY:
            if verdict == STALE:
                self.stats.stale += 1
                return NOTHING
            self.stats.gaps += 1
            last = book.seq
            got = delta.first_seq if delta.first_seq is not None else (
                delta.prev_seq + 1 if delta.prev_seq is not None else delta.seq
            )  # fmt: skip
            gap = Gap(symbol=self.symbol, expected=None if last is None else last + 1, got=got,
                      received=delta.received, connection=self.connection)  # fmt: skip
            return self._lose("sequence", "gap", delta.received, delta, gap)
        try:
            book.update(delta.bids, delta.asks)
        except BookDataError as exc:
            self.stats.bad_data += 1
            return self._lose("bad_data", "bad_data", delta.received, None, f"delta {delta.seq} refused: {exc}")
        if delta.seq is not None:
            book.seq = delta.seq
        book.ts = delta.ts
        book.received = delta.received
        self._bridged = True
        self.stats.applied += 1
        if delta.checksum is not None and self._checksum is not None:
            return self._verify(delta.checksum, delta.received) or NOTHING
        return NOTHING

    def _verify(self, expected: int, at: float) -> BookResult | None:
        assert self._checksum is not None
        try:
            ours = self._checksum(self.book)
        except Exception as exc:  # a broken hook is this symbol's problem, not the connection's
            self.stats.bad_data += 1
            return self._lose("bad_data", "bad_data", at, None, f"the checksum hook raised {exc!r}")
        if ours == expected:
            return None
        self.stats.checksum_failures += 1
        why = f"checksum mismatch at seq {self.book.seq}: the exchange's {expected}, the book's {ours}"
        return self._lose("checksum", "checksum_failed", at, None, why)

    def _lose(
        self, reason: str, trigger: str, at: float, keep: BookUpdate | None, event: Gap | str, trim: bool = True
    ) -> BookResult:
        """Continuity lost: fire ``trigger``, clear the book, buffer ``keep``, report ``event``
        (a Gap, or the text of a RESYNC Error)."""
        self._model.fire(trigger, reason)
        self.book.clear()
        self._bridged = False
        if trim:
            self.stats.discarded += len(self._buffer)
            self._buffer = [keep] if keep is not None else []
        if self._lost is None:  # the first cause of a resync is the one it heals
            self._lost = reason
        told: Gap | Error = event if isinstance(event, Gap) else Error(
            kind=ErrorKind.RESYNC, message=f"{self.symbol}: {event}; resyncing", symbol=self.symbol, received=at,
            connection=self.connection,
        )  # fmt: skip
        return BookResult((told,), need_snapshot=True, resubscribe=self.config.resubscribe)


class Books:
    """Every symbol's book under one :class:`BookConfig`, created on first use.

    ``books(symbol)`` (or ``books.view(symbol, depth)``) returns an immutable
    :class:`BookView`. ``apply``, ``snapshot`` and ``start`` route by symbol and
    return a :class:`BookResult`; ``fetch`` awaits the configured REST fetcher.
    ``on_state`` hears every transition of every symbol's machine;
    ``connection`` is stamped on the events (the logical id of the connection
    carrying these books).
    """

    def __init__(
        self, config: BookConfig | None = None, *, on_state: StateListener | None = None, connection: str = ""
    ) -> None:
        self.config = config if config is not None else BookConfig()
        self.connection = connection
        self._on_state = on_state
        self._syncs: dict[str, BookSync] = {}
        self._fetching: set[str] = set()  # symbols with a fetch in flight (one at a time)

    def sync(self, symbol: str) -> BookSync:
        """The symbol's driver, created (``unsynced``) on first use."""
        found = self._syncs.get(symbol)
        if found is None:
            found = self._syncs[symbol] = BookSync(symbol, self.config, self._on_state, self.connection)
        return found

    def _known(self, symbol: str) -> BookSync:
        found = self._syncs.get(symbol)
        if found is None:
            raise UnknownBook(f"no book for {symbol!r} (known: {sorted(self._syncs)[:10]})")
        return found

    def __call__(self, symbol: str, depth: int | None = None) -> BookView:
        return self._known(symbol).view(depth)

    def view(self, symbol: str, depth: int | None = None) -> BookView:
        """An immutable view of ``symbol``'s best ``depth`` levels (all with None)."""
        return self._known(symbol).view(depth)

    def event(self, symbol: str, depth: int | None = None) -> BookEvent:
        """``symbol``'s best ``depth`` levels as the engine's :class:`~engine.events.Book` event
        (levels as the exchange's text), for a stream; ``books(symbol)`` is the richer view."""
        found = self._known(symbol)
        book = found.book
        bids, asks = book.top(depth)
        return BookEvent(
            symbol=symbol, bids=tuple([(lv[2], lv[3]) for lv in bids]), asks=tuple([(lv[2], lv[3]) for lv in asks]),
            seq=book.seq, ts=book.ts, received=book.received or 0.0, connection=self.connection,
        )  # fmt: skip

    def book(self, symbol: str) -> Book:
        """The live book of ``symbol`` (read it; the driver writes it)."""
        return self._known(symbol).book

    def state(self, symbol: str) -> BookState:
        """The sync state of ``symbol``."""
        return self._known(symbol).state

    def stats(self, symbol: str) -> BookStats:
        """A copy of ``symbol``'s counters."""
        return dataclasses.replace(self._known(symbol).stats)

    def symbols(self) -> list[str]:
        """Every symbol with a driver."""
        return list(self._syncs)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._syncs

    def start(self, symbol: str) -> BookResult:
        """Want ``symbol``'s book (call on subscribe, so a REST fetch can start at once)."""
        return self.sync(symbol).start()

    def apply(self, delta: BookUpdate) -> BookResult:
        """Route one delta to its symbol's driver."""
        found = self._syncs.get(delta.symbol)
        if found is None:
            found = self.sync(delta.symbol)
        return found.apply(delta)

    def snapshot(self, snapshot: BookSnapshot) -> BookResult:
        """Route one snapshot (from the stream) to its symbol's driver."""
        return self.sync(snapshot.symbol).snapshot(snapshot)

    def reset(self, symbol: str) -> None:
        """``symbol`` back to ``unsynced`` (its book and buffer dropped, counted)."""
        self._known(symbol).reset()

    def reset_all(self) -> None:
        """Every symbol back to ``unsynced`` (the connection carrying them was lost)."""
        for found in self._syncs.values():
            found.reset()

    def remove(self, symbol: str) -> None:
        """Forget ``symbol`` (unsubscribed for good)."""
        self._known(symbol).reset()
        del self._syncs[symbol]

    async def fetch(self, symbol: str) -> BookResult:
        """Fetch ``symbol``'s snapshot with ``BookConfig.fetch_snapshot`` and apply it.

        Bounded by ``fetch_timeout``; a fetch already in flight for the symbol
        makes this return at once; a failure is counted and returned in
        ``error`` (with ``need_snapshot`` so the caller may retry), never
        raised. A snapshot that arrives when the symbol no longer waits for
        one (synced from the stream meanwhile, or reset) is dropped and counted.
        """
        fetcher = self.config.fetch_snapshot
        if fetcher is None:
            raise ConfigError("BookConfig.fetch_snapshot is not set: this setup's snapshots come from the stream")
        found = self.sync(symbol)
        if symbol in self._fetching:
            return NOTHING
        self._fetching.add(symbol)
        found.stats.fetches += 1
        try:
            with anyio.fail_after(self.config.fetch_timeout):
                snap = await fetcher(symbol)
        except Exception as exc:  # the fetcher's failure is this symbol's, never the connection's
            found.stats.fetch_failures += 1
            why = "timed out" if isinstance(exc, TimeoutError) else f"failed: {exc!r}"
            return BookResult(need_snapshot=True, error=f"snapshot fetch for {symbol} {why}")
        finally:
            self._fetching.discard(symbol)
        if found.state not in (BookState.BUFFERING, BookState.RESYNCING):
            found.stats.unused_snapshots += 1
            return NOTHING
        if snap.symbol != symbol:
            found.stats.fetch_failures += 1
            return BookResult(need_snapshot=True, error=f"snapshot fetch for {symbol} returned {snap.symbol!r}")
        return found.snapshot(snap)
