"""The connection state machine (DESIGN section 2).

One :class:`transitions.Machine` is built from :data:`STATES` and
:data:`TRANSITIONS` and shared by every connection: building a Machine per
connection costs far more than a transition. Models are driven through the
machine's events (``MACHINE.events[trigger].trigger(model)``) rather than
``add_model``, which binds ~30 callables onto every model (~10 KiB per
connection, measured) and keeps a list that must be scanned on removal.
Triggers fire on connection events, never per message. Diagrams in
``diagrams/`` are generated from these same tables.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from transitions import EventData, Machine

from machines.lean import LeanMachine

__all__ = [
    "ConnectionModel",
    "MACHINE",
    "State",
    "STATES",
    "TRANSITIONS",
    "TRIGGERS",
    "Listener",
    "build_machine",
    "state_of",
]


class State(str, enum.Enum):
    """Observable phases of one connection slot."""

    DISCONNECTED = "disconnected"  # not running: before start, after close or give-up
    CONNECTING = "connecting"  # dialing + WebSocket handshake
    AUTHENTICATING = "authenticating"  # connector running (login before any subscribe)
    SUBSCRIBING = "subscribing"  # subscriber running, waiting for acks
    LIVE = "live"  # streaming; traffic within the deadline
    STALE = "stale"  # silent past traffic_timeout; ping sent, waiting for the grace
    RECONNECTING = "reconnecting"  # lost; waiting for the backoff / governor
    CLOSING = "closing"  # user close: close handshake under a bounded timeout

    def __str__(self) -> str:
        return self.value


STATES: tuple[State, ...] = tuple(State)
# value -> member: a dict lookup instead of an Enum call on every transition
_BY_VALUE: dict[str, State] = {state.value: state for state in STATES}


def state_of(value: str) -> State:
    """The :class:`State` whose value is ``value`` (what the machine stores on a model)."""
    return _BY_VALUE[value]

_CONNECTED = [State.CONNECTING, State.AUTHENTICATING, State.SUBSCRIBING, State.LIVE, State.STALE]

#: The transition table: the single source of truth for code and diagrams.
TRANSITIONS: tuple[dict[str, Any], ...] = (
    {"trigger": "connect", "source": State.DISCONNECTED, "dest": State.CONNECTING},
    {"trigger": "opened", "source": State.CONNECTING, "dest": State.AUTHENTICATING, "conditions": "needs_auth"},
    {"trigger": "opened", "source": State.CONNECTING, "dest": State.SUBSCRIBING, "unless": "needs_auth"},
    {"trigger": "authenticated", "source": State.AUTHENTICATING, "dest": State.SUBSCRIBING},
    {"trigger": "subscribed", "source": State.SUBSCRIBING, "dest": State.LIVE},
    {"trigger": "silence", "source": State.LIVE, "dest": State.STALE},
    {"trigger": "traffic", "source": State.STALE, "dest": State.LIVE},
    {"trigger": "lost", "source": _CONNECTED, "dest": State.RECONNECTING},
    {"trigger": "retry", "source": State.RECONNECTING, "dest": State.CONNECTING},
    {"trigger": "give_up", "source": State.RECONNECTING, "dest": State.DISCONNECTED},
    {"trigger": "close", "source": [*_CONNECTED, State.RECONNECTING], "dest": State.CLOSING},
    {"trigger": "closed", "source": State.CLOSING, "dest": State.DISCONNECTED},
)

TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(t["trigger"] for t in TRANSITIONS))

#: ``(source, dest, trigger, reason)``, called after every transition.
Listener = Callable[[State, State, str, str], None]


class ConnectionModel:
    """The per-connection model the shared machine drives.

    ``needs_auth`` selects the authenticated route out of ``connecting``;
    ``listener`` hears every transition. Keeps default identity equality and
    no ``__slots__``, as ``transitions`` requires.
    """

    def __init__(self, *, needs_auth: bool = False, listener: Listener | None = None) -> None:
        # The machine runs on plain string states (the enum values): transitions
        # resolves Enum states through several property lookups per transition.
        self.state: str = State.DISCONNECTED.value
        self.needs_auth = needs_auth
        self.listener = listener

    def _after_change(self, event: EventData) -> None:
        transition = event.transition
        if self.listener is not None and transition is not None:
            reason = event.kwargs.get("reason", "")
            dest = transition.dest or transition.source  # (an internal transition stays put)
            self.listener(_BY_VALUE[transition.source], _BY_VALUE[dest], event.event.name, reason)

    def fire(self, trigger: str, reason: str = "") -> bool:
        """Fire ``trigger`` if the current state allows it; return whether it moved."""
        event = MACHINE.events[trigger]
        if self.state not in event.transitions:
            return False  # not a transition from here (checked first: transitions would log a warning)
        return bool(event.trigger(self, reason=reason))


def _after_change(event: EventData) -> None:
    model = event.model
    assert isinstance(model, ConnectionModel)
    model._after_change(event)


def _plain(transition: dict[str, Any]) -> dict[str, Any]:
    """A transition with its State members as plain strings."""
    plain = dict(transition)
    for key in ("source", "dest"):
        value = plain[key]
        plain[key] = [s.value for s in value] if isinstance(value, list) else value.value
    return plain


def build_machine(machine_class: type[Machine] = LeanMachine, **extra: Any) -> Machine:
    """A Machine over the connection tables (``model=None``: add models later)."""
    return machine_class(
        model=extra.pop("model", None),
        states=[state.value for state in STATES],
        transitions=[_plain(t) for t in TRANSITIONS],
        initial=State.DISCONNECTED.value,
        auto_transitions=False,
        send_event=True,
        # A callable, not a method name: spares a getattr per transition.
        after_state_change=_after_change,
        **extra,
    )


#: The machine every connection model is driven by.
MACHINE: Machine = build_machine()
