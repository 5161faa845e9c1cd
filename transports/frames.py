"""Sans-IO RFC 6455 frame decoder for the client side of a WebSocket.

This is the hot data path: :class:`FrameDecoder` turns bytes received from a
server into messages. The frames a client sends are built by
:mod:`transports.encode` and the events are defined in
:mod:`transports.events`; their names (opcodes, ``encode_*``,
``mask_payload``, ``is_valid_close_code``, ``Ping``, ``Pong``, ``Close``,
``Failure``) are re-exported here, so ``transports.frames`` remains the one
import for the whole codec. No I/O, no clock, no event loop, standard library
only.

Decoded items, in order of arrival:

- a complete text message as ``str``, a complete binary message as ``bytes``;
- :class:`Ping`, :class:`Pong` for control frames;
- :class:`Close` for the peer's close frame;
- :class:`Failure` when the server broke the protocol; the client must then
  fail the connection with close code ``Failure.code``.

Design notes (why it looks the way it does):

- Exchange feeds deliver thousands of small unfragmented text frames per read.
  :meth:`FrameDecoder.feed` therefore runs a tight index loop over one
  ``bytes`` object, with a fast path for "FIN text/binary frame, 7- or 16-bit
  length, no fragmented message in progress" that allocates nothing but the
  message itself. Everything else (control frames, fragments, errors, 64-bit
  lengths) goes through a general path one frame at a time.
- A frame cut by a read boundary is kept as a list of chunks plus a running
  length and the number of bytes the frame needs; the chunks are joined once,
  when enough has arrived, so a large frame spread over many reads is
  linear-time.
- Fragmented messages accumulate into one ``bytearray`` (memory proportional
  to the message, however many fragments), and text fragments are validated
  on arrival by an incremental UTF-8 decoder so bad data fails on the
  fragment that carries it.
"""

from __future__ import annotations

import codecs
import struct

# Re-exported: ``transports.frames`` is the one import for the whole codec.
from transports.encode import OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT
from transports.encode import VALID_CLOSE_CODES as _VALID_CLOSE_CODES
from transports.encode import encode_close, encode_frame, encode_masked, is_valid_close_code, mask_payload
from transports.events import Close, Failure, Ping, Pong

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONT",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Close",
    "Failure",
    "FrameDecoder",
    "Ping",
    "Pong",
    "encode_close",
    "encode_frame",
    "encode_masked",
    "is_valid_close_code",
    "mask_payload",
]

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024

_Utf8Decoder = codecs.getincrementaldecoder("utf-8")
_unpack_head = struct.Struct("!BBH").unpack_from


