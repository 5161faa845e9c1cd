"""Record every WebSocket frame a stream carries to JSONL, secrets redacted first.

Wrap a dialer; each stream it opens writes one JSON line per event::

    with open("session.jsonl", "w") as out:
        recorder = Recorder(out, connection="spot")
        conn = Connection(setup, dialer=recorder.wrap(sim.dialer()))

Lines (``t`` is the injected clock's time, ``conn`` the logical connection
id you give, ``session`` the dial number of this recorder, from 1):

- ``{"kind":"recording","version":1}``: the first line;
- ``{"kind":"dial","url":...}`` when a dial returned, ``"dial_failed"`` (with
  ``error``/``message``) when it raised;
- ``{"kind":"handshake","dir":"out"|"in","start":[...],"headers":[[name,value],...]}``:
  the upgrade request and the answer; ``"body"`` lines carry a rejection's body;
- ``{"kind":"frame","dir":...,"op":"text"|"binary"|"cont"|"ping"|"pong"|"close",...}``:
  one line per frame, client frames unmasked; the payload is ``text`` (UTF-8
  text) or ``b64`` (anything else); a close frame has ``code`` and ``reason``;
  ``fin`` appears only when false (a fragment), ``rsv`` only when set;
- ``{"kind":"eof"|"reset","dir":"in"}``: how the server's side ended
  (``reset`` carries ``error`` and ``message``); ``{"kind":"eof"|"close","dir":"out"}``
  when the client half-closed or closed;
- inbound lines carry ``read``: the number of the receive call that completed
  them (a replay hands them over in the same groups).

Redaction (:class:`Redaction`) happens before a line is built, so a secret
never reaches the sink: JSON fields whose name looks like a credential (``key``,
``apiKey``, ``api_key``, ``signature``, ``sign``, ``secret``, ``passphrase``,
``listenKey``, ``token``, ...) at any depth, the values of headers such as
``Authorization`` and ``X-MBX-APIKEY`` (and any header whose last word is such
a name, e.g. ``OK-ACCESS-SIGN``), the same names in the request's query
string, and anything your own regular expressions match. Binary payloads are
recorded as they are (they are opaque here: redact them before sending, or
add a rule for their text).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import anyio
import orjson
from anyio.abc import ByteStream

from transports.base import URL, Capabilities, Dialer, capabilities_of
from transports.encode import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT
from transports.tap import Body, Frame, Head, Item, Raw, StreamParser

__all__ = [
    "DEFAULT_FIELDS",
    "DEFAULT_HEADERS",
    "FORMAT_VERSION",
    "MessageTracker",
    "OPCODE_NAMES",
    "REDACTED",
    "Recorder",
    "RecordingStream",
    "Redaction",
    "item_fields",
]

#: the version in a recording's first line
FORMAT_VERSION = 1
#: what a redacted value becomes
REDACTED = "***"

#: JSON field (and query parameter) names treated as secrets; compared without case, ``_`` and ``-``
DEFAULT_FIELDS = (
    "key", "apiKey", "api_key", "accessKey", "secretKey", "privateKey", "signature", "sign",
    "secret", "passphrase", "password", "listenKey", "token", "accessToken",
)  # fmt: skip
#: header names whose values are secrets (besides any header whose last word is a secret field name)
DEFAULT_HEADERS = ("Authorization", "Proxy-Authorization", "Cookie", "Set-Cookie", "X-MBX-APIKEY")

OPCODE_NAMES = {OP_CONT: "cont", OP_TEXT: "text", OP_BINARY: "binary", OP_CLOSE: "close", OP_PING: "ping", OP_PONG: "pong"}


def _norm(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


class Redaction:
    """Which parts of a recording are secrets (see the module doc).

    ``fields`` and ``headers`` add names to :data:`DEFAULT_FIELDS` and
    :data:`DEFAULT_HEADERS`; ``patterns`` are regular expressions applied to
    every recorded text (payloads, header values, the request target): a
    pattern's groups are replaced by ``***``, or the whole match when it has
    none. ``defaults=False`` starts from no names at all.
    """

    __slots__ = ("fields", "headers", "patterns")

    def __init__(
        self,
        *,
        fields: Iterable[str] = (),
        headers: Iterable[str] = (),
        patterns: Iterable[str | re.Pattern[str]] = (),
        defaults: bool = True,
    ) -> None:
        names = [*DEFAULT_FIELDS, *fields] if defaults else list(fields)
        header_names = [*DEFAULT_HEADERS, *headers] if defaults else list(headers)
        for name in (*names, *header_names):
            if not isinstance(name, str) or not name:
                raise ValueError(f"redaction names must be non-empty strings, not {name!r}")
        self.fields = frozenset(_norm(n) for n in names)
        self.headers = frozenset(n.lower() for n in header_names)
        compiled: list[re.Pattern[str]] = []
        for pattern in patterns:
            try:
                compiled.append(re.compile(pattern) if isinstance(pattern, str) else pattern)
            except re.error as exc:
                raise ValueError(f"redaction pattern {pattern!r} is not a regular expression: {exc}") from None
        self.patterns = tuple(compiled)

    def __repr__(self) -> str:
        return f"<Redaction {len(self.fields)} fields, {len(self.headers)} headers, {len(self.patterns)} patterns>"

    def secret_field(self, name: str) -> bool:
        """True when a JSON field or query parameter called ``name`` holds a secret."""
        return _norm(name) in self.fields

    def secret_header(self, name: str) -> bool:
        """True when header ``name``'s value is a secret."""
        lowered = name.lower()
        if lowered in self.headers:
            return True
        if lowered.startswith("sec-websocket-"):
            return False  # the handshake's own nonce and proof: not credentials
        return _norm(lowered.rsplit("-", 1)[-1]) in self.fields

    def text(self, text: str) -> str:
        """A text payload with secret JSON fields and pattern matches replaced."""
        stripped = text.lstrip()
        if stripped[:1] in ("{", "["):
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError:
                pass
            else:
                cleaned, changed = self._json(data)
                if changed:
                    text = orjson.dumps(cleaned).decode()
        return self.scrub(text)

    def scrub(self, text: str) -> str:
        """``text`` with every pattern match replaced."""
        for pattern in self.patterns:
            text = pattern.sub(_replace, text)
        return text

    def target(self, target: str) -> str:
        """A request target (path and query) with secret query values and pattern matches replaced."""
        path, question, query = target.partition("?")
        if question:
            parts = []
            for pair in query.split("&"):
                name, equals, _ = pair.partition("=")
                parts.append(f"{name}={REDACTED}" if equals and self.secret_field(name) else pair)
            target = path + "?" + "&".join(parts)
        return self.scrub(target)

    def _json(self, data: Any) -> tuple[Any, bool]:
        if isinstance(data, dict):
            changed = False
            out: dict[str, Any] = {}
            for name, value in data.items():
                if value is not None and self.secret_field(name):
                    out[name] = REDACTED
                    changed = True
                else:
                    out[name], inner = self._json(value)
                    changed = changed or inner
            return out, changed
        if isinstance(data, list):
            items = [self._json(value) for value in data]
            return [v for v, _ in items], any(c for _, c in items)
        return data, False


