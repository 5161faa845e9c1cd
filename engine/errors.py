"""The small, named error hierarchy users catch.

::

    WirestateError
    ├── ConfigError (also ValueError)        a setup value is invalid
    ├── ProtocolError                        the WebSocket layer refused (transports.errors)
    │   ├── InvalidHandshake
    │   └── InvalidState
    ├── NotConnected                         a send while no WebSocket is open
    ├── AuthenticationFailed                 raise it in a connector: a rejected login gives up
    ├── RequestTimeout (also TimeoutError)   no response within the deadline
    ├── DuplicateRequest                     a request with that key is already pending
    ├── RateLimited                          a non-blocking send would have to wait (``wait`` seconds)
    ├── SubscriptionError                    (``keys`` names them)
    │   ├── DuplicateSubscription, SubscriptionNotFound
    │   └── SubscriptionFailed               rejected, or the subscriber raised
    └── ConnectionClosed                     the connection stopped; pending work abandoned
        ├── ConnectionLost                   dropped while a request was pending: outcome unknown
        └── GaveUp                           the reconnect policy stopped retrying (``.cause``)
            └── HandshakeRejected            ... because the server refused the upgrade (status)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from transports.errors import InvalidHandshake, InvalidState, ProtocolError, WirestateError

if TYPE_CHECKING:
    from engine.causes import Cause, GiveUp

__all__ = [
    "AuthenticationFailed",
    "ConfigError",
    "ConnectionClosed",
    "ConnectionLost",
    "DuplicateRequest",
    "DuplicateSubscription",
    "GaveUp",
    "HandshakeRejected",
    "InvalidHandshake",
    "InvalidState",
    "NotConnected",
    "ProtocolError",
    "RateLimited",
    "RequestTimeout",
    "SendQueueFull",
    "SubscriptionError",
    "SubscriptionFailed",
    "SubscriptionNotFound",
    "WirestateError",
]


class ConfigError(WirestateError, ValueError):
    """A setup value is invalid; the message names the field and the problem."""


class NotConnected(WirestateError):
    """A send was attempted while no WebSocket is open (reconnecting, closed, ...)."""


class AuthenticationFailed(WirestateError):
    """Raise from a connector when the exchange rejects the login.

    The default reconnect policy gives up on it instead of retrying a login
    that cannot succeed (and that some exchanges punish with a ban).
    """


class SubscriptionError(WirestateError):
    """A subscription operation failed; ``keys`` names the subscriptions."""

    def __init__(self, message: str, keys: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.keys = keys


class DuplicateSubscription(SubscriptionError):
    """A subscription with that key is already in the ledger."""


class SubscriptionNotFound(SubscriptionError):
    """No subscription with that key is in the ledger."""


class SubscriptionFailed(SubscriptionError):
    """The exchange rejected the subscribe (or the subscriber raised)."""


class RequestTimeout(WirestateError, TimeoutError):
    """No (or not every expected) response arrived within the deadline; ``responses`` holds what came."""

    def __init__(self, message: str, responses: list[str | bytes] | None = None) -> None:
        super().__init__(message)
        self.responses: list[str | bytes] = list(responses or ())


class SendQueueFull(WirestateError):
    """Too many sends are already waiting on this connection (``max_queued``)."""


class DuplicateRequest(WirestateError):
    """A request with the same key is already waiting for its response."""


class RateLimited(WirestateError):
    """A non-blocking acquire (``Limiter.try_acquire``) found no room; ``wait`` is the seconds it would need.

    ``wait`` counts from the moment of the refusal and includes the sends
    already queued ahead (nothing else sent meanwhile).
    """

    def __init__(self, message: str, wait: float) -> None:
        super().__init__(message)
        self.wait = wait


class ConnectionClosed(WirestateError):
    """The connection stopped (closed by the user, or for good); pending work was abandoned.

    ``cause`` is the typed cause (:mod:`engine.causes`) when one is known.
    """

    def __init__(self, message: str, cause: Cause | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class ConnectionLost(ConnectionClosed):
    """The connection dropped while a request was pending: its outcome is unknown.

    The order (or subscription) may or may not have reached the exchange.
    """


class GaveUp(ConnectionClosed):
    """The connection stopped reconnecting; ``cause`` is the policy's :class:`~engine.causes.GiveUp`."""

    cause: GiveUp


class HandshakeRejected(GaveUp):
    """The connection gave up because the server refused the upgrade with HTTP ``status``."""

    def __init__(self, message: str, cause: GiveUp, status: int, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(message, cause)
        self.status = status
        self.headers = headers


def stopped_error(connection: str, cause: Cause | None) -> ConnectionClosed:
    """The error that says a connection has stopped, typed by its cause."""
    from engine.causes import GiveUp, HandshakeRejection

    if isinstance(cause, GiveUp):
        last = cause.last
        if isinstance(last, HandshakeRejection):
            return HandshakeRejected(f"{connection}: {cause}", cause, last.status, last.headers)
        return GaveUp(f"{connection}: {cause}", cause)
    return ConnectionClosed(f"{connection}: closed" + (f" ({cause})" if cause is not None else ""), cause)
