"""wirestate engine: connections that stay alive, and what coordinates them.

Public API (also importable from :mod:`wirestate`)::

    from engine import Connection, ConnectionSetup, Backoff, State, StateChanged
"""

from engine import causes
from engine.config import ConnectionSetup, WebsocketSetup
from engine.connection import Connection
from engine.errors import (
    AuthenticationFailed,
    ConfigError,
    ConnectionClosed,
    ConnectionLost,
    DuplicateRequest,
    DuplicateSubscription,
    GaveUp,
    HandshakeRejected,
    InvalidHandshake,
    InvalidState,
    NotConnected,
    ProtocolError,
    RequestTimeout,
    SubscriptionError,
    SubscriptionFailed,
    SubscriptionNotFound,
    WirestateError,
)
from engine.events import (
    Backlog,
    Book,
    BookSnapshot,
    BookUpdate,
    ErrorKind,
    Fill,
    Kline,
    OrderUpdate,
    StateChanged,
    SubscriptionChanged,
    Ticker,
    Trade,
)
from engine.stream import Policy, Stream, StreamStats
from engine.manager import ConnectionInfo, Manager, SubscriptionInfo
from engine.policy import Backoff, DefaultPolicy, ReconnectPolicy, Retry
from engine.requests import json_id
from engine.setupfile import SetupFileError, load_setups
from engine.subscriptions import Subscription
from machines.connection import State
from engine.governor import Governor, HostPolicy
from engine.errors import RateLimited
from engine.ids import message_id_source, uuid7
from engine.ratelimit import Limiter, RateLimit
from engine.books import BookConfig

__all__ = [
    "AuthenticationFailed",
    "Backoff",
    "BookConfig",
    "ConfigError",
    "Connection",
    "ConnectionClosed",
    "ConnectionLost",
    "ConnectionSetup",
    "DefaultPolicy",
    "ConnectionInfo",
    "DuplicateRequest",
    "DuplicateSubscription",
    "Manager",
    "GaveUp",
    "HandshakeRejected",
    "InvalidHandshake",
    "InvalidState",
    "NotConnected",
    "ProtocolError",
    "ReconnectPolicy",
    "RequestTimeout",
    "Retry",
    "SetupFileError",
    "State",
    "StateChanged",
    "Backlog",
    "Book",
    "BookSnapshot",
    "BookUpdate",
    "ErrorKind",
    "Fill",
    "Kline",
    "OrderUpdate",
    "Policy",
    "Stream",
    "StreamStats",
    "SubscriptionChanged",
    "Ticker",
    "Trade",
    "Subscription",
    "SubscriptionError",
    "SubscriptionFailed",
    "SubscriptionInfo",
    "SubscriptionNotFound",
    "WebsocketSetup",
    "WirestateError",
    "causes",
    "json_id",
    "load_setups",
    "Governor",
    "HostPolicy",
    "Limiter",
    "RateLimit",
    "RateLimited",
    "message_id_source",
    "uuid7",
]
