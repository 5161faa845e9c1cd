"""Setup objects: attrs classes validated on construction with readable errors.

Bad values raise :class:`~engine.errors.ConfigError` naming the field, at the
point the user builds the setup, not deep inside a running connection.
"""

from __future__ import annotations

import inspect
import re
import ssl
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from typing import Any

import attrs
import cattrs

from engine.errors import ConfigError
from engine.liveness import AppPing
from engine.policy import Backoff, ReconnectPolicy
from engine.ratelimit import Limiter, RateLimit
from engine.requests import ResponseKey
from transports.base import URL, InvalidURL, parse_url
from transports.websocket import DEFAULT_MAX_MESSAGE_SIZE, FRAME_PATHS

__all__ = ["Backoff", "ConnectionSetup", "WebsocketSetup", "structure"]

Message = str | bytes
# The first argument is the Connection (typed Any here: the setup sits below the connection).
Handler = Callable[[Any, Message], Awaitable[None] | None]
BatchHandler = Callable[[Any, list[Message]], Awaitable[None] | None]
Hook = Callable[[Any], Awaitable[None]]
Subscriber = Callable[[Any, list[Any]], Awaitable[None]]


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be a positive number, not {value!r}")


def _positive_or_none(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None:
        _positive(instance, attribute, value)


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


def _non_negative(instance: Any, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be a finite number >= 0, not {value!r}")


def _bytes_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, bytes):
        raise TypeError(f"{attribute.name} must be bytes or None, not {type(value).__name__}")


def _policy_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not callable(getattr(value, "decide", None)):
        raise ConfigError(
            f"{type(instance).__name__}.{attribute.name} must have a decide(cause, attempt) method "
            f"(see engine.policy.ReconnectPolicy), not {type(value).__name__}"
        )


def _rate_limit_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, (RateLimit, Limiter)) and not callable(value):
        raise ConfigError(
            f"{type(instance).__name__}.{attribute.name} must be a RateLimit (each connection its own "
            f"limiter), a Limiter (shared) or a () -> Limiter factory, not {type(value).__name__}"
        )