def _replace(match: re.Match[str]) -> str:
    if not match.re.groups:
        return REDACTED
    text, start = match.group(0), match.start()
    out, pos = [], 0
    for index in range(1, match.re.groups + 1):
        begin, end = match.span(index)
        if begin < 0 or begin - start < pos:
            continue
        out.append(text[pos : begin - start])
        out.append(REDACTED)
        pos = end - start
    out.append(text[pos:])
    return "".join(out)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def item_fields(item: Item, redaction: Redaction, message_op: int = 0, *, inbound: bool = False) -> dict[str, Any]:
    """The recorded fields of one parsed item (the part of a line that does not depend on when or where).

    ``message_op`` is the opcode of the message a continuation frame belongs
    to (text payloads are recorded as text); ``inbound``: a server frame, whose
    mask key (servers send none) is kept when present. Shared with the replayer, which
    compares what a client sends against the recording the same way.
    """
    if isinstance(item, Frame):
        fields: dict[str, Any] = {"kind": "frame", "op": OPCODE_NAMES.get(item.opcode, item.opcode)}
        if not item.fin:
            fields["fin"] = False
        if item.rsv:
            fields["rsv"] = item.rsv
        payload = item.payload
        if item.opcode == OP_CLOSE and len(payload) >= 2:
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                fields["b64"] = _b64(payload)
            else:
                fields["code"] = int.from_bytes(payload[:2], "big")
                fields["reason"] = redaction.scrub(reason)
        elif item.opcode == OP_TEXT or (item.opcode == OP_CONT and message_op == OP_TEXT):
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:  # a fragment cut inside a character
                fields["b64"] = _b64(payload)
            else:
                whole = item.fin and item.opcode == OP_TEXT
                fields["text"] = redaction.text(text) if whole else redaction.scrub(text)
        elif payload or item.opcode in (OP_BINARY, OP_CONT):
            fields["b64"] = _b64(payload)
        if item.mask and inbound:  # (a masked server frame breaks the protocol: keep what it was)
            fields["mask"] = _b64(item.mask)
        return fields
    if isinstance(item, Head):
        start = list(item.start)
        if item.status is None:
            start[1] = redaction.target(start[1])
        headers = [[n, REDACTED if redaction.secret_header(n) else redaction.scrub(v)] for n, v in item.headers]
        return {"kind": "handshake", "start": start, "headers": headers}
    data = item.data
    kind = "body" if isinstance(item, Body) else "raw"
    try:
        return {"kind": kind, "text": redaction.scrub(data.decode("utf-8"))}
    except UnicodeDecodeError:
        return {"kind": kind, "b64": _b64(data)}


