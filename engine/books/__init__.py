"""Order books that stay exact: buffer, sequence rules, checksums, per-symbol resync.

::

    from engine.books import Books, BookConfig
    from engine.books.sequence import Binance
    from engine.events import BookUpdate

    books = Books(BookConfig(sequence=Binance(), fetch_snapshot=fetch))
    result = books.apply(BookUpdate(symbol="BTC-USDT", bids=bids, asks=asks, first_seq=U, seq=u, received=now))
    if result.need_snapshot:
        tg.start_soon(books.fetch, "BTC-USDT")
    books("BTC-USDT", 25).best_bid

Inputs and events are the engine's typed events (:mod:`engine.events`:
``BookUpdate``, ``BookSnapshot`` in; ``Gap``, ``Error`` of kind ``RESYNC``,
``BookResynced`` out). Modules: ``book`` (:class:`Book`, :class:`BookView`),
``sequence`` (rules), ``checksum`` (CRC32 helpers), ``sync`` (:class:`BookSync`,
:class:`Books`), ``config`` (:class:`BookConfig`), ``errors``. The machine is
:mod:`machines.book`.
"""

from engine.books.book import Book, BookView, Level, RawLevel
from engine.books.config import BookConfig
from engine.books.errors import BookDataError, BookError, UnknownBook
from engine.books.sync import BookResult, Books, BookStats, BookSync
from machines.book import BookState

__all__ = [
    "Book",
    "BookConfig",
    "BookDataError",
    "BookError",
    "BookResult",
    "BookState",
    "BookStats",
    "BookSync",
    "BookView",
    "Books",
    "Level",
    "RawLevel",
    "UnknownBook",
]
