"""The small, named error hierarchy users catch."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectionClosed",
    "ConnectionLost",
    "GaveUp",
    "HandshakeRejected",
    "NotConnected",
    "RequestTimeout",
    "WirestateError",
]


class WirestateError(Exception):
    """Base of every error wirestate raises on purpose."""


class ConfigError(WirestateError, ValueError):
    """A setup value is invalid; the message names the field and the problem."""


class NotConnected(WirestateError):
    """A send was attempted while no WebSocket is open (reconnecting, closed, ...)."""


class ConnectionClosed(WirestateError):
    """The connection was closed by the user; pending work was abandoned."""


class ConnectionLost(ConnectionClosed):
    """The connection dropped while a request was pending: its outcome is unknown."""


class GaveUp(ConnectionClosed):
    """The connection stopped reconnecting (fatal rejection or retry budget spent)."""


class RequestTimeout(WirestateError, TimeoutError):
    """No matching response arrived within the deadline."""


class HandshakeRejected(WirestateError):
    """The server refused the WebSocket upgrade with an HTTP status."""

    def __init__(self, status: int, retry_after: float | None = None) -> None:
        self.status = status
        self.retry_after = retry_after
        hint = f", retry after {retry_after:g} s" if retry_after is not None else ""
        super().__init__(f"handshake rejected with HTTP {status}{hint}")
