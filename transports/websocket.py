"""Sans-IO WebSocket client protocol: bytes in, events out; calls in, bytes out.

No I/O, no clock, no event loop: the engine feeds received bytes to
:meth:`ClientProtocol.receive_data` and writes whatever the ``send_*`` methods
and :meth:`ClientProtocol.data_to_send` return.

The opening handshake is HTTP/1.1 through h11. After it, frames go through one
of two paths, chosen by ``frame_path``:

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

import base64
import datetime
import email.utils
import enum
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import h11
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
    is_valid_close_code,
)

__all__ = [
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
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_REJECTION_BODY = 64 * 1024


class ProtocolState(enum.IntEnum):
    """Where the WebSocket connection is, as seen by this protocol object."""

    CONNECTING = 0  # handshake request sent (or about to be), no answer yet
    OPEN = 1
    CLOSING = 2  # a close frame went one way; waiting for the other
    CLOSED = 3  # both close frames exchanged, failed, rejected, or EOF


@dataclass(frozen=True, slots=True)
class Accepted:
    """The server accepted the upgrade."""

    subprotocol: str | None
    headers: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """The server answered the upgrade with an HTTP status other than 101."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        key = name.lower().encode("ascii")
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None

    @property
    def retry_after(self) -> float | None:
        """``Retry-After`` in seconds when given as delta-seconds, else None.

        An HTTP-date needs a wall clock, which this layer does not have:
        see :attr:`retry_after_date`.
        """
        value = self.header("retry-after")
        if value is None:
            return None
        try:
            seconds = float(value.strip())
        except ValueError:
            return None
        return seconds if seconds >= 0 else None

    @property
    def retry_after_date(self) -> float | None:
        """``Retry-After`` as a POSIX timestamp when given as an HTTP-date (RFC 9110 10.2.3), else None."""
        value = self.header("retry-after")
        if value is None:
            return None
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT
            when = when.replace(tzinfo=datetime.timezone.utc)
        return when.timestamp()


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
        "subprotocol", "close_received", "close_sent", "controls", "_key", "_h11", "_rejection",
        "_rejection_body", "_outgoing", "_decoder", "_ws", "_partial", "_partial_size",
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
        self._key = base64.b64encode(os.urandom(16))
        self._h11: h11.Connection | None = h11.Connection(h11.CLIENT)
        self._rejection: tuple[int, tuple[tuple[bytes, bytes], ...]] | None = None
        self._rejection_body: list[bytes] = []
        self._outgoing = bytearray()
        self._decoder: FrameDecoder | None = None
        self._ws: wsproto.connection.Connection | None = None
        self._partial: list[str | bytes] = []
        self._partial_size = 0
        #: whether the last :meth:`receive_data` result may contain events
        self.controls = True

    # -- handshake -------------------------------------------------------

    def connect(self) -> bytes:
        """The HTTP upgrade request to send first."""
        if self._h11 is None:
            raise InvalidState("the handshake was already done")
        # Handed to h11 as bytes: its str path costs ~2.5 us more per request.
        # (h11 would encode as ASCII too; its messages must not quote a value.)
        try:
            headers = [
                (b"Host", self.host.encode("ascii")),
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Key", self._key),
                (b"Sec-WebSocket-Version", b"13"),
            ]
            if self.subprotocols:
                headers.append((b"Sec-WebSocket-Protocol", ", ".join(self.subprotocols).encode("ascii")))
            headers.extend((name.encode("ascii"), value.encode("ascii")) for name, value in self.extra_headers)
            request = h11.Request(method=b"GET", target=self.resource.encode("ascii"), headers=headers)
        except (UnicodeEncodeError, h11.LocalProtocolError):
            # h11's message quotes the offending value, which may be a secret.
            raise ValueError(
                "invalid handshake request: a header name or value, or the target, is not allowed"
            ) from None
        return self._h11.send(request) or b""

    def _receive_handshake(self, data: bytes) -> list[object]:
        assert self._h11 is not None
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self.state = ProtocolState.CLOSED
                raise InvalidHandshake(f"malformed HTTP response: {exc}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return []
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return self._accept(event)
                continue  # 1xx other than 101: ignore, the real answer follows
            if isinstance(event, h11.Response):
                self._rejection = (event.status_code, tuple(event.headers))
            elif isinstance(event, h11.Data):
                if sum(map(len, self._rejection_body)) < _MAX_REJECTION_BODY:
                    self._rejection_body.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return self._finish_rejection()

    def _finish_rejection(self) -> list[object]:
        self.state = ProtocolState.CLOSED
        if self._rejection is None:
            raise InvalidHandshake("connection closed before the handshake answer")
        status, headers = self._rejection
        body = b"".join(self._rejection_body)[:_MAX_REJECTION_BODY]
        return [Rejected(status, headers, body)]

    def _accept(self, response: h11.InformationalResponse) -> list[object]:
        headers: dict[bytes, bytes] = {}
        for name, value in response.headers:
            headers.setdefault(name.lower(), value)
        self.state = ProtocolState.CLOSED  # until proven valid
        if b"upgrade" not in [t.strip().lower() for t in headers.get(b"connection", b"").split(b",")]:
            raise InvalidHandshake("101 response without 'Connection: Upgrade'")
        if headers.get(b"upgrade", b"").lower() != b"websocket":
            raise InvalidHandshake("101 response without 'Upgrade: websocket'")
        expected = base64.b64encode(hashlib.sha1(self._key + _GUID).digest())
        if headers.get(b"sec-websocket-accept", b"").strip() != expected:
            raise InvalidHandshake("101 response with a wrong Sec-WebSocket-Accept")
        if b"sec-websocket-extensions" in headers:
            raise InvalidHandshake("server accepted an extension we did not offer")
        chosen = headers.get(b"sec-websocket-protocol")
        if chosen is not None:
            protocol = chosen.decode("ascii", "replace").strip()
            if protocol not in self.subprotocols:
                raise InvalidHandshake(f"server chose subprotocol {protocol!r}, which we did not offer")
            self.subprotocol = protocol
        self.state = ProtocolState.OPEN
        assert self._h11 is not None
        trailing = self._h11.trailing_data[0]
        self._h11 = None  # done with HTTP: don't keep its buffers for the connection's life
        events: list[object] = [Accepted(self.subprotocol, tuple(response.headers))]
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

    def receive_eof(self) -> list[object]:
        """The peer closed the byte stream."""
        if self.state is ProtocolState.CONNECTING and self._h11 is not None:
            self._h11.receive_data(b"")
            if self._rejection is not None:
                return self._finish_rejection()
            self.state = ProtocolState.CLOSED
            raise InvalidHandshake("connection closed before the handshake answer")
        self.state = ProtocolState.CLOSED
        self._decoder = None
        return []

    def _handle_controls(self, items: list[object]) -> None:
        # Only reached when the decoder saw a control frame or a failure.
        for item in items:
            kind = type(item)
            if kind is Ping:
                if self.close_sent is None:
                    self._outgoing += encode_frame(OP_PONG, item.payload)  # type: ignore[attr-defined]
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
        return encode_close(code, reason)

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

    def _check_open(self) -> None:
        if self.state is not ProtocolState.OPEN:
            raise InvalidState(f"cannot send: WebSocket is {self.state.name.lower()}")

    def send_text(self, text: str) -> bytes:
        """Frame ``text`` as one text message."""
        self._check_open()
        if self._ws is not None:
            return self._ws.send(wse.TextMessage(data=text))
        return encode_frame(OP_TEXT, text.encode("utf-8"))

    def send_bytes(self, data: bytes) -> bytes:
        """Frame ``data`` as one binary message."""
        self._check_open()
        if self._ws is not None:
            return self._ws.send(wse.BytesMessage(data=bytes(data)))
        return encode_frame(OP_BINARY, bytes(data))

    def send_ping(self, payload: bytes = b"") -> bytes:
        """A ping frame (payload at most 125 bytes)."""
        self._check_open()
        if len(payload) > 125:
            raise ValueError("ping payload is limited to 125 bytes")
        if self._ws is not None:
            return self._ws.send(wse.Ping(payload=payload))
        return encode_frame(OP_PING, payload)

    def send_pong(self, payload: bytes = b"") -> bytes:
        """An unsolicited pong frame (a heartbeat some servers accept)."""
        self._check_open()
        if self._ws is not None:
            return self._ws.send(wse.Pong(payload=payload))
        return encode_frame(OP_PONG, payload)

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
