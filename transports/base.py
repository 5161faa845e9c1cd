"""The one transport interface: an anyio ``ByteStream`` produced by a dialer.

Every transport (TCP/TLS, in-memory, fault-injecting, recording) is an
:class:`anyio.abc.ByteStream`: ``send(bytes)``, ``receive(max_bytes)``,
``send_eof()``, ``aclose()``. A *dialer* turns a parsed URL into a connected
stream, so the engine never knows which transport it runs on.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
from anyio.abc import ByteStream

__all__ = [
    "ByteStream",
    "Capabilities",
    "NO_CAPABILITIES",
    "capabilities_of",
    "DeadlineReceive",
    "Dialer",
    "URL",
    "InvalidURL",
    "deadline_receiver",
    "parse_url",
    "redact_url",
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


#: What :func:`redact_url` puts in place of a hidden part.
REDACTED = "***"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_PORT = re.compile(r"(.*?):([^:\]]*)")  # host:port, the port after the last colon outside [ ]


def redact_url(url: str) -> str:
    """``url`` safe to show in errors and logs: only scheme, host and port stay readable.

    Userinfo, path, query and fragment are often secrets (tokens, listen keys,
    passwords), so each is replaced by ``***``:
    ``wss://user:pw@ex.com:99999/ws/KEY?token=T#x`` -> ``wss://***@ex.com:99999/***?***#***``.
    A port that is not a number is hidden too. Works on any string, also one
    that :func:`urllib.parse.urlsplit` rejects.
    """
    rest, hash_, _ = url.partition("#")
    scheme = _SCHEME.match(rest)
    shown = scheme.group() if scheme else ""
    rest = rest[len(shown) :]
    if rest.startswith("//"):
        shown += "//"
        authority = re.split(r"[/?]", rest[2:], maxsplit=1)[0]
        rest = rest[2 + len(authority) :]
        userinfo, at, hostport = authority.rpartition("@")
        if at:
            shown += REDACTED + "@"
        elif "@" in url:  # a password with a / ? or # in it: the whole authority is suspect
            hostport = REDACTED
        port = _PORT.fullmatch(hostport)
        if port and not port.group(2).isdigit():
            hostport = f"{port.group(1)}:{REDACTED}" if port.group(2) else hostport
        shown += hostport
    path, question, _ = rest.partition("?")
    if path not in ("", "/"):
        shown += "/" + REDACTED if path.startswith("/") else REDACTED
    else:
        shown += path
    if question:
        shown += "?" + REDACTED
    if hash_:
        shown += "#" + REDACTED
    return shown


def parse_url(url: str) -> URL:
    """Parse ``ws://host[:port]/path?query`` or ``wss://...``.

    Raises :class:`InvalidURL` with a message that says what is wrong and shows
    the URL only through :func:`redact_url` (never a token from it).
    """
    if not isinstance(url, str):
        raise InvalidURL(f"URL must be a string, got {type(url).__name__}")
    shown = repr(redact_url(url))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        # urlsplit's own messages may quote parts of the URL: never pass them on.
        if "Port" in str(exc):
            problem = "the port must be a number from 1 to 65535"
        elif "IPv6" in str(exc):
            problem = "unbalanced [ ] around the host (an IPv6 address needs both)"
        else:
            problem = "the host part is malformed"
        raise InvalidURL(f"{shown}: {problem}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        hint = " (use ws:// or wss://)" if scheme in ("http", "https") else ""
        named = repr(scheme) if scheme and _SCHEME.fullmatch(scheme + ":") else "missing"
        raise InvalidURL(f"{shown}: scheme must be ws or wss, not {named}{hint}")
    if not parts.hostname:
        raise InvalidURL(f"{shown}: no host")
    if parts.username or parts.password:
        raise InvalidURL(f"{shown}: credentials in the URL are not supported (they would leak into logs)")
    if parts.fragment:
        raise InvalidURL(f"{shown}: a WebSocket URL cannot have a #fragment")
    if port == 0:
        raise InvalidURL(f"{shown}: port 0 is not a usable port (leave it out for the default 80/443)")
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


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a stream promises beyond the :class:`ByteStream` interface.

    A stream class declares them as a class attribute ``capabilities``; the
    engine reads them with :func:`capabilities_of` and never tests a stream's
    concrete type.

    - ``atomic_send``: ``send()`` hands the whole buffer over before it can
      suspend, so cancelling it never leaves part of a frame on the wire.
    - ``instant_close``: ``aclose()`` never waits (no flush to a peer that may
      not read, no TLS goodbye), so it needs no deadline.
    - ``try_send``: the stream also has ``try_send(data: bytes) -> bool``,
      which hands the whole buffer over without suspending, or sends nothing
      and returns False when the send would have to wait (the peer is not
      reading); it raises as ``send()`` would. The engine's send fast path:
      no coroutine, no cancel scope.
    """

    atomic_send: bool = False
    instant_close: bool = False
    try_send: bool = False


#: what an unknown stream promises: nothing beyond the interface
NO_CAPABILITIES = Capabilities()


def capabilities_of(stream: ByteStream) -> Capabilities:
    """The stream's declared :class:`Capabilities` (none for a stream that declares nothing)."""
    declared = getattr(stream, "capabilities", NO_CAPABILITIES)
    return declared if isinstance(declared, Capabilities) else NO_CAPABILITIES
