"""The root of wirestate's error hierarchy, and the sans-IO layer's own errors.

It lives here, at the bottom, so that the sans-IO protocol can raise errors
of the project's hierarchy without importing the engine. Users import these
from :mod:`engine` (or :mod:`wirestate`).
"""

from __future__ import annotations

__all__ = ["InvalidHandshake", "InvalidState", "ProtocolError", "WirestateError"]


class WirestateError(Exception):
    """Base of every error wirestate raises on purpose."""


class ProtocolError(WirestateError):
    """The WebSocket protocol layer refused an operation or an input."""


class InvalidHandshake(ProtocolError):
    """The server's handshake answer is not a valid WebSocket upgrade."""


class InvalidState(ProtocolError):
    """An operation the protocol's current state does not allow (send before open, after close)."""
