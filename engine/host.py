"""What the session machinery needs from the connection that hosts it.

:mod:`engine.supervisor`, :mod:`engine.session`, :mod:`engine.reader`,
:mod:`engine.closing` and :mod:`engine.handlers` work on a connection's
state, but import this description of it, not :mod:`engine.connection`:
imports point down only, and the connection (above them) satisfies it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import anyio

    from engine.causes import Cause
    from engine.clock import Clock
    from engine.config import ConnectionSetup
    from engine.delivery import Outlet
    from engine.policy import Decision
    from engine.requests import Requests
    from engine.wire import Wire
    from machines.connection import ConnectionModel, State
    from transports.base import Dialer

__all__ = ["Deliverer", "SessionHost"]


class Deliverer(Protocol):
    """Hands a read's messages to the application (:class:`engine.handlers.Delivery`)."""

    deliver: Callable[[list[str | bytes]], Awaitable[None]]


class SessionHost(Protocol):
    """The connection as its sessions see it (engine-internal)."""

    setup: ConnectionSetup
    id: str
    cause: Cause | None
    failures: int
    subscriptions: list[Any]
    subprotocol: str | None
    sessions: int
    messages_received: int
    handler_errors: int
    last_close_received: tuple[int, str] | None
    last_close_sent: tuple[int, str] | None
    last_rejection: Any
    _clock: Clock
    _wall_clock: Any
    _dialer: Dialer
    _model: ConnectionModel
    _wire: Wire | None
    _pause: anyio.CancelScope | None
    _decision: Decision | None
    _decided_at: float
    limiter: Any
    _requests: Requests
    _outlet: Outlet

    @property
    def state(self) -> State: ...

    @property
    def _delivery(self) -> Deliverer: ...

    def _fire(self, trigger: str, cause: Cause | None = None, *, note: str = "", delay: float | None = None) -> None: ...

    def _lose(self, cause: Cause) -> None: ...

    def _end_session(self, cause: Cause) -> None: ...

    def _went_live(self) -> None: ...
