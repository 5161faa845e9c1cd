"""Sans-IO WebSocket client protocol: bytes in, events out; calls in, bytes out.

No I/O, no clock, no event loop: the engine feeds received bytes to
:meth:`ClientProtocol.receive_data` and writes whatever the ``send_*`` methods
and :meth:`ClientProtocol.data_to_send` return.

The opening handshake is HTTP/1.1 through h11, in :mod:`transports.handshake`
(:class:`~transports.handshake.ClientHandshake`, which this class drives).
After it, frames go through one of two paths, chosen by ``frame_path``:

- ``"fast"`` (default): :mod:`transports.frames`, our own decoder, built for
  the data path and proven equal to wsproto by differential tests and Autobahn;
- ``"wsproto"``: wsproto's frame protocol, the reference.

What :meth:`receive_data` returns, in order of arrival:

- a complete text message as ``str``, a complete binary message as ``bytes``
  (plain values, no wrapper: the hot path allocates nothing else);
- :class:`Accepted` / :class:`Rejected` for the handshake outcome;
- :class:`Ping`, :class:`Pong`; pings are answered automatically (the pong is
  queued in :meth:`data_to_send`);
- :class:`Close` when the peer sent a close frame (our reply is queued);
- :class:`Failure` when the peer broke the protocol; a close frame with
  ``Failure.code`` (1002, 1007, 1009, ...) is queued and the protocol is
  closed for further input.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterator, Sequence

import wsproto.connection
import wsproto.events as wse
import wsproto.frame_protocol
import wsproto.utilities

from transports.errors import InvalidHandshake, InvalidState, ProtocolError
from transports.frames import (
    DEFAULT_MAX_MESSAGE_SIZE,
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    FrameDecoder,
    Failure,
    Ping,
    Pong,
    encode_close,
    encode_frame,
    encode_masked,
    is_valid_close_code,
)
from transports.handshake import Accepted, ClientHandshake, Rejected

_KEY_POOL = 64  # bytes of masking keys drawn from os.urandom at a time (16 frames)
_KEY_SLICES = tuple(slice(at, at + 4) for at in range(0, _KEY_POOL, 4))
_NO_KEYS: Iterator[bytes] = iter(())  # (shared and exhausted: nothing made before the first frame)

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "Accepted",
    "ClientProtocol",
    "Close",
    "Failure",
    "FRAME_PATHS",
    "InvalidHandshake",
    "InvalidState",
    "Ping",
    "Pong",
    "ProtocolError",
    "ProtocolState",
    "Rejected",
    "is_valid_close_code",
]

FRAME_PATHS = ("fast", "wsproto")


class ProtocolState(enum.IntEnum):
    """Where the WebSocket connection is, as seen by this protocol object."""

    CONNECTING = 0  # handshake request sent (or about to be), no answer yet
    OPEN = 1
    CLOSING = 2  # a close frame went one way; waiting for the other
    CLOSED = 3  # both close frames exchanged, failed, rejected, or EOF


_OPEN = ProtocolState.OPEN  # (a module global: an enum member lookup costs more on the send path)


class ClientProtocol:
    """One client-side WebSocket connection, without I/O.

    Args:
        host: value of the ``Host`` header (``host`` or ``host:port``).
        resource: request target, path plus query (``/ws/v4/?x=1``).
        subprotocols: offered in ``Sec-WebSocket-Protocol``; the server's
            choice is :attr:`subprotocol` after :class:`Accepted`.
        extra_headers: extra request headers, ``(name, value)`` strings.
        max_message_size: largest message accepted, counted across fragments;
            bigger fails the connection with close code 1009. ``None``: no cap.
        frame_path: ``"fast"`` (our decoder) or ``"wsproto"`` (reference).
    """

    __slots__ = (
        "host", "resource", "subprotocols", "extra_headers", "max_message_size", "frame_path", "state",
        "subprotocol", "close_received", "close_sent", "controls", "_key", "_handshake", "_outgoing",
        "_decoder", "_ws", "_partial", "_partial_size", "_keys",
    )  # fmt: skip

    def __init__(
        self,
        host: str,
        resource: str = "/",
        *,
        subprotocols: Sequence[str] = (),
        extra_headers: Sequence[tuple[str, str]] = (),
        max_message_size: int | None = DEFAULT_MAX_MESSAGE_SIZE,
        frame_path: str = "fast",
    ) -> None:
        if frame_path not in FRAME_PATHS:
            raise ValueError(f"frame_path must be one of {FRAME_PATHS}, not {frame_path!r}")
        if max_message_size is not None and max_message_size <= 0:
            raise ValueError(f"max_message_size must be positive or None, not {max_message_size!r}")
        self.host = host
        self.resource = resource
        self.subprotocols = tuple(subprotocols)
        self.extra_headers = tuple(extra_headers)
        self.max_message_size = max_message_size
        self.frame_path = frame_path
        self.state = ProtocolState.CONNECTING
        #: the server's chosen subprotocol, once accepted
        self.subprotocol: str | None = None
        #: (code, reason) of the close frame received / sent, if any
        self.close_received: tuple[int, str] | None = None
        self.close_sent: tuple[int, str] | None = None
        # HTTP upgrade in progress; None once accepted (its buffers are not kept).
        self._handshake: ClientHandshake | None = ClientHandshake()
        self._key = self._handshake.key  # the Sec-WebSocket-Key sent
        self._outgoing = bytearray()
        self._decoder: FrameDecoder | None = None
        self._keys = _NO_KEYS  # mask keys: os.urandom, drawn a pool at a time (see _mask_key)
        self._ws: wsproto.connection.Connection | None = None
        self._partial: list[str | bytes] = []
        self._partial_size = 0
        #: whether the last :meth:`receive_data` result may contain events
        self.controls = True

    # -- handshake -------------------------------------------------------

    def connect(self) -> bytes:
        """The HTTP upgrade request to send first."""
        if self._handshake is None:
            raise InvalidState("the handshake was already done")
        return self._handshake.request(self.host, self.resource, self.subprotocols, self.extra_headers)

    def _receive_handshake(self, data: bytes) -> list[object]:
        handshake = self._handshake
        assert handshake is not None
        try:
            outcome = handshake.receive_data(data, self.subprotocols)
        except InvalidHandshake:
            self.state = ProtocolState.CLOSED
            raise
        if outcome is None:
            return []
        if isinstance(outcome, Rejected):
            self.state = ProtocolState.CLOSED
            return [outcome]
        self.subprotocol = outcome.subprotocol
        self.state = ProtocolState.OPEN
        trailing = handshake.trailing
        self._handshake = None  # done with HTTP: don't keep its buffers for the connection's life
        events: list[object] = [outcome]
        if self.frame_path == "fast":
            self._decoder = FrameDecoder(self.max_message_size)
        else:
            self._ws = wsproto.connection.Connection(wsproto.connection.ConnectionType.CLIENT, [])
        if trailing:
            events.extend(self.receive_data(trailing))
        return events

    # -- receiving -------------------------------------------------------

    def receive_data(self, data: bytes) -> list[object]:
        """Feed bytes from the network; return what they completed.

        After each call :attr:`controls` tells whether the list may hold
        anything but messages (events); when False it is all ``str``/``bytes``.
        """
        decoder = self._decoder
        if decoder is not None:
            items = decoder.feed(data)
            if decoder.controls:
                self.controls = True
                self._handle_controls(items)
            else:
                self.controls = False
            return items
        self.controls = True  # handshake and reference path: let the caller sort events out
        if self.state is ProtocolState.CONNECTING:
            return self._receive_handshake(data)
        if self._ws is not None and self.state is not ProtocolState.CLOSED:
            return self._receive_wsproto(data)
        return []

    @property
    def holding(self) -> bool:
        """True while part of a frame or message is kept for the next :meth:`receive_data`
        (always True off the fast path: the reference decoder does not say)."""
        decoder = self._decoder
        return True if decoder is None else decoder.holding

    def receive_eof(self) -> list[object]:
        """The peer closed the byte stream."""
        if self.state is ProtocolState.CONNECTING and self._handshake is not None:
            self.state = ProtocolState.CLOSED
            return [self._handshake.receive_eof()]  # or InvalidHandshake: no answer at all
        self.state = ProtocolState.CLOSED
        self._decoder = None
        return []

    def _handle_controls(self, items: list[object]) -> None:
        # Only reached when the decoder saw a control frame or a failure.
        for item in items:
            kind = type(item)
            if kind is Ping:
                if self.close_sent is None:
                    self._outgoing += encode_frame(OP_PONG, item.payload, mask_key=self._mask_key())  # type: ignore[attr-defined]
            elif kind is Close:
                self._on_peer_close(item.code, item.reason)  # type: ignore[attr-defined]
            elif kind is Failure:
                self._fail(item.code, item.reason)  # type: ignore[attr-defined]

    def _on_peer_close(self, code: int, reason: str) -> None:
        self.close_received = (code, reason)
        if self.close_sent is None:
            # Echo the peer's code (RFC 6455 5.5.1); an empty close gets an empty reply.
            reply = None if code == 1005 else code
            self._outgoing += self._close_frame(reply, "")
            self.close_sent = (reply or 1005, "")
        self.state = ProtocolState.CLOSED
        self._decoder = None

    def _fail(self, code: int, reason: str) -> None:
        if self.close_sent is None:
            self._outgoing += self._close_frame(code, reason)
            self.close_sent = (code, reason)
        self.state = ProtocolState.CLOSED
        self._decoder = None

    def _close_frame(self, code: int | None, reason: str) -> bytes:
        if self._ws is not None:
            try:
                # wsproto sends an empty close payload only for the enum member itself.
                wire_code = code if code is not None else wsproto.frame_protocol.CloseReason.NO_STATUS_RCVD
                return self._ws.send(wse.CloseConnection(code=wire_code, reason=reason or None))
            except wsproto.utilities.LocalProtocolError:
                return b""
        return encode_close(code, reason, mask_key=self._mask_key())

    def _receive_wsproto(self, data: bytes) -> list[object]:
        ws = self._ws
        assert ws is not None
        ws.receive_data(data)
        out: list[object] = []
        limit = self.max_message_size
        for event in ws.events():
            if isinstance(event, wse.Message):
                self._partial.append(event.data)
                self._partial_size += len(event.data)
                if limit is not None and self._partial_size > limit:
                    failure = Failure(1009, f"message larger than {limit} bytes")
                    out.append(failure)
                    self._fail(failure.code, failure.reason)
                    return out
                if event.message_finished:
                    parts, self._partial, self._partial_size = self._partial, [], 0
                    if isinstance(event, wse.TextMessage):
                        out.append("".join(parts))  # type: ignore[arg-type]
                    else:
                        out.append(b"".join(parts))  # type: ignore[arg-type]
            elif isinstance(event, wse.Ping):
                out.append(Ping(bytes(event.payload)))
                if self.close_sent is None:
                    self._outgoing += ws.send(event.response())
            elif isinstance(event, wse.Pong):
                out.append(Pong(bytes(event.payload)))
            elif isinstance(event, wse.CloseConnection):
                # wsproto reports its own parse failures as a CloseConnection while
                # still OPEN; a real peer close moves it to REMOTE_CLOSING.
                if ws.state is wsproto.connection.ConnectionState.OPEN:
                    failure = Failure(int(event.code), event.reason or "protocol error")
                    out.append(failure)
                    self._fail(failure.code, failure.reason)
                else:
                    close = Close(int(event.code), event.reason or "")
                    out.append(close)
                    self._on_peer_close(close.code, close.reason)
                return out
        return out

    # -- sending ---------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Bytes the protocol queued by itself (pongs, close replies)."""
        if not self._outgoing:
            return b""
        data = bytes(self._outgoing)
        self._outgoing.clear()
        return data

    def _mask_key(self) -> bytes:
        """A fresh 4-byte masking key (RFC 6455 5.3: unpredictable, from a strong source).

        Taken from a pool of ``os.urandom`` bytes refilled 64 at a time: one
        ``getrandom`` syscall per 16 frames instead of one per frame (~0.6 us
        each here); the pool is made at the first frame sent, not per connection.
        The pool is an iterator of its 4-byte keys: the hot path takes one with
        ``next(self._keys, None)`` (a C call) and comes here only to refill.
        """
        key = next(self._keys, None)
        if key is None:
            keys = self._keys = map(os.urandom(_KEY_POOL).__getitem__, _KEY_SLICES)
            key = next(keys)
        return key

    def _check_open(self) -> None:
        if self.state is not ProtocolState.OPEN:
            raise InvalidState(f"cannot send: WebSocket is {self.state.name.lower()}")

    def send_text(self, text: str) -> bytes:
        """Frame ``text`` as one text message."""
        self._check_open()
        if self._ws is not None:
            return self._ws.send(wse.TextMessage(data=text))
        return encode_masked(OP_TEXT, text.encode("utf-8"), self._mask_key())

    def send_text_utf8(self, data: bytes) -> bytes:
        """Frame ``data``, text already encoded as UTF-8 (``orjson.dumps``), as one text message.

        Saves the decode and re-encode a ``str`` would take; the caller vouches
        that ``data`` is valid UTF-8.
        """
        if self.state is not _OPEN or self._ws is not None:  # (one test on the hot path)
            self._check_open()
            return self._ws.send(wse.TextMessage(data=data.decode("utf-8")))  # type: ignore[union-attr]
        return encode_masked(OP_TEXT, data, next(self._keys, None) or self._mask_key())

    def send_bytes(self, data: bytes) -> bytes:
        """Frame ``data`` as one binary message."""
        self._check_open()
        if self._ws is not None:
            return self._ws.send(wse.BytesMessage(data=bytes(data)))
        return encode_masked(OP_BINARY, bytes(data), self._mask_key())

    def send_ping(self, payload: bytes = b"") -> bytes:
        """A ping frame (payload at most 125 bytes)."""
        self._check_open()
        if len(payload) > 125:
            raise ValueError("ping payload is limited to 125 bytes")
        if self._ws is not None:
            return self._ws.send(wse.Ping(payload=payload))
        return encode_frame(OP_PING, payload, mask_key=self._mask_key())

    def send_pong(self, payload: bytes = b"") -> bytes:
        """An unsolicited pong frame (a heartbeat some servers accept)."""
        self._check_open()
        if self._ws is not None:
            return self._ws.send(wse.Pong(payload=payload))
        return encode_frame(OP_PONG, payload, mask_key=self._mask_key())

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start the closing handshake; returns b"" when a close was already sent."""
        if not is_valid_close_code(code):
            raise ValueError(f"close code {code} may not be sent (RFC 6455 7.4)")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("close reason is limited to 123 UTF-8 bytes")
        if self.close_sent is not None or self.state in (ProtocolState.CONNECTING, ProtocolState.CLOSED):
            return b""
        self.close_sent = (code, reason)
        self.state = ProtocolState.CLOSING
        return self._close_frame(code, reason)
