"""Errors of the order-book part (re-exported by :mod:`engine.books`).

::

    WirestateError
    └── BookError
        ├── BookDataError (also ValueError)   a price or size the book cannot take
        └── UnknownBook (also LookupError)     no book for that symbol

A per-symbol problem met while streaming never raises into the connection:
the driver turns it into a resync and events (:mod:`engine.books.sync`).
These errors reach callers of the direct APIs (``Book.update``, ``Books.view``).
"""

from __future__ import annotations

from transports.errors import WirestateError

__all__ = ["BookDataError", "BookError", "UnknownBook"]


class BookError(WirestateError):
    """Root of the order-book errors."""


class BookDataError(BookError, ValueError):
    """A level the book cannot take: a price or size that is not the exchange's decimal
    text, not finite, or negative. The message names the symbol, side and value."""


class UnknownBook(BookError, LookupError):
    """No book is kept for that symbol (never started, or removed)."""
