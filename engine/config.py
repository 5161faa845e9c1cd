"""Setup objects: attrs classes validated on construction with readable errors.

Bad values raise :class:`~engine.errors.ConfigError` naming the field, at the
point the user builds the setup, not deep inside a running connection.
"""

from __future__ import annotations

import inspect
import random
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import cattrs

from engine.errors import ConfigError
from transports.base import URL, InvalidURL, parse_url
from transports.frames import DEFAULT_MAX_MESSAGE_SIZE
from transports.websocket import FRAME_PATHS

if TYPE_CHECKING:
    from engine.connection import Connection

__all__ = ["Backoff", "ConnectionSetup", "structure"]

Message = str | bytes
Handler = Callable[["Connection", Message], Awaitable[None] | None]
BatchHandler = Callable[["Connection", list[Message]], Awaitable[None] | None]
Hook = Callable[["Connection"], Awaitable[None]]
Subscriber = Callable[["Connection", list[Any]], Awaitable[None]]


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be a positive number, not {value!r}")


def _positive_int(instance: Any, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be a positive integer, not {value!r}")


def _positive_int_or_none(instance: Any, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None:
        _positive_int(instance, attribute, value)


def _callable_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(value):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be callable, not {type(value).__name__}")


def _async_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    _callable_or_none(instance, attribute, value)
    if value is not None and not is_async(value):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be an async function (async def)")


def is_async(fn: Any) -> bool:
    """True for ``async def`` functions and objects whose ``__call__`` is one."""
    # (an object whose class defines ``async def __call__`` counts too)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(type(fn), "__call__", None))  # noqa: B004


@attrs.frozen
class Backoff:
    """Capped exponential reconnect delays.

    The n-th retry waits ``min(maximum, initial * multiplier**n)``, times a
    uniform factor in [0.5, 1] when ``jitter`` is on (so a fleet of clients
    does not reconnect in lockstep). A server's ``Retry-After`` wins when it
    is longer. ``max_attempts=None`` retries forever.
    """

    initial: float = attrs.field(default=0.5, validator=_positive)
    maximum: float = attrs.field(default=30.0, validator=_positive)
    multiplier: float = attrs.field(default=2.0, validator=_positive)
    jitter: bool = True
    max_attempts: int | None = attrs.field(default=None, validator=_positive_int_or_none)

    def __attrs_post_init__(self) -> None:
        if self.maximum < self.initial:
            raise ConfigError(f"Backoff.maximum ({self.maximum}) must be >= Backoff.initial ({self.initial})")
        if self.multiplier < 1:
            raise ConfigError(f"Backoff.multiplier must be >= 1, not {self.multiplier}")

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        base = min(self.maximum, self.initial * self.multiplier ** min(attempt, 64))
        if self.jitter:
            base *= rng.uniform(0.5, 1.0)
        if retry_after is not None and retry_after > base:
            return float(retry_after)
        return base


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_RESERVED_HEADERS = frozenset(
    {"host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol"}
)


def _headers(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        value = list(value.items())
    try:
        pairs = tuple((str(k), str(v)) for k, v in value)
    except (TypeError, ValueError):
        raise ConfigError("ConnectionSetup.extra_headers must be a mapping or (name, value) pairs") from None
    for name, header_value in pairs:
        # Messages name the header, never its value: values are often API keys.
        if not _TOKEN.fullmatch(name):
            raise ConfigError(f"ConnectionSetup.extra_headers: {name!r} is not a valid header name")
        if name.lower() in _RESERVED_HEADERS:
            raise ConfigError(f"ConnectionSetup.extra_headers: {name!r} is set by the WebSocket handshake itself")
        if any(c in header_value for c in "\r\n\0") or header_value != header_value.strip():
            raise ConfigError(
                f"ConnectionSetup.extra_headers: the value of {name!r} contains a line break, NUL or "
                "surrounding whitespace (a key read from a file with its newline?)"
            )
    return pairs


def _redacted(url: str) -> str:
    """The URL for reprs: scheme, host and port only (paths and queries carry tokens)."""
    parsed = parse_url(url)
    return repr(f"{parsed.scheme}://{parsed.host_header}/...") if parsed.resource != "/" else repr(url)


#: shared by every setup that does not pass its own (it is frozen)
_DEFAULT_BACKOFF = Backoff()


@attrs.frozen
class ConnectionSetup:
    """Everything one connection slot needs. Validated on construction.

    Callbacks (all optional except one of the handlers):

    - ``handler(conn, message)``: every complete message, ``str`` for text,
      ``bytes`` for binary; plain or ``async def``.
    - ``batch_handler(conn, messages)``: every message of one socket read as a
      list (the fastest shape); plain or ``async def``. Exclusive with ``handler``.
    - ``connector(conn)``: ``async``; runs right after the WebSocket opens, may
      send a login and ``await conn.request(...)`` its reply. While it runs the
      state is ``authenticating`` when ``authenticated=True``.
    - ``subscriber(conn, subscriptions)``: ``async``; sends subscribe messages
      for the list ``generate_subscriptions()`` returns (called anew on every
      connect, so a reconnect resubscribes everything).

    Timeouts are seconds: ``traffic_timeout`` of silence makes a live
    connection stale and sends a ping; ``pong_timeout`` is the grace for any
    frame to arrive before it counts as lost. With ``keepalive`` (default) a
    ping also goes out after ``traffic_timeout / 2`` of silence, so a quiet
    but healthy connection answers it and never turns stale. ``open_timeout`` bounds dial +
    handshake, ``setup_timeout`` bounds connector + subscriber,
    ``close_timeout`` bounds the close handshake.
    """

    url: str = attrs.field(repr=lambda url: _redacted(url))
    handler: Handler | None = attrs.field(default=None, validator=_callable_or_none)
    batch_handler: BatchHandler | None = attrs.field(default=None, validator=_callable_or_none)
    connector: Hook | None = attrs.field(default=None, validator=_async_or_none)
    subscriber: Subscriber | None = attrs.field(default=None, validator=_async_or_none)
    generate_subscriptions: Callable[[], Sequence[Any]] | None = attrs.field(default=None, validator=_callable_or_none)
    authenticated: bool = False
    traffic_timeout: float = attrs.field(default=30.0, validator=_positive)
    keepalive: bool = True
    pong_timeout: float = attrs.field(default=10.0, validator=_positive)
    open_timeout: float = attrs.field(default=10.0, validator=_positive)
    setup_timeout: float = attrs.field(default=30.0, validator=_positive)
    close_timeout: float = attrs.field(default=5.0, validator=_positive)
    max_message_size: int | None = attrs.field(default=DEFAULT_MAX_MESSAGE_SIZE, validator=_positive_int_or_none)
    subprotocols: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    # Headers often carry API keys: never shown in reprs.
    extra_headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_headers, repr=False)
    frame_path: str = "fast"
    read_size: int = attrs.field(default=256 * 1024, validator=_positive_int)
    backoff: Backoff = attrs.field(default=_DEFAULT_BACKOFF)
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, repr=False)
    name: str | None = None
    _url_parsed: URL = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        try:
            parsed = parse_url(self.url)
        except InvalidURL as exc:
            raise ConfigError(f"ConnectionSetup.url: {exc}") from None
        object.__setattr__(self, "_url_parsed", parsed)  # frozen: set once here
        if (self.handler is None) == (self.batch_handler is None):
            raise ConfigError("ConnectionSetup needs exactly one of handler= or batch_handler= (messages must go somewhere)")
        if self.frame_path not in FRAME_PATHS:
            raise ConfigError(f"ConnectionSetup.frame_path must be one of {FRAME_PATHS}, not {self.frame_path!r}")
        if not isinstance(self.backoff, Backoff):
            raise ConfigError("ConnectionSetup.backoff must be a Backoff")
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise ConfigError("ConnectionSetup.ssl_context must be an ssl.SSLContext")
        if self.generate_subscriptions is not None and self.subscriber is None:
            raise ConfigError("ConnectionSetup.generate_subscriptions needs a subscriber= to send them")
        for name in self.subprotocols:
            if not isinstance(name, str) or not name or any(c in name for c in " ,;\r\n"):
                raise ConfigError(f"ConnectionSetup.subprotocols: invalid name {name!r}")

    @property
    def parsed_url(self) -> URL:
        """The URL, parsed."""
        return self._url_parsed


_converter = cattrs.Converter(forbid_extra_keys=True)


def structure(data: Mapping[str, Any], cls: type[Any]) -> Any:
    """Build ``cls`` (e.g. :class:`Backoff`) from plain data, one readable line per bad field."""
    try:
        return _converter.structure(dict(data), cls)
    except ConfigError:
        raise
    except Exception as exc:  # cattrs raises exception groups; flatten them for humans
        lines = cattrs.transform_error(exc) if isinstance(exc, cattrs.BaseValidationError) else [str(exc)]
        raise ConfigError(f"invalid {cls.__name__}: " + "; ".join(lines)) from None
