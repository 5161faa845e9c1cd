"""wirestate engine: connections that stay alive, and what coordinates them.

Public API::

    from engine import Connection, ConnectionSetup, Backoff, State, StateChanged
"""

from engine.config import Backoff, ConnectionSetup
from engine.connection import Connection
from engine.errors import (
    ConfigError,
    ConnectionClosed,
    ConnectionLost,
    GaveUp,
    HandshakeRejected,
    NotConnected,
    RequestTimeout,
    WirestateError,
)
from engine.events import StateChanged
from machines.connection import State

__all__ = [
    "Backoff",
    "ConfigError",
    "Connection",
    "ConnectionClosed",
    "ConnectionLost",
    "ConnectionSetup",
    "GaveUp",
    "HandshakeRejected",
    "NotConnected",
    "RequestTimeout",
    "State",
    "StateChanged",
    "WirestateError",
]
