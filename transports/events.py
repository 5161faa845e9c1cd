"""What the sans-IO WebSocket layer reports besides messages.

Complete messages come out as plain ``str`` (text) and ``bytes`` (binary);
everything else the peer does is one of these events. Both frame paths
produce them: :class:`transports.frames.FrameDecoder` and the wsproto
reference path of :class:`transports.websocket.ClientProtocol`. They are
re-exported by :mod:`transports.frames` and :mod:`transports.websocket`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Close", "Failure", "Ping", "Pong"]


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping control frame from the peer (the client should answer with a pong)."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong control frame from the peer."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """The peer's close frame; ``code`` is 1005 when the frame had no payload."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    """A protocol violation by the peer; fail the connection with close ``code``."""

    code: int
    reason: str
