"""Sans-IO opening handshake of a WebSocket client: the HTTP/1.1 upgrade (RFC 6455 4.1).

:class:`ClientHandshake` builds the upgrade request and reads the server's
answer through h11, bytes in and outcome out, with no I/O:

- a valid ``101 Switching Protocols`` gives :class:`Accepted` (the bytes that
  came after the response are :attr:`ClientHandshake.trailing`: the first
  frames);
- any other final status gives :class:`Rejected`, with the headers and up to
  64 KiB of the body, once the response is complete or the peer hung up;
- a malformed response, a 101 that does not prove the upgrade, or a hang-up
  before any answer raises :class:`~transports.errors.InvalidHandshake`.

:class:`transports.websocket.ClientProtocol` drives it and owns the
connection state; both dataclasses are re-exported there.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

import h11

from transports.errors import InvalidHandshake

__all__ = ["Accepted", "ClientHandshake", "Rejected"]

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_REJECTION_BODY = 64 * 1024


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


class ClientHandshake:
    """One client's upgrade exchange, without I/O.

    The ``Sec-WebSocket-Key`` (:attr:`key`) is drawn at construction. Call
    :meth:`request` once, then feed the answer to :meth:`receive_data` (and
    :meth:`receive_eof` if the peer hangs up) until it returns an outcome.
    """

    __slots__ = ("key", "_h11", "_rejection", "_rejection_body")

    def __init__(self) -> None:
        self.key = base64.b64encode(os.urandom(16))
        self._h11 = h11.Connection(h11.CLIENT)
        self._rejection: tuple[int, tuple[tuple[bytes, bytes], ...]] | None = None
        self._rejection_body: list[bytes] = []

    def request(
        self,
        host: str,
        resource: str,
        subprotocols: Sequence[str],
        extra_headers: Sequence[tuple[str, str]],
    ) -> bytes:
        """The HTTP upgrade request (``ValueError`` for a value HTTP cannot carry)."""
        # Handed to h11 as bytes: its str path costs ~2.5 us more per request.
        # (h11 would encode as ASCII too; its messages must not quote a value.)
        try:
            headers = [
                (b"Host", host.encode("ascii")),
                (b"Upgrade", b"websocket"),
                (b"Connection", b"Upgrade"),
                (b"Sec-WebSocket-Key", self.key),
                (b"Sec-WebSocket-Version", b"13"),
            ]
            if subprotocols:
                headers.append((b"Sec-WebSocket-Protocol", ", ".join(subprotocols).encode("ascii")))
            headers.extend((name.encode("ascii"), value.encode("ascii")) for name, value in extra_headers)
            request = h11.Request(method=b"GET", target=resource.encode("ascii"), headers=headers)
        except (UnicodeEncodeError, h11.LocalProtocolError):
            # h11's message quotes the offending value, which may be a secret.
            raise ValueError(
                "invalid handshake request: a header name or value, or the target, is not allowed"
            ) from None
        return self._h11.send(request) or b""

    @property
    def trailing(self) -> bytes:
        """Bytes received after the 101 response: the start of the frame stream."""
        return self._h11.trailing_data[0]

    def receive_data(self, data: bytes, subprotocols: Sequence[str]) -> Accepted | Rejected | None:
        """Feed the server's answer; the outcome, or None while it is incomplete.

        ``subprotocols`` are those offered: the server may only choose one of them.
        """
        self._h11.receive_data(data)
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise InvalidHandshake(f"malformed HTTP response: {exc}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return None
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    return _accept(event, self.key, subprotocols)
                continue  # 1xx other than 101: ignore, the real answer follows
            if isinstance(event, h11.Response):
                self._rejection = (event.status_code, tuple(event.headers))
            elif isinstance(event, h11.Data):
                if sum(map(len, self._rejection_body)) < _MAX_REJECTION_BODY:
                    self._rejection_body.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return self._rejected()

    def receive_eof(self) -> Rejected:
        """The peer hung up before a 101: the rejection it had started, if any."""
        self._h11.receive_data(b"")
        return self._rejected()

    def _rejected(self) -> Rejected:
        if self._rejection is None:
            raise InvalidHandshake("connection closed before the handshake answer")
        status, headers = self._rejection
        body = b"".join(self._rejection_body)[:_MAX_REJECTION_BODY]
        return Rejected(status, headers, body)


def _accept(response: h11.InformationalResponse, key: bytes, subprotocols: Sequence[str]) -> Accepted:
    """Check that a 101 response proves the upgrade we asked for (RFC 6455 4.1)."""
    headers: dict[bytes, bytes] = {}
    for name, value in response.headers:
        headers.setdefault(name.lower(), value)
    if b"upgrade" not in [t.strip().lower() for t in headers.get(b"connection", b"").split(b",")]:
        raise InvalidHandshake("101 response without 'Connection: Upgrade'")
    if headers.get(b"upgrade", b"").lower() != b"websocket":
        raise InvalidHandshake("101 response without 'Upgrade: websocket'")
    expected = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    if headers.get(b"sec-websocket-accept", b"").strip() != expected:
        raise InvalidHandshake("101 response with a wrong Sec-WebSocket-Accept")
    if b"sec-websocket-extensions" in headers:
        raise InvalidHandshake("server accepted an extension we did not offer")
    subprotocol = None
    chosen = headers.get(b"sec-websocket-protocol")
    if chosen is not None:
        subprotocol = chosen.decode("ascii", "replace").strip()
        if subprotocol not in subprotocols:
            raise InvalidHandshake(f"server chose subprotocol {subprotocol!r}, which we did not offer")
    return Accepted(subprotocol, tuple(response.headers))
