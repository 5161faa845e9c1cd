"""Order books that stay exact: buffer, sequence rules, checksums, per-symbol resync.

::

    from engine.books import Books, BookConfig, BookDelta, BookSnapshot
    from engine.books.sequence import Binance
    from engine.books.checksum import okx_checksum

    books = Books(BookConfig(sequence=Binance(), fetch_snapshot=fetch))
    result = books.apply(BookDelta("BTC-USDT", bids, asks, first=U, last=u, received_at=now))
    if result.need_snapshot:
        tg.start_soon(books.fetch, "BTC-USDT")
    books("BTC-USDT", 25).best_bid

Modules: ``book`` (:class:`Book`, :class:`BookView`), ``sequence`` (rules),
``checksum`` (CRC32 helpers), ``sync`` (:class:`BookSync`, :class:`Books`),
``config`` (:class:`BookConfig`), ``values`` (inputs), ``events`` (:class:`Gap`,
:class:`BookResynced`), ``errors``. The machine is :mod:`machines.book`.
"""

from engine.books.book import Book, BookView
from engine.books.config import BookConfig
from engine.books.errors import BookDataError, BookError, UnknownBook
from engine.books.events import BookResynced, Gap
from engine.books.sync import BookResult, Books, BookStats, BookSync
from engine.books.values import BookDelta, BookSnapshot, Level
from machines.book import BookState

__all__ = [
    "Book",
    "BookConfig",
    "BookDataError",
    "BookDelta",
    "BookError",
    "BookResult",
    "BookResynced",
    "BookSnapshot",
    "BookState",
    "BookStats",
    "BookSync",
    "BookView",
    "Books",
    "Gap",
    "Level",
    "UnknownBook",
]
