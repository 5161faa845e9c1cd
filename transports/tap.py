"""A passive parser of one direction of a WebSocket byte stream, for observers.

The recorder (:mod:`transports.record`), the replayer (:mod:`transports.replay`)
and the fault injector (:mod:`transports.faults`) watch bytes that somebody
else produces and consumes; they need to know where the HTTP upgrade ends and
where each frame begins and ends, in *both* directions (client frames are
masked, server frames are not), without judging them. :class:`StreamParser`
does just that: bytes in, :class:`Head`, :class:`Frame`, :class:`Body` and
:class:`Raw` items out, each with the stream offset where it ends. It never
raises on bad input: what it cannot parse comes out as :class:`Raw`.

The client's protocol decoder (:mod:`transports.frames`) is the one that
enforces RFC 6455; this one only cuts. No I/O, no clock, standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transports.encode import mask_payload

__all__ = ["Body", "Frame", "Head", "Item", "Raw", "StreamParser", "parse_head"]

_END_OF_HEAD = b"\r\n\r\n"
#: an upgrade head longer than this is not one (the rest is passed through as raw bytes)
MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Head:
    """An HTTP request or response head (the upgrade), ``raw`` as on the wire.

    ``start`` is the first line split in three (``GET /ws HTTP/1.1`` or
    ``HTTP/1.1 101 Switching Protocols``); ``status`` is the response status
    (None for a request).
    """

    raw: bytes
    start: tuple[str, str, str]
    headers: tuple[tuple[str, str], ...]
    status: int | None
    end: int = 0

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Frame:
    """One WebSocket frame; ``payload`` is unmasked; ``mask`` the key it came with (b"" if none)."""

    fin: bool
    opcode: int
    payload: bytes
    rsv: int = 0
    mask: bytes = b""
    end: int = 0


@dataclass(frozen=True, slots=True)
class Body:
    """Bytes after a non-101 response head (the rejection's body)."""

    data: bytes
    end: int = 0


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes that are not a head, a body or a frame (``why`` says what went wrong)."""

    data: bytes
    why: str = ""
    end: int = field(default=0)


Item = Head | Frame | Body | Raw


def parse_head(raw: bytes) -> Head | None:
    """Parse an HTTP head (with or without its blank line); None if it is not one."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        return None
    lines = text.rstrip("\r\n").split("\r\n")
    start = lines[0].split(" ", 2)
    if len(start) < 2:
        return None
    while len(start) < 3:
        start.append("")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            return None
        headers.append((name, value.strip()))
    status: int | None = None
    if start[0].startswith("HTTP/"):
        if not start[1].isdigit():
            return None
        status = int(start[1])
    elif not start[2].startswith("HTTP/"):
        return None
    return Head(raw, (start[0], start[1], start[2]), tuple(headers), status)


class StreamParser:
    """Cuts one direction of a WebSocket stream into items (see the module doc).

    ``head=True``: the stream starts with an HTTP head (the upgrade request
    or response). After a response other than 101 the rest is :class:`Body`.
    """

    __slots__ = ("_buf", "_mode", "offset")

    def __init__(self, *, head: bool = True) -> None:
        self._buf = bytearray()
        self._mode = "head" if head else "frames"
        #: stream offset of the first byte not yet part of an item
        self.offset = 0

    @property
    def pending(self) -> bytes:
        """Bytes received that do not complete an item yet."""
        return bytes(self._buf)

    def feed(self, data: bytes) -> list[Item]:
        """Take the next bytes of the stream; return the items they complete, in order."""
        if not data:
            return []
        buf = self._buf
        buf += data
        out: list[Item] = []
        while buf:
            mode = self._mode
            if mode == "head":
                end = buf.find(_END_OF_HEAD)
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        self._mode = "raw"
                        continue
                    break
                raw = bytes(buf[: end + 4])
                head = parse_head(raw)
                if head is None:
                    self._mode = "raw"
                    continue
                self._take(len(raw))
                out.append(Head(head.raw, head.start, head.headers, head.status, self.offset))
                self._mode = "body" if head.status is not None and head.status != 101 else "frames"
            elif mode == "frames":
                frame = self._frame()
                if frame is None:
                    break
                out.append(frame)
            elif mode == "body":
                chunk = bytes(buf)
                self._take(len(chunk))
                out.append(Body(chunk, self.offset))
            else:
                chunk = bytes(buf)
                self._take(len(chunk))
                out.append(Raw(chunk, "not an HTTP head", self.offset))
        return out

    def _take(self, n: int) -> None:
        del self._buf[:n]
        self.offset += n

    def _frame(self) -> Frame | None:
        buf = self._buf
        n = len(buf)
        if n < 2:
            return None
        b0, b1 = buf[0], buf[1]
        length = b1 & 0x7F
        start = 2
        if length == 126:
            start = 4
            if n < start:
                return None
            length = int.from_bytes(buf[2:4], "big")
        elif length == 127:
            start = 10
            if n < start:
                return None
            length = int.from_bytes(buf[2:10], "big")
        key = b""
        if b1 & 0x80:
            if n < start + 4:
                return None
            key = bytes(buf[start : start + 4])
            start += 4
        end = start + length
        if n < end:
            return None
        payload = bytes(buf[start:end])
        if key:
            payload = mask_payload(payload, key)
        self._take(end)
        return Frame(bool(b0 & 0x80), b0 & 0x0F, payload, (b0 >> 4) & 0x7, key, self.offset)