class FrameDecoder:
    """Incremental decoder for frames sent by a server to this client.

    :meth:`feed` takes bytes as they arrive (frames may be cut anywhere and a
    feed may hold many frames) and returns every item they complete.
    ``max_message_size`` caps a message's total payload across fragments
    (``None``: no cap); a frame header announcing more fails with 1009 before
    the payload arrives.
    """

    __slots__ = (
        "_chunks",
        "_fast",
        "_finished",
        "_have",
        "_limit",
        "_need",
        "_op",
        "_partial_utf8",
        "_parts",
        "_size",
        "_utf8",
        "controls",
    )

    def __init__(self, max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_message_size is not None and max_message_size < 0:
            raise ValueError("max_message_size must be >= 0 or None")
        self._limit = max_message_size
        # The fast path does no size check: allowed only when no 7- or 16-bit
        # length can exceed the limit.
        self._fast = max_message_size is None or max_message_size >= 0xFFFF
        # Bytes of an incomplete frame: chunks, their total, and how many
        # bytes (from the frame's first byte) are needed before parsing again.
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0
        # Fragmented message in progress: opcode (0 = none), payload so far,
        # its size, and the UTF-8 validator for text.
        self._op = 0
        self._parts = bytearray()
        self._size = 0
        self._utf8: codecs.IncrementalDecoder | None = None
        # Validator for the available bytes of an incomplete *text* frame, so
        # invalid UTF-8 fails as soon as it arrives, not when the frame ends.
        self._partial_utf8: codecs.IncrementalDecoder | None = None
        self._finished = False
        #: True when the last :meth:`feed` returned a Ping, Pong, Close or
        #: Failure: lets callers skip scanning plain message batches.
        self.controls = False

    @property
    def holding(self) -> bool:
        """True while bytes of an unfinished frame or message are kept (the next feed may complete it)."""
        return bool(self._chunks) or self._op != 0

    @property
    def finished(self) -> bool:
        """True once a :class:`Close` or :class:`Failure` has been returned."""
        return self._finished

    def feed(self, data: bytes) -> list[object]:
        """Consume bytes from the server; return the items they complete, in order.

        Text messages come out as ``str``, binary ones as ``bytes``, control
        frames as :class:`Ping`/:class:`Pong`/:class:`Close`, violations as
        :class:`Failure`. After a Close or Failure the rest of the input and
        every later feed is ignored (``[]``).
        """
        self.controls = False
        if self._finished or not data:
            return []
        if type(data) is not bytes:
            data = bytes(data)  # a caller's reusable buffer must not be retained
        out: list[object] = []
        start = 0
        chunks = self._chunks
        while chunks:
            # A frame is pending from earlier input. Join only the bytes that
            # complete it and parse the rest of ``data`` in place: joining the
            # whole read (~256 KiB) per read costs an allocation that glibc may
            # serve with mmap + page faults, halving throughput (measured).
            fresh = len(data) - start
            if self._have + fresh < self._need:
                piece = data[start:] if start else data
                chunks.append(piece)
                self._have += fresh
                if self._partial_utf8 is not None:
                    try:
                        self._partial_utf8.decode(piece)
                    except UnicodeDecodeError:
                        return self._fail(out, 1007, "invalid UTF-8 in text message")
                return out
            cut = start + self._need - self._have
            chunks.append(data[start:cut])
            head = b"".join(chunks)
            chunks.clear()
            self._have = 0
            self._partial_utf8 = None  # the complete frame is validated below
            self._scan(head, 0, out)  # may stash a tail again when only a header was due
            if self._finished:
                return out
            start = cut
        if start < len(data):
            self._scan(data, start, out)
        return out

    def _scan(self, buf: bytes, i: int, out: list[object]) -> list[object]:
        """Decode complete frames of ``buf`` from ``i``; stash an incomplete tail."""
        append = out.append
        unpack_head = _unpack_head
        chunks = self._chunks
        n = len(buf)
        n3 = n - 3  # the fast path needs 4 header bytes in hand
        op = self._op
        fast = self._fast and not op
        try:
            while True:
                if fast:
                    # Fast path: unfragmented, unmasked, RSV-clear text/binary
                    # frames with a 7- or 16-bit length. Anything else breaks
                    # out to the general path below, which re-reads the frame.
                    while i < n3:
                        # One C call reads FIN/opcode, the 7-bit length and the
                        # 16-bit extended length (payload bytes if unused).
                        b0, ln, ext = unpack_head(buf, i)
                        if ln == 126:
                            s = i + 4
                            e = s + ext
                        elif ln < 126:
                            s = i + 2
                            e = s + ln
                        else:
                            break
                        if e > n:
                            break
                        if b0 == 0x81:
                            append(buf[s:e].decode())
                        elif b0 == 0x82:
                            append(buf[s:e])
                        else:
                            break
                        i = e

                # General path: exactly one frame (or stop for more input).
                avail = n - i
                if avail < 2:
                    need = 2
                    break
                b0 = buf[i]
                b1 = buf[i + 1]
                if b0 & 0x70:
                    return self._fail(out, 1002, "reserved bits set without a negotiated extension")
                if b1 & 0x80:
                    return self._fail(out, 1002, "masked frame from server")
                opc = b0 & 0x0F
                if opc >= 8:
                    if opc > 0xA:
                        return self._fail(out, 1002, f"reserved opcode {opc:#x}")
                    if b0 < 0x80:
                        return self._fail(out, 1002, "fragmented control frame")
                elif opc > 2:
                    return self._fail(out, 1002, f"reserved opcode {opc:#x}")
                elif opc:
                    if op:
                        return self._fail(out, 1002, "new data frame while a fragmented message is in progress")
                elif not op:
                    return self._fail(out, 1002, "continuation frame without a message in progress")

                ln = b1  # mask bit is clear, so this is the 7-bit length
                if ln < 126:
                    s = i + 2
                elif ln == 126:
                    if avail < 4:
                        need = 4
                        break
                    ln = buf[i + 2] << 8 | buf[i + 3]
                    s = i + 4
                else:
                    if avail < 10:
                        need = 10
                        break
                    ln = int.from_bytes(buf[i + 2 : i + 10], "big")
                    if ln >> 63:
                        return self._fail(out, 1002, "64-bit payload length with the most significant bit set")
                    s = i + 10

                if opc >= 8:
                    # Non-minimal length encodings are tolerated, so the 125-byte
                    # cap applies to the decoded length.
                    if ln > 125:
                        return self._fail(out, 1002, "control frame payload longer than 125 bytes")
                    e = s + ln
                    if e > n:
                        need = e - i
                        break
                    payload = buf[s:e]
                    i = e
                    self.controls = True
                    if opc == 0x9:
                        append(Ping(payload))
                    elif opc == 0xA:
                        append(Pong(payload))
                    else:
                        return self._close(out, payload)
                    continue

                limit = self._limit
                if limit is not None:
                    # Checked on the header alone so an oversized message is
                    # refused before its bytes are buffered.
                    total = ln if opc else self._size + ln
                    if total > limit:
                        return self._fail(out, 1009, f"message larger than {limit} bytes")
                e = s + ln
                if e > n:
                    need = e - i
                    if opc == 1 or (not opc and op == 1):
                        self._start_partial_utf8(opc, buf[s:n])
                    break
                payload = buf[s:e]
                i = e

                if opc:
                    if b0 & 0x80:
                        append(payload.decode() if opc == 1 else payload)
                    else:
                        # First fragment of a message.
                        op = opc
                        fast = False
                        self._size = ln
                        self._parts = bytearray(payload)
                        if opc == 1:
                            self._utf8 = utf8 = _Utf8Decoder()
                            utf8.decode(payload)  # validate now: fail on this fragment
                else:
                    fin = b0 & 0x80
                    self._size += ln
                    if op == 1:
                        self._utf8.decode(payload, fin != 0)  # type: ignore[union-attr]
                    parts = self._parts
                    parts += payload
                    if fin:
                        # Already validated, so decoding cannot fail here.
                        append(parts.decode() if op == 1 else bytes(parts))
                        op = 0
                        fast = self._fast
                        self._parts = bytearray()
                        self._size = 0
                        self._utf8 = None
        except UnicodeDecodeError:
            return self._fail(out, 1007, "invalid UTF-8 in text message")

        # Out of complete frames: keep the tail for the next feed.
        self._op = op
        if i < n:
            chunks.append(buf[i:] if i else buf)
            self._have = n - i
            self._need = need
        return out

    def _start_partial_utf8(self, opc: int, available: bytes) -> None:
        """Validate what has arrived of an incomplete text frame (raises UnicodeDecodeError)."""
        validator = _Utf8Decoder()
        if not opc and self._utf8 is not None:
            validator.setstate(self._utf8.getstate())  # continue the message's state
        validator.decode(available)
        self._partial_utf8 = validator

    def _close(self, out: list[object], payload: bytes) -> list[object]:
        # The peer's close frame ends decoding, valid or not.
        n = len(payload)
        if n == 0:
            item = Close(1005, "")
        elif n == 1:
            return self._fail(out, 1002, "close frame with a 1-byte payload")
        else:
            code = payload[0] << 8 | payload[1]
            if code not in _VALID_CLOSE_CODES:
                return self._fail(out, 1002, f"invalid close code {code}")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError:
                return self._fail(out, 1007, "invalid UTF-8 in close reason")
            item = Close(code, reason)
        out.append(item)
        self._stop()
        return out

    def _fail(self, out: list[object], code: int, reason: str) -> list[object]:
        out.append(Failure(code, reason))
        self.controls = True
        self._stop()
        return out

    def _stop(self) -> None:
        # Finished: drop every buffer so nothing is retained or parsed again.
        self._finished = True
        self._partial_utf8 = None
        self._chunks.clear()
        self._have = self._need = 0
        self._op = 0
        self._parts = bytearray()
        self._size = 0
        self._utf8 = None
