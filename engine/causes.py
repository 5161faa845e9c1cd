"""Why a session ended, or why a connection stopped: typed causes.

Every :class:`~engine.events.StateChanged` into ``reconnecting``,
``closing`` or ``disconnected`` carries one of these; the reconnect policy
(:mod:`engine.policy`) decides on them, and ``Connection.cause`` answers
"why is this connection down" without reading history. They are frozen
values: compare them, match on them, log them (``str()`` is one readable
line; none of them holds a secret: header values stay out of ``str`` and
``repr``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "Cancelled",
    "Cause",
    "ClosedByPeer",
    "GiveUp",
    "HandshakeRejection",
    "InvalidHandshake",
    "OpenTimeout",
    "ProtocolError",
    "SetupFailure",
    "Silence",
    "TransportError",
    "UserClose",
]


@dataclass(frozen=True, slots=True)
class Cause:
    """Base of every cause."""

    def __str__(self) -> str:  # pragma: no cover - every cause overrides it
        return type(self).__name__


@dataclass(frozen=True, slots=True)
class HandshakeRejection(Cause):
    """The server answered the upgrade with an HTTP status instead of 101.

    ``retry_after`` is the server's ``Retry-After`` in seconds (delta-seconds
    or an HTTP-date already turned into a delay), uncapped; the policy caps it.
    """

    status: int
    retry_after: float | None = None
    # Headers may carry tokens (Set-Cookie): kept for code, out of repr and str.
    headers: tuple[tuple[bytes, bytes], ...] = field(default=(), repr=False, compare=False)

    def __str__(self) -> str:
        hint = f", Retry-After {self.retry_after:g} s" if self.retry_after is not None else ""
        return f"handshake rejected with HTTP {self.status}{hint}"


@dataclass(frozen=True, slots=True)
class InvalidHandshake(Cause):
    """The server's answer was not a valid WebSocket upgrade, or ours could not be built."""

    detail: str
    ours: bool = False  # our own request could not be built (bad header or target): retrying won't help

    def __str__(self) -> str:
        return f"{'cannot build the handshake request' if self.ours else 'invalid handshake'}: {self.detail}"


@dataclass(frozen=True, slots=True)
class ClosedByPeer(Cause):
    """The server closed: with a close frame (``code``, ``reason``) or, ``code=1006``, without one."""

    code: int
    reason: str = ""

    @property
    def abrupt(self) -> bool:
        """True when the stream ended without a close frame (reported as 1006, RFC 6455 7.1.5)."""
        return self.code == 1006

    def __str__(self) -> str:
        if self.abrupt:
            return "connection closed by peer without a close frame (1006)"
        return f"server closed with {self.code}" + (f" {self.reason!r}" if self.reason else "")


@dataclass(frozen=True, slots=True)
class ProtocolError(Cause):
    """The server broke the WebSocket protocol; we failed the connection with close ``code``."""

    code: int
    reason: str

    def __str__(self) -> str:
        return f"protocol error from server: {self.reason} (closed with {self.code})"


@dataclass(frozen=True, slots=True)
class TransportError(Cause):
    """The byte stream failed: dial refused, DNS, reset, broken pipe. ``error`` names it."""

    error: str
    during: str = "session"  # "dial" or "session"

    def __str__(self) -> str:
        return f"dial failed: {self.error}" if self.during == "dial" else f"connection broken: {self.error}"


@dataclass(frozen=True, slots=True)
class OpenTimeout(Cause):
    """Dial plus handshake took longer than ``open_timeout``."""

    timeout: float

    def __str__(self) -> str:
        return f"no handshake within open_timeout={self.timeout:g} s"


@dataclass(frozen=True, slots=True)
class Silence(Cause):
    """The peer went quiet: no complete frame within ``timeout`` (pong_timeout) after a
    ping (``what="frame"``), or our ping or pong could not be written in that time
    (``what="ping"``/``"pong"``: the peer stopped reading)."""

    timeout: float
    what: str = "frame"

    def __str__(self) -> str:
        if self.what == "frame":
            return f"no traffic within pong_timeout={self.timeout:g} s after a ping"
        return f"{self.what} not written within pong_timeout={self.timeout:g} s (peer not reading)"


@dataclass(frozen=True, slots=True)
class SetupFailure(Cause):
    """The connector or subscriber raised, or ran past ``setup_timeout``.

    ``phase`` is the state it ran in (``authenticating`` or ``subscribing``),
    ``error`` the exception's type and message (empty on a timeout).
    ``rejected`` is true when the hook raised :class:`~engine.errors.AuthenticationFailed`.
    """

    phase: str
    error: str = ""
    timed_out: bool = False
    rejected: bool = False

    def __str__(self) -> str:
        if self.timed_out:
            return f"setup ({self.phase}) exceeded setup_timeout"
        return f"setup ({self.phase}) failed: {self.error}"


@dataclass(frozen=True, slots=True)
class UserClose(Cause):
    """The application closed the connection (``close()``, leaving ``async with``)."""

    code: int = 1000
    reason: str = ""

    def __str__(self) -> str:
        return "user close" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True, slots=True)
class Cancelled(Cause):
    """The run task was cancelled from outside (a cancel scope around it), not closed."""

    def __str__(self) -> str:
        return "cancelled"


@dataclass(frozen=True, slots=True)
class GiveUp(Cause):
    """The reconnect policy stopped retrying: ``reason`` says why, ``last`` is the session's cause."""

    reason: str
    last: Cause | None = None

    def __str__(self) -> str:
        return f"gave up: {self.reason}" + (f"; last: {self.last}" if self.last is not None else "")
