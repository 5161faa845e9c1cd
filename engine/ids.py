"""Message ids: a per-connection counter, UUIDv7, or the user's own callable.

- :class:`Counter`: 1, 2, 3, ... Each connection owns one, so its ids stay
  unique across reconnects of that logical connection (the counter lives on
  the connection object, not on a session). Safe from any task or thread:
  ``next()`` on an :func:`itertools.count` is one C call, atomic under the GIL.
- :func:`uuid7`: RFC 9562 version 7 UUIDs: a 48-bit Unix timestamp in
  milliseconds, then a 12-bit counter in ``rand_a`` (so ids made within one
  millisecond still sort in creation order), then 62 random bits. They sort by
  creation time as UUIDs, as bytes and as strings, also across threads of one
  process. :class:`Uuid7` makes them from an injectable wall clock (tests).
- :func:`message_id_source`: what a setup's ``message_id`` holds (``None``,
  ``"counter"``, ``"uuid7"`` or a callable ``() -> int | str``) turned into the
  zero-argument callable a connection's ``next_id()`` calls.

UUIDv7 reads the wall clock (``time.time_ns``) on purpose: its timestamp is a
date. Everything that measures time spans reads the event loop's clock
instead (:mod:`engine.clock`).
"""

from __future__ import annotations

import inspect
import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable

from engine.errors import ConfigError

__all__ = ["Counter", "MessageIdSource", "Uuid7", "message_id_source", "uuid7", "uuid7_str"]

#: a zero-argument callable that returns the next message id
MessageIdSource = Callable[[], int | str]

_VERSION_7 = 0x7 << 76  # the 4 version bits, above rand_a
_VARIANT = 0b10 << 62  # the 2 variant bits (RFC 9562), above rand_b
_COUNTER_MAX = 0xFFF  # rand_a: 12 bits
_RAND_B = (1 << 62) - 1
_TIMESTAMP_MAX = (1 << 48) - 1


class Counter:
    """Message ids 1, 2, 3, ... (``start`` first); call it, or ``next()`` it.

    Thread- and task-safe: each call is one ``next()`` on an
    :func:`itertools.count` (a single C call, atomic under the GIL), so no two
    callers ever get the same id.
    """

    __slots__ = ("_count",)

    def __init__(self, start: int = 1) -> None:
        if isinstance(start, bool) or not isinstance(start, int):
            raise ConfigError(f"Counter start must be an integer, not {start!r}")
        self._count = itertools.count(start)

    def __call__(self) -> int:
        """The next id."""
        return next(self._count)

    def __next__(self) -> int:
        """The next id (``next(counter)``)."""
        return next(self._count)

    def __iter__(self) -> Counter:
        """A counter is its own (endless) iterator."""
        return self

    def __repr__(self) -> str:
        # the count's repr names the next value without taking it
        return f"<Counter next={repr(self._count)[6:-1]}>"


class Uuid7:
    """A source of RFC 9562 UUIDv7s that sort by creation time, monotonic within the process.

    Layout: 48-bit ``unix_ts_ms`` | version 7 | 12-bit ``rand_a`` counter |
    variant ``0b10`` | 62 random bits. Within one millisecond the counter
    (started at a random value below 2048 each new millisecond, so at least
    2048 ids fit) goes up by one per id; when it would overflow, or when the
    wall clock steps back, the timestamp is carried forward by a millisecond
    instead, so the ids never go backwards (RFC 9562 §6.2, method 1).

    Args:
        clock_ns: the wall clock, nanoseconds since the Unix epoch (default
            ``time.time_ns``, looked up on each call so freezegun's ``tick=True``
            reaches it).
        randbytes: ``n -> n random bytes`` (default ``os.urandom``).

    Calls are serialised by a lock: one source may be shared by threads.
    """

    __slots__ = ("_clock_ns", "_randbytes", "_lock", "_last_ms", "_counter")

    def __init__(
        self, clock_ns: Callable[[], int] | None = None, randbytes: Callable[[int], bytes] | None = None
    ) -> None:
        self._clock_ns = clock_ns
        self._randbytes = randbytes if randbytes is not None else os.urandom
        self._lock = threading.Lock()
        self._last_ms = -1
        self._counter = 0

    def __call__(self) -> uuid.UUID:
        """The next UUIDv7."""
        return uuid.UUID(int=self.next_int())

    def next_int(self) -> int:
        """The next UUIDv7 as a 128-bit integer."""
        now_ns = self._clock_ns() if self._clock_ns is not None else time.time_ns()
        rand = int.from_bytes(self._randbytes(10), "big")  # 80 bits: 62 for rand_b, 11 for a counter start
        with self._lock:
            ms = now_ns // 1_000_000
            if ms > self._last_ms:
                self._last_ms = ms
                self._counter = rand >> 69  # 11 bits: the counter's top bit starts clear
            else:  # same millisecond, or the clock stepped back: keep going up
                self._counter += 1
                if self._counter > _COUNTER_MAX:
                    self._last_ms += 1  # borrow the next millisecond
                    self._counter = rand >> 69
            ms, counter = self._last_ms, self._counter
        if ms > _TIMESTAMP_MAX:
            raise OverflowError("UUIDv7 timestamp beyond 48 bits (past the year 10889)")
        return (ms << 80) | _VERSION_7 | (counter << 64) | _VARIANT | (rand & _RAND_B)


_default_uuid7 = Uuid7()


def uuid7() -> uuid.UUID:
    """A new RFC 9562 UUIDv7 from the process-wide source (sorts by creation time)."""
    return uuid.UUID(int=_default_uuid7.next_int())


def uuid7_str() -> str:
    """A new UUIDv7 as its canonical 36-character string (``"0190f1c2-...-..."``)."""
    return str(uuid.UUID(int=_default_uuid7.next_int()))


def message_id_source(value: None | str | Callable[[], int | str]) -> MessageIdSource:
    """The zero-argument id source a setup's ``message_id`` names.

    - ``None`` or ``"counter"``: a new :class:`Counter` (1, 2, 3, ...);
    - ``"uuid7"``: :func:`uuid7_str` (UUIDv7 strings, time-ordered);
    - a callable ``() -> int | str``: itself (a plain function: ids are taken
      synchronously, so an ``async def`` is refused).

    Raises:
        ConfigError: for anything else.
    """
    if value is None or value == "counter":
        return Counter()
    if value == "uuid7":
        return uuid7_str
    if isinstance(value, str) or not callable(value):
        raise ConfigError(
            f"message_id must be None, 'counter', 'uuid7' or a callable () -> int | str, not {value!r}"
        )
    if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(getattr(type(value), "__call__", None)):
        raise ConfigError("message_id must be a plain function () -> int | str, not an async one")
    try:
        inspect.signature(value).bind()
    except TypeError:
        raise ConfigError(f"message_id {value!r} must be callable with no arguments") from None
    except ValueError:
        pass  # no signature to read (some builtins): trust it
    return value
