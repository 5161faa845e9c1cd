"""The simulated exchange's server-side log: what each connection received and sent, and when.

One :class:`Transcript` per accepted connection (``SimExchange.transcripts``,
in accept order). Each :class:`Entry` has the exchange's clock time
(``anyio.current_time()``: virtual time in tests), a direction, a kind and the
data:

- ``direction`` ``"in"``: from the client; ``"out"``: written to the client;
  ``"note"``: something the exchange did without a frame (``reset``,
  ``half_open``, a ``missed`` data message while stalled is not logged, it is
  counted).
- ``kind``: ``"text"`` / ``"binary"`` (a whole message), ``"ping"``,
  ``"pong"``, ``"close"`` (data ``"<code> <reason>"``), ``"raw"`` (bytes
  written as they are, e.g. a malformed frame), or the note's name.
- ``data``: the text (for ``"binary"``, ``"raw"``, ``"ping"`` and ``"pong"``
  the bytes' hex).

Outgoing entries are stamped when written (a reply held by a stall is logged
when the stall ends). A login's ``signature`` is replaced by ``"<redacted>"``.
A transcript keeps its newest ``limit`` entries and counts what it forgot in
:attr:`Transcript.forgotten`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import orjson

__all__ = ["Direction", "Entry", "Transcript", "redact"]

Direction = Literal["in", "out", "note"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One logged frame or event of one connection."""

    time: float
    direction: Direction
    kind: str
    data: str = ""


def redact(text: str) -> str:
    """``text`` with a login's ``signature`` value replaced (other messages unchanged)."""
    if '"signature"' not in text:
        return text
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    if isinstance(message, dict) and "signature" in message:
        message["signature"] = "<redacted>"
        return orjson.dumps(message).decode()
    return text


class Transcript:
    """The bounded log of one connection (newest ``limit`` entries)."""

    def __init__(self, limit: int) -> None:
        self._entries: deque[Entry] = deque(maxlen=limit)
        #: Entries dropped to keep the bound.
        self.forgotten = 0

    def add(self, time: float, direction: Direction, kind: str, data: str = "") -> None:
        """Append one entry."""
        if len(self._entries) == self._entries.maxlen:
            self.forgotten += 1
        self._entries.append(Entry(time, direction, kind, data))

    def clear(self) -> None:
        """Forget every entry (counted in :attr:`forgotten`)."""
        self.forgotten += len(self._entries)
        self._entries.clear()

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> Entry:
        return self._entries[index]

    def texts(self, direction: Direction = "out") -> list[str]:
        """The text messages in one direction, in order."""
        return [e.data for e in self._entries if e.direction == direction and e.kind == "text"]
