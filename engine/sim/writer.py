"""The outgoing direction of one simulated-exchange connection: ordered writes, stalls, data faults.

Everything a connection sends goes through one :class:`Writer`: answers and
control frames (:meth:`Writer.emit`), data messages handed over by the feed or
the order desk (:meth:`Writer.deliver`, written by :meth:`Writer.run`) and raw
bytes. One lock keeps frames whole and the wire order equal to the order in
which things were queued: data handed over before an answer is written before
it (no data after an unsubscribe's ack). Every frame written is logged in the
connection's :class:`~engine.sim.wirelog.Transcript` at the time it is
written.

While stalled nothing is written: data is missed (counted, never re-sent),
droppable frames (pongs, pings) are dropped, answers are held and written in
order on :meth:`Writer.resume`; a frame sent with :attr:`Mode.SEND` (a close)
goes out anyway.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import anyio
import orjson
import wsproto.events as wse
from anyio.abc import ByteStream
from wsproto import WSConnection
from wsproto.connection import ConnectionState

from engine.sim import dialect
from engine.sim.wirelog import Transcript
from transports.encode import OP_TEXT, encode_frame

__all__ = ["MAX_OUTBOX", "Mode", "Outcome", "Writer"]

#: Data messages a connection may have waiting to be written; more are dropped and counted.
MAX_OUTBOX = 10_000


class Mode(enum.Enum):
    """What a write does while the connection is stalled."""

    HOLD = "hold"  # keep the bytes, send them on resume (answers)
    DROP = "drop"  # forget them (pongs, pings)
    SEND = "send"  # send anyway, forgetting what was held (close frames)


class Outcome(enum.Enum):
    """What became of a write."""

    SENT = "sent"
    HELD = "held"
    DROPPED = "dropped"


def _entry(event: wse.Event) -> tuple[str, str]:
    """How an outgoing event is logged: (kind, data)."""
    if isinstance(event, wse.TextMessage):
        return "text", event.data
    if isinstance(event, wse.CloseConnection):
        return "close", f"{event.code} {event.reason}".rstrip()
    if isinstance(event, (wse.Ping, wse.Pong)):
        return type(event).__name__.lower(), bytes(event.payload).hex()
    if isinstance(event, wse.BytesMessage):
        return "binary", bytes(event.data).hex()
    return type(event).__name__, ""


def _sendable(state: ConnectionState, event: wse.Event) -> bool:
    if isinstance(event, wse.CloseConnection):
        return state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)
    return state is ConnectionState.OPEN


class Writer:
    """The write path of one connection over ``stream``, framing control events with ``ws``."""

    def __init__(self, stream: ByteStream, ws: WSConnection, transcript: Transcript) -> None:
        self._stream = stream
        self._ws = ws
        self._transcript = transcript
        self._lock = anyio.Lock(fast_acquire=True)  # no checkpoint when free: a write per data message
        self._wake = anyio.Event()
        self._outbox: list[tuple[str, bytes]] = []  # data (text, frame) not yet written
        self._held: list[tuple[bytes, list[tuple[str, str]]]] = []  # answers held by a stall, and their log
        self._stalled = False
        self._close_when_flushed = False
        self._book_faults: list[tuple[str, str | None]] = []  # ("skip"|"corrupt", symbol or None: any)
        #: Data messages written so far.
        self.data_sent = 0
        #: Data messages offered while stalled or closing (skipped, never re-sent).
        self.missed = 0
        #: Data messages dropped because :data:`MAX_OUTBOX` were already waiting (a slow reader).
        self.overflowed = 0
        #: Book deltas left out (:meth:`skip_book`) or corrupted (:meth:`corrupt_book`).
        self.book_faults = 0

    @property
    def stalled(self) -> bool:
        """True between :meth:`stall` and :meth:`resume`."""
        return self._stalled

    def note(self, kind: str, data: str = "") -> None:
        """Log something the exchange did without a frame."""
        self._transcript.add(anyio.current_time(), "note", kind, data)

    def stall(self) -> None:
        """Write nothing until :meth:`resume` (see the module doc)."""
        self._stalled = True
        self._notify()

    def resume(self) -> None:
        """Held answers go out first, then data flows again."""
        self._stalled = False
        self._notify()

    def close_when_flushed(self) -> None:
        """Let :meth:`run` return once everything held is written (a close answer waits for a stall's end)."""
        self._close_when_flushed = True
        self._notify()

    def skip_book(self, symbol: str | None = None) -> None:
        """Leave out the next book delta (of ``symbol``, or any): a sequence gap for the client."""
        self._book_faults.append(("skip", symbol))

    def corrupt_book(self, symbol: str | None = None) -> None:
        """Write the next book delta (of ``symbol``, or any) with a wrong checksum."""
        self._book_faults.append(("corrupt", symbol))

    # -- data --------------------------------------------------------------------

    def deliver(self, channel: str, symbol: str, text: str, frame: bytes | None = None) -> None:
        """Take one data message; :meth:`run` writes it soon (never blocks).

        ``frame`` is the message's ready (unmasked, unfragmented) text frame,
        shared by every subscriber; without it the frame is made here. While
        stalled the message is missed (counted in :attr:`missed`); with
        :data:`MAX_OUTBOX` messages already waiting it is dropped (counted in
        :attr:`overflowed`).
        """
        if self._stalled or self._ws.state is not ConnectionState.OPEN:
            self.missed += 1
            return
        if self._book_faults and channel == "book" and '"type":"update"' in text:
            changed = self._book_fault(symbol, text)
            if changed is None:
                return
            if changed is not text:
                text, frame = changed, None
        if len(self._outbox) >= MAX_OUTBOX:
            self.overflowed += 1
            return
        self._outbox.append((text, encode_frame(OP_TEXT, text.encode(), mask=False) if frame is None else frame))
        if len(self._outbox) == 1:
            self._notify()

    def _book_fault(self, symbol: str, text: str) -> str | None:
        for i, (kind, wanted) in enumerate(self._book_faults):
            if wanted is None or wanted == symbol:
                del self._book_faults[i]
                self.book_faults += 1
                if kind == "skip":
                    self.note("skip_book", text)
                    return None
                message = orjson.loads(text)
                message["checksum"] = message["checksum"] ^ 1  # stays a signed 32-bit value
                self.note("corrupt_book", symbol)
                return dialect.encode(message)
        return text

    # -- writing -----------------------------------------------------------------

    def _notify(self) -> None:
        """Wake :meth:`run`: data queued, stall or closing changed."""
        self._wake.set()
        self._wake = anyio.Event()

    async def emit(self, events: Sequence[wse.Event], mode: Mode) -> Outcome:
        """Encode and write ``events`` after the held answers and queued data (empty: just flush)."""
        if not events and not self._outbox and not self._held:
            return Outcome.SENT  # nothing to flush: no lock, no checkpoint
        async with self._lock:
            if self._stalled and mode is Mode.DROP:
                return Outcome.DROPPED
            sendable = [e for e in events if _sendable(self._ws.state, e)]
            if events and not sendable:
                return Outcome.DROPPED  # the close handshake has begun: too late
            chunks = [self._ws.send(e) for e in sendable]
            entries = [_entry(e) for e in sendable]
            if mode is Mode.SEND:
                self._held.clear()
            elif self._stalled:
                if chunks:
                    self._held.append((b"".join(chunks), entries))
                return Outcome.HELD
            outbox, self._outbox = self._outbox, []
            if outbox and self._ws.state is ConnectionState.OPEN:
                # Data frames skip wsproto: whole unmasked messages need no protocol state.
                chunks[:0] = [frame for _, frame in outbox]
                entries[:0] = [("text", text) for text, _ in outbox]
            else:
                self.missed += len(outbox)
                outbox = []
            held, self._held = self._held, []
            data = b"".join(chunk for chunk, _ in held) + b"".join(chunks)
            if data:
                await self._stream.send(data)
                now = anyio.current_time()
                add = self._transcript.add
                for kind, text in [e for _, logged in held for e in logged] + entries:
                    add(now, "out", kind, text)
            self.data_sent += len(outbox)
            return Outcome.SENT

    async def send_raw(self, data: bytes) -> None:
        """Write ``data`` as is (no framing), even if stalled."""
        async with self._lock:
            self._transcript.add(anyio.current_time(), "out", "raw", data.hex())
            await self._stream.send(data)

    async def run(self) -> None:
        """Write whatever is queued whenever something is; returns after :meth:`close_when_flushed`."""
        while True:
            wake = self._wake  # taken before any await, so no notification is missed
            if not self._stalled:
                await self.emit([], Mode.HOLD)  # held answers, then queued data
                if self._close_when_flushed:
                    return
            await wake.wait()
