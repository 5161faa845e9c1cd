"""Play a recording (:mod:`transports.record`) back to a client, at the recorded times.

The replayer is a dialer: each dial returns the next recorded session as a
stream that hands the client the server's side of it::

    replayer = Replayer(Recording.load("session.jsonl"))
    conn = Connection(setup, dialer=replayer.dialer())

- Inbound reads come at their recorded times, shifted by when the replay's
  dial happened against the recorded dial (on a virtual clock that starts
  where the recording's did, the times are the same), and in the recorded
  groups (what one receive returned then, one receive returns now).
- A read also waits until the client has sent as many items (handshake,
  frames) as it had when that read arrived in the recording, so a reply is
  never handed over before the request it answers; a client that sends less
  than it did waits ``patience`` seconds, then the read comes anyway (and a
  mismatch is noted).
- The server's 101 answer is rebuilt with a ``Sec-WebSocket-Accept`` for the
  replaying client's own key; the rest of the head is as recorded.
- The end comes as recorded: end of stream, or a reset (the same error type
  and message), or nothing (the client closed first).
- What the client sends is accepted and dropped. With ``strict=True`` each
  item is compared with the recorded one (after the recording's redaction)
  and every difference is kept in :attr:`Replayer.mismatches`.

Bad files raise :class:`RecordingError` with the file, line and problem.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import orjson
from anyio.abc import ByteStream

from transports.base import URL, Capabilities, Dialer
from transports.encode import encode_frame
from transports.errors import WirestateError
from transports.record import FORMAT_VERSION, OPCODE_NAMES, Redaction, MessageTracker, item_fields
from transports.tap import Head, StreamParser

__all__ = ["RecordedRead", "RecordedSession", "Recording", "RecordingError", "Replayer", "ReplayStream"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OPCODES = {name: code for code, name in OPCODE_NAMES.items()}


class RecordingError(WirestateError, ValueError):
    """A recording file cannot be read or is not a wirestate recording."""


@dataclass(slots=True)
class RecordedRead:
    """What one receive returned in the recording: its time, how many items the client had sent, the lines."""

    t: float
    after: int
    lines: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class RecordedSession:
    """One dial of the recording."""

    connection: str
    number: int
    dialed_at: float
    url: str = ""  # as recorded (redacted)
    failed: dict[str, Any] | None = None  # the dial_failed line
    reads: list[RecordedRead] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)  # the client's items, as recorded
    end: RecordedRead | None = None  # the eof/reset line (None: the client closed first)


class Recording:
    """A parsed recording: its sessions in dial order (see :meth:`load`)."""

    def __init__(self, sessions: list[RecordedSession], last_time: float) -> None:
        self.sessions = sessions
        #: the clock time of the recording's last line
        self.last_time = last_time

    @property
    def connections(self) -> list[str]:
        """The logical connection ids, in order of first dial."""
        return list(dict.fromkeys(s.connection for s in self.sessions))

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        """Read a JSONL recording file; :class:`RecordingError` (one line, no traceback worth) if it is bad."""
        try:
            with open(path, "rb") as file:
                return cls.parse(file, source=str(path))
        except FileNotFoundError:
            raise RecordingError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise RecordingError(f"{path}: is a directory, not a recording") from None
        except OSError as exc:
            raise RecordingError(f"{path}: cannot read: {exc.strerror or exc}") from None

    @classmethod
    def parse(cls, lines: Iterable[bytes | str], *, source: str = "<recording>") -> Recording:
        """Parse recording lines (blank lines are skipped)."""
        sessions: dict[tuple[str, int], RecordedSession] = {}
        open_read: dict[tuple[str, int], tuple[Any, RecordedRead]] = {}
        last = -math.inf
        seen_header = False
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            where = f"{source}:{number}"
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise RecordingError(f"{where}: not JSON ({exc})") from None
            if not isinstance(line, dict):
                raise RecordingError(f"{where}: a line must be a JSON object")
            if not seen_header:
                if line.get("kind") != "recording":
                    raise RecordingError(f"{where}: not a wirestate recording (the first line must be its header)")
                if line.get("version") != FORMAT_VERSION:
                    raise RecordingError(f"{where}: recording version {line.get('version')!r}, this reads {FORMAT_VERSION}")
                seen_header = True
                continue
            t, conn, number_, kind = line.get("t"), line.get("conn"), line.get("session"), line.get("kind")
            if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
                raise RecordingError(f"{where}: 't' must be a number")
            if not isinstance(conn, str) or not isinstance(number_, int) or not isinstance(kind, str):
                raise RecordingError(f"{where}: needs 'conn' (string), 'session' (integer) and 'kind' (string)")
            last = max(last, float(t))
            key = (conn, number_)
            if kind in ("dial", "dial_failed"):
                if key in sessions:
                    raise RecordingError(f"{where}: session {number_} of {conn!r} dialed twice")
                url = line.get("url")
                failed = line if kind == "dial_failed" else None
                sessions[key] = RecordedSession(conn, number_, float(t), url if isinstance(url, str) else "", failed)
                continue
            session = sessions.get(key)
            if session is None:
                raise RecordingError(f"{where}: session {number_} of {conn!r} has no dial line before it")
            direction = line.get("dir")
            if direction == "out":
                if kind in ("handshake", "frame", "raw"):
                    session.sent.append(line)
                continue
            if direction != "in":
                raise RecordingError(f"{where}: 'dir' must be 'in' or 'out'")
            _check_inbound(line, where)
            if kind in ("eof", "reset"):
                session.end = RecordedRead(float(t), len(session.sent), [line])
                continue
            read_no = line.get("read")
            current = open_read.get(key)
            if current is None or current[0] != read_no:
                read = RecordedRead(float(t), len(session.sent))
                open_read[key] = (read_no, read)
                session.reads.append(read)
            else:
                read = current[1]
            read.lines.append(line)
        if not seen_header:
            raise RecordingError(f"{source}: empty, not a wirestate recording")
        return cls(list(sessions.values()), last if sessions else 0.0)


def _check_inbound(line: dict[str, Any], where: str) -> None:
    kind = line["kind"]
    if kind == "frame":
        op = line.get("op")
        if not (op in _OPCODES or (isinstance(op, int) and 0 <= op <= 15)):
            raise RecordingError(f"{where}: unknown opcode {op!r}")
        _payload(line, where)
    elif kind == "handshake":
        start, headers = line.get("start"), line.get("headers")
        if not (isinstance(start, list) and len(start) == 3 and all(isinstance(s, str) for s in start)):
            raise RecordingError(f"{where}: 'start' must be the three parts of the status line")
        if not (isinstance(headers, list) and all(isinstance(h, list) and len(h) == 2 for h in headers)):
            raise RecordingError(f"{where}: 'headers' must be [name, value] pairs")
    elif kind in ("body", "raw"):
        _payload(line, where)
    elif kind not in ("eof", "reset"):
        raise RecordingError(f"{where}: unknown kind {kind!r}")


def _payload(line: dict[str, Any], where: str) -> bytes:
    if "text" in line:
        if not isinstance(line["text"], str):
            raise RecordingError(f"{where}: 'text' must be a string")
        return line["text"].encode("utf-8")  # type: ignore[no-any-return]
    if "b64" in line:
        try:
            return base64.b64decode(line["b64"], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise RecordingError(f"{where}: 'b64' is not base64") from None
    return b""


def _encode(line: dict[str, Any], client_key: str | None) -> bytes:
    """The bytes a recorded inbound line stands for."""
    kind = line["kind"]
    if kind == "handshake":
        start = line["start"]
        headers = [(n, v) for n, v in line["headers"]]
        if start[1] == "101" and client_key is not None:
            accept = base64.b64encode(hashlib.sha1(client_key.encode("ascii") + _GUID).digest()).decode()
            headers = [(n, accept if n.lower() == "sec-websocket-accept" else v) for n, v in headers]
        head = " ".join(start) + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
        return head.encode("latin-1")
    if kind in ("body", "raw"):
        return _payload(line, "")
    op = line["op"]
    opcode = _OPCODES[op] if isinstance(op, str) else op
    if "code" in line:
        payload = int(line["code"]).to_bytes(2, "big") + str(line.get("reason", "")).encode("utf-8")
    else:
        payload = _payload(line, "")
    mask = base64.b64decode(line["mask"]) if "mask" in line else None
    frame = encode_frame(opcode, payload, fin=line.get("fin", True), mask=mask is not None, mask_key=mask)
    rsv = line.get("rsv", 0)
    return bytes([frame[0] | (rsv & 7) << 4]) + frame[1:] if rsv else frame


def _end_error(line: dict[str, Any]) -> BaseException:
    if line["kind"] == "eof":
        return anyio.EndOfStream()
    name, message = str(line.get("error", "")), str(line.get("message", ""))
    args = (message,) if message else ()
    if name == "BrokenResourceError":
        return anyio.BrokenResourceError(*args)
    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, OSError):
        return cls(*args)
    return anyio.BrokenResourceError(*args)


class Replayer:
    """Dials into a :class:`Recording` (see the module doc).

    ``clock`` is the injected clock (``anyio.current_time`` by default);
    ``patience`` how long a read waits past its time for the client's
    matching sends; ``redaction`` must be the recording's (for ``strict``
    comparisons of secrets, which are compared redacted).
    """

    def __init__(
        self,
        recording: Recording,
        *,
        strict: bool = False,
        patience: float = 0.001,
        clock: Callable[[], float] | None = None,
        redaction: Redaction | None = None,
    ) -> None:
        if not isinstance(recording, Recording):
            raise TypeError(f"Replayer needs a Recording (Recording.load(path)), not {type(recording).__name__}")
        self.recording = recording
        self.strict = strict
        self.patience = patience
        self.redaction = redaction if redaction is not None else Redaction()
        self._clock = clock if clock is not None else anyio.current_time
        self._next: dict[str | None, int] = {}
        #: differences between what the client did and the recording (strict mode, and late sends)
        self.mismatches: list[str] = []
        #: sessions handed out so far
        self.dialed = 0

    def dialer(self, connection: str | None = None) -> Dialer:
        """A dialer that returns the recorded sessions of ``connection`` (None: every session) in order."""
        sessions = [s for s in self.recording.sessions if connection is None or s.connection == connection]
        if connection is not None and not sessions:
            known = ", ".join(repr(c) for c in self.recording.connections) or "none"
            raise RecordingError(f"the recording has no connection {connection!r} (it has {known})")

        async def dial(url: URL) -> ByteStream:
            index = self._next.get(connection, 0)
            if index >= len(sessions):
                await anyio.lowlevel.checkpoint()
                raise ConnectionRefusedError(f"the recording has no more sessions ({len(sessions)} played)")
            self._next[connection] = index + 1
            self.dialed += 1
            session = sessions[index]
            now = self._clock()
            if session.failed is not None:
                await anyio.lowlevel.checkpoint()
                error = _end_error({"kind": "reset", **session.failed})
                raise error if isinstance(error, OSError) else ConnectionRefusedError(str(error))
            offset = now - session.dialed_at
            return ReplayStream(session, self, offset)

        return dial


class ReplayStream(ByteStream):
    """The server's side of one recorded session, played to a client (made by :meth:`Replayer.dialer`)."""

    #: writes are taken at once; closing never waits
    capabilities = Capabilities(atomic_send=True, instant_close=True)

    def __init__(self, session: RecordedSession, replayer: Replayer, offset: float) -> None:
        self._session = session
        self._replayer = replayer
        self._offset = offset
        self._index = 0
        self._pending = b""
        self._out = StreamParser()
        self._out_ops = MessageTracker()
        self._sent = 0
        self._sent_changed: anyio.Event | None = None
        self._client_key: str | None = None
        self._closed = False
        self._ended = False

    def _at(self, t: float) -> float:
        return t if self._offset == 0 else t + self._offset

    async def _wait(self, read: RecordedRead) -> None:
        target = self._at(read.t)
        if target > self._replayer._clock():
            await anyio.sleep_until(target)
        else:
            # as a live stream does with data at hand: let the tasks it woke run first
            await anyio.lowlevel.checkpoint()
        deadline = target + self._replayer.patience
        while self._sent < read.after:
            event = self._sent_changed = anyio.Event()
            with anyio.CancelScope(deadline=deadline) as scope:
                await event.wait()
            if scope.cancelled_caught:
                self._replayer.mismatches.append(
                    f"session {self._session.number}: the client had sent {self._sent} items by "
                    f"t={read.t:g}, the recording {read.after}"
                )
                return

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        if not self._pending:
            reads = self._session.reads
            if self._index >= len(reads):
                end = self._session.end
                if end is None:
                    await anyio.sleep_forever()  # the client closed first in the recording
                    raise AssertionError("unreachable")  # pragma: no cover
                if not self._ended:
                    await self._wait(end)
                self._ended = True
                raise _end_error(end.lines[0])
            read = reads[self._index]
            await self._wait(read)
            self._index += 1
            self._pending = b"".join(_encode(line, self._client_key) for line in read.lines)
            if not self._pending:
                return await self.receive(max_bytes)
        else:
            await anyio.lowlevel.checkpoint()
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._ended and self._session.end is not None and self._session.end.lines[0]["kind"] == "reset":
            raise _end_error(self._session.end.lines[0])
        await anyio.lowlevel.checkpoint()
        items = self._out.feed(item)
        for parsed in items:
            if isinstance(parsed, Head) and self._client_key is None:
                self._client_key = parsed.header("Sec-WebSocket-Key")
            if self._replayer.strict:
                self._compare(parsed)
            self._sent += 1
        if items and self._sent_changed is not None:
            self._sent_changed.set()
            self._sent_changed = None

    def _compare(self, parsed: Any) -> None:
        op = self._out_ops.message_op(parsed)
        actual: Any = item_fields(parsed, self._replayer.redaction, op)
        recorded_list = self._session.sent
        index = self._sent
        if index >= len(recorded_list):
            self._replayer.mismatches.append(f"session {self._session.number}: extra item sent: {_brief(actual)}")
            return
        recorded: Any = {k: v for k, v in recorded_list[index].items() if k not in ("t", "conn", "session", "dir")}
        if actual.get("kind") == "handshake" and recorded.get("kind") == "handshake":
            actual, recorded = actual["start"], recorded.get("start")  # headers carry a fresh nonce
        if actual != recorded:
            self._replayer.mismatches.append(
                f"session {self._session.number}, item {index + 1}: sent {_brief(actual)}, recorded {_brief(recorded)}"
            )

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._closed = True
        if self._sent_changed is not None:
            self._sent_changed.set()
        await anyio.lowlevel.checkpoint()


def _brief(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 200 else text[:197] + "..."
