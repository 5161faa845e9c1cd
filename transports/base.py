"""The one transport interface: an anyio ``ByteStream`` produced by a dialer.

Every transport (TCP/TLS, in-memory, fault-injecting, recording) is an
:class:`anyio.abc.ByteStream`: ``send(bytes)``, ``receive(max_bytes)``,
``send_eof()``, ``aclose()``. A *dialer* turns a parsed URL into a connected
stream, so the engine never knows which transport it runs on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream

__all__ = [
    "ByteStream",
    "DeadlineReceive",
    "Dialer",
    "URL",
    "InvalidURL",
    "deadline_receiver",
    "parse_url",
    "running_asyncio_loop",
]


class InvalidURL(ValueError):
    """The URL is not a usable ``ws://`` or ``wss://`` address."""


@dataclass(frozen=True, slots=True)
class URL:
    """A parsed WebSocket URL."""

    secure: bool
    host: str
    port: int
    resource: str  # path + query, what goes on the request line

    @property
    def scheme(self) -> str:
        return "wss" if self.secure else "ws"

    @property
    def host_header(self) -> str:
        default = 443 if self.secure else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.resource}"


def parse_url(url: str) -> URL:
    """Parse ``ws://host[:port]/path?query`` or ``wss://...``.

    Raises :class:`InvalidURL` with a message that says what is wrong.
    """
    if not isinstance(url, str):
        raise InvalidURL(f"URL must be a string, got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(f"{url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        hint = " (use ws:// or wss://)" if scheme in ("http", "https") else ""
        raise InvalidURL(f"{url!r}: scheme must be ws or wss, not {scheme or 'missing'!r}{hint}")
    if not parts.hostname:
        raise InvalidURL(f"{url!r}: no host")
    if parts.username or parts.password:
        raise InvalidURL(f"{url!r}: credentials in the URL are not supported (they would leak into logs)")
    if parts.fragment:
        raise InvalidURL(f"{url!r}: a WebSocket URL cannot have a #fragment")
    secure = scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return URL(secure, parts.hostname, port or (443 if secure else 80), resource)


#: ``async (url) -> ByteStream``: opens a connected byte stream to ``url``.
Dialer = Callable[[URL], Awaitable[ByteStream]]


#: ``async (deadline, max_bytes) -> bytes | None``: a receive that gives up at
#: ``deadline`` (event-loop time, what ``anyio.current_time()`` reads) with None.
DeadlineReceive = Callable[[float, int], Awaitable[bytes | None]]


def deadline_receiver(stream: ByteStream) -> DeadlineReceive:
    """``stream``'s receive-with-deadline.

    A stream may offer a native ``receive_before(deadline, max_bytes)`` (the
    asyncio TCP stream arms one timer only while it waits); any other stream
    gets a cancel scope around ``receive()``. Errors (end of stream, broken,
    closed) propagate as from ``receive()``.
    """
    native = getattr(stream, "receive_before", None)
    if native is not None:
        return native  # type: ignore[no-any-return]
    receive = stream.receive

    async def receive_before(deadline: float, max_bytes: int) -> bytes | None:
        with anyio.CancelScope(deadline=deadline):
            return await receive(max_bytes)
        return None  # the deadline passed

    return receive_before


def running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    """The running asyncio loop, or None (under trio). Not sniffio: anyio no longer needs it."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