def _app_ping_or_none(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and not isinstance(value, AppPing):
        raise ConfigError(f"{type(instance).__name__}.{attribute.name} must be an AppPing, not {type(value).__name__}")


def _message_id(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or value in ("counter", "uuid7"):
        return
    if not callable(value) or is_async(value):
        raise ConfigError(
            f"{type(instance).__name__}.{attribute.name} must be None (a counter), \"counter\", \"uuid7\" "
            f"or a plain () -> int | str, not {value!r}"
        )


def _listeners(value: Any) -> tuple[Callable[[Any], None], ...]:
    listeners = (value,) if callable(value) else value
    try:
        listeners = tuple(listeners)
    except TypeError:
        raise ConfigError("ConnectionSetup.on_state_change must be a callable or a sequence of callables") from None
    for listener in listeners:
        if not callable(listener):
            raise ConfigError(f"ConnectionSetup.on_state_change: {type(listener).__name__} is not callable")
    return listeners


def is_async(fn: Any) -> bool:
    """True for ``async def`` functions and objects whose ``__call__`` is one."""
    # (an object whose class defines ``async def __call__`` counts too)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(type(fn), "__call__", None))  # noqa: B004


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


def _subprotocols(value: Any) -> tuple[Any, ...]:
    if isinstance(value, str):
        return (value,)  # one name, not its letters
    try:
        return tuple(value)
    except TypeError:
        raise ConfigError(
            f"ConnectionSetup.subprotocols must be a string or a sequence of strings, not {type(value).__name__}"
        ) from None


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

    Reconnects: after a session ends, ``policy.decide(cause, attempt)``
    (:mod:`engine.policy`) says when to retry or to give up; by default
    :class:`~engine.policy.DefaultPolicy` over ``backoff``, with a server's
    ``Retry-After`` capped at ``retry_after_cap`` seconds. An attempt counts
    as a success (the backoff and ``max_attempts`` start over) only once its
    session stayed live for ``healthy_after`` seconds.

    Requests: ``response_key(message)`` tells which pending
    ``conn.request(..., key=...)`` a message answers (default: the ``"id"``
    of a JSON object; it runs only while a request waits);
    ``response_marker``: bytes every response's raw frame contains: a socket
    read without them passes the matcher by (one vectorized search per read
    instead of a ``response_key`` call per message). Default: ``b'"id"'`` with
    the default key, none (every message is offered) with your own key;
    ``b""`` turns it off;
    ``response_max_limit`` is the default wait per expected response;
    ``latency_observer(conn, key, seconds)`` hears how long each answered request took;
    ``app_ping`` (:class:`~engine.liveness.AppPing`) replaces the protocol
    keepalive ping with the exchange's own text or binary ping;
    ``message_id`` makes ``conn.next_id()``: a per-connection counter (None),
    ``"uuid7"``, or your own ``() -> int | str``.

    Under a :class:`~engine.manager.Manager`: ``unsubscriber(conn, subs)``
    sends unsubscribes; ``subscriptions_not_required`` marks a connection
    that exists only for requests (orders); ``message_filter`` is a tag
    ``Manager.get_connection(filter)`` matches; ``rate_limit`` is a
    :class:`~engine.ratelimit.RateLimit` (this connection gets its own limiter)
    or a :class:`~engine.ratelimit.Limiter` (shared: other connections to the
    host, REST calls); ``max_queued`` bounds the sends waiting for their turn. A setup without a handler is a template the manager
    completes with its global callbacks; :class:`~engine.connection.Connection`
    itself needs one.

    Under a manager, optional per-connection care (each costs one call per
    message only when set): ``rotate_after`` seconds after a session went
    live, a replacement connection is opened, logged in and subscribed beside
    it (make-before-break: for exchanges that cut connections at a lifetime
    limit, e.g. Binance's 24 h); both run for ``rotate_overlap`` seconds, what
    both deliver reaches the handler once (``message_identity(message)`` says
    which messages are the same, default the message itself; ``None`` means
    "never a duplicate"), then the old one closes with 1000. ``stream_of(message)``
    names the ``(channel, symbol)`` a data message belongs to, which lets a
    :class:`~engine.subscriptions.Subscription` with ``stale_after`` be
    resubscribed alone when that symbol goes quiet on a busy connection.

    ``on_state_change``: listener(s) called with every
    :class:`~engine.events.StateChanged`, from the very first transition.

    ``subprotocols`` is a sequence of names offered in the handshake; a plain
    string is one name (``"json"`` means ``("json",)``, not its letters).
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
    subprotocols: tuple[str, ...] = attrs.field(default=(), converter=_subprotocols)
    # Headers often carry API keys: never shown in reprs.
    extra_headers: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_headers, repr=False)
    frame_path: str = "fast"
    read_size: int = attrs.field(default=256 * 1024, validator=_positive_int)
    backoff: Backoff = attrs.field(default=_DEFAULT_BACKOFF)
    policy: ReconnectPolicy | None = attrs.field(default=None, validator=_policy_or_none)
    healthy_after: float = attrs.field(default=10.0, validator=_non_negative)
    retry_after_cap: float = attrs.field(default=300.0, validator=_non_negative)
    response_key: ResponseKey | None = attrs.field(default=None, validator=_callable_or_none)
    response_marker: bytes | None = attrs.field(default=None, validator=_bytes_or_none)
    response_max_limit: float = attrs.field(default=10.0, validator=_positive)
    latency_observer: Callable[[Any, Any, float], None] | None = attrs.field(default=None, validator=_callable_or_none)
    on_state_change: tuple[Callable[[Any], None], ...] = attrs.field(default=(), converter=_listeners, repr=False)
    unsubscriber: Subscriber | None = attrs.field(default=None, validator=_async_or_none)
    subscriptions_not_required: bool = False
    message_filter: Any = None
    rate_limit: Any = attrs.field(default=None, validator=_rate_limit_or_none)
    max_queued: int = attrs.field(default=10_000, validator=_positive_int)
    message_id: Any = attrs.field(default=None, validator=_message_id)
    app_ping: AppPing | None = attrs.field(default=None, validator=_app_ping_or_none)
    rotate_after: float | None = attrs.field(default=None, validator=_positive_or_none)
    rotate_overlap: float = attrs.field(default=5.0, validator=_positive)
    message_identity: Callable[[Message], Hashable | None] | None = attrs.field(default=None, validator=_callable_or_none)
    stream_of: Callable[[Message], tuple[str, str] | None] | None = attrs.field(default=None, validator=_callable_or_none)
    ssl_context: ssl.SSLContext | None = attrs.field(default=None, repr=False)
    name: str | None = None
    _url_parsed: URL = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        try:
            parsed = parse_url(self.url)
        except InvalidURL as exc:
            raise ConfigError(f"ConnectionSetup.url: {exc}") from None
        object.__setattr__(self, "_url_parsed", parsed)  # frozen: set once here
        if self.handler is not None and self.batch_handler is not None:
            raise ConfigError("ConnectionSetup takes one of handler= or batch_handler=, not both")
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


def _exchange(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"WebsocketSetup.exchange must be a non-empty name, not {value!r}")


@attrs.frozen
class WebsocketSetup:
    """One exchange's streaming setup, for a :class:`~engine.manager.Manager`.

    Two styles, as in GoCryptoTrader's stream package:

    - single (``use_multi_connection_management=False``): the callbacks here
      (``connector``, ``subscriber``, ``unsubscriber``,
      ``generate_subscriptions``, ``handler``/``batch_handler``) serve every
      connection added with :meth:`~engine.manager.Manager.add_connection`
      (typically one public and one ``authenticated`` private connection);
    - multi (``True``): each :class:`ConnectionSetup` brings its own callbacks
      (spot and futures side by side); the ones here are not used.

    ``max_subscriptions_per_connection`` (None: no limit) shards a setup's
    subscriptions over as many connections to its URL as needed.
    ``traffic_timeout`` applies to every managed connection;
    ``connection_monitor_interval`` is how often the manager looks for enabled
    connections that are down and not coming back, to start them again.
    ``fills_feed``, ``trade_feed`` and ``orderbook`` are read by the data path.
    ``max_dialing`` bounds how many of the manager's connections dial at the
    same moment (a start with 1,000 connections is not 1,000 simultaneous
    connects: exchanges count them, and the burst's buffers stay in the
    process's memory; measured: 21.4 -> 18.9 KiB RSS per managed connection).
    """

    exchange: str = attrs.field(validator=_exchange)
    use_multi_connection_management: bool = False
    max_subscriptions_per_connection: int | None = attrs.field(default=None, validator=_positive_int_or_none)
    traffic_timeout: float = attrs.field(default=30.0, validator=_positive)
    connection_monitor_interval: float = attrs.field(default=2.0, validator=_positive)
    max_dialing: int = attrs.field(default=32, validator=_positive_int)
    fills_feed: bool = False
    trade_feed: bool = False
    orderbook: Any = None
    connector: Hook | None = attrs.field(default=None, validator=_async_or_none)
    subscriber: Subscriber | None = attrs.field(default=None, validator=_async_or_none)
    unsubscriber: Subscriber | None = attrs.field(default=None, validator=_async_or_none)
    generate_subscriptions: Callable[[], Sequence[Any]] | None = attrs.field(default=None, validator=_callable_or_none)
    handler: Handler | None = attrs.field(default=None, validator=_callable_or_none)
    batch_handler: BatchHandler | None = attrs.field(default=None, validator=_callable_or_none)

    def __attrs_post_init__(self) -> None:
        if self.handler is not None and self.batch_handler is not None:
            raise ConfigError("WebsocketSetup takes one of handler= or batch_handler=, not both")


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