class _Writable(Protocol):
    def write(self, text: str, /) -> Any: ...


class MessageTracker:
    """Which message a continuation frame continues (one per direction of a stream)."""

    __slots__ = ("op",)

    def __init__(self) -> None:
        self.op = 0

    def message_op(self, item: Item) -> int:
        """The opcode of the message ``item`` belongs to (0 for control frames and non-frames)."""
        if not isinstance(item, Frame):
            return 0
        if item.opcode in (OP_TEXT, OP_BINARY):
            self.op = item.opcode
            current = item.opcode
        elif item.opcode == OP_CONT:
            current = self.op
        else:
            return 0
        if item.fin:
            self.op = 0
        return current


class Recorder:
    """Writes JSONL lines for every stream opened through :meth:`wrap` (see the module doc).

    ``sink`` is a text file (anything with ``write``; flushed after each line
    when it has ``flush``) or a ``(line) -> None`` callable. ``clock`` is the
    injected clock (``anyio.current_time`` by default). ``connection`` is the
    logical connection id written on every line (``wrap`` can override it).
    """

    def __init__(
        self,
        sink: _Writable | Callable[[str], Any],
        *,
        connection: str = "connection",
        clock: Callable[[], float] | None = None,
        redaction: Redaction | None = None,
    ) -> None:
        if callable(sink):
            self._write_text: Callable[[str], Any] = sink
            self._flush: Callable[[], Any] | None = None
        elif callable(getattr(sink, "write", None)):
            self._write_text = sink.write
            flush = getattr(sink, "flush", None)
            self._flush = flush if callable(flush) else None
        else:
            raise TypeError(f"Recorder needs a text file or a callable sink, not {type(sink).__name__}")
        self.connection = connection
        self.redaction = redaction if redaction is not None else Redaction()
        self._clock = clock if clock is not None else anyio.current_time
        self._sessions = 0
        #: lines written so far (the header line included)
        self.lines = 0

    def wrap(self, dialer: Dialer, *, connection: str | None = None) -> Dialer:
        """A dialer that records every stream ``dialer`` opens (as ``connection``, or the recorder's id)."""
        name = connection if connection is not None else self.connection

        async def dial(url: URL) -> ByteStream:
            self._sessions += 1
            session = self._sessions
            try:
                inner = await dialer(url)
            except Exception as exc:
                self.write(name, session, {"kind": "dial_failed", **_error(exc), "url": self._url(url)})
                raise
            self.write(name, session, {"kind": "dial", "url": self._url(url)})
            return RecordingStream(inner, self, name, session)

        return dial

    def _url(self, url: URL) -> str:
        return f"{url.scheme}://{url.host_header}{self.redaction.target(url.resource)}"

    def write(self, connection: str, session: int, fields: dict[str, Any]) -> None:
        """Write one line: time, connection and session first, then ``fields`` (already redacted)."""
        if self.lines == 0:
            self._emit({"kind": "recording", "version": FORMAT_VERSION})
        self._emit({"t": self._clock(), "conn": connection, "session": session, **fields})

    def _emit(self, line: dict[str, Any]) -> None:
        self._write_text(orjson.dumps(line).decode() + "\n")
        self.lines += 1
        if self._flush is not None:
            self._flush()


