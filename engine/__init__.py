"""wirestate engine: connections that stay alive, and what coordinates them.

Public API (also importable from :mod:`wirestate`)::

    from engine import Connection, ConnectionSetup, Backoff, State, StateChanged
"""

from engine import causes
from engine.config import ConnectionSetup
from engine.connection import Connection
from engine.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionClosed,
    ConnectionLost,
    DuplicateRequest,
    GaveUp,
    HandshakeRejected,
    InvalidHandshake,
    InvalidState,
    NotConnected,
    ProtocolError,
    RequestTimeout,
    WirestateError,
)
from engine.events import StateChanged
from engine.policy import Backoff, DefaultPolicy, ReconnectPolicy, Retry
from engine.requests import json_id
from machines.connection import State

__all__ = [
    "AuthenticationFailed",
    "Backoff",
    "ConfigError",
    "Connection",
    "ConnectionClosed",
    "ConnectionLost",
    "ConnectionSetup",
    "DefaultPolicy",
    "DuplicateRequest",
    "GaveUp",
    "HandshakeRejected",
    "InvalidHandshake",
    "InvalidState",
    "NotConnected",
    "ProtocolError",
    "ReconnectPolicy",
    "RequestTimeout",
    "Retry",
    "State",
    "StateChanged",
    "WirestateError",
    "causes",
    "json_id",
]
