"""The connection state machine (DESIGN section 2).

One stock :class:`transitions.Machine` is built from :data:`STATES` and
:data:`TRANSITIONS` (a :class:`machines.table.Table`) and shared by every
connection; models are driven through its public events.

The machine is the authority: a trigger the current state does not allow
raises :class:`transitions.MachineError` (``ignore_invalid_triggers`` is off).
Code that fires on purpose only when allowed asks :meth:`ConnectionModel.may_fire`
first, so the speculation is visible where it happens.

Triggers fire on connection events, never per message. Diagrams in
``diagrams/`` are generated from these same tables.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from transitions import Machine, MachineError

from machines.table import Table, TableModel

__all__ = [
    "ConnectionModel",
    "IllegalTransition",
    "MACHINE",
    "State",
    "STATES",
    "TRANSITIONS",
    "TRIGGERS",
    "Listener",
    "state_of",
]

#: raised by :meth:`ConnectionModel.fire` for a trigger the state does not allow (a bug)
IllegalTransition = MachineError


class State(str, enum.Enum):
    """Observable phases of one connection slot."""

    DISCONNECTED = "disconnected"  # not running: before start, after close or give-up
    CONNECTING = "connecting"  # dialing + WebSocket handshake
    AUTHENTICATING = "authenticating"  # connector running (login before any subscribe)
    SUBSCRIBING = "subscribing"  # subscriber running, waiting for acks
    LIVE = "live"  # streaming; traffic within the deadline
    STALE = "stale"  # silent past traffic_timeout; ping sent, waiting for the grace
    RECONNECTING = "reconnecting"  # lost: the old socket winds down, then the policy's wait
    CLOSING = "closing"  # user close: close handshake under a bounded timeout

    def __str__(self) -> str:
        return self.value


STATES: tuple[State, ...] = tuple(State)
# value -> member: a dict lookup instead of an Enum call on every transition
_BY_VALUE: dict[str, State] = {state.value: state for state in STATES}


def state_of(value: str) -> State:
    """The :class:`State` whose value is ``value`` (what the machine stores on a model)."""
    return _BY_VALUE[value]


#: states in which a session (one socket) is in progress
SESSION_STATES = frozenset({State.CONNECTING, State.AUTHENTICATING, State.SUBSCRIBING, State.LIVE, State.STALE})
_SESSION = [State.CONNECTING, State.AUTHENTICATING, State.SUBSCRIBING, State.LIVE, State.STALE]

#: The transition table: the single source of truth for code and diagrams.
TRANSITIONS: tuple[dict[str, Any], ...] = (
    {"trigger": "connect", "source": State.DISCONNECTED, "dest": State.CONNECTING},
    {"trigger": "opened", "source": State.CONNECTING, "dest": State.AUTHENTICATING, "conditions": "needs_auth"},
    {"trigger": "opened", "source": State.CONNECTING, "dest": State.SUBSCRIBING, "unless": "needs_auth"},
    {"trigger": "authenticated", "source": State.AUTHENTICATING, "dest": State.SUBSCRIBING},
    {"trigger": "subscribed", "source": State.SUBSCRIBING, "dest": State.LIVE},
    {"trigger": "silence", "source": State.LIVE, "dest": State.STALE},
    {"trigger": "traffic", "source": State.STALE, "dest": State.LIVE},
    {"trigger": "lost", "source": _SESSION, "dest": State.RECONNECTING},
    {"trigger": "retry", "source": State.RECONNECTING, "dest": State.CONNECTING},
    {"trigger": "give_up", "source": State.RECONNECTING, "dest": State.DISCONNECTED},
    {"trigger": "close", "source": [*_SESSION, State.RECONNECTING], "dest": State.CLOSING},
    {"trigger": "closed", "source": State.CLOSING, "dest": State.DISCONNECTED},
)

TABLE = Table("connection", State, TRANSITIONS, State.DISCONNECTED, "machines/connection.py")
TRIGGERS: tuple[str, ...] = TABLE.triggers

#: ``(source, dest, trigger, info)``, called after every transition; ``info`` is what fire() got.
Listener = Callable[[State, State, str, Any], None]


class ConnectionModel(TableModel):
    """The per-connection model the shared machine drives.

    ``needs_auth`` selects the authenticated route out of ``connecting``;
    ``listener`` hears every transition with the ``info`` it was fired with
    (the engine passes the typed cause there: this module knows no engine types).
    """

    table = TABLE

    def __init__(self, *, needs_auth: bool = False, listener: Listener | None = None) -> None:
        super().__init__(listener)
        self.needs_auth = needs_auth


#: The machine every connection model is driven by.
MACHINE: Machine = TABLE.machine