def _error(exc: BaseException) -> dict[str, str]:
    return {"error": type(exc).__name__, "message": str(exc)}


class RecordingStream(ByteStream):
    """A stream that passes everything through ``inner`` and tells the recorder (made by :meth:`Recorder.wrap`)."""

    def __init__(self, inner: ByteStream, recorder: Recorder, connection: str, session: int) -> None:
        self._inner = inner
        self._recorder = recorder
        self._conn = connection
        self._session = session
        self._in = StreamParser()
        self._out = StreamParser()
        self._in_ops = MessageTracker()
        self._out_ops = MessageTracker()
        self._reads = 0
        self._closed = False
        caps = capabilities_of(inner)
        #: the inner stream's promises, unchanged (recording adds no await to a send)
        self.capabilities = Capabilities(atomic_send=caps.atomic_send, instant_close=caps.instant_close)

    def _line(self, fields: dict[str, Any]) -> None:
        self._recorder.write(self._conn, self._session, fields)

    def _items(self, items: Sequence[Item], direction: str, tracker: MessageTracker, read: int | None) -> None:
        redaction = self._recorder.redaction
        for item in items:
            op = tracker.message_op(item)
            fields = {"dir": direction, **item_fields(item, redaction, op, inbound=direction == "in")}
            if read is not None:
                fields["read"] = read
            self._line(fields)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            data = await self._inner.receive(max_bytes)
        except anyio.EndOfStream:
            self._end("eof")
            raise
        except anyio.ClosedResourceError:
            raise  # our own side closed: nothing about the peer
        except (anyio.BrokenResourceError, OSError) as exc:
            self._end("reset", exc)
            raise
        self._reads += 1
        self._items(self._in.feed(data), "in", self._in_ops, self._reads)
        return data

    def _end(self, kind: str, exc: BaseException | None = None) -> None:
        self._reads += 1
        pending = self._in.pending
        if pending:  # an incomplete frame when the stream ended: keep its bytes
            self._line({"dir": "in", **item_fields(Raw(pending, "incomplete"), self._recorder.redaction), "read": self._reads})
        fields: dict[str, Any] = {"dir": "in", "kind": kind, "read": self._reads}
        if exc is not None:
            fields.update(_error(exc))
        self._line(fields)

    async def send(self, item: bytes) -> None:
        await self._inner.send(item)
        self._items(self._out.feed(item), "out", self._out_ops, None)

    async def send_eof(self) -> None:
        await self._inner.send_eof()
        self._line({"dir": "out", "kind": "eof"})

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._line({"dir": "out", "kind": "close"})
        await self._inner.aclose()

    def abort(self) -> None:
        """Reset, when the inner stream can (tests call it on the client end)."""
        abort = getattr(self._inner, "abort", None)
        if callable(abort):
            if not self._closed:
                self._closed = True
                self._line({"dir": "out", "kind": "close"})
            abort()
